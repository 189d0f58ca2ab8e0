"""Every registered command loads and describes itself; unknown arguments are one clear error."""

from __future__ import annotations

import pytest

from lora_kit.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert COMMANDS[name][1].split()[0] in capsys.readouterr().out


def test_stray_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["init-model", "out", "--preset", "tiny-sd15", "bogus=1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: bogus=1" in capsys.readouterr().err


def test_a_bug_is_one_line_and_debug_shows_its_traceback(tmp_path, monkeypatch, capsys):
    """A real bug (here a command module that divides by zero) is one line asking for --debug, exit 1;
    --debug (anywhere on the line) or LORA_KIT_DEBUG=1 lets the traceback through."""
    (tmp_path / "buggy_command.py").write_text("def add_arguments(p):\n    pass\n\ndef run(args):\n    return 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "buggy", ("buggy_command", "a command with a bug"))
    monkeypatch.delenv("LORA_KIT_DEBUG", raising=False)
    assert main(["buggy"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: division by zero" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["buggy", "--debug"])
    monkeypatch.setenv("LORA_KIT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["buggy"])


def test_user_errors_stay_one_line_and_debug_adds_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LORA_KIT_DEBUG", raising=False)
    assert main(["train", "tiny-smoke", "--stop-after", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "lora-kit train: error: --stop-after -1: expected 0 (run to the end) or a number of steps >= 1\n"
    assert main(["--debug", "train", "tiny-smoke", "--stop-after", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("lora-kit train: error: --stop-after -1: expected 0 (run to the end) or a number of steps >= 1\n")



@pytest.mark.parametrize("name", ["demo", "train", "recipe"])
def test_help_does_not_import_torch(name):
    """`--help` answers at once: no torch, diffusers or trainer import behind it."""
    import subprocess
    import sys

    code = (f"import sys\nfrom lora_kit.cli import main\ntry:\n    main([{name!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'lora_kit.train.recipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:] + out.stderr[-1500:]
