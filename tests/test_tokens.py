"""No secret on the command line: the training scripts and the CLI take the Hub token from HF_TOKEN or the stored
login only. A token flag is refused with a pointer to HF_TOKEN, and the value is not echoed."""

from __future__ import annotations

import pytest
from conftest import load_example

from gated_vpt.cli import main as cli_main

SECRET = "hf_SECRETvalue0123456789"


@pytest.mark.parametrize("script", ["train_image_classification", "train_semantic_segmentation"])
def test_training_scripts_have_no_token_option(script, capsys):
    parse_args = load_example(script).parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options = [word for word in capsys.readouterr().out.split() if word.startswith("--")]
    assert not [option for option in options if "token" in option and "prompt_token" not in option]
    for flag in ("--hub_token", "--token"):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([flag, SECRET])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "HF_TOKEN" in err and SECRET not in err


@pytest.mark.parametrize("command", [["push", "adapter_dir", "user/repo"], ["pull", "user/repo"], ["info", "x"], ["predict", "x", "img.png"]])
def test_cli_commands_refuse_a_token_without_echoing_it(command, capsys):
    with pytest.raises(SystemExit):
        cli_main([command[0], "--help"])
    assert "--token" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*command, "--token", SECRET])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "HF_TOKEN" in err and SECRET not in err
