"""The Hugging Face model card (README.md): YAML front matter + how to use the LoRA + settings + samples.

The front matter follows what diffusers' and ai-toolkit's training scripts write, so the Hub shows the
LoRA gallery (`template:sd-lora`) and diffusers can read `base_model` back with `RepoCard.load`:
base_model (Hub ids only), instance_prompt (the trigger words), license, library_name, tags, widget.
huggingface_hub's ModelCardData writes the YAML (quoting prompts with colons etc. correctly).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from huggingface_hub import ModelCardData

from lora_kit import __version__
from lora_kit.publish.rundir import DIFFUSERS_FILE, Run
from lora_kit.publish.settings import Details, fmt, top_tags, training_settings

# Hub license identifiers (https://huggingface.co/docs/hub/repositories-licenses); anything else is
# published as `license: other` + `license_name`, which the Hub accepts.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license fair-noncommercial-research-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
# The base model's license governs a LoRA trained on it (what diffusers' training scripts write).
DEFAULT_LICENSE = {"sd1": "creativeml-openrail-m", "sd2": "openrail++", "sd2v": "openrail++", "sdxl": "openrail++"}
FAMILY_TAGS = {
    "sd1": ["stable-diffusion", "stable-diffusion-diffusers"],
    "sd2": ["stable-diffusion", "stable-diffusion-diffusers"],
    "sd2v": ["stable-diffusion", "stable-diffusion-diffusers"],
    "sdxl": ["stable-diffusion-xl", "stable-diffusion-xl-diffusers"],
}


@dataclass
class Widget:
    """One sample image copied into the repo folder, shown in the card's gallery."""

    prompt: str
    url: str  # path inside the repo, e.g. images/01-seed0.png
    negative_prompt: str = ""


def hub_license(details: Details, run: Run) -> dict:
    value = details.license.strip()
    if not value:
        return {"license": "apache-2.0" if run.base_model.startswith("builtin:") else DEFAULT_LICENSE.get(run.family, "other")}
    if value.lower() in HUB_LICENSES:
        return {"license": value.lower()}
    slug = re.sub(r"[^a-z0-9.+-]+", "-", value.lower()).strip("-") or "custom"
    return {"license": "other", "license_name": slug}


def card_tags(run: Run, details: Details) -> list[str]:
    base = ["text-to-image", "diffusers", "lora", "template:sd-lora", *FAMILY_TAGS.get(run.family, []), "lora-kit"]
    return list(dict.fromkeys(base + [t for t in details.tags if t]))


def card_data(run: Run, details: Details, widgets: list[Widget]):
    entries = []
    for w in widgets:
        entry = {"text": w.prompt, "output": {"url": w.url}}
        if w.negative_prompt:
            entry["parameters"] = {"negative_prompt": w.negative_prompt}
        entries.append(entry)
    extra = {"instance_prompt": ", ".join(details.trigger_words) or None, "widget": entries or None}
    if details.base_model:
        extra["inference"] = True  # the Hub widget needs a Hub base model to run
    return ModelCardData(
        base_model=details.base_model, library_name="diffusers", tags=card_tags(run, details),
        **hub_license(details, run), **{k: v for k, v in extra.items() if v is not None},
    )


def render_card(run: Run, details: Details, repo_id: str, widgets: list[Widget], grid_url: str | None) -> str:
    """README.md text: front matter then body; parses with huggingface_hub.ModelCard."""
    data = card_data(run, details, widgets)
    body = "\n".join([
        _intro(details), _usage_diffusers(run, details, repo_id, widgets), _usage_webui(run, details),
        _samples(widgets, grid_url), _settings(run, details), _dataset(run),
        f"\n*Trained with lora-kit {_version()}.*\n",
    ])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _version() -> str:
    return __version__


def _intro(d: Details) -> str:
    lines = [f"# {d.title}", ""]
    if d.description:
        lines += [d.description, ""]
    lines += [f"A LoRA for **{d.base_label}**" + (f" by {d.author}." if d.author else "."), ""]
    if d.trigger_words:
        words = ", ".join(f"`{w}`" for w in d.trigger_words)
        lines += ["## Trigger words", "", f"Use {words} in the prompt to trigger the concept.", ""]
    lines += [f"Recommended weight: **{fmt(d.weight)}**.", ""]
    return "\n".join(lines)


