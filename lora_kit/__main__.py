"""`python -m lora_kit ...` and `accelerate launch -m lora_kit train RECIPE`."""

from lora_kit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
