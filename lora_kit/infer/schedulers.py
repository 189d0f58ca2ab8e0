"""Sampler names as A1111 users know them, mapped to diffusers schedulers.

A grid cell's `Sampler:` field must read back in A1111 and Civitai, so the canonical name is A1111's
("DPM++ 2M Karras"), while the command line also accepts slugs (`dpm++2m_karras`, `euler_a`). The table
follows diffusers' own A1111 equivalence list (docs: "Schedulers" / "A1111 equivalents"); every entry is
a stock diffusers scheduler built with `from_config(base_config, **overrides)` so the model's betas,
prediction type and timestep offset carry over.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field

from lora_kit.errors import UserError, missing_extra


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111 spelling, written into the `parameters` text
    cls: str  # diffusers class name
    overrides: dict = field(default_factory=dict)
    needs: str = ""  # optional package the scheduler imports lazily


_DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_K = {"use_karras_sigmas": True}

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", _DPM),
        Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPM, **_K}),
        Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE),
        Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_SDE, **_K}),
        Sampler("DPM++ 2S a", "DPMSolverSinglestepScheduler", {"solver_order": 2}),
        Sampler("DPM2", "KDPM2DiscreteScheduler"),
        Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", _K),
        Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _K),
        Sampler("Euler", "EulerDiscreteScheduler"),
        Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
        Sampler("Heun", "HeunDiscreteScheduler"),
        Sampler("LMS", "LMSDiscreteScheduler", needs="scipy"),
        Sampler("DDIM", "DDIMScheduler"),
        Sampler("PNDM", "PNDMScheduler"),
        Sampler("UniPC", "UniPCMultistepScheduler"),
        Sampler("DEIS", "DEISMultistepScheduler"),
    )
}


def _slug(name: str) -> str:
    # "DPM++ 2M Karras", "dpm++2m_karras", "dpmpp_2m_karras", "Euler a", "euler_a" -> one key
    s = name.strip().lower().replace("dpmpp", "dpm++")
    s = re.sub(r"[\s_\-]+", "", s)
    return s.replace("ancestral", "a")


_BY_SLUG = {_slug(n): s for n, s in SAMPLERS.items()}
_BY_SLUG.update({"dpmsolver": SAMPLERS["DPM++ 2M"], "dpmsolvermultistep": SAMPLERS["DPM++ 2M"], "eulera": SAMPLERS["Euler a"]})


def get_sampler(name: str) -> Sampler:
    """The sampler for an A1111 name or slug; UserError listing the valid names otherwise."""
    found = _BY_SLUG.get(_slug(name))
    if found is None:
        raise UserError(f"unknown sampler {name!r}; expected one of: {', '.join(SAMPLERS)}")
    return found


def canonical_sampler_name(name: str) -> str:
    return get_sampler(name).name


def make_scheduler(name: str, base_config):
    """A fresh diffusers scheduler for `name`, configured from the model's scheduler config."""
    # lazy: diffusers costs seconds; the sampler table is also read by grid-spec parsing (lora-kit grid, axes)
    import diffusers

    sampler = get_sampler(name)
    if sampler.needs:
        if importlib.util.find_spec(sampler.needs) is None:
            raise missing_extra(sampler.needs, purpose=f"the {sampler.name} sampler")
    cls = getattr(diffusers, sampler.cls)
    return cls.from_config(base_config, **sampler.overrides)
