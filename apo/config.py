"""The command-line flags of `apo train` / `apo iteration`: one per field of `stages.config.Config` (its own
fields and those of the stage parameters it is built from), with the field's docstring as --help."""
from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import fields, is_dataclass

from stages.config import Config


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field), its bases' included; a field a
    subclass declares again takes the subclass's docstring."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        docs.update({a.target.id: b.value.value.strip() for a, b in zip(body, body[1:])
                     if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)})
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """One flag per Config field; `defaults` replaces some fields' defaults for this subcommand."""
    docs = field_docs(Config)
    for f in fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), (defaults or {}).get(f.name, f.default)
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")  # argparse formats help
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.type in ("int | None", "str | None"):
            parser.add_argument(flag, type=int if f.type.startswith("int") else str, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    config.check()
    return config
