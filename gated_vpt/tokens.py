"""Hub tokens come from ``HF_TOKEN`` or the stored login (``hf auth login``), never from the command line: a token
given as an argument stays in shell history and process lists, and ``accelerate launch`` prints a failed run's
whole command line to stderr."""

from __future__ import annotations

import argparse

TOKEN_SOURCES = "set the HF_TOKEN environment variable or run `hf auth login`"


class _RefuseToken(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # parser.error prints the message only: the refused value is never echoed.
        parser.error(
            f"{option_string} is not accepted: a token on the command line ends up in shell history, process lists "
            f"and error messages. {TOKEN_SOURCES[0].upper() + TOKEN_SOURCES[1:]} instead."
        )


def refuse_token_options(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Make ``flags`` (e.g. ``--token``) fail with a pointer to ``HF_TOKEN`` instead of argparse's "unrecognized
    arguments", which would print the token."""
    parser.add_argument(*flags, action=_RefuseToken, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
