"""``osc <app> --help``: every option of an app with its default, its type (from the
schema) and what its YAML comment says it means and allows."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from ._compose import CONFIG_DIR, kind_of, schema_node
from ._registry import APPS, load_app

__all__ = ["help_text"]


def _depth(text: str) -> int:
    """Open brackets of a YAML flow value ([...] or {...}) outside quotes."""
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def yaml_options(text: str) -> tuple[list[str], list[tuple[str | None, str, str]]]:
    """(header comment lines, [(dotted key, default as written, comment)]) of an app's YAML,
    read line by line so that the comments, which say what each key means and which values
    it allows, are kept: a comment line indented past the key above it continues that key's
    comment; one at a key's own indent is a note on what follows, listed as (None, "", note).
    A flow list or mapping written over several lines is joined into one value. The defaults
    list and the hydra block are left out."""
    header, options, stack, skip_indent = [], [], [], None
    seen_key, notes = False, []
    last_indent = None  # indent of the key whose comment a deeper comment line continues
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        stripped = line.lstrip()
        if not stripped:
            last_indent = None
            continue
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if not seen_key:
                header.append(comment)
            elif skip_indent is not None and indent > skip_indent:
                continue
            elif last_indent is not None and indent > last_indent:
                path, value, before = options[-1]
                options[-1] = (path, value, f"{before} {comment}".strip())
            else:
                notes.append(comment)
                last_indent = None
            continue
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
        while _depth(value) > 0 and i < len(lines):  # a flow value continued on the next lines
            more, _, more_comment = lines[i].strip().partition(" #")
            i += 1
            value = f"{value.rstrip()} {more.strip()}"
            comment = f"{comment} {more_comment}" if more_comment else comment
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0 and key in ("defaults", "hydra"):
            skip_indent, notes, last_indent = indent, [], None
            continue
        path = ".".join([k for _, k in stack] + [key])
        if not value.strip():
            stack.append((indent, key))
        options += [(None, "", note) for note in notes]
        notes = []
        options.append((path, value.strip(), comment.strip().lstrip("#").strip()))
        last_indent = indent
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
        if key is None:  # a note on the keys that follow
            lines.append(f"  # {comment}")
            continue
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
