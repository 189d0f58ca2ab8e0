"""The fault suite: a run killed, damaged, raced or refused a write still ends in one line or an exact result.

Subprocess runs of `lora-kit train tiny-smoke` (6 steps, checkpoints at 2 and 4) die by SIGKILL at a
chosen point (mid-checkpoint, mid-export) or hit RLIMIT_FSIZE there; the fault is injected by a small
driver that wraps one lora-kit function before calling the real CLI. Every resume must give the
adapter of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_kit.cli import main
from lora_kit.errors import UserError
from train_utils import run_training

REPO = Path(__file__).resolve().parent.parent
COMMON = ["train.max_steps=6", "save.every_n_steps=2", "save.keep_last=0"]
# run_training adds these (train_utils.BASE); the subprocess runs need them spelled out.
CLI_COMMON = COMMON + ["log.tensorboard=false", "dataset.caption_dropout=0.0"]
ADAPTER = "pytorch_lora_weights.safetensors"

DRIVER = r"""
import os, signal, sys, resource
from pathlib import Path
from lora_kit import cli, utils
from lora_kit.train import checkpoint as ckpt, export

fault = os.environ["LORA_KIT_TEST_FAULT"]
limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if fault == "kill-checkpoint":  # every file of checkpoint 4 written, its manifest not yet
    real_manifest = ckpt.write_manifest
    def write_manifest(folder, run_id, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_manifest(folder, run_id, step)
    ckpt.write_manifest = write_manifest
elif fault == "kill-export":  # the final kohya file's temp file written, not yet renamed
    real_write = utils.atomic_write
    def atomic_write(path, write):
        path = Path(path)
        if path.suffix == ".safetensors" and "-step" not in path.name:
            tmp = path.parent / f".{path.name}.killed.tmp"
            write(tmp)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(path, write)
    utils.atomic_write = atomic_write
elif fault == "fsize-checkpoint":  # a 4 KiB file size limit from checkpoint 4 on
    real_save = ckpt.save_checkpoint
    def save_checkpoint(acc, root, step, *a, **k):
        if step == 4:
            limit()
        return real_save(acc, root, step, *a, **k)
    ckpt.save_checkpoint = save_checkpoint
elif fault == "fsize-export":  # the same limit for the final export
    real_export = export.export_adapters
    def export_adapters(*args, suffix="", **kwargs):
        if not suffix:
            limit()
        return real_export(*args, suffix=suffix, **kwargs)
    export.export_adapters = export_adapters
sys.exit(cli.main(sys.argv[1:]))
"""


def _train_cli(out: Path, *extra: str, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["train", "tiny-smoke", "--output-dir", str(out), *CLI_COMMON, *extra]
    cmd = [sys.executable, "-c", DRIVER, *args] if fault else [sys.executable, "-m", "lora_kit", *args]
    if fault:
        env["LORA_KIT_TEST_FAULT"] = fault
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=out.parent)


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / ADAPTER))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's adapter."""
    out = tmp_path_factory.mktemp("faults") / "full"
    run_training(out, COMMON)
    return _adapter(out)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run stopped after step 4: whole checkpoints 2 and 4."""
    out = tmp_path_factory.mktemp("faults") / "stopped"
    run_training(out, COMMON, stop_after=4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000002", "checkpoint-000004"]
    return out


# ------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("name,damage", [
    ("adapter_unet.safetensors", "truncate"), ("optimizer.bin", "delete"),
    ("scheduler.bin", "truncate"), ("train_state.json", "delete"),
])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(stopped, reference, tmp_path, capsys, name, damage):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    target = run / "checkpoints" / "checkpoint-000004" / name
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    t = run_training(run, COMMON, resume="latest")
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipping checkpoint-000004" in line]
    assert len(skipped) == 1 and name in skipped[0], out
    assert "resumed from checkpoint-000002" in out
    assert t.global_step == 6 and _same(_adapter(run), reference)


def test_explicit_damaged_checkpoint_is_one_line(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    (run / "checkpoints" / "checkpoint-000004" / "optimizer.bin").write_bytes(b"junk")
    with pytest.raises(UserError, match="optimizer.bin has 4 bytes"):
        run_training(run, COMMON, resume=str(run / "checkpoints" / "checkpoint-000004"))


# ------------------------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("fault,resumed_from", [("kill-checkpoint", 2), ("kill-export", 4)])
def test_kill_then_resume_is_bit_identical(reference, tmp_path, capsys, fault, resumed_from):
    out = tmp_path / "run"
    proc = _train_cli(out, fault=fault)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / ".lora-kit.lock").exists()  # left by the killed process
    if fault == "kill-export":
        assert (out / ".tiny-smoke.safetensors.killed.tmp").exists() and not (out / ADAPTER).exists()
    t = run_training(out, COMMON, resume="latest")
    text = capsys.readouterr().out
    assert "taking over the lock of PID" in text and f"resumed from checkpoint-{resumed_from:06d}" in text
    assert t.global_step == 6 and _same(_adapter(out), reference)
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []  # stale temp removed
    assert not list((out / "checkpoints").glob("*.partial"))


# --------------------------------------------------------------------------------------- write limit


@pytest.mark.parametrize("fault,intact", [("fsize-checkpoint", 2), ("fsize-export", 4)])
def test_write_limit_is_one_line_and_resume_is_bit_identical(reference, tmp_path, fault, intact):
    out = tmp_path / "run"
    proc = _train_cli(out, fault=fault)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "file size limit reached while writing" in lines[0] and f"checkpoint {intact} is intact" in lines[0]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"checkpoint-{s:06d}" for s in (2, 4)[: 1 if intact == 2 else 2]]
    assert not (out / ADAPTER).exists() and not (out / "summary.json").exists()
    assert [p.name for p in out.rglob("*.tmp")] == []
    t = run_training(out, COMMON, resume="latest")
    assert t.global_step == 6 and _same(_adapter(out), reference)


# ----------------------------------------------------------------------------------- one run per folder


def test_second_process_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "lora_kit", "train", "tiny-smoke", "--output-dir", str(out),
                              "train.max_steps=100000", "log.tensorboard=false"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / ".lora-kit.lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = _train_cli(out)
        assert second.returncode == 2
        lines = _error_lines(second.stderr)
        assert len(lines) == 1 and f"in use by another lora-kit run (PID {first.pid}" in lines[0], second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_resume_without_a_checkpoint_never_replaces_a_finished_run(tmp_path, capsys):
    """A finished run whose every checkpoint is gone (or that never wrote one: max_steps under save.every_n_steps):
    --resume latest would train from step 0 and replace its adapter files, so it is refused naming --overwrite.
    A folder with nothing in it starts from step 0 (a job script that always passes --resume latest)."""
    fresh = tmp_path / "fresh"
    t = run_training(fresh, ["train.max_steps=2", "save.every_n_steps=4"], resume="latest")
    assert t.global_step == 2 and "no complete checkpoint" in capsys.readouterr().out
    assert not (fresh / "checkpoints").exists() or not any((fresh / "checkpoints").iterdir())
    before = (fresh / ADAPTER).read_bytes()
    with pytest.raises(UserError, match=r"no checkpoint of this run to resume.*holds a run's files \(.*"
                                        r"pytorch_lora_weights.safetensors.*--overwrite instead of --resume"):
        run_training(fresh, ["train.max_steps=4", "save.every_n_steps=4"], resume="latest")
    assert (fresh / ADAPTER).read_bytes() == before


def test_a_finished_run_with_state_at_end_extends_exactly(tmp_path, capsys):
    """save.state_at_end (kohya save_state_on_train_end): a finished 4-step run resumed with max_steps 6 ends with
    the adapter of an uninterrupted 6-step run (constant lr, so the schedule does not depend on max_steps)."""
    full = tmp_path / "full"
    run_training(full, ["train.max_steps=6", "save.every_n_steps=0"])
    out = tmp_path / "run"
    run_training(out, ["train.max_steps=4", "save.every_n_steps=0", "save.state_at_end=true"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000004"]
    t = run_training(out, ["train.max_steps=6", "save.every_n_steps=0", "save.state_at_end=true"], resume="latest")
    assert "resumed from checkpoint-000004" in capsys.readouterr().out and t.global_step == 6
    assert _same(_adapter(out), _adapter(full))
    assert (out / "checkpoints" / "checkpoint-000006").is_dir()


def test_fresh_run_into_a_used_folder_needs_resume_or_overwrite(stopped, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    old_recipe = (run / "recipe.toml").read_text()
    with pytest.raises(UserError, match=r"already holds a run \(checkpoints 2, 4\).*--resume latest.*--overwrite"):
        run_training(run, COMMON)
    # --overwrite: a new run (other lr, checkpoint every 3 steps, keep 1) never prunes or resumes the old one's.
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer
    from train_utils import BASE, reset_accelerate

    new = ["train.max_steps=6", "save.every_n_steps=3", "save.keep_last=1", "optimizer.lr=5e-4"]
    reset_accelerate()
    t = LoraTrainer(load_recipe("tiny-smoke", BASE + [f'output_dir="{run}"'] + new), stop_after=3, overwrite=True)
    t.setup()
    assert (run / "recipe.toml").read_text() == old_recipe  # nothing to show yet: the old run's files stay
    t.train()
    t.cleanup()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["checkpoint-000002", "checkpoint-000003", "checkpoint-000004"]
    assert "lr = 0.0005" in (run / "recipe.toml").read_text()
    t = run_training(run, new, resume="latest")
    assert "resumed from checkpoint-000003" in capsys.readouterr().out and t.global_step == 6
    assert json.loads((run / "summary.json").read_text())["learning_rate"] == 5e-4


# ----------------------------------------------------------------------------------------- fingerprint


@pytest.mark.parametrize("change,key", [
    ("train.batch_size=4", "train.batch_size 2 -> 4"), ("dataset.max_images=3", "dataset.samples"),
    ("buckets.resolution=48", "buckets.resolution 64 -> 48"), ("seed=7", "seed 42 -> 7"),
])
def test_resume_with_a_changed_data_setup_is_refused(stopped, tmp_path, change, key):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    with pytest.raises(UserError, match=f"cannot resume checkpoint-000004: changed since it was written: .*{key}.*--force-resume"):
        run_training(run, COMMON + [change], resume="latest")


def test_force_resume_continues_but_not_across_a_network_shape_change(stopped, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer
    from train_utils import BASE, reset_accelerate

    reset_accelerate()
    t = LoraTrainer(load_recipe("tiny-smoke", BASE + [f'output_dir="{run}"'] + COMMON + ["seed=7"]),
                    resume="latest", force_resume=True)
    t.setup()
    assert t.global_step == 4 and "--force-resume: continuing although seed changed" in capsys.readouterr().out
    t.cleanup()
    reset_accelerate()
    t = LoraTrainer(load_recipe("tiny-smoke", BASE + [f'output_dir="{run}"'] + COMMON + ["network.rank=8"]),
                    resume="latest", force_resume=True)
    with pytest.raises(UserError, match="network shape or optimizer changed .*network.rank 4 -> 8"):
        t.setup()
    t.run.close()


# ------------------------------------------------------------------------------ checked before the model


@pytest.mark.parametrize("args,expect", [
    (["optimizer.lr=-1"], "[optimizer] lr: expected a learning rate > 0, got -1.0"),
    (["network.dropout=2.0"], "[network] dropout: expected a number in [0, 1)"),
    (['network.target="custom"', 'network.target_modules=["to_qq"]'], "[network] target_modules: 'to_qq' match no"),
    (["sample.width=100"], "[sample] width: expected 0 (bucket resolution) or a multiple of 8"),
    (['sample.prompts=["a"]', "buckets.resolution=100", "buckets.bucket_reso_steps=16", "buckets.min_bucket_reso=32"],
     "[buckets] resolution: samples render at the bucket resolution"),
    (["save.every_n_steps=-2"], "[save] every_n_steps: expected 0 (only at the end)"),
    (["save.keep_last=-1"], "[save] keep_last: expected 0 (keep every checkpoint)"),
    (["--stop-after", "-1"], "--stop-after -1: expected 0"),
    (["--output-dir", "{file}"], "output_dir: {file} is a file, expected a folder"),
    (['cache.dir="{file}/sub"'], "[cache] dir: {file} is a file, expected a folder"),
])
def test_bad_values_and_locations_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, args, expect):
    import lora_kit.models.loading as loading

    def no_model(*a, **k):
        raise AssertionError("the model must not load before the checks")

    monkeypatch.setattr(loading, "load_model", no_model)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = [a.replace("{file}", str(a_file)) for a in args]
    out = [] if "--output-dir" in args else ["--output-dir", str(tmp_path / "run")]
    rc = main(["train", "tiny-smoke", *out, "log.tensorboard=false", *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(_error_lines(err)) == 1 and "Traceback" not in err, err
    assert expect.replace("{file}", str(a_file)) in err, err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- atomic writers


def test_folder_swap_keeps_the_old_folder_until_the_new_one_is_in(tmp_path):
    from lora_kit.utils import atomic_dir, remove_stale_temps, swap_dir

    out = tmp_path / "out"
    atomic_dir(out, lambda d: (d / "a.txt").write_text("old"))
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # mkdtemp's mode replaced by the umask's

    def fail(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_dir(out, fail)
    assert (out / "a.txt").read_text() == "old"
    with pytest.raises(FileNotFoundError):  # the new folder cannot be renamed in: the old one is put back
        swap_dir(tmp_path / "missing", out)
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or aside folder left
    atomic_dir(out, lambda d: (d / "b.txt").write_text("new"))
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    # What a kill between the renames or mid-write leaves is removed by the next run (under its lock).
    (tmp_path / ".out.old.x1").mkdir()
    (tmp_path / ".x.safetensors.abc.tmp").write_text("half")
    (tmp_path / ".lora-kit.lock").write_text("{}")
    assert sorted(p.name for p in remove_stale_temps(tmp_path)) == [".out.old.x1", ".x.safetensors.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lora-kit.lock", "out"]


def test_write_faults_are_recognised_by_errno_and_by_native_messages():
    import errno

    from lora_kit.utils import describe_write_fault, is_write_fault

    assert describe_write_fault(OSError(errno.ENOSPC, "x")) == "disk full"
    assert describe_write_fault(OSError(errno.EFBIG, "x")) == "file size limit reached"
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EACCES, "denied")
    assert is_write_fault(wrapped) and describe_write_fault(wrapped) == "permission denied"
    assert is_write_fault(RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"))
    assert not is_write_fault(OSError(errno.ENOENT, "missing")) and not is_write_fault(ValueError("file write failed?"))


@pytest.mark.parametrize("where, expect", [
    ("output", "output_dir: {dir}/run is not writable"),
    ("cache", "[cache] dir: {dir}/cache is not writable"),
])
def test_unwritable_output_or_cache_folder_is_one_line_before_the_model_loads(tmp_path, where, expect):
    """Root ignores file modes: the child drops the capabilities that bypass them (util-linux setpriv)."""
    import shutil
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cmd = [sys.executable, "-m", "lora_kit", "train", "tiny-smoke", "log.tensorboard=false",
           "--output-dir", str((locked if where == "output" else tmp_path) / "run"),
           f'cache.dir="{(locked if where == "cache" else tmp_path) / "cache"}"']
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv: file permissions cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    errors = _error_lines(proc.stderr)
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expect.replace("{dir}", str(locked)) in errors[0], proc.stderr
    assert "caching latents" not in proc.stderr  # refused before any model or data work


# ------------------------------------------------------------------------- EMA and masked-loss runs


def test_kill_mid_checkpoint_then_resume_is_bit_identical_with_ema_and_masked_huber_loss(tmp_path, capsys):
    """The methods that carry extra state or data (EMA average, masks, Huber schedule) resume exactly too."""
    from PIL import Image

    data = tmp_path / "data" / "2_star"
    data.mkdir(parents=True)
    for i in range(6):  # RGBA pictures: the alpha channel is the loss mask
        im = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
        im.paste((200, 30 * i, 40, 255), (8 + i, 8, 40 + i, 48))
        im.save(data / f"s{i}.png")
        (data / f"s{i}.txt").write_text(f"a star number {i}")
    extra = [f'dataset.path="{tmp_path / "data"}"', "ema.enabled=true", "ema.decay=0.9", "loss.masked=true",
             'loss.type="huber"']
    full = tmp_path / "full"
    run_training(full, COMMON + extra)
    out = tmp_path / "run"
    proc = _train_cli(out, *extra, fault="kill-checkpoint")
    assert proc.returncode == -9, proc.stderr[-2000:]
    t = run_training(out, COMMON + extra, resume="latest")
    assert "resumed from checkpoint-000002" in capsys.readouterr().out
    assert t.global_step == 6 and _same(_adapter(out), _adapter(full))


def test_fingerprint_refuses_another_base_model_but_not_a_moved_one(tmp_path):
    """Resuming a LoRA on another base model (a recipe edited between the runs) continues training it on weights it
    was not trained on: refused, naming the key; the same model folder moved elsewhere resumes."""
    from lora_kit.config.load import load_recipe
    from lora_kit.train.fingerprint import compare, recipe_fingerprint

    before = recipe_fingerprint(load_recipe("tiny-smoke"), 1)
    after = recipe_fingerprint(load_recipe("tiny-smoke", ['model.pretrained="builtin:tiny-world"']), 1)
    with pytest.raises(UserError, match=r'changed since it was written: model.pretrained "builtin:tiny-sd15" -> '
                                        r'"builtin:tiny-world".*--force-resume'):
        compare(before, after, "checkpoint-000002", force=False)
    assert compare(before, after, "checkpoint-000002", force=True) == ["model.pretrained"]
    for folder in (tmp_path / "a" / "sd15-finetune", tmp_path / "b" / "sd15-finetune", tmp_path / "b" / "other"):
        folder.mkdir(parents=True)
    a, b, other = (recipe_fingerprint(load_recipe("tiny-smoke", [f'model.pretrained="{f}"']), 1)
                   for f in (tmp_path / "a" / "sd15-finetune", tmp_path / "b" / "sd15-finetune", tmp_path / "b" / "other"))
    assert compare(a, b, "checkpoint-000002", force=False) == []
    assert compare(a, other, "checkpoint-000002", force=True) == ["model.pretrained"]
    assert "tmp" not in json.dumps(a)  # no absolute local path in the checkpoint's fingerprint


@pytest.mark.parametrize("change", ['network.algo="loha"', "optimizer.loraplus_lr_ratio=4.0",
                                    "network.block_dims=[4, 4, 4, 4, 4, 4, 4, 4, 4]", 'optimizer.name="lion8bit"',
                                    'network.text_encoder_target="attn-mlp"', 'network.text_encoder_target="values"'])
def test_fingerprint_refuses_a_changed_algo_block_layout_or_optimizer_groups(change):
    from lora_kit.config.load import load_recipe
    from lora_kit.train.fingerprint import compare, recipe_fingerprint

    before = recipe_fingerprint(load_recipe("tiny-smoke"), 1)
    after = recipe_fingerprint(load_recipe("tiny-smoke", [change]), 1)
    with pytest.raises(UserError, match="network shape or optimizer changed"):
        compare(before, after, "checkpoint-000002", force=True)
