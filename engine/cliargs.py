"""Command-line flags generated from typed config dataclasses.

One source for a command's CLI, the dashboard's forms and the argument lists it queues: a field
`lora_r: int = 16` with a docstring under it becomes `--lora-r LORA_R` (type from the annotation,
help from the docstring); `cli_field(...)` as its default states what the name alone cannot:
other spellings (the first one is what `config_to_argv` writes), choices (which the config's own
validation also checks), a mutually exclusive group, a required flag, or no flag at all.

Booleans become `--flag/--no-flag`, except inside a mutually exclusive group, where `--flag`
picks that member. A `list[str]` field takes comma-separated words ("SPEECH,NONSPEECH").
No heavy imports: the dashboard builds argument lists with this module.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Iterable

_METADATA_KEY = "cli"


@dataclass(frozen=True)
class FlagSpec:
    """How one config field appears on the command line."""

    flags: tuple[str, ...] = ()
    """Spellings, first one canonical; empty: `--` + the field name with dashes."""
    choices: tuple[str, ...] = ()
    """Allowed values (argparse refuses others; the config's validation checks them too)."""
    group: str | None = None
    """Name of a mutually exclusive group the flag belongs to."""
    required: bool = False
    """The flag (or, in a group, one member of the group) must be given."""
    enabled: bool = True
    """False: the field has no flag; it is set from a config file or the form only."""


def cli_field(default: Any = MISSING, *flags: str, choices: Iterable[str] = (), group: str | None = None,
              required: bool = False, cli: bool = True, default_factory: Any = MISSING) -> Any:
    """A dataclass field carrying its FlagSpec (spellings, choices, group, required, or cli=False)."""
    spec = FlagSpec(tuple(flags), tuple(choices), group, required, cli)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_METADATA_KEY: spec})


def flag_spec(f: dataclasses.Field) -> FlagSpec:
    return f.metadata.get(_METADATA_KEY) or FlagSpec()


def flag_names(f: dataclasses.Field) -> tuple[str, ...]:
    return flag_spec(f).flags or ("--" + f.name.replace("_", "-"),)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag, in declaration order (the order argument lists use)."""
    return [f for f in dataclasses.fields(cls) if flag_spec(f).enabled]


def flagless_fields(cls: type) -> list[str]:
    """Names of the fields of `cls` that no flag sets."""
    return [f.name for f in dataclasses.fields(cls) if not flag_spec(f).enabled]


def field_choices(cls: type) -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for every field that declares choices (with a flag or not)."""
    return {f.name: flag_spec(f).choices for f in dataclasses.fields(cls) if flag_spec(f).choices}


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it (litgpt-style attribute docstrings)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def value_type(cls: type, f: dataclasses.Field) -> type:
    """What one flag value parses to: bool, int, float, str, Path or list (of words).

    `str | list[str]` (a preset name or a list) takes the text form; the config parses it.
    """
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
    else:
        options = [hint]
    if str in options:
        return str
    kind = typing.get_origin(options[0]) or options[0]
    if kind not in (bool, int, float, str, Path, list):
        raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {hint} field; declare it with cli=False")
    return kind


def comma_words(text: str) -> list[str]:
    """"SPEECH, NONSPEECH" -> ["SPEECH", "NONSPEECH"] (empty words kept, so validation names them)."""
    return [word.strip() for word in str(text).split(",")]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, overlay: bool = False) -> None:
    """Add one flag per field of `cls` that has one, in declaration order.

    overlay=False: each flag defaults to its field's default, so the namespace is complete.
    overlay=True: every flag defaults to None ("not given"), for commands that start from a config
    file and let the flags given override it; the help then states the field's default.
    """
    docs = field_docs(cls)
    fields = flag_fields(cls)
    groups: dict[str, Any] = {}
    for f in fields:
        spec = flag_spec(f)
        target: Any = parser
        if spec.group is not None:
            if spec.group not in groups:
                required = any(flag_spec(g).required for g in fields if flag_spec(g).group == spec.group)
                groups[spec.group] = parser.add_mutually_exclusive_group(required=required)
            target = groups[spec.group]
        default = field_default(f)
        help_text = " ".join(docs.get(f.name, "").split()).replace("%", "%%") or None
        if overlay and help_text and default not in (None, "") and "default" not in help_text:
            help_text += f" (default: {format_value(default)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": None if overlay else default}
        kind = value_type(cls, f)
        if kind is bool:
            kwargs["action"] = "store_true" if spec.group is not None else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = comma_words if kind is list else kind
            if kind is list:
                kwargs["metavar"] = "WORD,WORD"
            if spec.choices:
                kwargs["choices"] = spec.choices
            if spec.required and spec.group is None:
                kwargs["required"] = True
        target.add_argument(*flag_names(f), **kwargs)


def config_from_namespace(cls: type, namespace: argparse.Namespace, base: Any = None) -> Any:
    """The config the parsed flags describe: every flag field given (not None) set on `base`
    (default: a fresh `cls()`); fields without a flag keep base's values. Not validated."""
    given = {f.name: getattr(namespace, f.name) for f in flag_fields(cls)
             if getattr(namespace, f.name, None) is not None}
    if base is None:
        return cls(**given)
    return dataclasses.replace(base, **given)


def config_to_argv(cfg: Any, always: Iterable[str] = (), every_field: bool = False) -> list[str]:
    """The flags that give `cfg` back when parsed (the inverse of config_from_namespace).

    Only fields off their default are written, plus those named in `always` (every one with
    every_field); None is never written. Each flag uses its first spelling; a value starting
    with "-" is written as --flag=value so argparse does not read it as a flag.
    """
    always = set(always)
    argv: list[str] = []
    for f in flag_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if value is None or (not every_field and f.name not in always and value == field_default(f)):
            continue
        flag = flag_names(f)[0]
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif flag_spec(f).group is None:
                argv.append("--no-" + flag[2:])
            continue
        argv += flag_with_value(flag, format_value(value))
    return argv


def flag_with_value(flag: str, text: str) -> list[str]:
    """[flag, text], or [flag=text] when text starts with "-" (argparse would take it for a flag)."""
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def format_value(value: Any) -> str:
    """A value as one flag argument: floats as short as exact (2.0 -> "2"), lists comma-joined."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
