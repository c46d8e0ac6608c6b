"""Typed stage configs: dataclasses loaded from YAML, overridden by dotted names.

Each stage owns one dataclass. Fields carry their help text in metadata (``option``),
optional ``choices`` are checked here for every stage, and stage-specific rules live in
the dataclass's ``__post_init__``. Unknown keys are rejected with the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError


class ConfigError(PipelineError):
    """A config value or key is wrong; the message names the field and the fix."""


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None,
           default_factory: Any = dataclasses.MISSING, bounds: str | None = None):
    """A dataclass field with help text (shown by ``--help``), optional choices and, for
    numbers, ``bounds`` written as an interval: ``"[1, inf)"``, ``"(0, 1)"``, ``"[0, 1]"``."""
    meta = {"help": help, "choices": choices, "bounds": bounds and _interval(bounds)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(field: str, problem: str, fix: str) -> None:
    raise ConfigError(f"config field '{field}': {problem}; {fix}")


def _interval(text: str) -> tuple[str, float, float, str]:
    m = re.fullmatch(r"\s*([\[(])\s*(-?[\w.+-]+)\s*,\s*(-?[\w.+-]+)\s*([\])])\s*", text)
    if not m:
        raise ValueError(f"bounds {text!r} is not an interval like '[1, inf)'")
    return m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)


def in_bounds(value: float, bounds: tuple) -> bool:
    left, low, high, right = bounds
    return (value >= low if left == "[" else value > low) and (value <= high if right == "]" else value < high)


def show_bounds(bounds: tuple) -> str:
    left, low, high, right = bounds
    num = lambda x: "inf" if math.isinf(x) else (str(int(x)) if x == int(x) else str(x))
    return f"{left}{num(low)}, {num(high)}{right}"


MAX_INT = 2**40  # no step count, batch or seed is this large; seed x 1,000,003 still fits in int64


def _check_bounds(value, f: dataclasses.Field, name: str) -> None:
    bounds = f.metadata.get("bounds")
    if not bounds:
        return
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        where = name if not isinstance(value, list) else f"{name}[{i}]"
        if isinstance(v, (int, float)) and not (math.isfinite(v) and in_bounds(v, bounds)):
            fail(where, f"{v} is out of range", f"use a value in {show_bounds(bounds)}")
        if isinstance(v, int) and abs(v) > MAX_INT:  # seeds and counts this large overflow torch's int64 arithmetic
            fail(where, f"{v} is too large", f"use a value up to {MAX_INT:,}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def leaf_fields(cls, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every settable field of a (nested) config class by dotted name."""
    out = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.update(leaf_fields(tp, name + "."))
        else:
            out[name] = (tp, f)
    return out


def parse_value(text: str, tp, name: str):
    """Turn a command-line string into the field's type."""
    inner, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if inner in (int, float, str):
            return inner(text)
        if origin in (list, tuple):
            (item,) = typing.get_args(inner)[:1]
            parts = [p for p in text.split(",") if p != ""]
            return [parse_value(p, item, name) for p in parts]
    except ValueError:
        fail(name, f"cannot read {text!r} as {getattr(inner, '__name__', inner)}",
             "give a value of that type")
    return yaml.safe_load(text)


def _check_type(value, tp, name: str):
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        fail(name, "is empty", "give it a value")
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, float, str, bool):
        if type(value) is not inner:
            if isinstance(value, str):
                return parse_value(value, inner, name)
            fail(name, f"expected {inner.__name__}, got {value!r}", f"write a {inner.__name__}")
        return value
    if typing.get_origin(inner) in (list, tuple):
        if isinstance(value, str):
            return parse_value(value, inner, name)
        if not isinstance(value, (list, tuple)):
            fail(name, f"expected a list, got {value!r}", "write a YAML list")
        (item,) = typing.get_args(inner)[:1]
        return [_check_type(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    return value


def _closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(sorted(valid))}"


def build(cls, values: dict, prefix: str = ""):
    """Build a config dataclass from a nested dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}': {_closest(key, names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp, name, value = hints[f.name], prefix + f.name, values[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, value or {}, name + ".")
            continue
        value = _check_type(value, tp, name)
        if isinstance(value, str) and value.startswith("~"):  # a path from YAML or --key=~/x: the shell left it
            value = os.path.expanduser(value)
        choices = f.metadata.get("choices")
        for v in (value if isinstance(value, list) else [value]) if choices else ():
            if v not in choices:
                fail(name, f"{v!r} is not one of {', '.join(map(str, choices))}", "pick one of those")
        _check_bounds(value, f, name)
        kwargs[f.name] = value
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        flag = "--" + (prefix + missing[0]).replace("_", "-")
        raise ConfigError(f"config field '{prefix}{missing[0]}' is required; pass {flag} or set it in --config")
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"config section '{prefix or cls.__name__}': {err}") from None


def packaged(path: Path) -> Path:
    """``pipeline/configs/X.yaml`` from any directory (a SLURM job runs where it was submitted):
    a relative path that is not there is looked up beside the installed ``pipeline`` package."""
    if path.is_absolute() or path.exists():
        return path
    beside = Path(__file__).resolve().parent.parent / path
    return beside if beside.is_file() else path


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict, with errors that name the file."""
    path = packaged(Path(path))
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the --config path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


def set_dotted(values: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` inside a nested dict, making sections as needed."""
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is a value, not a section")
    node[last] = value


def load_config(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """YAML file (optional) then dotted overrides, into a validated ``cls``."""
    values = read_yaml(path) if path else {}
    fields = leaf_fields(cls)
    for dotted, value in (overrides or {}).items():
        if dotted not in fields:
            raise ConfigError(f"unknown config key '{dotted}': {_closest(dotted, fields)}")
        tp, _ = fields[dotted]
        if isinstance(value, str):
            value = parse_value(value, tp, dotted)
        set_dotted(values, dotted, value)
    return build(cls, values)


def to_dict(cfg) -> dict:
    """A config as plain data, for manifests and run_info.json."""
    return dataclasses.asdict(cfg)
