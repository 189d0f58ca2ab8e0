"""The inference pipeline: a base model + stacked LoRAs (+ ControlNets), generating one batch of cells.

Everything runs through diffusers: `load_lora_weights(path, adapter_name=...)` reads kohya and diffusers
files, `set_adapters(names, weights)` stacks them, `fuse_lora`/`unfuse_lora` bake a fixed weight set into
the base weights so a grid column runs at base-model speed, and `from_pipe` derives the ControlNet and
img2img variants sharing the same modules (so the LoRAs apply to all of them).

One thing is added by hand: `unfuse_lora` subtracts the delta it added, which leaves float rounding
residue in the base weights (W + d - d != W, ~1e-8). That residue is enough to flip a pixel, so a cell
would not reproduce byte-for-byte depending on which weight sets were fused before it. `LoraPipeline`
keeps a (CPU) copy of every LoRA-wrapped base weight taken before the first fuse and copies it back after
each unfuse, making the fused path exactly "pristine base + this weight set" every time.

LyCORIS LoHa/LoKr files are the other exception: diffusers' `load_lora_weights` rejects them (diffusers
#3087, #11943), so LoraPipeline reads them itself and adds weight * delta-W (lora_kit.adapters.lycoris, the
A1111/ComfyUI formula) to the snapshotted base weights, on top of any fused or unfused LoRAs: stacked,
weighted and undone exactly like LoRAs, but always fused, even when `fuse` is False.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers.utils import logging as dlog, scale_lora_layers, unscale_lora_layers
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open
from transformers.utils import logging as tlog

from lora_kit.adapters import lycoris
from lora_kit.adapters.embedding import TokenRows, embedding_of_lora
from lora_kit.adapters.hashes import autov2
from lora_kit.adapters.io import LOAD_ERRORS, _sniff, load_failure, read_lora_file
from lora_kit.errors import UserError
from lora_kit.infer.control import load_controlnet, prepare_control_image
from lora_kit.infer.schedulers import make_scheduler
from lora_kit.infer.spec import CellParams, ControlRef, LoraRef
from lora_kit.models.family import SDXL, model_native_size
from lora_kit.models.loading import detect_family, load_model
from lora_kit.models.text import sd_prompt_embeds
from lora_kit.precision import runtime_dtype

# (img2img, controlnet) -> diffusers class name; SDXL names get the "XL" infix.
_VARIANTS = {
    (False, False): "StableDiffusion{}Pipeline",
    (True, False): "StableDiffusion{}Img2ImgPipeline",
    (False, True): "StableDiffusion{}ControlNetPipeline",
    (True, True): "StableDiffusion{}ControlNetImg2ImgPipeline",
}


def resolve_dtype(dtype: str | None, device: str):
    """`--dtype`: "auto" is fp16 on CUDA, fp32 elsewhere (names: lora_kit.precision)."""
    return runtime_dtype(dtype, device)


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_display_name(spec: str) -> str:
    """What A1111's `Model:` field shows: the checkpoint or folder name, never a full path."""
    if spec.startswith("builtin:"):
        return spec.split(":", 1)[1]
    p = Path(spec)
    return p.stem if p.suffix == ".safetensors" else (p.name or spec)


def lora_short_hash(path: str) -> str:
    """AutoV2 (first 10 hex of the file's SHA-256), the form Civitai resolves resources by."""
    return autov2(path)


@dataclass
class ModelInfo:
    source: str
    name: str
    family: str
    hash: str = ""  # AutoV2 of a single-file checkpoint ("Model hash"); "" for folders


def _adapter_name(alias: str, taken: set) -> str:
    # peft adapter names become ModuleDict keys: no dots; unique per loaded file.
    base = re.sub(r"[^0-9A-Za-z_]", "_", alias) or "lora"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


@contextlib.contextmanager
def _quiet_loaders():
    # transformers 5 logs a "LOAD REPORT" listing every base weight of the text encoder as MISSING when
    # a LoRA-only state dict is loaded into it, and diffusers logs "No LoRA keys associated to
    # CLIPTextModel" for U-Net-only LoRAs: both expected here, and the first reads like corruption.
    # Real problems (unmatched keys, shape mismatches) raise exceptions, which still propagate.
    levels = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(levels[0])
        dlog.set_verbosity(levels[1])


