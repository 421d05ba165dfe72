"""The `safegene` command: argument parsing and calls into the API, nothing else.

Each command is one `_add_<name>(subparsers)` function that declares its arguments and sets
`func` to a `_run_<name>(args)` function. `main` turns a SafeGeneError into one line on stderr
and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from safegene.errors import SafeGeneError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser that also accepts --debug (after the command name, too)."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show Python tracebacks on errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="safegene",
        description="Extract a model family's safety alignment once (the gene) and re-express it "
        "in every fine-tuned model of the family.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


# --- commands ------------------------------------------------------------------------------------
# Each command: `_add_<name>(sub)` makes its parser with `_command(sub, ...)`, declares the
# arguments and sets `func=_run_<name>`; `_run_<name>(args)` calls the API. Register the `_add_`
# function in _COMMANDS, which stays at the end of this section.


_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SafeGeneError as exc:
        if args.debug:
            raise
        print(f"safegene: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("safegene: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so, keep it on one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"safegene: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
                  file=sys.stderr)
        return 1
