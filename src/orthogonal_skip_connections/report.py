"""The study report: read run dirs back, compare skip kinds with error bars over seeds.

``build_report(paths, out_dir)`` finds every classifier run under ``paths`` (single
runs, Hydra multirun sweep dirs, several sweeps), and every other app's run dir, and
writes into ``out_dir``:

- ``results.csv``: tidy, one row per classifier run (config keys and final metrics,
  failed and diverged runs included with their status);
- ``report.md`` and a self-contained ``report.html`` (figures embedded);
- figures as PNG: test-accuracy curves per task with bands over seeds.

Statistics: mean +- std and a 95% t-interval over seeds; each kind is compared with
``identity`` by the paired difference over the seeds both have (t-interval), and the
verdict says "not detectable" when that interval contains 0.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .plots import band, plt, savefig

__all__ = ["RunRecord", "find_runs", "results_rows", "task_tables", "build_report", "CSV_COLUMNS"]

CSV_COLUMNS = [
    "task", "dataset", "model_type", "variant", "skip_kind", "method", "init", "seed", "status", "epochs",
    "planned_epochs", "steps", "batch_size", "lr", "test_acc", "best_test_acc", "test_loss", "train_loss",
    "train_time_s", "step_time_s", "epochs_to_target", "target_acc", "skip_identity_distance_mean",
    "skip_orth_error_max", "skip_negative_det_count", "device", "run_dir",
]


@dataclass
class RunRecord:
    """One classifier run dir as read back from disk."""

    path: Path
    config: dict
    summary: dict | None
    evals: list[dict] = field(default_factory=list)  # (epoch, test_acc) records of metrics.jsonl

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "unknown")
        return "incomplete" if (self.path / "checkpoint.pt").exists() else "failed"

    @property
    def variant(self) -> str:
        m = self.config["model"]
        kind = m["skip_kind"]
        if kind != "learnable_orth":
            return kind
        method = m.get("method") or m.get("update_rule") or "steepest"
        return f"{kind}/{method}" + ("/haar" if m.get("init") == "haar" else "")

    @property
    def task(self) -> str:
        return f"{self.config['dataset']['name']}/{self.config['model']['model_type']}"


def _load_yaml(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None


def _is_classifier_config(cfg) -> bool:
    return isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and "skip_kind" in cfg["model"] \
        and isinstance(cfg.get("dataset"), dict)


def find_runs(paths: list[Path]) -> tuple[list[RunRecord], list[Path]]:
    """Classifier runs and other apps' run dirs (those with a summary.json) under ``paths``.

    A classifier run dir holds config.yaml (written once its config was valid) or
    Hydra's .hydra/config.yaml (always written), naming ``model.skip_kind``."""
    runs, others, seen = [], [], set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ValueError(f"no such run dir: {root}")
        candidates = [root] + sorted(p for p in root.rglob("*") if p.is_dir() and p.name != ".hydra")
        for d in candidates:
            if d.resolve() in seen:
                continue
            cfg = _load_yaml(d / "config.yaml") if (d / "config.yaml").exists() else None
            if cfg is None and (d / ".hydra" / "config.yaml").exists():
                cfg = _load_yaml(d / ".hydra" / "config.yaml")
            if _is_classifier_config(cfg):
                seen.add(d.resolve())
                summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
                evals = []
                if (d / "metrics.jsonl").exists():
                    for line in (d / "metrics.jsonl").read_text().splitlines():
                        rec = json.loads(line)
                        if rec.get("type") == "eval":
                            evals.append({"epoch": rec["epoch"], "test_acc": rec["test_acc"]})
                runs.append(RunRecord(d, cfg, summary, evals))
            elif (d / "summary.json").exists() and not any(parent in seen for parent in d.resolve().parents):
                seen.add(d.resolve())
                others.append(d)
    return runs, others


def _target_acc(runs: list[RunRecord]) -> float | None:
    """The fixed accuracy of "epochs to reach": 95% of identity's mean final accuracy
    (of all completed runs when there is no identity), floored to a whole percent."""
    done = [r for r in runs if r.status == "completed" and r.summary.get("test_acc") is not None]
    base = [r for r in done if r.variant == "identity"] or done
    if not base:
        return None
    return float(math.floor(0.95 * np.mean([r.summary["test_acc"] for r in base])))


