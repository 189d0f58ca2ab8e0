"""BucketBatchSampler: one bucket per batch, nothing dropped, exact mid-epoch resume, sharding."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lora_kit.data.sampler import BucketBatchSampler
from lora_kit.errors import UserError

BUCKETS = [0, 0, 0, 1, 1, 2, 0, 1, 0, 3]  # bucket 2 and 3 hold one image each, fewer than a batch


def test_epoch_plan_exact_and_nothing_dropped():
    s = BucketBatchSampler(BUCKETS, batch_size=2, seed=7)
    assert len(s) == 7
    first = list(s)
    assert first == [[7, 3], [4], [5], [8, 2], [9], [0], [6, 1]]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert all(len({BUCKETS[i] for i in batch}) == 1 for batch in first)
    second = list(s)  # the sampler moved on to epoch 1: another order, same coverage
    assert second == [[9], [5], [7, 3], [6], [4], [0, 2], [1, 8]]


def test_every_batch_one_bucket_large():
    rng = random.Random(0)
    buckets = [rng.randrange(12) for _ in range(1000)]
    s = BucketBatchSampler(buckets, batch_size=4, seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert Counter(i for b in batches for i in b) == Counter(range(1000))
        assert all(len({buckets[i] for i in b}) == 1 and 1 <= len(b) <= 4 for b in batches)
        short = [b for b in batches if len(b) < 4]
        assert len(short) <= 12  # at most one short batch per bucket


def test_resume_mid_epoch_yields_identical_remaining_order():
    rng = random.Random(5)
    buckets = [rng.randrange(5) for _ in range(97)]
    ref = BucketBatchSampler(buckets, batch_size=3, seed=11)
    ref.set_epoch(2)
    it = iter(ref)
    consumed = [next(it) for _ in range(9)]
    state = ref.state_dict()
    assert state["epoch"] == 2 and state["position"] == 9
    rest = list(it)
    following = list(ref)  # epoch 3

    resumed = BucketBatchSampler(buckets, batch_size=3, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calls this again on resume: it must not restart the epoch
    assert list(resumed) == rest
    assert list(resumed) == following
    assert consumed + rest == BucketBatchSampler(buckets, 3, 11).rank_batches(2)


def test_state_with_prefetch_override_and_epoch_end():
    s = BucketBatchSampler(BUCKETS, 2, seed=7)
    it = iter(s)
    next(it), next(it), next(it)
    assert s.state_dict(consumed=1)["position"] == 1  # a DataLoader may have prefetched ahead
    t = BucketBatchSampler(BUCKETS, 2, seed=7)
    t.load_state_dict(s.state_dict(consumed=1))
    assert list(t) == BucketBatchSampler(BUCKETS, 2, seed=7).rank_batches(0)[1:]
    assert t.state_dict()["epoch"] == 1 and t.state_dict()["position"] == 0


def test_resume_refuses_a_changed_dataset():
    s = BucketBatchSampler(BUCKETS, 2, seed=7)
    state = s.state_dict()
    with pytest.raises(UserError, match="num_samples 10 -> 11"):
        BucketBatchSampler(BUCKETS + [0], 2, seed=7).load_state_dict(state)
    with pytest.raises(UserError, match="batch_size 2 -> 4"):
        BucketBatchSampler(BUCKETS, 4, seed=7).load_state_dict(state)


def test_two_ranks_cover_every_sample_exactly_once():
    rng = random.Random(2)
    buckets = [rng.randrange(4) for _ in range(200)]
    probe = BucketBatchSampler(buckets, 4, seed=3)
    if probe.num_batches_total % 2:  # make the batch count even: no padding in this test
        buckets.append(buckets[0])
    ranks = [BucketBatchSampler(buckets, 4, seed=3, num_replicas=2, rank=r) for r in range(2)]
    assert ranks[0].num_padding_batches == 0 and len(ranks[0]) == len(ranks[1])
    for epoch in range(2):
        seen = []
        for s in ranks:
            s.set_epoch(epoch)
            seen += [i for b in s for i in b]
        assert Counter(seen) == Counter(range(len(buckets)))
    a = [i for b in ranks[0].rank_batches(0) for i in b]
    b = [i for b in ranks[1].rank_batches(0) for i in b]
    assert not set(a) & set(b)


def test_padding_gives_equal_steps_and_repeats_one_bucket_batch():
    # 7 batches over 2 ranks: one batch is repeated so both ranks run 4 steps
    ranks = [BucketBatchSampler(BUCKETS, 2, seed=7, num_replicas=2, rank=r) for r in range(2)]
    assert ranks[0].num_padding_batches == 1 and [len(s) for s in ranks] == [4, 4]
    got = [list(s) for s in ranks]
    assert got == [[[7, 3], [5], [9], [6, 1]], [[4], [8, 2], [0], [7, 3]]]
    counts = Counter(i for batches in got for b in batches for i in b)
    assert set(counts) == set(range(10))
    assert {i for i, c in counts.items() if c == 2} == {7, 3}  # the repeated batch, from bucket 0
    three = [BucketBatchSampler(BUCKETS, 2, seed=7, num_replicas=3, rank=r) for r in range(3)]
    assert [len(s) for s in three] == [3, 3, 3] and three[0].num_padding_batches == 2


def test_argument_checks():
    with pytest.raises(ValueError):
        BucketBatchSampler([], 2, 0)
    with pytest.raises(ValueError):
        BucketBatchSampler([0], 2, 0, num_replicas=2, rank=2)
