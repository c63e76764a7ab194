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
    text = f"{col['label']} ({col['unit']})" if col.get("unit") else col["label"]
    return _escape(text)


def _escape(text: str) -> str:
    """A table cell's text with its pipes (norms ||x||) escaped for a markdown table."""
    return text.replace("|", "\\|")


def section_markdown(report: dict) -> list[str]:
    """Markdown lines of one report section (without its heading or figures)."""
    lines = [f"**Question**: {report['question']}", ""]
    if report.get("measures"):
        lines += ["What is measured:", ""] + [f"- {m}" for m in report["measures"]] + [""]
    for table in report["tables"]:
        cols = table["columns"]
        lines += [f"*{table['caption']}*", "", "| " + " | ".join(_header(c) for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_escape(cell(row.get(c["key"]))) for c in cols) + " |"
                  for row in table["rows"]]
        lines.append("")
        if table.get("note"):
            lines += [f"Note: {table['note']}", ""]
    if report.get("notes"):
        lines += [f"- {n}" for n in report["notes"]] + [""]
    lines += [f"**Verdict**: {report['verdict']}"]
    return lines


def to_html(markdown: str, base: Path, title: str) -> str:
    """A small markdown-to-HTML rendering of our own report (headings, lists, tables,
    images inlined as base64) so report.html is one self-contained file, laid out for a page
    about 1400 px wide: text in a readable column, a table that is still too wide scrolls
    inside its own box (its header stays in view), a figure keeps its own width up to the
    page's (multi-panel figures are drawn for that width by the apps)."""
    out: list[str] = []
    state = {"table": False, "list": False}

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"(?<![*\w])\*([^*]+?)\*(?![*\w])", r"<i>\1</i>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def close(what: str) -> None:
        if state[what]:
            out.append("</table></div>" if what == "table" else "</ul>")
            state[what] = False

    for line in markdown.splitlines():
        if line.startswith("|"):
            close("list")
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if all(re.fullmatch(r"-+", c) for c in cells):
                continue
            if not state["table"]:
                out.append('<div class="table"><table>')
                out.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells) + "</tr>")
                state["table"] = True
            else:
                out.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>")
            continue
        close("table")
        if line.startswith("- "):
            if not state["list"]:
                out.append("<ul>")
                state["list"] = True
            out.append(f"<li>{inline(line[2:])}</li>")
            continue
        close("list")
        img = re.fullmatch(r"!\[(.*)\]\((.+)\)", line)
        if img:
            data = base64.b64encode((base / img.group(2)).read_bytes()).decode()
            src = f"data:image/png;base64,{data}"
            out.append(f'<figure><img alt="{html.escape(img.group(1))}" src="{src}">'
                       f'<figcaption>{html.escape(img.group(1))}</figcaption></figure>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    close("table")
    close("list")
    style = ("body{font-family:sans-serif;max-width:1320px;margin:1.5em auto;padding:0 1em;line-height:1.45}"
             "p,ul{max-width:1100px}h2{border-top:2px solid #ddd;padding-top:.6em;margin-top:2em}"
             "div.table{max-width:100%;overflow-x:auto;margin:.6em 0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 7px;font-size:85%;"
             "vertical-align:top}th{background:#f3f3f3;position:sticky;top:0;max-width:16em;"
             "text-align:left}td{max-width:28em;overflow-wrap:anywhere}"
             "figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}"
             "figcaption{font-size:80%;color:#666}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