def results_rows(runs: list[RunRecord]) -> list[dict]:
    """One tidy row per run (CSV_COLUMNS), sorted by task, variant, seed."""
    targets = {t: _target_acc([r for r in runs if r.task == t]) for t in {r.task for r in runs}}
    rows = []
    for r in runs:
        s = r.summary or {}
        m, target = r.config["model"], targets[r.task]
        reached = [e["epoch"] for e in r.evals if target is not None and e["test_acc"] >= target]
        steps = s.get("steps")
        rows.append({
            "task": r.task, "dataset": r.config["dataset"]["name"], "model_type": m["model_type"],
            "variant": r.variant, "skip_kind": m["skip_kind"],
            "method": r.variant.split("/")[1] if r.variant.startswith("learnable_orth") else "",
            "init": m.get("init") if m["skip_kind"] == "learnable_orth" else "", "seed": r.config.get("seed"),
            "status": r.status, "epochs": s.get("epochs"), "planned_epochs": r.config["scheduler"]["epochs"],
            "steps": steps, "batch_size": r.config.get("batch_size"), "lr": r.config["optimizer"]["lr"],
            "test_acc": s.get("test_acc"), "best_test_acc": s.get("best_test_acc"), "test_loss": s.get("test_loss"),
            "train_loss": s.get("train_loss"), "train_time_s": s.get("train_time_s"),
            "step_time_s": s["train_time_s"] / steps if steps else None,
            "epochs_to_target": reached[0] if reached else None, "target_acc": target,
            "skip_identity_distance_mean": s.get("skip_identity_distance_mean"),
            "skip_orth_error_max": s.get("skip_orth_error_max"),
            "skip_negative_det_count": s.get("skip_negative_det_count"), "device": s.get("device"),
            "run_dir": str(r.path),
        })
    order = _variant_order([r["variant"] for r in rows])
    rows.sort(key=lambda r: (r["task"], order.index(r["variant"]), r["seed"] if r["seed"] is not None else -1))
    return rows


def _variant_order(variants) -> list[str]:
    known = ["identity", "zero", "fixed_orth", "learnable_orth", "random", "linear", "scalar", "idempotent"]
    return sorted(set(variants), key=lambda v: (known.index(v.split("/")[0]) if v.split("/")[0] in known
                                                else len(known), v))


def t_interval(x) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval; low = high = nan for fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in x if v is not None], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def _mean(values) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else math.nan


def task_tables(rows: list[dict]) -> dict[str, list[dict]]:
    """Per task, one summary row per variant (statistics over its completed seeds)."""
    tables = {}
    for task in sorted({r["task"] for r in rows}):
        trows = [r for r in rows if r["task"] == task]
        ok = [r for r in trows if r["status"] == "completed"]
        base_time = _mean([r["step_time_s"] for r in ok if r["variant"] == "identity"])
        base_acc = {r["seed"]: r["test_acc"] for r in ok if r["variant"] == "identity"}
        table = []
        for variant in _variant_order([r["variant"] for r in trows]):
            vrows = [r for r in trows if r["variant"] == variant]
            vok = [r for r in vrows if r["status"] == "completed"]
            accs = [r["test_acc"] for r in vok]
            mean, lo, hi = t_interval(accs)
            lo, hi = max(lo, 0.0), min(hi, 100.0)  # an accuracy interval stays within [0, 100]
            diffs = [r["test_acc"] - base_acc[r["seed"]] for r in vok if r["seed"] in base_acc]
            dmean, dlo, dhi = t_interval(diffs) if variant != "identity" else (math.nan,) * 3
            reached = [r["epochs_to_target"] for r in vok]
            table.append({
                "variant": variant, "runs": len(vrows), "completed": len(vok),
                "failed": [f"seed {r['seed']}: {r['status']}" for r in vrows if r["status"] != "completed"],
                "acc_mean": mean, "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
                "acc_lo": lo, "acc_hi": hi,
                "step_time_ratio": _mean([r["step_time_s"] for r in vok]) / base_time if base_time else math.nan,
                "epochs_to_target": _mean(reached) if all(x is not None for x in reached) else math.nan,
                "reached_target": f"{sum(x is not None for x in reached)}/{len(reached)}",
                "identity_distance": _mean([r["skip_identity_distance_mean"] for r in vok]),
                "diff_mean": dmean, "diff_lo": dlo, "diff_hi": dhi, "paired_seeds": len(diffs),
                "verdict": _verdict(variant, dmean, dlo, dhi, len(diffs), spread=float(np.ptp(diffs)) if diffs else 0.0),
                "target_acc": trows[0]["target_acc"],
            })
        tables[task] = table
    return tables


