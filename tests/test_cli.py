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
