"""Render a summary's ``report`` section (see :func:`~orthogonal_skip_connections.rundir.check_report`)
as it is: title, question, tables with their labels and units, verdict, figures. And a
small markdown-to-HTML rendering of the whole report."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

__all__ = ["section_markdown", "cell", "to_html"]


def cell(v) -> str:
    """A table cell: floats to 4 significant digits, None and NaN as a dash."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else format(v, ".4g")
    if isinstance(v, (list, tuple)):
        return ", ".join(cell(x) for x in v)
    return "–" if v is None else str(v)


def _header(col: dict) -> str:
    return f"{col['label']} ({col['unit']})" if col.get("unit") else col["label"]


def section_markdown(report: dict) -> list[str]:
    """Markdown lines of one report section (without its heading or figures)."""
    lines = [f"Question: {report['question']}", ""]
    for table in report["tables"]:
        cols = table["columns"]
        lines += [f"*{table['caption']}*", "", "| " + " | ".join(_header(c) for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(row.get(c["key"])) for c in cols) + " |" for row in table["rows"]]
        lines.append("")
    lines += [f"**Verdict**: {report['verdict']}"]
    return lines


def to_html(markdown: str, base: Path, title: str) -> str:
    """A small markdown-to-HTML rendering of our own report (headings, lists, tables,
    images inlined as base64) so report.html is one self-contained file."""
    out, in_table = [], False

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"(?<![*\w])\*([^*]+?)\*(?![*\w])", r"<i>\1</i>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(re.fullmatch(r"-+", c) for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                out.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                out.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        img = re.fullmatch(r"!\[(.*)\]\((.+)\)", line)
        if img:
            data = base64.b64encode((base / img.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(img.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "font-size:90%}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
