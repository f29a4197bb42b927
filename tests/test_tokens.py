"""No secret on the command line: the training scripts and the CLI take the Hub token from HF_TOKEN or the stored
login only. A token flag (in any spelling) or a token value is refused before parsing with a pointer to HF_TOKEN,
and the value is never echoed, also where arguments are passed on (``protocol ... -- ...``)."""

from __future__ import annotations

import pytest
from conftest import load_example

from gated_vpt.cli import main as cli_main
from gated_vpt.tokens import without_credentials

SECRET = "hf_SECRETvalue0123456789"
PLAIN_SECRET = "plainSECRET42"  # a token of another form: refused through its flag
# the ways a token may be spelled on a command line
SPELLINGS = [
    ["--hub_token", SECRET], ["--token", SECRET], ["--hub-token", PLAIN_SECRET], [f"--hub_token={PLAIN_SECRET}"],
    [f"--hub-token={PLAIN_SECRET}"], ["--hubtoken", PLAIN_SECRET], ["--HUB_TOKEN", PLAIN_SECRET], ["--anything", SECRET],
    [f"--hub_model_id={SECRET}"], ["--hub_tok", PLAIN_SECRET], ["--tok", PLAIN_SECRET],
]


@pytest.mark.parametrize("script", ["train_image_classification", "train_semantic_segmentation"])
def test_training_scripts_have_no_token_option(script, capsys):
    parse_args = load_example(script).parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options = [word for word in capsys.readouterr().out.split() if word.startswith("--")]
    assert not [option for option in options if "token" in option and "prompt_token" not in option]
    for spelling in SPELLINGS:
        with pytest.raises(ValueError, match="HF_TOKEN") as refused:
            parse_args(["--learning_rate", "0.1", *spelling])
        assert SECRET not in str(refused.value) and PLAIN_SECRET not in str(refused.value)
        assert not capsys.readouterr().err


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize(
    "command",
    [["push", "adapter_dir", "user/repo"], ["pull", "user/repo"], ["info", "x"], ["predict", "x", "img.png"],
     ["protocol", "--benchmark", "vtab1k", "--print_jobs", "--"], ["convert", "--source", "x"]],
)
def test_cli_commands_refuse_a_token_in_one_line_without_echoing_it(command, spelling, capsys):
    assert cli_main([*command, *spelling]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "HF_TOKEN" in captured.err
    assert SECRET not in captured.err and PLAIN_SECRET not in captured.err


def test_cli_help_offers_no_token_option(capsys):
    for command in ("push", "pull", "info", "predict"):
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        assert "--token" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "shown"),
    [("https://user:pass@hub.example:8080/x", "https://hub.example:8080/x"), ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
     ("https://tok@huggingface.co", "https://huggingface.co")],
)
def test_endpoints_are_shown_without_credentials(url, shown):
    assert without_credentials(url) == shown
