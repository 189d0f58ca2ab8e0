"""peft LoHa/LoKr vs the lycoris-lora package (what kohya and SimpleTuner use): same update? how fast?

lora-kit trains LoHa/LoKr with peft (lora_kit/adapters/inject.py says why). This script is the measurement
behind that choice, on single SD-sized layers (CPU or CUDA):
- equality: the same tensors loaded into a peft layer and a lycoris-lora module give the same delta-W and
  the same outputs, and both equal the A1111/ComfyUI formula (lora_kit.adapters.lycoris.delta_weight);
- speed: forward + backward of one training step of the adapted layer, median of --iters.

lycoris-lora is not a lora-kit dependency; install it beside (pip install lycoris-lora einops toml) to run:
    python scripts/bench_lycoris.py [--device cuda] [--iters 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lora_kit.adapters import lycoris as lk

CASES = [  # (name, module factory, input factory): SD1.5-sized attention projections and a ResNet conv
    ("linear 320x320, 4096 tokens", lambda: torch.nn.Linear(320, 320), lambda: torch.randn(2, 4096, 320)),
    ("linear 1280x1280, 256 tokens", lambda: torch.nn.Linear(1280, 1280), lambda: torch.randn(2, 256, 1280)),
    ("conv3x3 320->320, 32x32", lambda: torch.nn.Conv2d(320, 320, 3, padding=1), lambda: torch.randn(2, 320, 32, 32)),
]


def _peft_layer(algo: str, base, rank: int, alpha: float):
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    holder = torch.nn.Module()
    holder.layer = base
    cfg = (LoHaConfig if algo == "loha" else LoKrConfig)(r=rank, alpha=alpha, target_modules=["layer"], init_weights=False)
    inject_adapter_in_model(cfg, holder, adapter_name="default")
    return holder.layer


def _lycoris_module(algo: str, base, rank: int, alpha: float, params: dict):
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    cls = LohaModule if algo == "loha" else LokrModule
    mod = cls("bench", base, lora_dim=rank, alpha=alpha)
    with torch.no_grad():
        for name, value in params.items():
            getattr(mod, name).copy_(value)
    mod.scale = lk.module_dim(params) and alpha / rank or 1.0  # peft's scale when LoKr factors are decomposed
    mod.apply_to()
    return mod


def _step_time(fn, x, iters: int, device: str) -> float:
    times = []
    for _ in range(iters + 3):
        start = time.perf_counter()
        fn(x).float().pow(2).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]) * 1000


def compare(algo: str, name: str, make, make_x, rank: int, alpha: float, device: str, iters: int) -> str:
    torch.manual_seed(0)
    base = make().to(device)
    ref_base = make().to(device)
    ref_base.load_state_dict(base.state_dict())
    peft_layer = _peft_layer(algo, base, rank, alpha).to(device)
    params = {k: getattr(peft_layer, k)["default"].detach().clone() for k in lk.KEYS if "default" in getattr(peft_layer, k, {})}
    lyco = _lycoris_module(algo, ref_base, rank, alpha, params).to(device)
    x = make_x().to(device)
    with torch.no_grad():
        d_peft = peft_layer.get_delta_weight("default").float()
        d_a1111 = lk.delta_weight(params, peft_layer.scaling["default"], d_peft.shape).to(device)
        out_peft, out_lyco = peft_layer(x), ref_base(x)
    err_formula = float((d_peft - d_a1111).abs().max() / d_peft.abs().max())
    err_out = float((out_peft - out_lyco).abs().max() / out_peft.abs().max())
    t_peft = _step_time(peft_layer, x, iters, device)
    t_lyco = _step_time(ref_base, x, iters, device)
    return (f"{algo:<5} {name:<32} peft vs A1111 formula {err_formula:.1e}  peft vs lycoris output {err_out:.1e}  "
            f"step peft {t_peft:7.2f} ms  lycoris {t_lyco:7.2f} ms  ({t_lyco / t_peft:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    try:
        import lycoris  # noqa: F401
    except ImportError:
        raise SystemExit("lycoris-lora is not installed: pip install lycoris-lora einops toml") from None
    for algo in ("loha", "lokr"):
        for name, make, make_x in CASES:
            print(compare(algo, name, make, make_x, args.rank, args.rank / 2, args.device, args.iters), flush=True)


if __name__ == "__main__":
    main()
