"""Hub tokens come from ``HF_TOKEN`` or the stored login (``hf auth login``), never from the command line: a token
given as an argument stays in shell history and process lists, and ``accelerate launch`` prints a failed run's
whole command line to stderr."""

from __future__ import annotations

import argparse
import re
from typing import Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

TOKEN_SOURCES = "set the HF_TOKEN environment variable or run `hf auth login`"
# A flag naming a token in any spelling (--token, --hub_token, --hub-token=..., --hubtoken, and argparse's
# abbreviations such as --hub_tok), and a value that is one.
_TOKEN_FLAG = re.compile(r"--?[\w-]*tok(?:e|en)?(=.*)?", re.IGNORECASE | re.DOTALL)
_TOKEN_VALUE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _refusal(what: str) -> str:
    return (
        f"{what} is not accepted: a token on the command line ends up in shell history, process lists and error "
        f"messages. {TOKEN_SOURCES[0].upper() + TOKEN_SOURCES[1:]} instead."
    )


class _RefuseToken(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # parser.error prints the message only: the refused value is never echoed.
        parser.error(_refusal(option_string))


def token_argument(argv: Sequence[str]) -> Optional[str]:
    """A message naming the first argument of ``argv`` that is or names a Hub token (never its value), or None.
    Checked before parsing, so that no parser's message (e.g. argparse's "unrecognized arguments") and no argument
    list passed on to other runs can show one."""
    for argument in argv:
        flag = _TOKEN_FLAG.fullmatch(argument)
        if flag:
            return _refusal(argument[: flag.start(1)] if flag.group(1) else argument)
        if _TOKEN_VALUE.search(argument):
            return _refusal("An argument that looks like a Hugging Face token (hf_...)")
    return None


def without_credentials(url: str) -> str:
    """``url`` without a user name or password (``https://user:secret@host/`` -> ``https://host/``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else url


def refuse_token_options(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Make ``flags`` (e.g. ``--token``) fail with a pointer to ``HF_TOKEN`` instead of argparse's "unrecognized
    arguments", which would print the token."""
    parser.add_argument(*flags, action=_RefuseToken, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
