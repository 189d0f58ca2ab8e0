"""Model backends on tiny models built here: a random BLIP, an ONNX WD14-style tagger, a random CLIP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_kit.captioning import CaptionOptions, EditRules, caption_dataset, create_captioner
from lora_kit.captioning.tiny import TINY_BLIP_WORDS as BLIP_WORDS
from lora_kit.cli import main
from lora_kit.errors import UserError

from test_caption_runner import GOOD, make_dataset

QUIET = dict(progress=False)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "img")


def read_caption(root: Path, rel: str) -> str:
    return (root / rel).with_suffix(".txt").read_text()


# --- transformers (BLIP) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    from lora_kit.captioning.tiny import write_tiny_blip

    return write_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip", seed=0)


def test_blip_captions_every_readable_image_via_the_cli(dataset, blip_dir):
    assert main(["caption", str(dataset), "--captioner", "transformers", "--model", str(blip_dir), "--batch-size", "3",
                 "--num-beams", "2", "--max-new-tokens", "6", "--trigger", "sks", "--no-progress"]) == 0
    for rel in GOOD:
        text = read_caption(dataset, rel)
        assert text.endswith("\n") and text.count("\n") == 1
        tags = text.strip().split(", ")
        assert tags[0] == "sks" and len(tags) == 2
        words = tags[1].split()
        assert 1 <= len(words) <= 6 and set(words) <= set(BLIP_WORDS)
    assert not (dataset / "2_cat/broken.txt").exists()
    # pinned: the seeded random BLIP's beam-search caption of the red image
    assert read_caption(dataset, GOOD[1]) == "sks, cat a of photo red on\n"


def test_blip_batching_does_not_change_captions_and_prompt_is_cut(blip_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green", "white", "black")]
    one = create_captioner("transformers", model=str(blip_dir), num_beams=1, max_new_tokens=6, device="cpu")
    assert one.device == "cpu" and one.dtype == torch.float32
    batched = [c.text for c in one.caption([None] * 5, images)]
    assert [one.generate([im])[0] for im in images] == batched

    prompted = create_captioner("transformers", model=str(blip_dir), prompt="a photo of", num_beams=1, max_new_tokens=6)
    processor, model = AutoProcessor.from_pretrained(blip_dir), AutoModelForImageTextToText.from_pretrained(blip_dir)
    ids = model.generate(**processor(images=images[:1], text=["a photo of"], return_tensors="pt"), max_new_tokens=6,
                         num_beams=1)
    full = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert full.startswith("a photo of ") and len(full) > len("a photo of ")
    assert prompted.generate(images[:1]) == [full[len("a photo of "):].strip()]


def test_missing_model_names_what_to_download(tmp_path):
    with pytest.raises(UserError, match="hf download lora-kit-tests/no-such-blip"):
        create_captioner("transformers", model="lora-kit-tests/no-such-blip")
    with pytest.raises(UserError, match="hf download lora-kit-tests/no-such-tagger model.onnx selected_tags.csv"):
        create_captioner("tagger", model="lora-kit-tests/no-such-tagger")
    with pytest.raises(UserError, match="folder not found"):
        create_captioner("transformers", model=str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="cannot load captioning processor"):
        create_captioner("transformers", model=str(empty))
    with pytest.raises(UserError, match="lacks model.onnx"):
        create_captioner("tagger", model=str(empty))


# --- tagger (WD14-style ONNX) -------------------------------------------------------------------------

TAGGER_TAGS = [("general", 9), ("sensitive", 9), ("red", 0), ("green", 0), ("blue", 0), ("white", 0),
               ("long_hair", 0), ("sks_star", 4)]


class TinyTagger(torch.nn.Module):
    """NHWC BGR 0..255 -> per-tag probabilities, with hand-set weights so colours map to colour tags.

    The 1x1 conv turns BGR into RGB in 0..1, so a preprocessing that forgot the BGR flip would tag a
    red image "blue"; the mean over the padded square makes white padding visible in the scores.
    """

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.head = torch.nn.Linear(3, len(TAGGER_TAGS))
        with torch.no_grad():
            self.conv.weight.zero_()
            for rgb in range(3):
                self.conv.weight[rgb, 2 - rgb] = 1 / 255
            self.conv.bias.zero_()
            w = torch.tensor([[0, 0, 0], [0, 0, 0], [10, -5, -5], [-5, 10, -5], [-5, -5, 10],
                              [10 / 3, 10 / 3, 10 / 3], [0, 0, 0], [10, -5, -5]], dtype=torch.float32)
            self.head.weight.copy_(w)
            self.head.bias.copy_(torch.tensor([1, 0, -2, -2, -2, -8, 0, -1], dtype=torch.float32))

    def forward(self, x):
        x = self.conv(x.permute(0, 3, 1, 2)).mean(dim=(2, 3))
        return torch.sigmoid(self.head(x))


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-tagger"
    out.mkdir()
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(TinyTagger().eval(), (torch.rand(2, 16, 16, 3) * 255,), str(out / "model.onnx"),
                      input_names=["input"], output_names=["output"], dynamic_shapes=({0: batch},), dynamo=True,
                      verbose=False)
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},{100 - i}" for i, (n, c) in enumerate(TAGGER_TAGS)]
    (out / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return out


def test_tagger_tags_colours_with_pinned_output(dataset, tagger_dir):
    cap = create_captioner("tagger", model=str(tagger_dir), rating=True, device="cpu")
    assert cap.size == 16 and cap.max_batch is None
    rules = EditRules(trigger="ohwx", underscores_to_spaces=True, sort_by_confidence=True)
    report = caption_dataset(dataset, cap, CaptionOptions(rules=rules, batch_size=4, **QUIET))
    assert (report.captioned, report.unreadable) == (4, 1)
    assert read_caption(dataset, GOOD[1]) == "ohwx, sks star, red, general, long hair\n"
    # RGBA blue on white, padded to a white square: mean RGB ~ (159, 159, 255) -> blue 0.85 > general 0.73
    # > long_hair 0.5 > white 0.38 (over the 0.35 general threshold only because of the padding)
    assert read_caption(dataset, GOOD[0]) == "ohwx, blue, general, long hair, white\n"
    assert read_caption(dataset, GOOD[2]) == "ohwx, green, general, long hair\n"
    assert read_caption(dataset, GOOD[3]) == "ohwx, general, long hair\n"
    assert report.frequency["long hair"] == 4 and report.frequency["red"] == 1


def test_tagger_scores_and_thresholds(tagger_dir):
    cap = create_captioner("tagger", model=str(tagger_dir), general_threshold=0.9, character_threshold=0.9999)
    red = Image.new("RGB", (20, 20), (255, 0, 0))
    (result,) = cap.caption([None], [red])
    assert result.tags == ["red"]  # long_hair (0.5) is under 0.9, sks_star (sigmoid 9 = 0.99988) under 0.9999
    probs = cap.predict([red])[0]
    expected = 1 / (1 + np.exp(-np.array([1, 0, 8, -7, -7, 10 / 3 - 8, 0, 9], dtype=np.float64)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    assert result.scores == pytest.approx([expected[2]])


def test_tagger_without_onnxruntime_is_an_actionable_error(tagger_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(UserError, match=r"pip install 'lora-kit\[tagger\]'"):
        create_captioner("tagger", model=str(tagger_dir))


# --- clip-tags ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from lora_kit.models.tokenizer import write_clip_tokenizer

    out = write_clip_tokenizer(tmp_path_factory.mktemp("models") / "tiny-clip")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(out)).save_pretrained(out)
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(small, vocab_size=49408, max_position_embeddings=77),
                        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    return out


@pytest.fixture
def vocab(tmp_path) -> Path:
    path = tmp_path / "tags.txt"
    path.write_text("red\nblue\n\n# colours above, things below\ngreen\ncat\nstar  # shapes\nred\n")
    return path


def test_clip_tags_rank_the_vocabulary_like_clip_forward(dataset, clip_dir, vocab):
    from transformers import AutoProcessor, CLIPModel

    cap = create_captioner("clip-tags", model=str(clip_dir), vocab=str(vocab), top_k=3)
    assert cap.tags == ["red", "blue", "green", "cat", "star"]
    report = caption_dataset(dataset, cap, CaptionOptions(batch_size=2, **QUIET))
    assert report.captioned == 4

    processor, model = AutoProcessor.from_pretrained(clip_dir), CLIPModel.from_pretrained(clip_dir)
    for rel in GOOD:
        from lora_kit.data.images import load_image

        inputs = processor(text=[f"a photo of {t}" for t in cap.tags], images=[load_image(dataset / rel)],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[0]
        best = [cap.tags[i] for i in logits.argsort(descending=True)[:3].tolist()]
        assert read_caption(dataset, rel) == ", ".join(best) + "\n"


def test_clip_tags_threshold_and_errors(clip_dir, vocab, tmp_path):
    images = [Image.new("RGB", (32, 32), "red")]
    sims = create_captioner("clip-tags", model=str(clip_dir), vocab=str(vocab)).similarities(images)[0]
    cut = float(sims.sort(descending=True).values[1])  # keeps exactly the two best
    (two,) = create_captioner("clip-tags", model=str(clip_dir), vocab=str(vocab), threshold=cut).caption([None], images)
    assert len(two.tags) == 2 and two.scores == sorted(two.scores, reverse=True) and min(two.scores) >= cut
    (none,) = create_captioner("clip-tags", model=str(clip_dir), vocab=str(vocab), threshold=1.01).caption([None], images)
    assert none.tags == []
    with pytest.raises(UserError, match="vocabulary file not found"):
        create_captioner("clip-tags", model=str(clip_dir), vocab=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match=r"\{tag\}"):
        create_captioner("clip-tags", model=str(clip_dir), vocab=str(vocab), clip_template="a photo")


def test_no_torchvision_needed():
    import importlib.util

    assert importlib.util.find_spec("torchvision") is None  # processors run on their PIL backends
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
