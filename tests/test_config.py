"""Recipes: every shipped recipe validates; errors are one line naming file, key and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_kit.config.checks import check_paths
from lora_kit.config.load import dump_recipe, load_recipe, recipe_from_dict
from lora_kit.errors import UserError
from lora_kit.paths import recipes_dir

RECIPES = sorted(recipes_dir().glob("*.toml"))


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"tiny-smoke", "sd15-style", "sd15-subject", "sdxl-style", "sdxl-subject", "sd21-v-style"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.dataset.path
    # The resolved dump parses back to the same recipe.
    again = recipe_from_dict(__import__("tomllib").loads(dump_recipe(recipe)), "dump")
    assert dump_recipe(again).splitlines()[1:] == dump_recipe(recipe).splitlines()[1:]
    if recipe.dataset.path.startswith("builtin:"):
        check_paths(recipe)  # builtin data must exist after install


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[dataset]\npath="x"\n[network]\nrank="sixteen"\n', "r.toml: [network] rank: expected an integer, got 'sixteen'"),
        ('[dataset]\npath="x"\ncolour="red"\n', "r.toml: [dataset] colour: unknown key (expected one of:"),
        ('[dataset]\npath="x"\n[train]\nmixed_precision="fp8"\n', "[train] mixed_precision: expected one of 'no', 'fp16', 'bf16', got 'fp8'"),
        ('[dataset]\npath="x"\n[dataset.sub]\n', "[dataset] sub: unknown key"),
        ('[network]\nrank=4\n', "[dataset] path: missing"),
        ('[dataset]\npath="x"\ncaption_dropout=1.5\n', "[dataset] caption_dropout: expected a number between 0 and 1, got 1.5"),
        ('[dataset]\npath="x"\n[buckets]\nbucket_reso_steps=60\n', "[buckets] bucket_reso_steps: expected a multiple of 8, got 60"),
        ('[dataset]\npath="x"\n[optimizer]\nname="prodigy"\nlr=1e-4\n', "[optimizer] lr: Prodigy adapts the step size itself: set lr = 1.0"),
        ('[dataset\npath="x"\n', "r.toml: not valid TOML"),
        ('[dataset]\npath="x"\n[network]\nconv_rank=-1\n', "[network] conv_rank: expected conv_rank >= 0"),
        ('[dataset]\npath="x"\n[cache]\nvae_batch_size=-2\n', "[cache] vae_batch_size: expected 0 (auto: 2 megapixels per encode)"),
        ('[dataset]\npath="x"\n[network]\nconv_rank=4\nuse_dora=true\n', "[network] conv_rank: conv_rank with use_dora = true"),
        ('[dataset]\npath="x"\n[optimizer]\nlr=-1\n', "[optimizer] lr: expected a learning rate > 0, got -1.0"),
        ('[dataset]\npath="x"\n[network]\ndropout=1.0\n', "[network] dropout: expected a number in [0, 1) (0 = off), got 1.0"),
        ('[dataset]\npath="x"\n[save]\nkeep_last=-1\n', "[save] keep_last: expected 0 (keep every checkpoint) or a count >= 1, got -1"),
        ('[dataset]\npath="x"\n[save]\nevery_n_steps=-5\n', "[save] every_n_steps: expected 0 (only at the end) or a number of steps >= 1, got -5"),
        ('[dataset]\npath="x"\n[sample]\nheight=100\n', "[sample] height: expected 0 (bucket resolution) or a multiple of 8 (the latent stride), got 100"),
        ('[dataset]\npath="x"\n[log]\nevery_n_steps=0\n', "[log] every_n_steps: expected a number of steps >= 1, got 0"),
        ('name="../x"\n[dataset]\npath="x"\n', "r.toml: name: expected a plain file name such as \"my-style\" (folders go in output_dir), got '../x'"),
        ('name=""\n[dataset]\npath="x"\n', "r.toml: name: expected a plain file name"),
        ('name="pytorch_lora_weights"\n[dataset]\npath="x"\n', "r.toml: name: 'pytorch_lora_weights' is the diffusers file's name"),
        ('[dataset]\npath="x"\n[buckets]\nmin_bucket_reso=-64\n', "[buckets] min_bucket_reso: expected a multiple of 8 (bucket sides are whole latents), got -64"),
        ('[dataset]\npath="x"\nreg_repeats=99999999999\n', "[dataset] reg_repeats: expected an integer from 1 to 10000, got 99999999999"),
        ('[dataset]\npath="x"\n[network]\nalpha=nan\n', "r.toml: [network] alpha: expected a finite number, got nan"),
        ('[dataset]\npath="x"\n[train]\nmax_grad_norm=inf\n', "[train] max_grad_norm: expected a finite number, got inf"),
        ('[dataset]\npath="x"\n[sample]\nweights=[0.0, -inf]\n', "[sample] weights[1]: expected a finite number, got -inf"),
    ],
)
def test_recipe_errors_name_file_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(UserError) as err:
        load_recipe(_write(tmp_path, text))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_dataset_path_is_one_line(tmp_path):
    recipe = load_recipe(_write(tmp_path, f'[dataset]\npath="{tmp_path}/nope"\n'))
    with pytest.raises(UserError, match=r"\[dataset\] path: .*/nope does not exist"):
        check_paths(recipe)


def test_overrides_are_typed(tmp_path):
    p = _write(tmp_path, '[dataset]\npath="x"\n')
    r = load_recipe(p, ["network.rank=8", "network.alpha=4", "sample.prompts=[\"a\", \"b\"]", "name=run1", "dataset.trigger_word=zxq"])
    assert (r.network.rank, r.network.alpha, r.sample.prompts, r.name, r.output_dir) == (8, 4.0, ["a", "b"], "run1", "runs/run1")
    assert r.dataset.trigger_word == "zxq"
    with pytest.raises(UserError, match=r"\[network\] rank: expected an integer, got 'x'"):
        load_recipe(p, ["network.rank=x"])


@pytest.mark.parametrize("override", ["=3", "optimizer.=1", "optimizer..lr=1", ".lr=1"])
def test_override_with_an_empty_key_part_names_the_override(override):
    """`--set =3` said ': unknown key', `--set optimizer.=1` '[optimizer] : unknown key': neither named the override."""
    with pytest.raises(UserError) as e:
        recipe_from_dict({"dataset": {"path": "x"}}, "r.toml", [override])
    assert str(e.value) == f"override {override!r}: expected section.key=value (a key part is empty)"


def test_override_keys_may_have_spaces_around_their_parts():
    assert recipe_from_dict({"dataset": {"path": "x"}}, "r.toml", [" network . rank = 8"]).network.rank == 8


def test_overrides_leave_the_callers_tables_alone():
    data = {"dataset": {"path": "x"}, "network": {"rank": 4}}
    first = recipe_from_dict(data, "r.toml", ["network.rank=16", "optimizer.lr=1e-3"])
    second = recipe_from_dict(data, "r.toml")
    assert (first.network.rank, second.network.rank) == (16, 4)
    assert data == {"dataset": {"path": "x"}, "network": {"rank": 4}}


def test_cli_prints_one_line_error_without_traceback(tmp_path):
    p = _write(tmp_path, '[dataset]\npath="x"\n[network]\nalpha="high"\n')
    res = subprocess.run([sys.executable, "-m", "lora_kit", "recipe", str(p)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"lora-kit recipe: error: {p}: [network] alpha: expected a number, got 'high'"]


def test_every_recipe_key_is_documented():
    import dataclasses

    from lora_kit.config.schema import Recipe

    doc = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text()
    missing = []
    for f in dataclasses.fields(Recipe):
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(f.type) or isinstance(f.default_factory, type):
            section = f.default_factory  # a dataclass type
            assert f"## [{f.name}]" in doc, f.name
            for sub in dataclasses.fields(section):
                if f"| `{sub.name}` |" not in doc.split(f"## [{f.name}]")[1].split("\n## ")[0]:
                    missing.append(f"{f.name}.{sub.name}")
        elif f"| `{f.name}` |" not in doc:
            missing.append(f.name)
    assert missing == []


@pytest.mark.parametrize("overrides", [[], ["network.conv_rank=2", "network.target=\"attn-ff\""]])
def test_preflight_counts_the_lora_parameters_peft_adds(tiny_sd15_dir, overrides):
    """The checkpoint-size estimate comes from the U-Net built on the meta device; it must count exactly
    the parameters peft injects into the real U-Net."""
    import json as _json

    import torch
    from diffusers import UNet2DConditionModel

    from lora_kit.adapters.inject import inject_lora
    from lora_kit.config.preflight import check_model

    r = recipe_from_dict({"dataset": {"path": "x"}, "network": {"rank": 4}}, "r.toml", overrides)
    unet_cfg = _json.loads((tiny_sd15_dir / "unet" / "config.json").read_text())
    vae_cfg = _json.loads((tiny_sd15_dir / "vae" / "config.json").read_text())
    estimate = check_model(r, unet_cfg, vae_cfg)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_dir / "unet")
    adapters = inject_lora(unet, [], r.network, torch.float32)
    assert estimate == sum(p.numel() for p in adapters.unet_params) > 0
