"""Layer 5, the study report: read run dirs back and write results.csv (one row per run),
comparisons.csv (one row per compared arm: the tables' numbers, p-values included), report.md
and a self-contained report.html.

``build_report(paths, out_dir)`` finds every run dir under ``paths`` (single runs, Hydra
multirun sweep dirs, several sweeps, study dirs). Classifier runs (run_experiments) make
the classification tables (:mod:`.classification`: numbers over seeds, paired verdicts),
and where they come at several depths of one CIFAR ResNet family, the skip distance vs
depth section (:mod:`.depth`: the OrthResNet theorem's question, do the W_i approach I);
every other finished run is rendered from its summary's ``report`` section as it is
(:mod:`.render`), with its figures.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Callable

from ..rundir import RUN, SUMMARY, RunDir, check_dir_writable, check_report, make_dir
from ..runs import UserError, atomic_write_text
from .classification import (
    CSV_COLUMNS,
    RunRecord,
    caveat,
    curves_figure,
    _read_object,
    find_runs,
    mode_tables,
    moved_from_start_arms,
    results_rows,
    stopped_note,
    table_markdown,
    task_tables,
    unfinished_note,
)
from .depth import depth_figure, depth_groups, depth_markdown, depth_tables, profile_rows
from .render import section_markdown, to_html

__all__ = ["RunRecord", "find_runs", "results_rows", "task_tables", "mode_tables", "build_report", "CSV_COLUMNS",
           "COMPARISON_COLUMNS"]


# comparisons.csv: per task and arm (skip variant, or residual mode x skip variant), what the
# report's tables show: accuracy over seeds, the paired difference from the baseline (identity,
# or add/identity), the paired t-test's p-value and Holm's adjustment over the table, the epochs to
# target_acc (the accuracy epochs_to_target is counted to), the verdict
COMPARISON_COLUMNS = [
    "task", "residual_mode", "variant", "runs", "completed", "seeds", "acc_mean", "acc_std", "acc_lo", "acc_hi",
    "diff_mean", "diff_lo", "diff_hi", "paired_seeds", "p_value", "p_holm", "comparisons", "step_time_ratio",
    "epochs_to_target", "target_acc", "identity_distance", "start_distance", "verdict", "acc_ci_clipped", "diff_ci_clipped",
]  # *_ci_clipped: which end of the interval was cut at 0 / 100 (accuracy) or -100 / +100 points (low, high)


def _cell(v):
    """A CSV cell: NaN and None empty, as in results.csv."""
    return "" if v is None or (isinstance(v, float) and v != v) else v


def _ends(cut: tuple[bool, bool]) -> str:
    """(low cut, high cut) as a CSV cell: "low", "high", "low high" or empty."""
    return " ".join(end for end, c in zip(("low", "high"), cut) if c)


def _sweep_names(dirs: list[Path]) -> dict[Path, str]:
    """A name per run dir for its heading: its dir's name, and for a sweep's job (a dir beside
    others of the same app) the overrides in which it differs from the other jobs of its sweep,
    read from Hydra's ``.hydra/overrides.yaml`` ("0 (lr=0.001)", where the name alone said "0").
    Runs of different apps side by side are no sweep: each app has its own keys."""
    import yaml

    def overrides(d: Path) -> dict:
        try:
            listed = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        pairs = [str(o).split("=", 1) for o in listed] if isinstance(listed, list) else []
        return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].lstrip("+~").startswith("hydra")}

    names = {d: d.name for d in dirs}
    sweeps: dict[tuple, list[Path]] = {}
    for d in dirs:
        sweeps.setdefault((d.parent, RunDir.app_of(d)), []).append(d)
    for jobs in sweeps.values():
        if len(jobs) > 1:
            got = {d: overrides(d) for d in jobs}
            keys = sorted({k for o in got.values() for k in o}, key=lambda k: (min(
                list(o).index(k) for o in got.values() if k in o), k))  # (ties by name: the same order every time)
            differ = [k for k in keys if len({o.get(k) for o in got.values()}) > 1]
            for d in jobs:
                if differ:
                    said = ", ".join(f"{k}={got[d].get(k, '(default)')}" for k in differ)
                    names[d] = f"{d.name} ({said})"
    return names


def _section(d: Path, summary: dict, out_dir: Path, advice: Callable[[Path], str] | None = None,
             name: str | None = None) -> list[str]:
    """Markdown of another app's run dir (``summary``: its summary.json): its report section and
    links to its figures. A malformed section is a one-line UserError ending in ``advice(d)``
    (see :func:`.classification.find_runs`), else in moving the dir out of the dirs osc report reads."""
    report = summary.get("report")
    if not isinstance(report, dict):
        return [f"## {d.name}", "", f"Run dir: `{d}`: no report section in its summary.json (an older run?)", ""]
    try:
        check_report(report)
    except ValueError as err:
        fix = advice(d) if advice is not None else "move its run dir out of the dirs given to osc report"
        raise UserError(f"{d / 'summary.json'}: malformed report section ({str(err)[:120]}); {fix}") from None
    md = [f"## {name or d.name}: {report['title']}", "", f"Run dir: `{d}`", ""] + section_markdown(report) + [""]
    for name in report["figures"]:
        fig = d / name
        if fig.is_file():  # linked where it lies (report.html inlines it): never copied
            if report.get("captions", {}).get(name):
                md += [f"*{fig.name}*: {report['captions'][name]}", ""]
            md += [f"![{d.name}: {fig.stem}]({Path(os.path.relpath(fig.resolve(), out_dir.resolve())).as_posix()})", ""]
    return md


def _first_clause(verdict: str) -> str:
    """A verdict's answer: its text up to the first ". ", "; " or " - " outside brackets and norm
    bars (a clause inside brackets, "(learnable_orth lowest; its difference ...)", belongs to the
    answer; the minus in "||h_i - W_i||" is no clause break)."""
    depth, norm, i = 0, False, 0
    while i < len(verdict):
        if verdict.startswith("||", i):  # opens or closes a norm
            norm, i = not norm, i + 2
            continue
        depth += (verdict[i] in "([") - (verdict[i] in ")]")
        if depth == 0 and not norm and verdict.startswith((". ", "; ", " - "), i):
            return verdict[:i]
        i += 1
    return verdict


def _in_short(tables: dict, modes: dict, others: dict[Path, dict], names: dict[Path, str] | None = None) -> list[str]:
    """The report's answers on one screen, one line per section (none for a single section):
    per classification task the arms better than, worse than and not told from the baseline, and
    the first clause of each other app's verdict (``others``: run dir -> summary.json; ``names``:
    run dir -> the name its section has)."""
    lines = []
    for group, name in ((tables, "variant"), (modes, None)):
        for task, table in group.items():
            arms = {"better": [], "worse": [], "other": []}
            for t in table:
                if t["verdict"] == "baseline":
                    continue
                arm = t["variant"] if name else f"{t['residual_mode']}/{t['variant']}"
                word = t["verdict"].split(" ", 1)[0]
                arms[word if word in ("better", "worse") else "other"].append(arm)
            if not any(arms.values()):
                continue
            base = "identity" if name else "add/identity"
            said = [f"better than {base}: {', '.join(arms['better'])}" if arms["better"] else "",
                    f"worse than {base}: {', '.join(arms['worse'])}" if arms["worse"] else "",
                    f"not told apart from {base}: {', '.join(arms['other'])}" if arms["other"] else ""]
            lines.append(f"- **{'Residual modes: ' if not name else ''}{task}**: {'; '.join(x for x in said if x)}.")
    for d, summary in others.items():
        try:
            verdict = str(summary["report"]["verdict"])
        except (KeyError, TypeError):  # no report section: _section says so
            continue
        lines.append(f"- **{(names or {}).get(d, d.name)}**: {_first_clause(verdict).rstrip('.')}.")
    if len(lines) < 2:
        return []
    return ["## In short", "", *lines, "", "Each section below gives the numbers, their intervals and the verdict's "
            "reasons.", ""]


_MANIFEST = ".osc-report-files"  # the names of the files the last report in a dir wrote, one per line


def _figure_names(md: str) -> list[str]:
    """The images report.md shows from its own dir (``![caption](name.png)``; a caption may hold
    brackets: ``digits/vit_tiny[width=32]``)."""
    return re.findall(r"\]\(([^()\s/]+\.(?:png|svg|jpe?g))\)", md)


def _write_csv(path: Path, columns: list[str], rows) -> None:
    """A CSV of ``rows`` (dicts) under ``columns``, written whole or not at all."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _forget_earlier_files(out_dir: Path, names: list[str]) -> None:
    """Remove what the previous report in ``out_dir`` wrote and this one did not (a figure of a
    task no longer among the runs, a comparisons.csv of arms no longer there), which would
    otherwise sit beside the new report as if it belonged to it; then record this report's
    files. Only names a report of this package listed are removed: a dir without the list
    (a user's own files, a report made before it existed) loses nothing."""
    manifest = out_dir / _MANIFEST
    try:
        earlier = manifest.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        earlier = []
    for name in set(earlier) - set(names):
        if name and "/" not in name and name not in (".", ".."):
            (out_dir / name).unlink(missing_ok=True)
    atomic_write_text(manifest, "".join(f"{name}\n" for name in sorted(set(names))))


