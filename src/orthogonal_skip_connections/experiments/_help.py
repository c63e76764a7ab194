"""``osc <app> --help``: every option of an app with its default, its type (from the
schema) and what its YAML comment says it means and allows."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from ._compose import CONFIG_DIR, kind_of, schema_node
from ._registry import APPS, load_app

__all__ = ["help_text"]


def yaml_options(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(header comment lines, [(dotted key, default as written, comment)]) of an app's YAML,
    read line by line so that the comments, which say what each key means and which values
    it allows, are kept. The defaults list and the hydra block are left out."""
    header, options, stack, skip_indent = [], [], [], None
    seen_key = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not seen_key:
                header.append(stripped.lstrip("#").strip())
            continue
        indent = len(line) - len(stripped)
        if skip_indent is not None:
            if indent > skip_indent or stripped.startswith("- "):
                continue
            skip_indent = None
        m = re.match(r"([A-Za-z_][\w-]*):\s*(.*)$", stripped)
        if m is None:
            continue
        seen_key = True
        key, rest = m.groups()
        value, _, comment = ("", "", rest[1:]) if rest.startswith("#") else rest.partition(" #")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0 and key in ("defaults", "hydra"):
            skip_indent = indent
            continue
        path = ".".join([k for _, k in stack] + [key])
        if not value.strip():
            stack.append((indent, key))
        options.append((path, value.strip(), comment.strip().lstrip("#").strip()))
    return header, options


def help_text(name: str) -> str:
    """``osc <app> --help``: every option of the app with its default, its type and what its
    YAML comment says it means and allows; config groups with their choices."""
    app = load_app(name)
    text = (Path(CONFIG_DIR) / f"{name}.yaml").read_text()
    header, options = yaml_options(text)
    lines = [f"usage: osc {name} [key=value ...] [hydra.run.dir=DIR] [-m for a sweep]", "",
             f"{name}: {APPS[name][1]}", ""]
    lines += [h for h in header if h] + [""]
    groups = re.findall(r"^\s*-\s*(\w+):\s*(\w+)\s*(?:#\s*(.*))?$", text, flags=re.M)  # defaults' groups
    for group, default, comment in groups:
        choices = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        lines.append(f"  {group}={default}  (config group; one of: {', '.join(choices)}){'  ' + comment if comment else ''}")
    lines.append("options (key = default: type; meaning and allowed values):")
    width = min(34, max(len(f"{k} = {v}") for k, v, _ in options if v) + 2)
    for key, value, comment in options:
        node = schema_node(app.schema, key.split("."))
        if not value:  # a mapping: its keys follow
            lines.append(f"  {key}:" + (f"  {comment}" if comment else ""))
            continue
        origin = typing.get_origin(node)
        kind = kind_of(node) if node is not None and origin is not dict else "a mapping"
        lines.append(f"  {f'{key} = {value}':<{width}} {kind}" + (f"; {comment}" if comment else ""))
    lines += ["", "Lists are written key=[a,b]; nested keys key.sub=value. A mistyped key, a wrong type or a value",
              "out of range is one line and exit code 2, before anything is written.",
              f"Hydra's own options: osc {name} --hydra-help"]
    return "\n".join(lines)
