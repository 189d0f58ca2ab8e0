"""Train the tiny-smoke recipe for 2 steps (with a sample grid), publish it both ways, and run the card's
own diffusers snippet against the assembled folder."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile

import pytest

from lora_kit.cli import main
from test_publish import TOKEN, assert_clean, folder_bytes, front_matter, safetensors_metadata


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    args = ["train", "tiny-smoke", "--output-dir", str(out), "train.max_steps=2", "save.every_n_steps=0",
            'sample.prompts=["ohwx star"]', "sample.steps=2", 'save.description="A test star."']
    assert main(args) == 0
    return out


def test_train_then_publish(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = tmp_path / "hub"
    assert main(["publish", str(trained), "--hub", "me/tiny-smoke", "--dry-run", "--out", str(hub)]) == 0
    files = folder_bytes(hub)
    assert sorted(files) == ["README.md", "images/01-seed0.png", "images/grid.png",
                             "pytorch_lora_weights.safetensors", "tiny-smoke.safetensors"]
    card = front_matter(hub / "README.md")
    assert "base_model" not in card  # builtin:tiny-sd15 is not a Hub model
    assert card["widget"] == [{"text": "ohwx star", "output": {"url": "images/01-seed0.png"}}]
    assert_clean(files, trained.parent)

    bundle = tmp_path / "tiny.zip"
    assert main(["publish", str(trained), "--civitai", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as zf:
        assert zf.namelist() == ["tiny-smoke.safetensors", "previews/01-w1-seed0.png", "previews/grid.png",
                                 "tiny-smoke.civitai.json", "civitai-upload.txt"]
        zipped = {n: zf.read(n) for n in zf.namelist()}
    side = json.loads(zipped["tiny-smoke.civitai.json"])
    assert side["baseModel"] == "Other" and side["description"] == "A test star."
    assert side["files"][0]["hashes"]["SHA256"].lower() == hashlib.sha256(zipped["tiny-smoke.safetensors"]).hexdigest()
    assert_clean(zipped, trained.parent)


def test_card_snippet_runs(trained, tmp_path, monkeypatch):
    """The diffusers code in the card loads the published weights as written (repo id -> local folder)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = tmp_path / "hub"
    assert main(["publish", str(trained), "--hub", "me/tiny-smoke", "--dry-run", "--out", str(hub)]) == 0
    code = re.search(r"```python\n(.*?)```", (hub / "README.md").read_text(), re.S).group(1)
    assert 'load_lora_weights("me/tiny-smoke"' in code
    code = code.replace('"me/tiny-smoke"', repr(str(hub))).replace(".images[0]", ".images[0]  # noqa")
    code = code.replace('pipe("ohwx star")', 'pipe("ohwx star", num_inference_steps=2, output_type="np")')
    scope: dict = {}
    exec(compile(code, "card-snippet", "exec"), scope)  # noqa: S102 - our own generated card
    pipe = scope["pipe"]
    assert pipe.get_active_adapters() == ["tiny_smoke"]
    assert scope["image"].shape == (64, 64, 3)


def test_default_flow_from_any_working_folder(tmp_path, monkeypatch, capsys):
    """`lora-kit train tiny-smoke` (default output_dir runs/tiny-smoke, relative) then publish by the path
    the user typed, from the folder it was trained in and from another one: nothing in the published
    files names a location (the embedded recipe's output_dir is a name), and a planted token still stops it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "tiny-smoke", "train.max_steps=2", "save.every_n_steps=0", "log.tensorboard=false"]) == 0
    meta = safetensors_metadata((work / "runs" / "tiny-smoke" / "tiny-smoke.safetensors").read_bytes())
    recipe = json.loads(meta["lora_kit.recipe"])
    assert recipe["output_dir"] == "tiny-smoke" and recipe["dataset"]["path"] == "builtin:shapes-star"
    assert main(["publish", "runs/tiny-smoke", "--hub", "someone/x", "--dry-run"]) == 0
    assert main(["publish", "runs/tiny-smoke", "--civitai", "out.zip"]) == 0
    hub = folder_bytes(work / "runs" / "tiny-smoke" / "publish" / "hub")
    with zipfile.ZipFile(work / "out.zip") as zf:
        zipped = {n: zf.read(n) for n in zf.namelist()}
    for files in (hub, zipped):
        assert_clean(files, work)
        assert all(b"runs/tiny-smoke" not in data for data in files.values())
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["publish", "../work/runs/tiny-smoke", "--civitai", "b.zip"]) == 0
    assert main(["publish", str(work / "runs" / "tiny-smoke"), "--hub", "someone/x", "--dry-run", "--out", "hub"]) == 0
    assert oct((other / "hub").stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
    # The scan still refuses: a token (not hf_-shaped, so no scrubbing rule removes it) in the description.
    planted = "tok-1234567890-private"
    monkeypatch.setenv("HF_TOKEN", planted)
    summary = json.loads((work / "runs" / "tiny-smoke" / "summary.json").read_text())
    summary["description"] = f"trained with {planted}"
    (work / "runs" / "tiny-smoke" / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["publish", "../work/runs/tiny-smoke", "--civitai", "c.zip"]) == 2
    assert "refusing to publish, private data found" in capsys.readouterr().err and not (other / "c.zip").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
