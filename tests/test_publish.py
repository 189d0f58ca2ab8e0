"""`lora-kit publish`: Hub repo folder (dry run) and Civitai bundle, built from a real run folder on disk.

The fixture run folder deliberately carries private data where a careless exporter would leave it (an
absolute dataset path in ss_dataset_dirs, a local base model path, a token under a secret-named
metadata key and in the description, local paths in PNG text chunks); every published byte is scanned.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest

from lora_kit.cli import main

TOKEN = "hf_testsecretDoNotPublish0123456789"
NAME = "star-lora"
HUB_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"


# ------------------------------------------------------------------------------------------- fixture


def _kohya_tensors(seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"):
        out[f"{mod}.lora_down.weight"] = torch.randn(4, 32, generator=g).half()
        out[f"{mod}.lora_up.weight"] = torch.randn(32, 4, generator=g).half()
        out[f"{mod}.alpha"] = torch.tensor(2.0).half()
    return out


def _png(path: Path, color, parameters: str | None) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, pnginfo=info)


def make_run_dir(root: Path, family: str = "sd1", base_model: str = HUB_BASE, samples: bool = True) -> Path:
    """A run folder as lora_kit.train.export writes it, with leaks planted in the places they could hide."""
    import tomli_w
    from safetensors.torch import save_file

    from lora_kit.adapters.hashes import precalculate_hashes

    run = root / "runs" / NAME
    data_dir = str(root / "datasets" / "10_star")
    run.mkdir(parents=True)
    recipe = {"name": NAME, "seed": 42, "output_dir": str(run), "model": {"pretrained": base_model},
              "dataset": {"path": str(root / "datasets"), "trigger_word": "sks star"},
              "save": {"title": "Star LoRA", "author": "tester", "license": "", "tags": ["shapes"], "precision": "fp16"},
              "sample": {"prompts": ["sks star", "sks star, red"], "seeds": [0], "weights": [0.0, 1.0], "steps": 4}}
    (run / "recipe.toml").write_text(tomli_w.dumps(recipe))
    summary = {
        "output_name": NAME, "family": family, "base_model": base_model, "rank": 4, "alpha": 2.0, "steps": 10,
        "epoch": 1, "learning_rate": 0.001, "optimizer": "AdamW8bit", "lr_scheduler": "constant", "resolution": 64,
        "num_train_images": 6, "num_reg_images": 0, "batch_size": 2, "trigger_words": ["sks star"],
        "title": "Star LoRA", "author": "tester", "license": "", "tags": ["shapes"],
        "description": f"A star. Token pasted by mistake: {TOKEN}. Made in {run}/notes.",
        "tag_frequency": {data_dir: {"sks star": 6, "red": 2}}, "dataset_dirs": {data_dir: {"n_repeats": 10, "img_count": 6}},
        "seed": 42, "mixed_precision": "no", "prediction_type": "epsilon",
        "training_started_at": 1_700_000_000.0, "training_finished_at": 1_700_000_125.0,
        "files": {"kohya": f"{NAME}.safetensors", "diffusers": "pytorch_lora_weights.safetensors"},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
        "ss_base_model_version": "sd_v1", "ss_output_name": NAME, "ss_sd_model_name": str(root / "models" / "sd15"),
        "ss_dataset_dirs": json.dumps({data_dir: {"n_repeats": 10, "img_count": 6}}),
        "ss_tag_frequency": json.dumps({data_dir: {"sks star": 6}}),
        "ss_training_comment": f"trained from {root}/datasets/10_star on this box",
        "modelspec.title": "Star LoRA", "lora_kit.hub_token": TOKEN,
    }
    tensors = _kohya_tensors()
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = precalculate_hashes(tensors, meta)
    save_file(tensors, str(run / f"{NAME}.safetensors"), metadata=meta)
    import torch

    diff = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32).half(),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(32, 4).half()}
    save_file(diff, str(run / "pytorch_lora_weights.safetensors"), metadata={"format": "pt", "modelspec.title": "Star LoRA"})
    for folder in ("logs", "checkpoints/step-000010"):
        (run / folder).mkdir(parents=True)
        (run / folder / "state.bin").write_bytes(b"not for publishing " + str(run).encode())
    if samples:
        _samples(run, root)
    return run


def _samples(run: Path, root: Path) -> None:
    """Grid folders in lora_kit.infer's layout (lora-kit-grid/1); training grids call the adapter "default"."""
    _png(run / "samples" / "step-000005" / "grid.png", (9, 9, 9), None)  # older step: must be ignored
    step = run / "samples" / "step-000010"
    cells = []
    for i, (prompt, weight) in enumerate([("sks star", 0.0), ("sks star", 1.0), ("sks star, red", 0.0), ("sks star, red", 1.0)]):
        rel = f"cells/{i:03d}.png"
        tag = f" <lora:default:{weight:g}>" if weight else ""
        text = f"{prompt}{tag}\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 0, Size: 32x32, Model: {root}/models/sd15"
        _png(step / rel, (40 * i, 100, 200), text)
        params = {"prompt": prompt, "negative_prompt": "blurry", "seed": 0, "steps": 4, "cfg": 7.0, "sampler": "Euler",
                  "width": 32, "height": 32, "loras": [{"path": "", "weight": weight, "name": "default", "label": ""}]}
        cells.append({"index": i, "row": i // 2, "col": i % 2, "file": rel, "params": params, "parameters": text})
    _png(step / "grid.png", (1, 2, 3), f"grid of {run}")
    (step / "grid.json").write_text(json.dumps({"format": "lora-kit-grid/1", "cells": cells}))


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run_dir(tmp_path)


# --------------------------------------------------------------------------------------------- checks


def forbidden(root: Path) -> list[bytes]:
    """Byte strings that must not occur anywhere in a published file."""
    strings = {str(root), str(root.resolve()), str(Path.home()), os.getcwd(), "/tmp", "/work", "/root", TOKEN}
    return [s.encode() for s in strings if len(s) > 3]


def assert_clean(files: dict[str, bytes], root: Path) -> None:
    for name, data in files.items():
        for bad in forbidden(root):
            assert bad not in data, f"{name} contains {bad!r}"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def safetensors_metadata(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__", {})


def png_text(data: bytes) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return dict(im.text)


def front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ------------------------------------------------------------------------------------------------ Hub


def test_hub_dry_run_folder_and_card(run_dir, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["publish", str(run_dir), "--hub", "me/star-lora", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    files = folder_bytes(out)
    assert sorted(files) == sorted([
        "README.md", f"{NAME}.safetensors", "pytorch_lora_weights.safetensors",
        "images/grid.png", "images/01-seed0.png", "images/02-seed0.png",
    ])
    for rel, data in files.items():
        assert rel in printed and f"{len(data):,d}" in printed

    card = front_matter(out / "README.md")
    assert card["base_model"] == HUB_BASE
    assert card["instance_prompt"] == "sks star"
    assert card["license"] == "creativeml-openrail-m"
    assert card["library_name"] == "diffusers"
    assert {"lora", "text-to-image", "diffusers", "template:sd-lora", "stable-diffusion", "shapes"} <= set(card["tags"])
    assert [w["text"] for w in card["widget"]] == ["sks star", "sks star, red"]
    for w in card["widget"]:
        assert (out / w["output"]["url"]).is_file()
        assert w["parameters"]["negative_prompt"] == "blurry"
    # the widget images are the weight-1 cells of the newest step
    assert png_text(files["images/01-seed0.png"])["parameters"].startswith(f"sks star <lora:{NAME}:1>")

    from huggingface_hub import ModelCard

    parsed = ModelCard.load(out / "README.md")
    assert parsed.data.base_model == HUB_BASE
    body = parsed.text
    for needle in ('load_lora_weights("me/star-lora"', 'set_adapters(["star_lora"], adapter_weights=[1])',
                   f"<lora:{NAME}:1>", "models/Lora", "ComfyUI/models/loras", "| Rank (network_dim) | 4 |",
                   "| Alpha (network_alpha) | 2 |", "| Training time | 0:02:05 |", "![sample grid](images/grid.png)"):
        assert needle in body, needle
    assert_clean(files, tmp_path)


def test_hub_folder_scrubs_weights_and_keeps_tensors(run_dir, tmp_path):
    out = tmp_path / "hub"
    assert main(["publish", str(run_dir), "--hub", "me/star-lora", "--dry-run", "--out", str(out)]) == 0
    src, dst = (run_dir / f"{NAME}.safetensors").read_bytes(), (out / f"{NAME}.safetensors").read_bytes()
    meta = safetensors_metadata(dst)
    assert "lora_kit.hub_token" not in meta
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_star": {"n_repeats": 10, "img_count": 6}}
    assert meta["ss_sd_model_name"] == "sd15"
    assert meta["ss_training_comment"] == "trained from 10_star on this box"
    assert meta["ss_network_dim"] == "4" and meta["modelspec.title"] == "Star LoRA"
    # tensor bytes untouched: the addnet hash (SHA-256 of the data after the header) is the same...
    n_src, n_dst = struct.unpack("<Q", src[:8])[0], struct.unpack("<Q", dst[:8])[0]
    assert hashlib.sha256(dst[8 + n_dst:]).hexdigest() == hashlib.sha256(src[8 + n_src:]).hexdigest() == meta["sshs_model_hash"]
    # ...and the file still loads with safetensors
    from safetensors.torch import load_file

    assert sorted(load_file(str(out / f"{NAME}.safetensors"))) == sorted(_kohya_tensors())


def test_hub_default_folder_is_rebuilt_but_explicit_out_is_protected(run_dir, tmp_path):
    args = ["publish", str(run_dir), "--hub", "me/star-lora", "--dry-run"]
    assert main(args) == 0
    default = run_dir / "publish" / "hub"
    assert (default / "README.md").is_file()
    assert main(args + ["--title", "Renamed"]) == 0  # our own output folder: rebuilt
    assert front_matter(default / "README.md")["license"] == "creativeml-openrail-m"
    assert "# Renamed" in (default / "README.md").read_text()

    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("user file")
    assert main(args + ["--out", str(user)]) == 2
    assert (user / "keep.txt").read_text() == "user file"
    assert main(args + ["--out", str(user), "--overwrite"]) == 0
    assert not (user / "keep.txt").exists() and (user / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]  # no staging left behind


@pytest.mark.parametrize("base", ["builtin:tiny-sd15", "LOCAL"])
def test_card_omits_non_hub_base_model(tmp_path, base):
    local = tmp_path / "models" / "my-finetune"
    local.mkdir(parents=True)
    base = str(local) if base == "LOCAL" else base
    run = make_run_dir(tmp_path, base_model=base)
    out = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/x", "--dry-run", "--out", str(out)]) == 0
    card = front_matter(out / "README.md")
    assert "base_model" not in card and "inference" not in card
    text = (out / "README.md").read_text()
    assert ("a local model (my-finetune)" in text) == (base == str(local))
    assert_clean(folder_bytes(out), tmp_path)
    # --base-model names the Hub id when the run used a local copy
    assert main(["publish", str(run), "--hub", "me/x", "--dry-run", "--out", str(out), "--overwrite",
                 "--base-model", "stabilityai/stable-diffusion-2-1"]) == 0
    assert front_matter(out / "README.md")["base_model"] == "stabilityai/stable-diffusion-2-1"


def test_sdxl_tags_license_override_and_no_samples(tmp_path):
    run = make_run_dir(tmp_path, family="sdxl", base_model="stabilityai/stable-diffusion-xl-base-1.0", samples=False)
    out = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/x", "--dry-run", "--out", str(out), "--license", "My Own Terms"]) == 0
    card = front_matter(out / "README.md")
    assert "stable-diffusion-xl" in card["tags"] and "stable-diffusion" not in card["tags"]
    assert card["license"] == "other" and card["license_name"] == "my-own-terms"
    assert "widget" not in card
    assert not (out / "images").exists()
    assert "StableDiffusionXLPipeline" in (out / "README.md").read_text()


# -------------------------------------------------------------------------------------------- Civitai


def test_civitai_bundle(run_dir, tmp_path, capsys):
    out = tmp_path / "bundle" / "star.zip"
    assert main(["publish", str(run_dir), "--civitai", str(out)]) == 0
    expected = [f"{NAME}.safetensors", "previews/01-w1-seed0.png", "previews/02-w1-seed0.png", "previews/grid.png",
                f"{NAME}.civitai.json", "civitai-upload.txt"]
    printed = capsys.readouterr().out
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == expected
        files = {n: zf.read(n) for n in zf.namelist()}
    assert all(name in printed for name in expected)
    assert_clean(files, tmp_path)

    side = json.loads(files[f"{NAME}.civitai.json"])
    weights = files[f"{NAME}.safetensors"]
    digest = hashlib.sha256(weights).hexdigest()
    assert side["files"][0]["hashes"]["SHA256"].lower() == digest
    assert side["files"][0]["hashes"]["AutoV2"].lower() == digest[:10]
    n = struct.unpack("<Q", weights[:8])[0]
    assert side["files"][0]["hashes"]["AddNet"].lower() == hashlib.sha256(weights[8 + n:]).hexdigest()
    assert side["baseModel"] == "SD 1.5" and side["type"] == "LORA"
    assert side["trainedWords"] == ["sks star"] and side["recommendedWeight"] == 1.0
    assert side["name"] == "Star LoRA"
    assert "<removed>" in side["description"] and "notes" in side["description"]
    assert [i["file"] for i in side["images"]] == expected[1:3]

    meta = safetensors_metadata(weights)
    assert meta["ss_network_dim"] == "4" and meta["ss_output_name"] == NAME and "lora_kit.hub_token" not in meta
    from lora_kit.adapters.hashes import file_addnet_hash
    from lora_kit.infer.parameters import parse_parameters

    params = parse_parameters(png_text(files["previews/02-w1-seed0.png"])["parameters"])
    # the training adapter ("default") is renamed to the published file and linked by its hash
    assert params["Prompt"] == f"sks star, red <lora:{NAME}:1>" and params["Negative prompt"] == "blurry"
    assert params["Lora hashes"] == {NAME: file_addnet_hash(run_dir / f"{NAME}.safetensors")[:12]}
    assert params["Seed"] == "0" and params["Model"] == "sd15" and params["Sampler"] == "Euler"

    guide = files["civitai-upload.txt"].decode()
    for needle in ("Type:               LoRA", "Base model:         SD 1.5", "Trigger words:      sks star",
                   f"<lora:{NAME}:1>", f"SHA256:           {digest.upper()}", "Rank (network_dim): 4"):
        assert needle in guide, needle


def test_civitai_refuses_to_overwrite(run_dir, tmp_path):
    out = tmp_path / "star.zip"
    out.write_bytes(b"existing")
    assert main(["publish", str(run_dir), "--civitai", str(out)]) == 2
    assert out.read_bytes() == b"existing"
    assert main(["publish", str(run_dir), "--civitai", str(out), "--overwrite"]) == 0
    assert zipfile.is_zipfile(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left
    assert main(["publish", str(run_dir), "--civitai", str(tmp_path / "x.zip"), "--private"]) == 2


def test_civitai_zip_is_reproducible(run_dir, tmp_path):
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    assert main(["publish", str(run_dir), "--civitai", str(a)]) == 0
    assert main(["publish", str(run_dir), "--civitai", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("weight, message", [("nan", "expected a finite number, got 'nan'"), ("-inf", "expected a finite number, got '-inf'"),
                                             ("strong", "expected a number, got 'strong'")])
def test_recommended_weight_must_be_a_finite_number(run_dir, tmp_path, capsys, weight, message):
    """--weight nan was written into the card and the Civitai metadata as the recommended strength."""
    with pytest.raises(SystemExit) as e:
        main(["publish", str(run_dir), "--civitai", str(tmp_path / "x.zip"), f"--weight={weight}"])
    assert e.value.code == 2 and f"--weight: {message}" in capsys.readouterr().err and not (tmp_path / "x.zip").exists()


def test_cells_without_parameters_get_them_from_the_manifest(run_dir, tmp_path):
    from lora_kit.adapters.hashes import file_addnet_hash

    manifest = run_dir / "samples" / "step-000010" / "grid.json"
    m = json.loads(manifest.read_text())
    for cell in m["cells"]:
        _png(manifest.parent / cell["file"], (5, 5, 5), None)
        del cell["parameters"]
    manifest.write_text(json.dumps(m))
    out = tmp_path / "c.zip"
    assert main(["publish", str(run_dir), "--civitai", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        params = png_text(zf.read("previews/01-w1-seed0.png"))["parameters"]
    from lora_kit.infer.parameters import parse_parameters

    parsed = parse_parameters(params)
    assert parsed["Prompt"] == f"sks star <lora:{NAME}:1>" and parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "4" and parsed["Seed"] == "0" and parsed["Size"] == "32x32"
    assert parsed["Lora hashes"] == {NAME: file_addnet_hash(run_dir / f"{NAME}.safetensors")[:12]}


# ------------------------------------------------------------------------------------ pure functions


@pytest.mark.parametrize("family,base,expected", [
    ("sd1", HUB_BASE, "SD 1.5"),
    ("sd2v", "stabilityai/stable-diffusion-2-1", "SD 2.1 768"),
    ("sd2v", "stabilityai/stable-diffusion-2", "SD 2.0 768"),
    ("sd2", "stabilityai/stable-diffusion-2-1-base", "SD 2.1"),
    ("sd2", "stabilityai/stable-diffusion-2-base", "SD 2.0"),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL 1.0"),
    ("sdxl", "builtin:tiny-sdxl", "Other"),
])
def test_civitai_base_model_vocabulary(family, base, expected):
    from lora_kit.publish.rundir import Run
    from lora_kit.publish.settings import civitai_base_model
    from lora_kit.summary import RunSummary

    run = Run(Path("."), RunSummary(family=family, base_model=base), None, Path("x.safetensors"), None, None)
    assert civitai_base_model(run) == expected


def test_as_hub_id(tmp_path):
    from lora_kit.publish.rundir import as_hub_id

    (tmp_path / "models" / "sd").mkdir(parents=True)
    assert as_hub_id("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    for value in ("builtin:tiny-sd15", "/home/me/sd15", "~/models/sd", "C:\\models\\sd", "./sd/x",
                  "models/sd15.safetensors", "a/b/c", ""):
        assert as_hub_id(value) is None, value
    assert as_hub_id("models/sd", near=tmp_path) is None  # an existing relative folder is local


def test_scrub_text():
    from lora_kit.publish.privacy import scrub_text

    assert scrub_text("/home/me/data/10_dog") == "10_dog"
    assert scrub_text("Model: /srv/x/models/sd15, Seed: 1") == "Model: sd15, Seed: 1"
    assert scrub_text('{"C:\\\\Users\\\\me\\\\data": 1}') == '{"data": 1}'
    assert scrub_text("see file:///home/me/x.png and ~/models/sd.safetensors") == "see x.png and sd.safetensors"
    keep = "see https://huggingface.co/a/b and models/Lora, 1/2 of </a> ~ <lora:x:1>"
    assert scrub_text(keep) == keep
    assert scrub_text(f"token {TOKEN} here") == "token <removed> here"


def test_find_leaks_reports_paths_and_tokens(tmp_path):
    from lora_kit.publish.privacy import find_leaks

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text(f"made in {tmp_path}/x")
    (folder / "b.json").write_text(json.dumps({"t": TOKEN}))
    (folder / "c.txt").write_text("clean, see https://example.com/tmp/x")
    _png(folder / "d.png", (0, 0, 0), f"Model: {tmp_path}/m")
    from safetensors.torch import save_file

    win = "C:\\Users\\me"
    save_file(_kohya_tensors(), str(folder / "e.safetensors"), metadata={"ss_dataset_dirs": json.dumps({win + "\\d": 1})})
    problems = find_leaks(folder, [str(tmp_path), win], [TOKEN])
    assert problems == [f"a.txt: a local path ({tmp_path})", "b.json: an access token",
                        f"d.png: a local path ({tmp_path})", f"e.safetensors: a local path ({win})"]


def test_publish_refuses_when_a_local_root_survives_scrubbing(tmp_path, monkeypatch, capsys):
    """A one-component root in free text is not rewritten (it could be prose), but the final check catches it."""
    monkeypatch.setenv("HOME", "/nonexistent-home-xyz")
    run = make_run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["description"] = "backup kept under /nonexistent-home-xyz for now"
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/x", "--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to publish" in err and "README.md: a local path (/nonexistent-home-xyz)" in err
    assert main(["publish", str(run), "--civitai", str(tmp_path / "c.zip")]) == 2
    assert not out.exists() and not (tmp_path / "c.zip").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_card_of_a_lycoris_run_does_not_offer_load_lora_weights(tmp_path):
    """diffusers' load_lora_weights rejects LoHa/LoKr files: the card points to the clients that load them."""
    run = make_run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["network_args"] = {"algo": "loha"}
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/x", "--dry-run", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "This is a LyCORIS LOHA file" in text and "load_lora_weights(" not in text
    assert "<lora:" in text  # the A1111/ComfyUI usage stays
