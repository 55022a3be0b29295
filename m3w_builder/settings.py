"""Typed settings trees (BuildConfig, TrainConfig): one way to fill a dataclass tree from YAML, from
`--set section.field=value` and from command-line flags, with every value checked.

Why one module: the build and the trainer each had their own loader, and only one of them refused a
wrong type; the trainer wrote each of its flags twice (once for argparse, once to copy the value into
the config). Here a flag is declared once (`Flag`: its name and the field it sets), and argparse's
type, choices and default come from that field; a YAML key or `--set` path that names no field is an
error naming the closest one, and a value of the wrong type is an error naming the key, never a
silent no-op or a crash deep inside the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from m3w_builder.errors import ConfigError


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_types(kind: type) -> dict[str, Any]:
    """Field name → resolved annotation of a dataclass (annotations are strings under PEP 563)."""
    return typing.get_type_hints(kind)


def check_value(where: str, value: Any, annotation: Any) -> Any:
    """`value` as the field's type, or a ConfigError naming `where`. YAML gives ints where a float
    field is meant (`lr: 1`), which is accepted as that float; a bool is never an int."""
    if _fits(value, annotation):
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            any(_fits(item, a) for a in args) if args else True for item in value
        )
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict | annotation)
    return True  # a type this checker does not know: the dataclass's own checks decide


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(annotation))
    return getattr(annotation, "__name__", str(annotation))


def apply_mapping(target: Any, values: dict[str, Any], where: str, _path: str = "") -> None:
    """Set `target`'s fields from a mapping, recursing into nested dataclasses; an unknown key or a
    wrong type is a ConfigError naming `where` and the key (`build.yaml: images.min_side: ...`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {_path.rstrip('.') or 'the top level'}: expected a mapping")
    hints = field_types(type(target))
    for name, value in values.items():
        key = f"{_path}{name}"
        if name not in hints:
            raise ConfigError(f"{where}: {key}: unknown field{did_you_mean(str(name), hints)}")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            apply_mapping(current, value, where, f"{key}.")
        else:
            setattr(target, name, check_value(f"{where}: {key}", value, hints[name]))


def parse_assignment(assignment: str) -> tuple[list[str], Any]:
    """`section.field=value` → (["section", "field"], value read as YAML)."""
    import yaml

    path, eq, text = assignment.partition("=")
    if not eq or not path.strip():
        raise ConfigError(f"--set must look like section.field=value, got {assignment!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {path}: cannot read the value {text!r}") from None
    return path.strip().split("."), value


def apply_assignment(root: Any, assignment: str) -> None:
    """`--set section.field=value` on a tree of dataclasses (BuildConfig): the same checks as YAML."""
    parts, value = parse_assignment(assignment)
    set_path(root, ".".join(parts), value, where="--set")


def on_off(text: str) -> bool:
    """`--near-dedup on|off` → bool."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")
    return text == "on"


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config field: declared once, its argparse type, choices
    and `store_true` form derived from the field. `dest` is the path in the config tree
    (`optim.lr`, `data.batch_size`)."""

    name: str
    dest: str
    help: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None  # only where the field's own type cannot parse it
    optional_value: bool = False  # `--resume` alone means True, `--resume auto` gives the value

    @property
    def attr(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def add_flags(
    parser: argparse.ArgumentParser | Any, flags: Iterable[Flag], kinds: dict[str, type]
) -> None:
    """Add each flag with the type of its field (`kinds`: section name → dataclass, "" for the
    root's own fields). Every flag defaults to None, so only what was given is applied and the
    YAML's values stay."""
    for flag in flags:
        section, _, name = flag.dest.rpartition(".")
        annotation = field_types(kinds[section])[name]
        kwargs: dict[str, Any] = {"dest": flag.attr, "default": None, "help": flag.help}
        if flag.choices:
            kwargs["choices"] = list(flag.choices)
        if flag.metavar:
            kwargs["metavar"] = flag.metavar
        if flag.optional_value:
            kwargs.update(nargs="?", const=True, type=flag.type or str)
        elif annotation is bool and flag.type is None:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = flag.type or _scalar(annotation)
        parser.add_argument(flag.name, **kwargs)


def _scalar(annotation: Any) -> Callable[[str], Any]:
    arms = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    for kind in (int, float):
        if kind in arms:
            return kind
    return str


def set_path(root: Any, dest: str, value: Any, where: str = "flag") -> None:
    """Set the field at `dest` (`attach.p_next`, `seed`) with the same checks as YAML."""
    nested: Any = value
    for part in reversed(dest.split(".")):
        nested = {part: nested}
    apply_mapping(root, nested, where)


def flag_values(args: argparse.Namespace, flags: Iterable[Flag]) -> Iterator[tuple[Flag, Any]]:
    """(flag, value) for each flag given on the command line."""
    for flag in flags:
        value = getattr(args, flag.attr, None)
        if value is not None:
            yield flag, value
