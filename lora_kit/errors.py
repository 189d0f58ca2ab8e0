"""One exception type for mistakes a user can fix; the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """A problem in the user's input: recipe, paths, files, missing optional package or offline model."""


def missing_extra(package: str, extra: str | None = None, purpose: str = "") -> UserError:
    """Actionable ImportError text for an optional backend (peft-style lazy imports)."""
    how = f"pip install 'lora-kit[{extra}]'" if extra else f"pip install {package}"
    what = f" for {purpose}" if purpose else ""
    return UserError(f"{package} is required{what}: {how}")
