"""An exponential moving average of the trained adapter parameters ([ema] in a recipe).

diffusers' `EMAModel` keeps the average (a shadow copy per parameter, its warm-up decay
`min(decay, (1 + n) / (10 + n))` over the n updates so far, foreach updates, state_dict/load_state_dict,
and the warm-up). What it lacks, added here:
- an average kept on the CPU while the parameters train on an accelerator: its foreach update needs both on
  one device, so "cpu" first copies the parameters into host tensors (that copy waits for the device: it
  happens only every `every_n_steps`);
- checkpoint files: the shadow tensors go to a safetensors file (EMAModel.state_dict holds tensors and
  numbers; accelerate would pickle it), its counters to the file's metadata.
The update never reads a value back to the host on "same" (tests/test_step_trace.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_kit.config.schema import EmaConfig

EMA_FILE = "ema.safetensors"


class AdapterEMA:
    def __init__(self, params: list, cfg: EmaConfig):
        self.params = list(params)
        self.every = cfg.every_n_steps
        self.ema = EMAModel(self.params, decay=cfg.decay, foreach=True)
        self.on_cpu = cfg.device == "cpu" and any(p.device.type != "cpu" for p in self.params)
        self.staging: list = []
        if self.on_cpu:
            self.ema.to("cpu")
            # host copies of the live weights, marked trainable so EMAModel averages them (it copies, rather
            # than averages, tensors that do not require grad)
            self.staging = [torch.empty_like(p, device="cpu").requires_grad_(True) for p in self.params]

    def due(self, step: int) -> bool:
        """`step` = the optimizer step that just finished (1-based)."""
        return step % self.every == 0

    @torch.no_grad()
    def update(self) -> None:
        if not self.on_cpu:
            self.ema.step(self.params)
            return
        torch._foreach_copy_(self.staging, [p.detach() for p in self.params])
        self.ema.step(self.staging)

    def averaged(self, state_dict: dict) -> dict:
        """The same state dict with each parameter's moving average in place of its live value. peft's
        adapter state dicts are views of the parameters (model.state_dict() filtered), so a tensor's storage
        names its parameter; a tensor that is no view of a tracked parameter is an error, not a silent
        export of live weights."""
        shadow = {p.data_ptr(): s for p, s in zip(self.params, self.ema.shadow_params)}
        missing = [k for k, v in state_dict.items() if v.data_ptr() not in shadow]
        if missing:
            raise RuntimeError(f"EMA export: {len(missing)} adapter tensors are not views of trained parameters, e.g. {missing[0]}")
        return {k: shadow[v.data_ptr()] for k, v in state_dict.items()}

    def reset(self) -> None:
        """Start the average over from the current weights (a checkpoint written without [ema])."""
        device = self.ema.shadow_params[0].device if self.ema.shadow_params else "cpu"
        self.ema.shadow_params = [p.detach().clone().to(device) for p in self.params]
        self.ema.optimization_step = 0

    def save(self, folder: Path) -> None:
        tensors = {f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(self.ema.shadow_params)}
        state = self.ema.state_dict()
        meta = {k: str(state[k]) for k in ("decay", "optimization_step")}
        save_file(tensors, str(Path(folder) / EMA_FILE), metadata=meta)

    def load(self, folder: Path) -> bool:
        """False when the checkpoint has no average (a run that trained without [ema]): it starts over
        from the weights just loaded."""
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            self.reset()
            return False
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        device = self.ema.shadow_params[0].device if self.ema.shadow_params else "cpu"
        shadow = [tensors[f"shadow.{i}"].to(device) for i in range(len(self.ema.shadow_params))]
        self.ema.load_state_dict({"optimization_step": int(meta.get("optimization_step", 0)), "shadow_params": shadow})
        return True


def build_ema(params: list, cfg: EmaConfig) -> AdapterEMA | None:
    return AdapterEMA(params, cfg) if cfg.enabled else None
