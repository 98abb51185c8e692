"""One typed way into every stage: a config subtree (or ``--params`` JSON) → its frozen dataclass.

    params = load_params(TilingParams, args.params, where="tiling")

- an unknown key raises :class:`PathomixInputError` naming the key, the stage (``where``) and
  the keys it knows, so a typo fails in the first second instead of being silently ignored;
- values are coerced once, from the field's type hint: ``int``, ``float``, ``bool``, ``str``,
  ``None`` (``X | None``), unions (``int | str`` tries ``int`` first), ``tuple[...]``, ``list[...]``,
  ``dict``/``Mapping[K, V]`` and nested dataclasses (a nested mapping);
- a ``None`` for a field whose type does not allow it keeps the field's default (config.yaml's
  ``null`` meaning "the default");
- keys that the Snakefile consumes and that legitimately sit in a subtree (``tiling.magnifications``,
  ``train.models``) are dropped by the caller, explicitly: ``drop=("magnifications",)``.

The source is a mapping, JSON text, ``@file.json`` or the path of a JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pathomix.errors import PathomixInputError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def read_json_object(source: str | Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``--params`` → dict: a mapping as is, JSON text, ``@file.json`` or the path of a JSON file."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    text = source.strip()
    if text.startswith("@"):
        text = _read_file(text[1:], where)
    elif text and not text.startswith("{") and Path(text).is_file():
        text = _read_file(text, where)
    try:
        values = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise PathomixInputError(f"--params of `{where}` is not valid JSON ({err}): {text[:200]!r}") from None
    if not isinstance(values, dict):
        raise PathomixInputError(
            f"--params must be a JSON object (the config's `{where}:` subtree), got {text[:200]!r}")
    return values


def _read_file(path: str, where: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise PathomixInputError(f"--params of `{where}`: cannot read {path}: {err}") from None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def load_params(cls: type[T], source: str | Mapping[str, Any] | None, where: str,
                drop: Iterable[str] = ()) -> T:
    """Build the frozen dataclass ``cls`` from a config subtree (see the module docstring).

    ``where`` names the subtree in messages (``tiling``, ``train.distill``); ``drop`` lists keys the
    caller knows belong to the Snakefile, not to this stage."""
    values = read_json_object(source, where)
    for key in drop:
        values.pop(key, None)
    known = field_names(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PathomixInputError(
            f"config `{where}`: unknown key(s) {unknown}; `{where}` knows {sorted(known)}. "
            "Fix the spelling in config.yaml (or --config), or remove the key")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if value is None and not _allows_none(hints[name]):
            continue  # null = the default
        kwargs[name] = coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a required field without default
        raise PathomixInputError(f"config `{where}`: {err}") from None


def _allows_none(hint: Any) -> bool:
    return hint is Any or hint is type(None) or (_is_union(hint) and type(None) in typing.get_args(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _bad(value: Any, hint: Any, where: str) -> PathomixInputError:
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return PathomixInputError(f"config `{where}`={value!r} is not a valid {name}")


def coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the type ``hint`` asks for; PathomixInputError naming ``where`` when it cannot be."""
    if hint is Any:
        return value
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise _bad(value, hint, where)
        for arm in (a for a in args if a is not type(None)):
            try:
                return coerce(arm, value, where)
            except PathomixInputError:
                continue
        raise _bad(value, hint, where)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _bad(value, hint, where)
        return load_params(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise _bad(value, hint, where)
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise _bad(value, hint, where)
            return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True)))
        item = args[0] if args else Any
        return origin(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin in (dict, Mapping) or hint in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise _bad(value, hint, where)
        k_hint, v_hint = args if args else (Any, Any)
        return {coerce(k_hint, k, where): coerce(v_hint, v, f"{where}.{k}") for k, v in value.items()}
    if hint is type(None):
        if value is None:
            return None
        raise _bad(value, hint, where)
    if hint in (int, float, bool, str):
        return _scalar(hint, value, where)
    return value  # a type the loader does not know: the dataclass checks it


def _scalar(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(value, kind, where)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(value, kind, where)
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise _bad(value, kind, where)
    if kind is int and isinstance(value, int):
        return value
    if kind is int and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(value, kind, where) from None
    if kind is float:
        return number
    if not number.is_integer():
        raise _bad(value, kind, where)
    return int(number)