def build_report(paths: list[Path], out_dir: Path, title: str = "Do orthogonal skips help?",
                 advice: Callable[[Path], str] | None = None) -> dict:
    """Write results.csv, comparisons.csv (when there are classifier arms to compare), report.md,
    report.html and figures into ``out_dir``; return ``{"rows": ..., "tables": ..., "report": path,
    "written": the names of the other files}``. ``advice``: what a run dir that cannot be read
    (or whose report section is malformed) asks for (see :func:`.classification.find_runs`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a directory (made if missing)")
    check_dir_writable(out_dir, "--out")  # under a file, or not writable: one line before any run is read
    runs, others, unfinished = find_runs([Path(p) for p in paths], advice)
    kept = [d for d in others if d.resolve() != out_dir.resolve()]  # (a study's report, in its own dir, leaves it out)
    if not runs and not kept and others:
        raise UserError(f"the only run under {', '.join(map(str, paths))} is {others[0]}, which is --out: a report "
                        "of an app's run is not written into that run's dir; give another --out")
    others = kept
    if not runs and not others:
        # a summary without the run.json a run dir is known by (removed, or copied without it): say so
        orphan = next((f.parent for p in paths for f in Path(p).rglob(SUMMARY) if not (f.parent / RUN).is_file()),
                      None)
        if unfinished:  # (an app's run stopped, or still going: what it is, not "no run dirs")
            raise UserError(f"no finished run under {', '.join(map(str, paths))}; without a summary.json yet: "
                            f"{unfinished_note(unfinished)}")
        raise UserError(f"no run dirs found under {', '.join(map(str, paths))}" + (
            "" if orphan is None else f" ({orphan} holds a {SUMMARY} but no {RUN}, by which a run dir is known)"))
    make_dir(out_dir, "--out")
    rows = results_rows(runs)
    _write_csv(out_dir / "results.csv", CSV_COLUMNS, ({k: ("" if v is None else v) for k, v in r.items()} for r in rows))
    tables = task_tables(rows)
    modes = mode_tables(rows)
    arms = [{"task": task, "residual_mode": t.get("residual_mode", "add"), **t}
            for group in (tables, modes) for task, table in group.items() for t in table]
    if arms:  # the tables' numbers, machine-readable: one row per arm and task
        _write_csv(out_dir / "comparisons.csv", COMPARISON_COLUMNS,
                   ({k: _cell(_ends(v) if k.endswith("_ci_clipped") else v) for k, v in a.items()} for a in arms))

    md = [f"# {title}", ""]
    if unfinished:
        md += [f"Not in this report, without a summary.json yet: {unfinished_note(unfinished)}.", ""]
    if rows:
        n_running = sum(r["status"] == "running" for r in rows)
        n_bad = sum(r["status"] not in ("completed", "running") for r in rows)
        md += [f"{len(rows)} classifier run{'s' if len(rows) != 1 else ''} over {len({r['task'] for r in rows})} "
               "task(s)" + (f"; {n_running} still running" if n_running else "")
               + (f"; {n_bad} did not complete" if n_bad else "")
               + (" (listed in the tables, kept in results.csv)." if n_running or n_bad else ".")
               + stopped_note(runs),
               "Accuracy is the final test accuracy; the 95% intervals are Student-t over seeds; "
               "the difference vs identity is paired by seed, and a verdict of better or worse also needs the "
               "paired t-test's p-value, Holm-adjusted over the task's comparisons with identity, below 0.05 (the "
               "intervals are per comparison). Step times are the median over epochs after the first (which also "
               "pays one-off costs) of an epoch's training time per step, evaluation excluded; they are shown as "
               "the mean ratio to identity with its range over seeds, because runs made side by side (osc "
               "study's jobs > 1, a sweep on the joblib launcher) share the machine and the ratio moves from one study to the next "
               "(benchmarks/skip_step_time.py measures it alone).", ""]
    summaries = {d: _read_object(d / "summary.json") for d in others}  # read once, for both uses
    names = _sweep_names(others)
    md += _in_short(tables, modes, summaries, names)
    for task, table in tables.items():
        md += [f"## Classification: {task}", "", caveat(task, table, [r for r in rows if r["task"] == task]), ""]
        md += table_markdown(table) + [""]
        verdicts = [f"- **{t['variant']}**: {t['verdict']}." for t in table if t["variant"] != "identity"]
        md += (["Verdicts:", ""] + verdicts if verdicts else
               ["No verdict: identity is the only skip kind here, nothing to compare it with."]) + [""]
        fig = curves_figure(task, runs, out_dir)
        if fig is not None:
            md += ["Test accuracy over epochs per skip kind (mean ± std over seeds; dotted: chance): how fast "
                   "each kind learns, and where it ends against identity.", "", f"![{task} accuracy]({fig.name})", ""]
        fig = curves_figure(task, runs, out_dir, key="identity_distance")
        if fig is not None:  # the question of the theorem: do the trained skip matrices approach I?
            md += ["How far the skip matrices are from I during training (mean over a run's skips of "
                   "||W - I||_F; 0 for a skip that is the identity, and at epoch 0 for arms that started at I): "
                   "where training takes the skips from their start. The theorem's question is "
                   "one of depth (in a deep enough net the orthogonal skips sit near I), which one depth cannot "
                   "answer: runs at several depths get the \"skip distance vs depth\" section.", "",
                   f"![{task} distance from I]({fig.name})", ""]
        away = moved_from_start_arms(task, runs)
        fig = curves_figure(task, runs, out_dir, key="start_distance") if away else None
        if fig is not None:  # a Haar start sits ~sqrt(2C) from I however far training moves it
            md += ["How far the skip matrices moved from where they started (mean over a run's skips of "
                   "||W - W_0||_F; 0 at epoch 0). Trained arms that started away from I (" + ", ".join(away) +
                   ") stay about sqrt(2 C) from I wherever training takes them (C channels: far rotations are "
                   "all about that far from I), so the figure above cannot show whether they moved; this one "
                   "does.", "", f"![{task} distance moved]({fig.name})", ""]
        fig = curves_figure(task, runs, out_dir, key="relu_kept")
        if fig is not None:  # post-activation ResNets, relu(W s + f(s)): a skip far from I loses part of its signal
            md += ["What the ReLU after each block's sum keeps of the skip path, ||relu(W s)||² / ||W s||² (mean over "
                   "the blocks, on the first 256 test images; `diagnostics.relu_kept_energy`). The stream s "
                   "leaving a block is a ReLU's output, so an identity skip keeps all of it but for the projection "
                   "shortcuts; a skip far from I mixes the channels of that non-negative stream, and the ReLU cuts "
                   "the negative part (about half for a Haar-random W).", "",
                   f"![{task} share kept by the ReLU]({fig.name})", ""]
    groups = depth_groups(runs)  # one dataset, one CIFAR ResNet family at several depths: the theorem's question
    depth = depth_tables(groups)
    profiles = profile_rows(groups)
    for key, table in depth.items():
        md += [f"## Skip distance vs depth: {key}", "",
               "The theorem's construction puts each skip W_i O(log m / m) from I in a net of m blocks, so in a "
               "deep enough net the learned orthogonal skips should approach I. Per skip variant: the final mean "
               "||W_i - I||_F over the blocks (per seed, then mean and 95% t-interval over seeds) and the accuracy "
               "at each depth; the per-seed log-log slope of that distance against m, with its t-interval over "
               "seeds, and the same slope for the spectral ||W_i - I||_2 (the theorem's norm), beside log(m)/m's "
               "slope over the same m (a falling distance has a negative slope).", ""]
        md += depth_markdown(key, table, profiles[key]) + [""]
        fig = depth_figure(key, table, groups, out_dir)
        if fig is not None:
            md += [f"![{key} skip distance vs depth]({fig.name})", ""]
    for task, table in modes.items():  # residual modes (add, orthogonal_update, rotation) x skips
        md += [f"## Residual modes: {task}", "",
               "Each residual mode (skips/residual.py) with each skip kind, against add residuals with identity "
               "skips, paired by seed; verdicts Holm-adjusted over the arms.", "",
               caveat(task, table, [r for r in rows if r["task"] == task]), ""]
        md += table_markdown(table) + [""]
        verdicts = [f"- **{t['residual_mode']} / {t['variant']}**: {t['verdict']}." for t in table
                    if t["verdict"] != "baseline"]
        md += (["Verdicts:", ""] + verdicts if verdicts else
               ["No verdict: add/identity is the only variant here, nothing to compare it with."]) + [""]
        fig = curves_figure(task, runs, out_dir, modes=True)
        if fig is not None:
            md += ["Test accuracy over epochs per residual mode (line style) and skip kind (colour), mean ± std "
                   "over seeds: how fast each arm learns, and where it ends against add/identity.", "",
                   f"![{task} accuracy by residual mode]({fig.name})", ""]
        fig = curves_figure(task, runs, out_dir, modes=True, key="identity_distance")
        if fig is not None:
            md += ["How far the skip matrices are from I during training, per residual mode (mean over a run's "
                   "skips of ||W - I||_F; arms with identity skips have none): does the residual mode change where "
                   "training takes them?", "", f"![{task} distance from I by residual mode]({fig.name})", ""]
    for d in others:
        md += _section(d, summaries[d], out_dir, advice, names[d])
    report_md = out_dir / "report.md"
    atomic_write_text(report_md, "\n".join(md) + "\n")  # (a report killed mid-write leaves the last one whole)
    atomic_write_text(out_dir / "report.html", to_html("\n".join(md), out_dir, title))
    written = ["report.html", "results.csv"] + (["comparisons.csv"] if arms else [])  # beside report.md
    _forget_earlier_files(out_dir, ["report.md", *written, *_figure_names("\n".join(md))])
    return {"rows": rows, "tables": tables, "mode_tables": modes, "depth_tables": depth, "depth_profiles": profiles,
            "others": others, "report": report_md, "written": written}