def _is_lycoris_file(path: str) -> bool:
    if _sniff(Path(path)) != "safetensors":
        return False
    with safe_open(path, framework="pt") as f:  # key names only, no tensor is read
        return lycoris.is_lycoris_state_dict(dict.fromkeys(f.keys()))


def _family_of(unet) -> str:
    return detect_family(dict(unet.config), None)


class LoraPipeline:
    """A diffusers text-to-image pipeline plus the LoRA/ControlNet bookkeeping a grid needs."""

    def __init__(self, pipe, model: ModelInfo, controlnets: dict | None = None):
        self.pipe = pipe
        self.model = model
        self.family = model.family
        self.controlnets: dict = dict(controlnets or {})  # ControlRef.model -> ControlNetModel
        self._variants: dict = {}
        self._adapters: dict[str, str] = {}  # file path -> adapter name
        self._state: tuple | None = None  # (weight_key, fused) currently applied
        self._fused = False
        self._lycoris: dict = {}  # file path -> ParsedLycoris (LoHa/LoKr files, applied by hand)
        self._lycoris_applied = False
        self._snapshot: dict[int, tuple] = {}
        self._hashes: dict[str, str] = {}
        self._embeddings: dict[str, tuple] = {}  # file path -> (trigger word, rows): pivotal-tuning LoRAs
        self._token_rows = TokenRows()
        # Every sampler is built from the model's own scheduler config, never from the previous sampler's.
        self._scheduler_config = pipe.scheduler.config
        pipe.set_progress_bar_config(disable=True)

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, model: str, controls: list[ControlRef] = (), *, dtype: str = "auto", device: str = "auto", single_file_config: str = "") -> LoraPipeline:
        """Base model (builtin:, diffusers folder, single file or Hub id) and the given ControlNets."""
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        bundle = load_model(model, dtype=torch_dtype, single_file_config=single_file_config or None)
        pipe = build_text2img(bundle.family, bundle.unet, bundle.vae, bundle.noise_scheduler, bundle.text_encoders, bundle.tokenizers)
        pipe.to(device)
        path = Path(bundle.path)
        info = ModelInfo(model, model_display_name(model), bundle.family)
        if path.is_file():
            info.hash = autov2(path)
        nets = {c.model: load_controlnet(c.model, torch_dtype).to(device) for c in controls}
        return cls(pipe, info, nets)

    @classmethod
    def from_components(cls, components, family: str | None = None, name: str = "model") -> LoraPipeline:
        """Wrap in-memory modules (a training run): a DiffusionPipeline, a ModelBundle or a dict with
        unet, vae, scheduler, text_encoders, tokenizers (or the diffusers component names). `name`: the
        model spec it came from (e.g. the recipe's model.pretrained), shown as A1111's `Model:`."""
        if hasattr(components, "unet") and hasattr(components, "scheduler") and hasattr(components, "components"):
            pipe = components.__class__.from_pipe(components)  # new pipeline object, same modules
            fam = family or _family_of(pipe.unet)
            return cls(pipe, ModelInfo(name, model_display_name(name), fam))
        c = dict(vars(components)) if not isinstance(components, dict) else dict(components)
        if "noise_scheduler" in c:
            c["scheduler"] = c["noise_scheduler"]
        tes = c.get("text_encoders") or [c[k] for k in ("text_encoder", "text_encoder_2") if c.get(k) is not None]
        toks = c.get("tokenizers") or [c[k] for k in ("tokenizer", "tokenizer_2") if c.get(k) is not None]
        fam = family or _family_of(c["unet"])
        pipe = build_text2img(fam, c["unet"], c["vae"], c["scheduler"], tes, toks)
        return cls(pipe, ModelInfo(name, model_display_name(name), fam))

    def add_controlnet(self, spec: str, model) -> None:
        self.controlnets[spec] = model
        self._variants.clear()

    @property
    def device(self):
        return self.pipe.unet.device

    def native_size(self) -> tuple[int, int]:
        return model_native_size(dict(self.pipe.unet.config), self.pipe.vae_scale_factor)

    # ------------------------------------------------------------------ LoRA state

    def short_hash(self, path: str) -> str:
        if path and path not in self._hashes:
            self._hashes[path] = lora_short_hash(path)
        return self._hashes.get(path, "")

    def _lora_layers(self):
        for comp in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, comp, None)
            if module is None:
                continue
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer):
                    yield layer

    def _take_snapshot(self, modules=None) -> None:
        """CPU copies of pristine base weights: every LoRA-wrapped layer, or the given modules."""
        for base in modules if modules is not None else (layer.get_base_layer() for layer in self._lora_layers()):
            if id(base) not in self._snapshot:
                bias = None if getattr(base, "bias", None) is None else base.bias.detach().to("cpu", copy=True)
                self._snapshot[id(base)] = (base, base.weight.detach().to("cpu", copy=True), bias)

    def _restore_snapshot(self) -> None:
        with torch.no_grad():
            for base, weight, bias in self._snapshot.values():
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)

    def _unfuse(self) -> None:
        if self._fused:
            with warnings.catch_warnings():
                # peft warns for layers of adapters that were not part of this fuse: expected here.
                warnings.filterwarnings("ignore", message="Already unmerged")
                self.pipe.unfuse_lora()
        if self._fused or self._lycoris_applied:
            self._restore_snapshot()
        self._fused = self._lycoris_applied = False

    def _ensure_loaded(self, loras: list[LoraRef]) -> list[str]:
        """Load the files `loras` need. When a new file comes in, adapters of files no longer used are
        dropped (diffusers #11816: set_adapters slows down as inactive adapters pile up, e.g. along a
        checkpoint axis); a weight-0 cell only disables them."""
        wanted = {lo.path for lo in loras if lo.path}
        stale = [p for p in self._adapters if p not in wanted]
        new = wanted - set(self._adapters) - set(self._lycoris)
        if stale and new:
            self.pipe.delete_adapters([self._adapters.pop(p) for p in stale])
        if new:
            self._lycoris = {p: v for p, v in self._lycoris.items() if p in wanted}
        self._embeddings = {p: v for p, v in self._embeddings.items() if p in self._adapters or p in self._lycoris}
        for lo in loras:
            if lo.path and lo.path not in self._adapters and lo.path not in self._lycoris:
                if not Path(lo.path).is_file():
                    raise UserError(f"LoRA file {lo.path} does not exist")
                try:
                    self._load_file(lo)
                except LOAD_ERRORS as exc:  # not a LoRA, truncated, a broken module, another model's LoRA
                    raise load_failure(lo.path, exc, dict(self.pipe.unet.config), shown=lo.path) from exc
        return [self._adapters[lo.path] for lo in loras if lo.path in self._adapters]

    def _load_file(self, lo: LoraRef) -> None:
        emb = embedding_of_lora(lo.path)  # the trigger's trained embedding, when the LoRA was trained with one
        if emb is not None:
            self._embeddings[lo.path] = emb
        if _is_lycoris_file(lo.path):  # LoHa/LoKr: diffusers rejects them, applied by hand
            self._lycoris[lo.path] = read_lora_file(lo.path, unet_config=dict(self.pipe.unet.config))
            return
        name = _adapter_name(lo.name, set(self._adapters.values()))
        with _quiet_loaders(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # we stack on purpose
            self.pipe.load_lora_weights(lo.path, adapter_name=name)
        if not any(name in names for names in self.pipe.get_list_adapters().values()):
            raise ValueError("diffusers found no LoRA module of this model in it")  # e.g. a file without tensors
        self._adapters[lo.path] = name

    def apply_loras(self, loras: list[LoraRef], fuse: bool = True) -> None:
        """Make the model compute base + sum(weight_i * delta_i); fused into the weights if `fuse`."""
        active = [lo for lo in loras if float(lo.weight) != 0.0 and lo.path]
        key = (tuple((lo.path, float(lo.weight)) for lo in active), bool(fuse) and bool(active))
        if key == self._state:
            return
        self._unfuse()
        self._state = None  # until the new state is reached: a file that fails to load must not leave the old key
        names = self._ensure_loaded(active)
        lycos = [(self._lycoris[lo.path], float(lo.weight)) for lo in active if lo.path in self._lycoris]
        if lycos:  # before any LoRA fuse touches a base weight they share
            self._take_snapshot([m for parsed, _ in lycos for m in lycoris.target_modules(parsed, self._roots())])
        if self._adapters and not names:
            self.pipe.disable_lora()  # exact base: adapters skipped, weights pristine
        elif names:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, [float(lo.weight) for lo in active if lo.path in self._adapters])
            if fuse:
                self._take_snapshot()
                self.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
                self._fused = True
        for parsed, weight in lycos:  # always fused: W + weight * delta-W, undone from the snapshot
            lycoris.apply(parsed, self._roots(), weight)
            self._lycoris_applied = True
        self._apply_embeddings([self._embeddings[lo.path] for lo in active if lo.path in self._embeddings])
        self._state = key

    def _apply_embeddings(self, embeddings: list) -> None:
        """Active LoRAs' trigger embeddings in, all others' out. At full strength whatever the LoRA's weight
        (an embedding has no strength; A1111 and ComfyUI use it as it is), and out at weight 0: exact base."""
        tes = [te for te in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if te is not None]
        self._token_rows.apply(tes, self.pipe.tokenizer, embeddings)

    def _roots(self) -> dict:
        return {c: getattr(self.pipe, c, None) for c in ("unet", "text_encoder", "text_encoder_2")}

    def unfuse(self) -> None:
        """Back to exact base weights (the adapters stay loaded; the next apply_loras re-fuses)."""
        self._unfuse()
        self._state = None

    def reset(self) -> None:
        """Unfuse and unload every LoRA file (the model is the plain base again)."""
        self._unfuse()
        if self._adapters:
            self.pipe.delete_adapters(list(self._adapters.values()))
            self._adapters.clear()
        self._lycoris.clear()
        self._apply_embeddings([])
        self._embeddings.clear()
        self._state = None

    # ------------------------------------------------------------------ generation

    def variant(self, img2img: bool, controlnet_models: list):
        """The pipeline class for this cell kind, sharing modules with the base pipeline."""
        key = (img2img, tuple(id(m) for m in controlnet_models))
        if key not in self._variants:
            cls_name = _VARIANTS[(img2img, bool(controlnet_models))].format("XL" if self.family == SDXL else "")
            cls = getattr(diffusers, cls_name)
            if not img2img and not controlnet_models:
                self._variants[key] = self.pipe
            else:
                kw = {}
                if controlnet_models:
                    kw["controlnet"] = controlnet_models[0] if len(controlnet_models) == 1 else diffusers.MultiControlNetModel(controlnet_models)
                with _quiet_loaders():  # from_pipe's dtype notes about modules "kept in float32": none here
                    v = cls.from_pipe(self.pipe, **kw)
                v.set_progress_bar_config(disable=True)
                self._variants[key] = v
        return self._variants[key]

    def generate(self, cells: list[CellParams], fuse: bool = True) -> list[Image.Image]:
        """One pipeline call for cells that differ only by seed and prompt (one torch.Generator each)."""
        first = cells[0]
        if any(c.batch_key() != first.batch_key() for c in cells[1:]):
            raise ValueError("generate() batches cells that differ only by seed and prompt")
        in_memory = [lo for lo in first.loras if not lo.path]
        self.apply_loras([lo for lo in first.loras if lo.path], fuse=fuse)
        width, height = first.width or self.native_size()[0], first.height or self.native_size()[1]
        # A net at scale 0 adds zeros to every skip connection: the picture is the same without it (a test pins
        # that), so it is not run. The "no ControlNet" column of a control_scale axis costs a plain cell, not a
        # ControlNet forward per step (the demo's grid: 77 -> 55-65 s).
        controls = [c for c in first.controls if float(c.scale) != 0.0]
        nets = [self._controlnet(c.model) for c in controls]
        pipe = self.variant(bool(first.init_image), nets)
        pipe.scheduler = make_scheduler(first.sampler, self._scheduler_config)
        n = len(cells)
        kwargs = {
            "prompt": [c.prompt for c in cells],
            "negative_prompt": [c.negative_prompt for c in cells],
            "num_inference_steps": int(first.steps),
            "guidance_scale": float(first.cfg),
            # CPU generators: the same seed gives the same noise on any device.
            "generator": [torch.Generator("cpu").manual_seed(int(c.seed)) for c in cells],
            "output_type": "pil",
        }
        if in_memory:
            # An adapter trained in this process: scaled per call (diffusers scale_lora_layers).
            kwargs["cross_attention_kwargs"] = {"scale": float(in_memory[0].weight)}
        if first.clip_skip > 1 and self.family == SDXL:
            kwargs["clip_skip"] = int(first.clip_skip) - 1  # diffusers counts skipped layers; A1111 counts from 1
        elif first.clip_skip > 1:
            lora_scale = float(in_memory[0].weight) if in_memory else None
            kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = (
                clip_skip_embeds(self.pipe, p, int(first.clip_skip), lora_scale) for p in (kwargs.pop("prompt"), kwargs.pop("negative_prompt"))
            )
        self._control_kwargs(kwargs, controls, bool(first.init_image), width, height)
        if first.init_image:
            kwargs["image"] = prepare_control_image(first.init_image, width, height)  # load + crop-and-resize
            kwargs["strength"] = float(first.strength)
        else:
            kwargs["width"], kwargs["height"] = width, height
        return pipe(**kwargs).images

    def _controlnet(self, spec: str):
        if spec not in self.controlnets:
            self.add_controlnet(spec, load_controlnet(spec, self.pipe.unet.dtype).to(self.device))
        return self.controlnets[spec]

    @staticmethod
    def _control_kwargs(kwargs: dict, controls: list, img2img: bool, width: int, height: int) -> None:
        if not controls:
            return
        images = [prepare_control_image(c.image, width, height, c.preprocess, c.low, c.high) for c in controls]
        multi = len(controls) > 1
        kwargs["control_image" if img2img else "image"] = images if multi else images[0]
        kwargs["controlnet_conditioning_scale"] = [float(c.scale) for c in controls] if multi else float(controls[0].scale)
        kwargs["control_guidance_start"] = [float(c.start) for c in controls] if multi else float(controls[0].start)
        kwargs["control_guidance_end"] = [float(c.end) for c in controls] if multi else float(controls[0].end)


