"""The config schema's name lists, generated from the catalogue: ``python -m pathomix.schema [--check]``.

workflow/schemas/config.schema.yaml types the model, task, encoder and metric names as enums (and lists the
registered models in ``train.models``' description). They are not typed by hand: this tool rewrites exactly
those lines in place from :mod:`pathomix.catalog`, keeping every other line (comments, order, formatting),
and ``--check`` (run by tests/test_schema_enums.py) fails when the file is stale. ``train.models`` itself has
no enum: it also takes the names of ``train.variants``.

Run from the repository root after adding a model, an encoder, a task or a metric. Torch-free.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from pathomix import catalog
from pathomix.io.atomic import atomic_path
from pathomix.logs import setup_logging

log = logging.getLogger(__name__)
SCHEMA = Path("workflow/schemas/config.schema.yaml")  # relative to the repository root
_KEY = re.compile(r"^(\s*)(?:- )?([A-Za-z_$][\w$.-]*):")
_ENUM = re.compile(r"(enum: *)\[[^\]]*\]")
_MODELS_TEXT = re.compile(r"registered models \([^)]*\)")


@dataclass(frozen=True)
class Target:
    """A generated place in the schema: the ``path`` of keys to a node, which name list goes there and
    whether it is the node's ``enum`` or the model list in its ``description`` text."""

    path: tuple[str, ...]
    names: str  # a key of :func:`names`
    kind: str = "enum"  # enum | description


def _props(*keys: str) -> tuple[str, ...]:
    """``("train", "tasks")`` → ``("properties", "train", "properties", "tasks")``."""
    return tuple(p for k in keys for p in ("properties", k))


_VARIANT = (*_props("train", "variants"), "additionalProperties")
TARGETS: tuple[Target, ...] = (
    Target(_props("features", "encoder"), "encoders"),
    Target((*_props("features", "encoders"), "items"), "encoders"),
    Target((*_props("train", "models"), "description"), "models", "description"),
    Target((*_VARIANT, *_props("model")), "models"),
    Target((*_VARIANT, *_props("tasks"), "items"), "tasks"),
    Target((*_props("train", "tasks"), "items"), "tasks"),
    Target((*_props("evaluate", "headline"), "items"), "metrics"),
)


def names() -> dict[str, tuple[str, ...]]:
    """The name lists, in registry order: models, tasks, encoders, metrics."""
    return {"models": tuple(catalog.MODELS), "tasks": catalog.TASK_NAMES, "encoders": tuple(catalog.ENCODERS),
            "metrics": catalog.metric_names()}


def _models_text(models: tuple[str, ...]) -> str:
    return f"registered models ({', '.join(models)})"


def _walk(text: str, on_line: Callable[[tuple[str, ...], str], str]) -> str:
    """Each line through ``on_line(path, line)``, where ``path`` is the keys leading to the key the line
    opens (by indentation; comment and continuation lines keep the path of the key above)."""
    stack: list[tuple[int, str]] = []
    out = []
    for line in text.splitlines(keepends=True):
        m = _KEY.match(line)
        if m and not line.lstrip().startswith("#"):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            line = on_line(tuple(k for _, k in stack), line)
        out.append(line)
    return "".join(out)


def render(text: str, lists: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """``text`` (the schema) with every :data:`TARGETS` line rewritten from ``lists`` (default :func:`names`).
    A ValueError names a target that has no line of the expected form (an inline ``enum: [...]`` on the
    node's line or on its ``enum:`` line; the model list in the description)."""
    lists = names() if lists is None else lists
    found: set[Target] = set()

    def on_line(path: tuple[str, ...], line: str) -> str:
        for t in TARGETS:
            m = _ENUM.search(line) if t.kind == "enum" else _MODELS_TEXT.search(line)
            if m and path in ((t.path, (*t.path, "enum")) if t.kind == "enum" else (t.path,)):
                found.add(t)
                new = f"{m.group(1)}[{', '.join(lists[t.names])}]" if t.kind == "enum" else _models_text(lists[t.names])
                return line[:m.start()] + new + line[m.end():]
        return line

    out = _walk(text, on_line)
    missing = [".".join(t.path) for t in TARGETS if t not in found]
    if missing:
        raise ValueError(f"config schema: no generated line at {missing}; write it as `key: {{enum: [...]}}` "
                         f"(or the description as `{_models_text(('...',))}`)")
    return out


def check(text: str, lists: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """One message per stale place in the schema ``text``: an enum or model list that is not the catalogue's
    (missing names, extra names, another order). Empty when the file is as :func:`render` writes it."""
    lists = names() if lists is None else lists
    schema = yaml.safe_load(text)
    out = []
    for t in TARGETS:
        node = schema
        for key in t.path:
            node = node.get(key) if isinstance(node, dict) else None
        want = list(lists[t.names])
        if t.kind == "enum":
            have = node.get("enum") if isinstance(node, dict) else None
        else:
            m = _MODELS_TEXT.search(node) if isinstance(node, str) else None
            have = [s.strip() for s in m.group(0)[len("registered models ("):-1].split(",")] if m else None
        if have != want:
            where = ".".join(t.path)
            if have is None:
                out.append(f"{where}: no {t.names} list")
                continue
            lacks, extra = [n for n in want if n not in have], [n for n in have if n not in want]
            why = "; ".join(filter(None, [f"lacks {lacks}" if lacks else "", f"has unknown {extra}" if extra else ""]))
            out.append(f"{where}: {t.names} {have} is not the catalogue's {want}" + (f" ({why})" if why else ""))
    if not out and render(text, lists) != text:  # e.g. spacing inside a generated line
        out.append("generated lines differ from what `python -m pathomix.schema` writes")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pathomix.schema", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schema", type=Path, default=SCHEMA, help=f"the config schema (default: {SCHEMA})")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when the schema is stale")
    args = ap.parse_args(argv)
    setup_logging()
    text = args.schema.read_text()
    problems = check(text)
    if args.check:
        for p in problems:
            log.error("%s: %s", args.schema, p)
        if problems:
            log.error("regenerate it: python -m pathomix.schema --schema %s", args.schema)
        return int(bool(problems))
    new = render(text)
    if new != text:
        with atomic_path(args.schema) as tmp:
            tmp.write_text(new)
        log.info("%s: rewrote the generated lines (%d place(s) were stale)", args.schema, len(problems) or 1)
    else:
        log.info("%s: up to date", args.schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