def _usage_diffusers(run: Run, d: Details, repo_id: str, widgets: list[Widget]) -> str:
    algo = run.summary.network_args.get("algo", "lora")
    if algo in ("loha", "lokr"):
        # diffusers' load_lora_weights rejects LyCORIS layouts (diffusers #3087, #11943).
        return "\n".join(["## Use with diffusers", "",
                          f"This is a LyCORIS {algo.upper()} file: diffusers' `load_lora_weights` does not read it. "
                          "It loads in AUTOMATIC1111, Forge and ComfyUI (below) and in `lora-kit grid`.", ""])
    base = d.base_model or "<the base model this LoRA was trained on>"
    adapter = re.sub(r"\W+", "_", run.name).strip("_") or "lora"
    prompt = widgets[0].prompt if widgets else ", ".join(d.trigger_words + ["a photo"])
    pipe = "StableDiffusionXLPipeline" if run.family == "sdxl" else "StableDiffusionPipeline"
    # diffusers converts kohya files on load, so a run without the diffusers file still loads.
    weights = DIFFUSERS_FILE if run.diffusers_file is not None else run.kohya_file.name
    if run.base_model.startswith("builtin:") and not d.base_model:
        # lora-kit's tiny test models are not on the Hub; lora-kit rebuilds them (seed 0, as training did).
        preset = run.base_model[len("builtin:"):]
        load = ["from lora_kit.models.presets import build_pipeline", "", f'pipe = build_pipeline("{preset}", seed=0)']
    else:
        load = ["import torch", f"from diffusers import {pipe}", "",
                f'pipe = {pipe}.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")']
    emb = _usage_embedding_diffusers(run, repo_id)
    return "\n".join([
        "## Use with diffusers", "",
        "```python", *load,
        f'pipe.load_lora_weights("{repo_id}", weight_name="{weights}", adapter_name="{adapter}")',
        *emb,
        f'pipe.set_adapters(["{adapter}"], adapter_weights=[{fmt(d.weight)}])',
        f"image = pipe({json.dumps(prompt, ensure_ascii=False)}).images[0]", "```", "",
        "See the [diffusers LoRA guide](https://huggingface.co/docs/diffusers/using-diffusers/loading_adapters) "
        "for stacking several LoRAs and fusing them into the model.", "",
    ])


def _usage_embedding_diffusers(run: Run, repo_id: str) -> list[str]:
    """Pivotal tuning: the trigger's trained embedding, loaded as diffusers documents textual inversions."""
    if run.embedding_file is None:
        return []
    folder, _, file = run.embedding_name.rpartition("/")
    token = run.trigger_words[0]  # the check made train_trigger_embedding need a trigger word
    if run.family != "sdxl":
        return [f'pipe.load_textual_inversion("{repo_id}", subfolder="{folder}", weight_name="{file}", token="{token}")']
    # SDXL: one file, a tensor per text encoder; diffusers loads each into its own encoder.
    return ["from huggingface_hub import hf_hub_download",
            "from safetensors.torch import load_file",
            f'emb = load_file(hf_hub_download("{repo_id}", "{run.embedding_name}"))',
            f'pipe.load_textual_inversion(emb["clip_l"], token="{token}", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)',
            f'pipe.load_textual_inversion(emb["clip_g"], token="{token}", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)']


def _usage_webui(run: Run, d: Details) -> str:
    words = ", ".join(d.trigger_words)
    tag = f"<lora:{run.name}:{fmt(d.weight)}>"
    return "\n".join([
        "## Use with AUTOMATIC1111, Forge or ComfyUI", "",
        f"Download `{run.kohya_file.name}` (kohya format, with training metadata).", "",
        f"- **AUTOMATIC1111 / Forge**: put it in `models/Lora` and add `{tag}` to the prompt"
        + (f", together with the trigger words: `{words}, {tag}`." if words else "."),
        "- **ComfyUI**: put it in `ComfyUI/models/loras` and load it with a *Load LoRA* node "
        f"(strength_model {fmt(d.weight)})" + (f"; write `{words}` in the prompt." if words else "."), "",
        *_usage_embedding_webui(run),
    ])


def _usage_embedding_webui(run: Run) -> list[str]:
    if run.embedding_file is None:
        return []
    name = run.embedding_name.rpartition("/")[2][: -len(".safetensors")]
    return [f"It was trained together with its trigger word's own embedding, `{run.embedding_name}`: use both. "
            "**AUTOMATIC1111 / Forge**: put it in `embeddings/`; the trigger word in the "
            f"prompt then uses it. **ComfyUI**: put it in `ComfyUI/models/embeddings` and write `embedding:{name}` "
            "in the prompt where the trigger word goes.", ""]


def _samples(widgets: list[Widget], grid_url: str | None) -> str:
    if not widgets and not grid_url:
        return ""
    lines = ["## Samples", ""]
    if grid_url:
        lines += [f"![sample grid]({grid_url})", "",
                  "The last sample grid of the training run (LoRA weight 0 = the base model alone).", ""]
    for w in widgets:
        lines.append(f"- ![{_alt(w.prompt)}]({w.url}) `{w.prompt}`")
    return "\n".join(lines + [""])


def _alt(text: str) -> str:
    return re.sub(r"[\[\]\n]", " ", text)[:80]


def _settings(run: Run, d: Details) -> str:
    rows = training_settings(run, d)
    table = ["| Setting | Value |", "| --- | --- |"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    return "\n".join(["## Training settings", "", *table, ""])


def _dataset(run: Run) -> str:
    tags = top_tags(run)
    if not tags:
        return ""
    listed = ", ".join(f"{t} ({c})" for t, c in tags)
    return "\n".join(["## Most frequent caption tags", "", listed, ""])