def clip_skip_embeds(pipe, prompts: list[str], clip_skip: int, lora_scale: float | None = None):
    """SD1/SD2 prompt embeddings from CLIP layer -clip_skip (A1111 numbering) + the final layer norm.

    Done here rather than with the pipeline's `clip_skip` for two reasons: diffusers 0.42 reaches the
    norm as `text_encoder.text_model.final_layer_norm`, which transformers 5 no longer has; and it
    applies clip skip to the prompt only, while A1111 applies it to the negative prompt as well.
    """
    te, tok = pipe.text_encoder, pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    mask = ids.attention_mask.to(te.device) if getattr(te.config, "use_attention_mask", False) else None
    if lora_scale is not None:
        scale_lora_layers(te, lora_scale)
    try:
        with torch.no_grad():
            return sd_prompt_embeds(te, ids.input_ids.to(te.device), clip_skip, mask)
    finally:
        if lora_scale is not None:
            unscale_lora_layers(te, lora_scale)


def build_text2img(family: str, unet, vae, scheduler, text_encoders: list, tokenizers: list):
    """The family's text-to-image pipeline from loose components (no safety checker: offline toolkit)."""
    if family == SDXL:
        if len(text_encoders) != 2:
            raise UserError("an SDXL model needs two text encoders (text_encoder and text_encoder_2)")
        return diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1], unet=unet, scheduler=scheduler,
        )  # fmt: skip
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0], unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
