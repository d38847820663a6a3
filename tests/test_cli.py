"""The `pixelembed` command, through its entry point."""

import pytest

from keras_pixelembed.cli import main


def test_demo_trains_and_the_loss_goes_down(capsys):
    assert main(["demo", "--steps", "12"]) == 0
    out = capsys.readouterr().out
    assert "DiscriminativeLoss" in out and "% lower" in out


def test_bad_steps_is_one_clear_line(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_help_exits_cleanly():
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
