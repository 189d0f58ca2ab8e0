"""Pivotal tuning (`network.train_trigger_embedding`): the trigger's token rows train beside the text-encoder
LoRA, leave the LoRA files, land in a textual-inversion file that diffusers loads, and resume exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_kit.adapters.embedding import (
    embedding_state_dict,
    read_trigger_embedding,
    split_trigger_embedding,
    trigger_token_ids,
    write_trigger_embedding,
)
from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError

from train_utils import run_training

PIVOTAL = ["network.train_text_encoder=true", "optimizer.text_encoder_lr=1e-2", 'dataset.trigger_word="ohwx"',
           "network.train_trigger_embedding=true", "train.max_steps=4"]


def test_split_and_layouts_round_trip(tmp_path):
    rows = [torch.randn(1, 8), torch.randn(1, 12)]
    sds = [{"a.lora_A.weight": torch.ones(2, 8), "text_model.embeddings.token_embedding.token_adapter.trainable_tokens_delta": rows[0]},
           {"b.lora_A.weight": torch.ones(2, 12), "text_model.embeddings.token_embedding.token_adapter.trainable_tokens_delta": rows[1]}]
    rest, got = split_trigger_embedding(sds)
    assert [list(sd) for sd in rest] == [["a.lora_A.weight"], ["b.lora_A.weight"]]
    assert all(torch.equal(a, b) for a, b in zip(got, rows))
    assert list(embedding_state_dict(got[:1])) == ["emb_params"]
    assert list(embedding_state_dict(got)) == ["clip_l", "clip_g"]  # SDXL: A1111's and ComfyUI's keys
    for n in (1, 2):
        path = write_trigger_embedding(tmp_path / f"e{n}.emb.safetensors", got[:n], "ohwx")
        back = read_trigger_embedding(path)
        assert len(back) == n and all(torch.equal(a, b) for a, b in zip(back, got[:n]))


def test_the_check_names_what_pivotal_tuning_needs():
    with pytest.raises(UserError, match=r"train_trigger_embedding.*train_text_encoder = true"):
        load_recipe("tiny-smoke", ["network.train_trigger_embedding=true", 'dataset.trigger_word="ohwx"'])
    with pytest.raises(UserError, match=r"train_trigger_embedding.*trigger_word"):
        load_recipe("tiny-smoke", ["network.train_trigger_embedding=true", "network.train_text_encoder=true"])


def test_trigger_rows_train_export_load_in_diffusers_and_resume_exactly(tmp_path):
    full = run_training(tmp_path / "full", PIVOTAL)
    files = full.files
    emb = load_file(str(files["embedding"]))
    tok = full.bundle.tokenizers[0]
    ids = list(trigger_token_ids(tok, "ohwx"))
    from lora_kit.models.loading import load_model

    base = load_model("builtin:tiny-sd15").text_encoders[0].get_input_embeddings().weight[ids].detach()
    assert emb["emb_params"].shape == base.shape
    assert float((emb["emb_params"] - base).abs().max()) > 1e-3  # the rows moved
    assert files["embedding"] == tmp_path / "full" / "embeddings" / "ohwx.safetensors"  # A1111 calls it by its name
    for key in ("kohya", "diffusers"):  # the LoRA files hold no token rows, and name their embedding
        assert not [k for k in load_file(str(files[key])) if "token" in k]
        with safe_open(str(files[key]), "pt") as f:
            assert json.loads(f.metadata()["lora_kit.embedding"]) == {"token": "ohwx", "file": "embeddings/ohwx.safetensors"}

    # diffusers reads the file as a textual inversion under the trigger word: the same vectors come out.
    from diffusers import StableDiffusionPipeline  # noqa: F401  (the loader mixin lives on the pipelines)
    from lora_kit.infer.pipeline import LoraPipeline

    pipe = LoraPipeline.load("builtin:tiny-sd15").pipe
    pipe.load_textual_inversion(str(files["embedding"]), token="ohwx")
    new_ids = pipe.tokenizer("ohwx", add_special_tokens=False).input_ids
    got = pipe.text_encoder.get_input_embeddings().weight[new_ids].detach()
    assert torch.equal(got, emb["emb_params"].to(got.dtype))

    # lora-kit's grid loads the pair: the trained rows while the LoRA is on, the base's at weight 0.
    from lora_kit.infer.spec import LoraRef

    grid = LoraPipeline.load("builtin:tiny-sd15")
    row = lambda: grid.pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()  # noqa: E731
    for weight, expected in ((1.0, emb["emb_params"]), (0.0, base), (0.5, emb["emb_params"])):
        grid.apply_loras([LoraRef(path=str(files["kohya"]), weight=weight)])
        assert torch.equal(row(), expected.to(row().dtype)), weight
    grid.reset()
    assert torch.equal(row(), base)

    part = tmp_path / "part"
    run_training(part, PIVOTAL, stop_after=2)
    resumed = run_training(part, PIVOTAL, resume="latest")
    again = load_file(str(resumed.files["embedding"]))
    assert torch.equal(again["emb_params"], emb["emb_params"])


def test_a_lora_whose_embedding_is_missing_says_where_it_belongs(tmp_path):
    t = run_training(tmp_path / "run", PIVOTAL + ["train.max_steps=1"])
    lora = tmp_path / "moved" / "tiny-smoke.safetensors"
    lora.parent.mkdir()
    shutil.copy(t.files["kohya"], lora)  # the LoRA alone, as a user might copy it
    from lora_kit.infer.pipeline import LoraPipeline
    from lora_kit.infer.spec import LoraRef

    grid = LoraPipeline.load("builtin:tiny-sd15")
    with pytest.raises(UserError, match=r"tiny-smoke.safetensors was trained with its trigger word's embedding "
                                        r"embeddings/ohwx.safetensors, which is not beside it"):
        grid.apply_loras([LoraRef(path=str(lora), weight=1.0)])


def test_publish_carries_the_embedding_and_the_card_snippet_loads_it(tmp_path, monkeypatch):
    """Hub folder and Civitai zip hold embeddings/ohwx.safetensors; the card's diffusers code loads both files
    (repo id -> the local folder) and the prompt's trigger word then reads the trained vector."""
    import re
    import zipfile

    from lora_kit.cli import main
    from test_publish import TOKEN, assert_clean, folder_bytes

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = tmp_path / "run"
    assert main(["train", "tiny-smoke", "--output-dir", str(run), "train.max_steps=2", "save.every_n_steps=0",
                 "log.tensorboard=false", *PIVOTAL[:-1]]) == 0
    hub = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/pivot", "--dry-run", "--out", str(hub)]) == 0
    files = folder_bytes(hub)
    assert "embeddings/ohwx.safetensors" in files and "embedding:ohwx" in files["README.md"].decode()
    assert_clean(files, tmp_path)
    code = re.search(r"```python\n(.*?)```", (hub / "README.md").read_text(), re.S).group(1)
    assert 'load_textual_inversion("me/pivot", subfolder="embeddings", weight_name="ohwx.safetensors", token="ohwx")' in code
    code = code.replace('"me/pivot"', repr(str(hub))).replace(".images[0]", ".images[0]  # noqa")
    code = re.sub(r'pipe\((".*?")\)', r'pipe(\1, num_inference_steps=2, output_type="np")', code)
    scope: dict = {}
    exec(compile(code, "card-snippet", "exec"), scope)  # noqa: S102 - our own generated card
    pipe = scope["pipe"]
    got = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("ohwx", add_special_tokens=False).input_ids]
    trained = load_file(str(run / "embeddings" / "ohwx.safetensors"))["emb_params"]
    assert torch.equal(got.detach(), trained.to(got.dtype))

    bundle = tmp_path / "pivot.zip"
    assert main(["publish", str(run), "--civitai", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as zf:
        assert "embeddings/ohwx.safetensors" in zf.namelist()
        assert "Also upload:        embeddings/ohwx.safetensors" in zf.read("civitai-upload.txt").decode()

    (run / "embeddings" / "ohwx.safetensors").unlink()
    assert main(["publish", str(run), "--hub", "me/pivot", "--dry-run", "--out", str(tmp_path / "hub2")]) == 2


def test_merge_writes_the_trigger_rows_into_the_merged_model(tmp_path):
    t = run_training(tmp_path / "run", PIVOTAL + ["train.max_steps=1"])
    from lora_kit.adapters.tools.merge import merge_loras
    from lora_kit.models.loading import load_model

    out = merge_loras("builtin:tiny-sd15", [(str(t.files["kohya"]), 1.0)], tmp_path / "merged")
    merged = load_model(str(out))
    ids = list(trigger_token_ids(merged.tokenizers[0], "ohwx"))
    got = merged.text_encoders[0].get_input_embeddings().weight[ids].detach()
    assert torch.equal(got, load_file(str(t.files["embedding"]))["emb_params"])
    # at scale 0 the LoRA adds nothing, its embedding included
    out0 = merge_loras("builtin:tiny-sd15", [(str(t.files["kohya"]), 0.0)], tmp_path / "merged0")
    base = load_model("builtin:tiny-sd15").text_encoders[0].get_input_embeddings().weight[ids]
    assert torch.equal(load_model(str(out0)).text_encoders[0].get_input_embeddings().weight[ids], base)


def test_sdxl_card_snippet_loads_one_tensor_per_text_encoder(tmp_path):
    """SDXL's file holds clip_l and clip_g; diffusers loads each into its own text encoder (its documented way)."""
    import re

    from lora_kit.cli import main

    run = tmp_path / "run"
    assert main(["train", "tiny-smoke", "--output-dir", str(run), "train.max_steps=1", "save.every_n_steps=0",
                 "log.tensorboard=false", 'model.pretrained="builtin:tiny-sdxl"', *PIVOTAL[:-1]]) == 0
    hub = tmp_path / "hub"
    assert main(["publish", str(run), "--hub", "me/pivot-xl", "--dry-run", "--out", str(hub)]) == 0
    code = re.search(r"```python\n(.*?)```", (hub / "README.md").read_text(), re.S).group(1)
    assert 'hf_hub_download("me/pivot-xl", "embeddings/ohwx.safetensors")' in code
    code = code.replace('hf_hub_download("me/pivot-xl", "embeddings/ohwx.safetensors")', repr(str(hub / "embeddings" / "ohwx.safetensors")))
    code = code.replace('"me/pivot-xl"', repr(str(hub))).replace(".images[0]", ".images[0]  # noqa")
    code = re.sub(r'pipe\((".*?")\)', r'pipe(\1, num_inference_steps=2, output_type="np")', code)
    scope: dict = {}
    exec(compile(code, "card-snippet", "exec"), scope)  # noqa: S102 - our own generated card
    pipe, emb = scope["pipe"], load_file(str(run / "embeddings" / "ohwx.safetensors"))
    for te, tok, key in ((pipe.text_encoder, pipe.tokenizer, "clip_l"), (pipe.text_encoder_2, pipe.tokenizer_2, "clip_g")):
        got = te.get_input_embeddings().weight[tok("ohwx", add_special_tokens=False).input_ids].detach()
        assert torch.equal(got, emb[key].to(got.dtype)), key
