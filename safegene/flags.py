"""Command-line flags derived from the settings dataclasses (safegene.settings), and back.

- `add_settings(parser, defaults)`: one flag per field of the dataclass instance `defaults`:
  `--name-with-dashes`, the field's type (a bool field is a switch), the instance's value as the
  default, the help text and argparse extras from the field's metadata; fields that name the same
  `exclusive` group go into one mutually exclusive group.
- `settings_from(args, defaults)`: that dataclass again, from the parsed arguments.
- `argv_of(parser, args)`: a command line that `parser` parses back to `args` (to re-run a command
  in child processes).
- `HelpFormatter`: `--help` shows every option's default (where it has one).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with "(default: X)" after each option whose default is a value (not
    None, False or suppressed) and whose help does not already name its default."""

    def _get_help_string(self, action):  # the hook ArgumentDefaultsHelpFormatter overrides too
        text = action.help or ""
        default = action.default
        valued = not (default is None or default is False or default is argparse.SUPPRESS)
        if action.option_strings and valued and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _value_type(cls, name: str) -> type:
    """A field's type with `| None` removed ("int | None" → int)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def add_settings(parser, defaults) -> None:
    """Add one flag per field of the settings instance `defaults` (see the module doc)."""
    exclusive: dict[str, object] = {}  # group name → its mutually exclusive group
    for f in dataclasses.fields(defaults):
        meta = dict(f.metadata)
        group = meta.pop("exclusive", None)
        target = parser
        if group is not None:
            if group not in exclusive:
                exclusive[group] = parser.add_mutually_exclusive_group()
            target = exclusive[group]
        kwargs = {"default": getattr(defaults, f.name), "help": meta.pop("help"), **meta}
        flag = "--" + f.name.replace("_", "-")
        if _value_type(type(defaults), f.name) is bool:
            action = argparse.BooleanOptionalAction if kwargs["default"] else "store_true"
            target.add_argument(flag, action=action, **kwargs)
        else:
            target.add_argument(flag, type=_value_type(type(defaults), f.name), **kwargs)


def settings_from(args: argparse.Namespace, defaults):
    """The settings dataclass of `defaults`' type with every field the parsed `args` hold."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults)}
    return type(defaults)(**values)


def argv_of(parser: argparse.ArgumentParser, args: argparse.Namespace, skip=()) -> list[str]:
    """Options that make `parser` parse to `args` (dests in `skip` left out): switches when
    set, each value of an `append` option, a `nargs="+"` option's values after one flag."""
    argv: list[str] = []
    for action in parser._actions:  # argparse's only list of a parser's arguments
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in skip or value is None or value is False:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            argv.append(flag)
        elif not isinstance(value, list):
            argv += [flag, str(value)]
        elif action.nargs in ("+", "*"):
            argv += [flag, *map(str, value)]
        else:
            argv += [x for item in value for x in (flag, str(item))]
    return argv