def _verdict(variant, dmean, dlo, dhi, n, spread: float = 1.0) -> str:
    if variant == "identity":
        return "baseline"
    if n < 2 or math.isnan(dlo):
        return f"cannot compare with identity ({n} paired seed{'s' if n != 1 else ''}; need 2)"
    if spread < 1e-9:  # a t-interval of (round-off) identical differences has no width: say what was seen
        return (f"{'better' if dmean > 0 else 'worse' if dmean < 0 else 'no different'} than identity by "
                f"{abs(dmean):.2f} points in each of {n} paired seeds (no spread: more seeds would say "
                "how sure that is)")
    if dlo <= 0 <= dhi:
        return (f"no detectable difference from identity at {n} seeds "
                f"(95% CI of the difference [{dlo:+.2f}, {dhi:+.2f}] points contains 0)")
    word = "better" if dmean > 0 else "worse"
    return f"{word} than identity by {abs(dmean):.2f} points (95% CI [{dlo:+.2f}, {dhi:+.2f}], {n} paired seeds)"


def _fmt(x, spec=".2f", none="–") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table_md(table: list[dict]) -> list[str]:
    target = table[0]["target_acc"] if table else None
    lines = [
        f"| skip | runs | test acc % (mean ± std) | 95% CI | step time / identity | "
        f"epochs to {_fmt(target, '.0f')}% | final ‖W − I‖_F | difference vs identity (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        runs = f"{t['completed']}/{t['runs']}" + (f" ({'; '.join(t['failed'])})" if t["failed"] else "")
        diff = "–" if t["variant"] == "identity" or math.isnan(t["diff_mean"]) else \
            f"{t['diff_mean']:+.2f} [{_fmt(t['diff_lo'], '+.2f')}, {_fmt(t['diff_hi'], '+.2f')}]"
        reach = _fmt(t["epochs_to_target"], ".1f") if not math.isnan(t["epochs_to_target"]) else \
            f"– (reached {t['reached_target']})"
        lines.append(
            f"| {t['variant']} | {runs} | {_fmt(t['acc_mean'])} ± {_fmt(t['acc_std'])} | "
            f"[{_fmt(t['acc_lo'])}, {_fmt(t['acc_hi'])}] | {_fmt(t['step_time_ratio'], '.2f')} | {reach} | "
            f"{_fmt(t['identity_distance'], '.3f')} | {diff} |"
        )
    return lines


def _curves_figure(task: str, runs: list[RunRecord], out_dir: Path) -> Path | None:
    by_variant: dict[str, list[RunRecord]] = {}
    for r in runs:
        if r.task == task and r.status == "completed" and r.evals:
            by_variant.setdefault(r.variant, []).append(r)
    if not by_variant:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in _variant_order(list(by_variant)):
        group = by_variant[variant]
        epochs = sorted(set.intersection(*[{e["epoch"] for e in r.evals} for r in group]))
        ys = [[next(e["test_acc"] for e in r.evals if e["epoch"] == ep) for ep in epochs] for r in group]
        band(ax, epochs, ys, label=f"{variant} (n={len(group)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{task}: test accuracy, mean ± std over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return savefig(fig, out_dir / f"accuracy_{re.sub(r'[^A-Za-z0-9]+', '_', task)}.png")


def _other_section(d: Path, out_dir: Path) -> tuple[str, list[str], list[Path]]:
    """Title, markdown lines and figures of another app's run dir (teacher-student,
    synthetic experiments, theorem): its summary's headline numbers and its figures."""
    summary = json.loads((d / "summary.json").read_text())
    title = summary.get("title") or d.name
    lines = [f"Question: {summary['question']}", ""] if isinstance(summary.get("question"), str) else []
    def flat(row: dict) -> dict:
        return {c: x for c, x in row.items() if isinstance(x, (int, float, str, bool)) or x is None}

    # the table: the app's own "report_table", else its first list of records (one row per
    # depth, kind, ...), else a dict of records (one entry per architecture, ...)
    table = summary.get("report_table")
    if not (isinstance(table, list) and table and isinstance(table[0], dict)):
        lists = [v for v in summary.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        nested = {k: v for k, v in summary.items() if isinstance(v, dict) and k != "meta"
                  and any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())}
        if lists:
            table = [flat(x) for x in lists[0]]
        elif nested:
            table = [{"": k, **flat(v)} for k, v in nested.items()]
        else:
            table = None
    if table:
        cols = list(dict.fromkeys(c for row in table for c in row))[:10]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in table:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    scalars = {k: v for k, v in summary.items()
               if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) < 80)}
    lines += [""] * bool(scalars) + [f"- {k}: {_cell(v)}" for k, v in list(scalars.items())[:12]]
    for key in ("findings", "verdict", "conclusion"):
        if isinstance(summary.get(key), str):
            lines += ["", summary[key]]
        elif isinstance(summary.get(key), list):
            lines += [""] + [f"- {x}" for x in summary[key]]
    figures = sorted(d.glob("*.png"))
    return title, lines, figures


