"""Train the tiny-smoke recipe for 2 steps (with a sample grid), publish it both ways, and run the card's
own diffusers snippet against the assembled folder."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile

import pytest

from lora_kit.cli import main
from test_publish import TOKEN, assert_clean, folder_bytes, front_matter


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
