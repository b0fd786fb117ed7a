"""The command dispatcher: help lists what exists, unknown commands fail with the choices."""
from vlastack import cli


def test_help_lists_available(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.available():
        assert name in out


def test_unknown_command_names_choices(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "choose one of" in err