def _cell(v) -> str:
    if isinstance(v, float):
        return _fmt(v, ".4g")
    return "–" if v is None else str(v)


def build_report(paths: list[Path], out_dir: Path, title: str = "Do orthogonal skips help?") -> dict:
    """Write results.csv, report.md, report.html and figures into ``out_dir``; return
    ``{"rows": ..., "tables": ..., "report": path}``."""
    out_dir = Path(out_dir)
    runs, others = find_runs([Path(p) for p in paths])
    others = [d for d in others if d.resolve() != out_dir.resolve()]
    if not runs and not others:
        raise ValueError(f"no run dirs found under {', '.join(map(str, paths))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = results_rows(runs)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    tables = task_tables(rows)

    md = [f"# {title}", ""]
    if rows:
        n_bad = sum(r["status"] != "completed" for r in rows)
        md += [f"{len(rows)} classifier runs over {len(tables)} task(s)"
               + (f"; {n_bad} did not complete (listed in the tables, kept in results.csv)." if n_bad else "."),
               "Accuracy is the final test accuracy; the 95% intervals are Student-t over seeds; "
               "the difference vs identity is paired by seed. Step times exclude evaluation; runs made "
               "side by side (osc study's jobs > 1) share the machine, so compare them with care.", ""]
    figures: list[tuple[str, Path]] = []
    for task, table in tables.items():
        md += [f"## Classification: {task}", ""] + _table_md(table) + [""]
        md += ["Verdicts:", ""] + [f"- **{t['variant']}**: {t['verdict']}." for t in table
                                   if t["variant"] != "identity"] + [""]
        fig = _curves_figure(task, runs, out_dir)
        if fig is not None:
            md += [f"![{task} accuracy]({fig.name})", ""]
            figures.append((task, fig))
    for d in others:
        sec_title, lines, figs = _other_section(d, out_dir)
        md += [f"## {sec_title}", "", f"Run dir: `{d}`", ""] + lines + [""]
        for fig in figs:
            local = out_dir / f"{d.name}_{fig.name}"
            if fig.resolve() != local.resolve():
                local.write_bytes(fig.read_bytes())
            md += [f"![{fig.stem}]({local.name})", ""]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    (out_dir / "report.html").write_text(_html("\n".join(md), out_dir, title))
    return {"rows": rows, "tables": tables, "report": report_md}


def _html(markdown: str, base: Path, title: str) -> str:
    """A small markdown-to-HTML rendering of our own report (headings, lists, tables,
    images inlined as base64) so report.html is one self-contained file."""
    out, in_table = [], False

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
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
