"""The `lora-kit` command line: one subcommand per module, imported lazily.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`. Importing only the
chosen one keeps `lora-kit --help` instant and lets optional backends fail with their own message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings

from lora_kit import __version__
from lora_kit.errors import UserError
from lora_kit.runtime import configure_threads

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lora_kit.train.command", "train a LoRA from a TOML recipe"),
    "demo": ("lora_kit.world.demo_command", "offline end-to-end demo on the embedded tiny world"),
    "init-model": ("lora_kit.models.command", "write a tiny random-init model (tiny-sd15, tiny-sd2v, tiny-sdxl)"),
    "buckets": ("lora_kit.data.bucket_command", "print the aspect-ratio bucket histogram of a dataset"),
    "cache": ("lora_kit.data.cache_command", "precompute the latent/text cache of a recipe"),
    "caption": ("lora_kit.captioning.command", "caption or edit captions of a dataset"),
    "info": ("lora_kit.adapters.tools.info", "describe a LoRA file (format, ranks, metadata, hashes)"),
    "convert": ("lora_kit.adapters.tools.convert", "convert a LoRA between kohya and diffusers formats"),
    "merge": ("lora_kit.adapters.tools.merge", "fuse LoRAs into a base model and save it"),
    "resize": ("lora_kit.adapters.tools.resize", "change a LoRA's rank by SVD"),
    "extract": ("lora_kit.adapters.tools.extract", "extract a LoRA from a fine-tuned model and its base (SVD)"),
    "grid": ("lora_kit.infer.command", "render a labelled evaluation grid"),
    "publish": ("lora_kit.publish.command", "assemble/upload a Hub repo or a Civitai bundle"),
    "recipe": ("lora_kit.config.command", "validate a recipe and print it fully resolved"),
}


# Commands that run torch work long enough for the thread count to matter (lora_kit.runtime). `train` and
# `demo` are left out: the trainer measures the machine itself (once) and reports it in its summary.
TORCH_COMMANDS = {"grid", "cache", "caption", "merge", "resize", "extract"}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-kit", description="LoRA fine-tuning for Stable Diffusion.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (also LORA_KIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    return f"lora-kit {__version__}"


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, optional-backend probes) drowns the one-screen summary and
    the progress bars; users can turn it back on with DIFFUSERS_VERBOSITY / TRANSFORMERS_VERBOSITY."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may stand anywhere (before or after the command); taken out before argparse sees it.
    debug = "--debug" in argv or os.environ.get("LORA_KIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    _quiet_libraries()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    load = chosen if chosen in COMMANDS else None
    parser = build_parser(load)
    # Overrides (`section.key=value`) may come before or after options; argparse only collects a
    # positional list that is not interrupted by options, so stray ones are gathered here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    # lazy: the error path's helpers; utils' stdlib imports (tempfile, shutil, json) are ~10 ms, a fifth of --help
    from lora_kit.utils import describe_write_fault, is_write_fault

    module = importlib.import_module(COMMANDS[args.command][0])
    if args.command in TORCH_COMMANDS:
        configure_threads()  # threads from the free cores; the trainer narrows it once it knows the model
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        # User mistakes (bad recipe key, missing file, offline model) are one line, no traceback.
        if debug:
            traceback.print_exc()
        print(f"lora-kit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line unless --debug
        if debug:
            raise
        if is_write_fault(exc):  # a full disk or a size limit outside the places that name their file
            print(f"lora-kit {args.command}: error: {describe_write_fault(exc)}: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"lora-kit {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)}\n"
              f"  this is a bug in lora-kit: run again with --debug (or LORA_KIT_DEBUG=1) for the traceback and report it",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


if __name__ == "__main__":
    raise SystemExit(main())
