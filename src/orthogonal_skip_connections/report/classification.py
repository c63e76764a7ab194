"""The classification table of the study report: every run_experiments run dir read back
(by its run.json labels and summary.json), skip kinds compared with error bars over seeds.

- ``results.csv``: tidy, one row per classifier run (labels and final metrics, failed
  and diverged runs included with their status);
- per task, a table of accuracy (mean +- std and a 95% t-interval over seeds), step time,
  epochs to a target accuracy, ||W - I||_F, and the paired difference from ``identity``
  with a verdict ("not detectable" when its interval contains 0, or when the paired t-test's
  p-value, Holm-adjusted over the task's comparisons with identity, is not below 0.05);
- per task with residual modes other than ``add`` (:mod:`..skips.residual`), the same
  statistics per (residual mode, skip) arm against ``add``/``identity`` instead
  (``mode_tables``);
- figures: test-accuracy curves per task with bands over seeds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..analysis.stats import near_chance, t_interval_within
from ..data.vision import NUM_CLASSES
from ..diagnostics import started_away_from_identity
from ..plots import band, integer_ticks, plt, savefig, variant_colors
from ..rundir import CHECKPOINT, ERROR, RUN, SUMMARY, RunDir, damaged, in_use, saved_state
from ..runs import UserError, read_json, read_jsonl
from ..skips import FIXED_KINDS

__all__ = ["RunRecord", "STOPPED", "AGAIN", "stopped_note", "find_runs", "results_rows", "task_tables", "mode_tables", "table_markdown",
           "interval", "curves_figure", "caveat", "detectable_difference", "CSV_COLUMNS", "CLASSIFIER_APP", "MODE_BASELINE"]

CLASSIFIER_APP = "run_experiments"

CSV_COLUMNS = [
    "task", "dataset", "model_type", "variant", "residual_mode", "skip_kind", "method", "init", "seed", "status", "epochs",
    "planned_epochs", "steps", "batch_size", "lr", "test_acc", "best_test_acc", "test_loss", "train_loss",
    "train_time_s", "step_time_s", "epochs_to_target", "target_acc", "skip_identity_distance_mean",
    "skip_start_distance_mean", "skip_orth_error_max", "skip_negative_det_count", "relu_kept_skip_mean", "n_test",
    "device", "precision", "run_dir",
]


@dataclass
class RunRecord:
    """One classifier run dir as read back from disk: its run.json labels (task, variant,
    seed, ...), its summary (None if it never finished) and its evaluations."""

    path: Path
    labels: dict
    summary: dict | None
    evals: list[dict] = field(default_factory=list)  # (epoch, test_acc, identity_distance) of metrics.jsonl
    skips: list[dict] | None = None  # the per-skip rows (name, identity_distance, ...) of its last eval listing them
    epoch_step_times: list[float] = field(default_factory=list)  # per epoch: its training time / its steps

    @cached_property  # once per report: a run ending while the report is built has one status in it
    def status(self) -> str:
        """The summary's status. Without one (a sweep's failed job writes a summary with status
        "failed"): "running" while a process holds the run dir's lock, else the run stopped
        before it finished: "incomplete" with a checkpoint to resume from ("damaged" where that
        checkpoint is no whole checkpoint, which resume=true refuses); "failed" with the
        error.txt a crash leaves (a library error in any run, a study job's refusal too); else
        "interrupted" (killed, or stopped by Ctrl-C or SIGTERM, before any checkpoint), to be rerun."""
        if self.summary is not None:
            return self.summary.get("status", "unknown")
        if in_use(self.path):
            return "running"
        if (self.path / CHECKPOINT).exists():  # (a whole checkpoint is a zip: a cut or foreign file is not)
            return "damaged" if damaged(self.path / CHECKPOINT) else "incomplete"
        return "failed" if (self.path / ERROR).exists() else "interrupted"

    @property
    def variant(self) -> str:
        return self.labels["variant"]

    @property
    def task(self) -> str:
        return self.labels["task"]

    @property
    def residual_mode(self) -> str:
        return self.labels.get("residual_mode", "add")  # runs made before residual modes added

    @property
    def started_by(self) -> str:
        return started_by(self.path)


def started_by(path: Path) -> str:
    """What ran the run in ``path``, which is what runs it again: "study" (a dir above holds
    ``osc study``'s run.json: the study runs its jobs through Hydra's launcher), "sweep" (its
    .hydra/hydra.yaml says Hydra's MULTIRUN mode; without one, the dir above holds a
    multirun.yaml), else "run" (one run)."""
    if any(RunDir.app_of(p) == "study" for p in path.resolve().parents):
        return "study"
    try:
        mode = yaml.safe_load((path / ".hydra" / "hydra.yaml").read_text())["hydra"]["mode"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return "sweep" if (path.parent / "multirun.yaml").is_file() else "run"
    return "sweep" if mode == "MULTIRUN" else "run"


# what a report says of a run that stopped without a summary (RunRecord.status) ...
STOPPED = {
    "incomplete": "stopped after it saved a checkpoint",
    "interrupted": "stopped before it saved a checkpoint (killed, or stopped by Ctrl-C or SIGTERM)",
    "damaged": "stopped, and its checkpoint.pt is not a whole checkpoint (a write cut short, another file)",
}
# ... and what to do about it, by what ran it (RunRecord.started_by): a sweep's job resumes when
# its sweep runs again, a study's when the study does (a job without a checkpoint starts over)
AGAIN = {
    "incomplete": {
        "run": "resume=true with the same hydra.run.dir continues it",
        "sweep": "running the same sweep again with resume=true and the same hydra.sweep.dir continues it",
        "study": "running the same osc study again with resume=true and the same hydra.run.dir continues it",
    },
    "interrupted": {
        "run": "it cannot be resumed, only rerun",
        "sweep": "it cannot be resumed; running the same sweep again with resume=true and the same hydra.sweep.dir "
                 "trains it again",
        "study": "it cannot be resumed; running the same osc study again with resume=true and the same hydra.run.dir "
                 "trains it again",
    },
    "damaged": {
        "run": "resume=true refuses it: move its checkpoint.pt away to rerun it",
        "sweep": "move its checkpoint.pt away; running the same sweep again with resume=true and the same "
                 "hydra.sweep.dir then trains it again",
        "study": "move its checkpoint.pt away; running the same osc study again with resume=true and the same "
                 "hydra.run.dir then trains it again",
    },
}
_RUNS_OF = {"run": "single run", "sweep": "sweep job", "study": "study job"}


def stopped_note(runs: list[RunRecord]) -> str:
    """The report's sentences on the runs that stopped without a summary: per status of
    :data:`STOPPED`, how many, what happened and what to do, as each run's :attr:`RunRecord.started_by`
    says (with a count of runs per advice where they differ)."""
    out = []
    for status, what in STOPPED.items():
        kinds = [r.started_by for r in runs if r.status == status]
        if not kinds:
            continue
        counts = {kind: kinds.count(kind) for kind in AGAIN[status] if kind in kinds}
        advice = "; ".join(AGAIN[status][kind] + ("" if len(counts) == 1 else
                                                  f" ({n} {_RUNS_OF[kind]}{'s' if n > 1 else ''})")
                           for kind, n in counts.items())
        out.append(f" {len(kinds)} {status}: {what}: {advice}.")
    return "".join(out)


def find_runs(paths: list[Path], advice: Callable[[Path], str] | None = None) -> \
        tuple[list[RunRecord], list[Path], list[Path]]:
    """Classifier runs, other apps' finished run dirs and other apps' run dirs without a
    summary (running, or stopped) under ``paths`` (single runs, Hydra multirun sweep dirs,
    study dirs). A run dir is known by its run.json (written when the run started); a study's
    own dir is an index, not a result. A run dir that cannot be read is a one-line UserError;
    ``advice(run dir)``, when given, ends it with what to do (a study's report: what its user
    can do, who gave no dirs to osc report)."""
    runs, others, unfinished, seen = [], [], [], set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise UserError(f"no such run dir: {root}")
        if not root.is_dir():
            raise UserError(f"{root} is a file; give run dirs, or dirs that hold them")
        candidates = [root] + sorted(p for p in root.rglob("*") if p.is_dir() and p.name != ".hydra")
        for d in candidates:
            if d.resolve() in seen or not (d / RUN).is_file() or any(p in seen for p in d.resolve().parents):
                continue
            try:
                meta = _read_object(d / RUN)
                summary = _read_object(d / SUMMARY) if (d / SUMMARY).exists() else None
                if meta.get("app") == CLASSIFIER_APP:
                    seen.add(d.resolve())
                    labels = meta.get("labels")
                    missing = sorted(LABELS - set(labels)) if isinstance(labels, dict) else sorted(LABELS)
                    if missing:
                        raise UserError(f"{d / RUN}: its labels lack {', '.join(missing)} (a run dir of another "
                                        "version?)")
                    _check_types(d, labels, summary)
                    runs.append(RunRecord(d, labels, summary, *_evals(d / "metrics.jsonl")))
                elif summary is not None and meta.get("app") != "study":
                    seen.add(d.resolve())
                    others.append(d)
                elif meta.get("app") != "study":  # (the runs it holds, loss_landscape's own, are still read)
                    unfinished.append(d)
            except UserError as err:  # what to do: move the run away, or (a study's report) what its user can do
                raise UserError(f"{err}; " + (f"move {d} out of the dirs given to osc report" if advice is None
                                              else advice(d))) from None
    # in the order of their paths, not of the dirs given: `osc report a b` and `osc report b a`
    # write the same report (the other apps' sections, and ties in results.csv, follow this order)
    runs.sort(key=lambda r: r.path.resolve())
    others.sort(key=lambda d: d.resolve())
    unfinished.sort(key=lambda d: d.resolve())
    _split_by_settings(runs)
    return runs, others, unfinished


def unfinished_note(dirs: list[Path]) -> str:
    """What a report says of other apps' run dirs without a summary.json, which it cannot
    show: per dir, its app and whether it is still running (its lock held), stopped after it
    saved what it resumes from (:func:`~..rundir.saved_state`), or stopped before; and what
    continues it, by what ran it (:func:`started_by`); one clause per dir, '' for none."""
    again = {"run": "resume=true with its hydra.run.dir", "sweep": "the same sweep again with resume=true",
             "study": "the same osc study again with resume=true"}
    notes = []
    for d in dirs:
        saved = saved_state(d)
        state = "still running" if in_use(d) else \
            f"stopped, its {saved.name} not whole: move it away to run it anew" if damaged(saved) else \
            f"stopped after it saved {saved.name}; {again[started_by(d)]} continues it" if saved is not None else \
            "stopped before it saved anything to resume from; run it again"
        notes.append(f"{d} ({RunDir.app_of(d) or 'unknown app'}: {state})")
    return "; ".join(notes)


def _setting(value) -> str:
    """A config value as an override writes it: true, null, 0.001, [1, 2]."""
    return json.dumps(value) if isinstance(value, (bool, list, type(None))) else f"{value}"


def _split_by_settings(runs: list[RunRecord]) -> None:
    """A task whose runs differ in a setting (run.json's ``labels.settings``: optimizer.name,
    optimizer.upkeep_adaptive, model.lr_scale, ...; not the skip variant, residual mode or
    seed) becomes one task per combination, named by the differing values ("digits/resnet20
    [optimizer.upkeep_adaptive=true]"), so that different experiments are never pooled as seeds of
    one arm. A key missing from a run (a run of an older version) is compared among the runs
    that have it; where it splits them, the runs without it are named "key=unrecorded". Runs
    with no settings at all stay under the task's plain name.

    The precision a run trained in (summary.json's ``precision``: bf16, fp16, fp32) counts as
    a setting too: ``amp=auto`` is one setting value, yet bf16 on an A100 and fp16 on a V100."""
    settings = {id(r): _settings_of(r) for r in runs}
    for task in sorted({r.task for r in runs}):
        truns = [r for r in runs if r.task == task and settings[id(r)] is not None]
        values: dict[str, set] = {}
        for r in truns:
            for key, value in settings[id(r)].items():
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
        differing = sorted(k for k, v in values.items() if len(v) > 1)
        if not differing:
            continue
        for r in truns:
            s = settings[id(r)]
            parts = [f"{k}={_setting(s[k]) if k in s else 'unrecorded'}" for k in differing]
            r.labels["task"] = f"{task} [{', '.join(parts)}]"


def _settings_of(r: RunRecord) -> dict | None:
    """run.json's settings, with the precision the run trained in where its summary says."""
    settings = r.labels.get("settings")
    precision = (r.summary or {}).get("precision")
    if not isinstance(settings, dict):
        return None if precision is None else {"precision": precision}
    return settings if precision is None else {**settings, "precision": precision}


LABELS = {"task", "dataset", "model_type", "variant", "skip_kind", "method", "init", "seed", "planned_epochs",
          "batch_size", "lr"}  # run.json labels of a classifier run (run_experiments' Config.labels)


_NUMBERS = ("test_acc", "best_test_acc", "test_loss", "train_loss", "train_time_s", "steps", "epochs",
            "skip_identity_distance_mean", "skip_start_distance_mean", "skip_orth_error_max", "skip_negative_det_count")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(d: Path, labels: dict, summary: dict | None) -> None:
    """A classifier run's labels and summary hold what the tables compute with: numbers
    where numbers go (a file edited by hand or of another version is one line)."""
    for key in ("seed", "planned_epochs", "batch_size", "lr"):
        if not (_is_number(labels[key]) or (key == "seed" and labels[key] is None)):
            raise UserError(f"{d / RUN}: labels.{key} must be a number; got {labels[key]!r}")
    if summary is None:
        return
    if not isinstance(summary.get("status", "completed"), str):
        raise UserError(f"{d / SUMMARY}: status must be a string; got {summary['status']!r}")
    for key in _NUMBERS:
        if summary.get(key) is not None and not _is_number(summary[key]):
            raise UserError(f"{d / SUMMARY}: {key} must be a number or null; got {summary[key]!r}")
    acc = summary.get("test_acc")  # NaN, which JSON readers accept, would be a seed without an accuracy
    if summary.get("status", "completed") == "completed" and not (_is_number(acc) and math.isfinite(acc)):
        raise UserError(f"{d / SUMMARY}: a completed run needs a finite test_acc; got {acc!r}")


def _read_object(path: Path) -> dict:
    """A JSON object from ``path``; a corrupt file or another JSON type is one line."""
    try:
        obj = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object; is it a run dir's file?")
    return obj


def _evals(path: Path) -> tuple[list[dict], list[dict] | None, list[float]]:
    """epoch, test_acc, identity_distance (the mean ||W - I||_F of the run's skip matrices,
    None for kinds without one), start_distance (their mean ||W - W_0||_F, how far they moved
    from their start; None as well) and relu_kept (the mean share of the skip path's energy that the
    ReLU after each block's sum keeps, None for nets without one) of the eval records of
    metrics.jsonl (a corrupt line is one line), the per-skip rows of the last eval record that
    lists them (None if none does), and each epoch's training time per step (train records)."""
    evals, skips, step_times, last_step = [], None, [], 0
    if not path.exists():
        return evals, skips, step_times
    for n, _, rec in read_jsonl(path):  # a last line cut short (a run killed, or still writing) is left out
        try:
            if rec.get("type") == "train" and "epoch_time_s" in rec:
                step = int(rec["step"])
                if step > last_step:
                    step_times.append(float(rec["epoch_time_s"]) / (step - last_step))
                last_step = step
            if rec.get("type") == "eval":
                distance, kept = rec.get("skip_identity_distance_mean"), rec.get("relu_kept_skip_mean")
                moved = rec.get("skip_start_distance_mean")
                evals.append({"epoch": int(rec["epoch"]), "test_acc": float(rec["test_acc"]),
                              "identity_distance": None if distance is None else float(distance),
                              "start_distance": None if moved is None else float(moved),
                              "relu_kept": None if kept is None else float(kept)})
                if isinstance(rec.get("skips"), list):
                    skips = rec["skips"]
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}, line {n}: not an evaluation record of this version") from None
    return evals, skips, step_times


def _target_acc(runs: list[RunRecord]) -> float | None:
    """The fixed accuracy of "epochs to reach": 95% of identity's mean final accuracy over
    seeds (of all completed runs when there is no identity), floored to a whole percent."""
    done = [r for r in runs if r.status == "completed" and r.summary.get("test_acc") is not None]
    base = [r for r in done if r.variant == "identity" and r.residual_mode == "add"] or done
    if not base:
        return None
    per_seed = _per_seed([{"seed": r.labels["seed"], "test_acc": r.summary["test_acc"]} for r in base], "test_acc")
    return float(math.floor(0.95 * np.mean(list(per_seed.values()))))


def results_rows(runs: list[RunRecord]) -> list[dict]:
    """One tidy row per run (CSV_COLUMNS), sorted by task, variant, seed."""
    targets = {t: _target_acc([r for r in runs if r.task == t]) for t in {r.task for r in runs}}
    rows = []
    for r in runs:
        s, lab, target = r.summary or {}, r.labels, targets[r.task]
        reached = [e["epoch"] for e in r.evals if target is not None and e["test_acc"] >= target]
        steps = s.get("steps")
        rows.append({
            "task": r.task, "dataset": lab["dataset"], "model_type": lab["model_type"],
            "variant": r.variant, "residual_mode": r.residual_mode, "skip_kind": lab["skip_kind"], "method": lab["method"], "init": lab["init"],
            "seed": lab["seed"], "status": r.status, "epochs": s.get("epochs"), "planned_epochs": lab["planned_epochs"],
            "steps": steps, "batch_size": lab["batch_size"], "lr": lab["lr"],
            "test_acc": s.get("test_acc"), "best_test_acc": s.get("best_test_acc"), "test_loss": s.get("test_loss"),
            "train_loss": s.get("train_loss"), "train_time_s": s.get("train_time_s"),
            "step_time_s": _step_time(r),
            "epochs_to_target": reached[0] if reached else None, "target_acc": target,
            "skip_identity_distance_mean": s.get("skip_identity_distance_mean"),
            "skip_start_distance_mean": s.get("skip_start_distance_mean"),  # ||W - W_0||_F (runs since 2026-11-30)
            "skip_orth_error_max": s.get("skip_orth_error_max"),
            "skip_negative_det_count": s.get("skip_negative_det_count"),
            "relu_kept_skip_mean": s.get("relu_kept_skip_mean"),  # post-activation ResNets (runs since 2026-11-30)
            "n_test": s.get("n_test"),
            "device": s.get("device"), "precision": s.get("precision"),  # bf16 | fp16 | fp32 (older runs: none)
            "run_dir": str(r.path),
        })
    order = _variant_order([r["variant"] for r in rows])
    modes = _mode_order([r["residual_mode"] for r in rows])
    rows.sort(key=lambda r: (r["task"], modes.index(r["residual_mode"]), order.index(r["variant"]),
                             r["seed"] if r["seed"] is not None else -1))
    return rows


def _step_time(r: RunRecord) -> float | None:
    """Seconds per training step: the median over the epochs after the first (the first also
    pays one-off costs: allocation, kernel choice, the process's own start for the first run of a
    study, which is identity's), or training time / steps where metrics.jsonl has fewer epochs."""
    later = r.epoch_step_times[1:]
    if later:
        return float(np.median(later))
    s = r.summary or {}
    return s["train_time_s"] / s["steps"] if s.get("steps") else None


def _variant_order(variants) -> list[str]:
    known = ["identity", "zero", "fixed_orth", "learnable_orth", "random", "linear", "scalar", "idempotent"]
    return sorted(set(variants), key=lambda v: (known.index(v.split("/")[0]) if v.split("/")[0] in known
                                                else len(known), v))


def _mode_order(modes) -> list[str]:
    known = ["add", "orthogonal_update", "rotation"]
    return sorted(set(modes), key=lambda m: (known.index(m.split("/")[0]) if m.split("/")[0] in known
                                             else len(known), m))


def _mean(values) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else math.nan


def _is_add(r: dict) -> bool:
    return r.get("residual_mode", "add") == "add"


def _by_seed(rows: list[dict], key: str) -> dict:
    """seed -> the values of ``key`` in the runs of that seed (a run without a seed is its own)."""
    by_seed: dict = {}
    for i, r in enumerate(rows):
        by_seed.setdefault(r["seed"] if r["seed"] is not None else ("run", i), []).append(r.get(key))
    return by_seed


def _per_seed(rows: list[dict], key: str) -> dict:
    """seed -> the mean of ``key`` over the runs of that seed (runs without it left out).
    The seed is the unit of replication: runs of one seed in one arm (a sweep over
    ``model.method`` repeats the identity run for each method) are one sample, not several."""
    return {seed: float(np.mean(v)) for seed, values in _by_seed(rows, key).items()
            if (v := [x for x in values if x is not None])}


def _arm_stats(vrows: list[dict], base: list[dict], is_base: bool, baseline: str, target_acc) -> dict:
    """Statistics of one arm's runs ``vrows`` over its completed seeds (runs of one seed
    averaged first), with the paired difference (by seed) from the completed ``base`` runs,
    and a verdict."""
    vok = [r for r in vrows if r["status"] == "completed"]
    base_time = _mean([r["step_time_s"] for r in base])
    base_acc, base_step = _per_seed(base, "test_acc"), _per_seed(base, "step_time_s")
    acc, step = _per_seed(vok, "test_acc"), _per_seed(vok, "step_time_s")
    accs = list(acc.values())
    mean, lo, hi, clipped = t_interval_within(accs, 0.0, 100.0)  # an accuracy interval stays within [0, 100]
    diffs = [a - base_acc[seed] for seed, a in acc.items() if seed in base_acc]
    spread = float(np.ptp(diffs)) if diffs else 0.0
    ratios = [t / base_step[seed] for seed, t in step.items() if base_step.get(seed)]
    # two accuracies differ by at most 100 points (NaN stays NaN; the verdict reads only signs)
    dmean, dlo, dhi, diff_clipped = t_interval_within(diffs if not is_base else [], -100.0, 100.0)
    # per seed, the mean epoch its runs reached the target at; None if one of them never did
    reached = [None if None in v else float(np.mean(v)) for v in _by_seed(vok, "epochs_to_target").values()]
    return {
        "runs": len(vrows), "completed": len(vok), "seeds": len(acc),
        "failed": [f"seed {r['seed']}: {r['status']}" for r in vrows if r["status"] != "completed"],
        "acc_mean": mean, "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
        "acc_lo": lo, "acc_hi": hi, "acc_ci_clipped": clipped,
        # the mean of the per-seed ratios (it lies within their range); without a paired seed, of the means
        "step_time_ratio": _mean(ratios) if ratios else
        _mean([r["step_time_s"] for r in vok]) / base_time if base_time else math.nan,
        "step_time_ratio_range": (min(ratios), max(ratios)) if ratios else (math.nan, math.nan),
        "diff_sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
        "epochs_to_target": _mean(reached) if all(x is not None for x in reached) else math.nan,
        "reached_target": f"{sum(x is not None for x in reached)}/{len(reached)}",
        "identity_distance": _mean(_per_seed(vok, "skip_identity_distance_mean").values()),  # over seeds
        "start_distance": _mean(_per_seed(vok, "skip_start_distance_mean").values()),
        "diff_mean": dmean, "diff_lo": dlo, "diff_hi": dhi, "diff_ci_clipped": diff_clipped,
        "paired_seeds": len(diffs), "p_value": math.nan if is_base else _paired_p(diffs), "p_holm": math.nan,
        "comparisons": 0,
        "diff_spread": spread,  # range of the per-seed differences
        "verdict": "baseline" if is_base else _verdict(None, dmean, dlo, dhi, len(diffs),
                                                       spread=spread,
                                                       baseline=baseline, clipped=diff_clipped),
        "target_acc": target_acc,
    }


def task_tables(rows: list[dict]) -> dict[str, list[dict]]:
    """Per task, one summary row per skip variant (statistics over its completed seeds).
    A task with runs of other residual modes than ``add`` is tabled by :func:`mode_tables`
    instead (its add runs there too)."""
    tables = {}
    for task in sorted({r["task"] for r in rows} - {r["task"] for r in rows if not _is_add(r)}):
        trows = [r for r in rows if r["task"] == task]
        base = [r for r in trows if r["status"] == "completed" and r["variant"] == "identity"]
        tables[task] = _holm([{"variant": variant,
                               **_arm_stats([r for r in trows if r["variant"] == variant], base,
                                            variant == "identity", "identity", trows[0]["target_acc"])}
                              for variant in _variant_order([r["variant"] for r in trows])], "identity")
    return tables


MODE_BASELINE = ("add", "identity")


def mode_tables(rows: list[dict]) -> dict[str, list[dict]]:
    """Per task that has runs with a residual mode other than ``add``: one summary row per
    (residual mode, skip variant) arm, paired by seed with ``add`` residuals and identity
    skips (MODE_BASELINE); the same statistics and verdicts as :func:`task_tables`."""
    tables = {}
    for task in sorted({r["task"] for r in rows if not _is_add(r)}):
        trows = [r for r in rows if r["task"] == task]
        arm = lambda r: (r.get("residual_mode", "add"), r["variant"])  # noqa: E731
        base = [r for r in trows if r["status"] == "completed" and arm(r) == MODE_BASELINE]
        modes, variants = _mode_order([arm(r)[0] for r in trows]), _variant_order([r["variant"] for r in trows])
        arms = sorted({arm(r) for r in trows}, key=lambda a: (modes.index(a[0]), variants.index(a[1])))
        tables[task] = _holm([{"residual_mode": mode, "variant": variant,
                               **_arm_stats([r for r in trows if arm(r) == (mode, variant)], base,
                                            (mode, variant) == MODE_BASELINE, "/".join(MODE_BASELINE),
                                            trows[0]["target_acc"])} for mode, variant in arms],
                             "/".join(MODE_BASELINE))
    return tables


# points: per-seed differences that spread less than this, or a mean difference smaller than this, are
# round-off (an arm's per-seed mean of equal accuracies can be off by an ulp), not a measured difference
ROUND_OFF = 1e-9


def _paired_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t-test (mean difference 0) on the per-seed differences;
    NaN for fewer than 2. Differences without spread (the same in every seed) get the t-test's
    limit: 0 for a non-zero difference (t is infinite; scipy's ttest_rel says p = 0), 1 for none
    (0 / 0: no evidence of a difference), so that such an arm counts among the comparisons Holm's
    adjustment divides the 5% over."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or not np.all(np.isfinite(d)):
        return math.nan
    if float(np.ptp(d)) < ROUND_OFF:
        return 0.0 if abs(float(d.mean())) >= ROUND_OFF else 1.0
    t = float(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def _holm(table: list[dict], baseline: str) -> list[dict]:
    """Holm's step-down adjustment (Holm 1979) of the arms' paired p-values over the m
    comparisons of one table with its baseline: the k-th smallest p becomes
    max over j <= k of min(1, (m - j + 1) p_(j)). It keeps the chance of any false "better" or
    "worse" in the table at 5%, where m separate 95% intervals would allow up to m x 5%. The
    verdicts are rewritten with it; the intervals in the table stay per comparison."""
    tested = sorted((t for t in table if not math.isnan(t["p_value"])), key=lambda t: t["p_value"])
    m, running = len(tested), 0.0
    for j, t in enumerate(tested):
        running = max(running, min(1.0, (m - j) * t["p_value"]))
        t["p_holm"], t["comparisons"] = running, m
        t["verdict"] = _verdict(None, t["diff_mean"], t["diff_lo"], t["diff_hi"], t["paired_seeds"],
                                spread=t["diff_spread"], baseline=baseline, clipped=t["diff_ci_clipped"],
                                p=t["p_value"], p_holm=running, comparisons=m)
    return table


def _verdict(variant, dmean, dlo, dhi, n, spread: float = 1.0, baseline: str = "identity",
             clipped: tuple[bool, bool] = (False, False), p: float = math.nan, p_holm: float = math.nan,
             comparisons: int = 1) -> str:
    """One sentence comparing an arm with ``baseline`` from the paired difference's mean and
    95% interval [dlo, dhi] (``clipped``: which ends were cut at -100/+100 points, marked †
    as in the table), and, among ``comparisons`` > 1 with the same baseline, the paired
    t-test's ``p`` and its Holm-adjusted ``p_holm`` (:func:`_holm`): an interval that excludes
    0 is "better" or "worse" only when ``p_holm`` < 0.05 too. The sentence starts with
    "better" or "worse" exactly then: the report's "In short" lines sort the arms by that word."""
    if variant == baseline:
        return "baseline"
    if n < 2 or math.isnan(dlo):
        return f"cannot compare with {baseline} ({n} paired seed{'s' if n != 1 else ''}; need 2)"
    if spread < ROUND_OFF:  # a t-interval of (round-off) identical differences has no width: say what was seen
        return (f"{'better' if dmean >= ROUND_OFF else 'worse' if dmean <= -ROUND_OFF else 'no different'} "
                f"than {baseline} by "
                f"{abs(dmean):.2f} points in each of {n} paired seeds (no spread: more seeds would say "
                "how sure that is)")
    ci = interval(dlo, dhi, "+.2f", clipped)
    if dlo <= 0 <= dhi:
        return (f"no detectable difference from {baseline} at {n} seeds "
                f"(95% CI of the difference {ci} points contains 0)")
    word = "better" if dmean > 0 else "worse"
    if comparisons > 1 and not math.isnan(p_holm):
        if p_holm >= 0.05:
            return (f"no detectable difference from {baseline} once the {comparisons} comparisons with it are "
                    f"counted: alone, the 95% CI of the difference {ci} points excludes 0 (paired t-test p = "
                    f"{p:.2g}), but Holm's adjusted p is {p_holm:.2g}")
        return (f"{word} than {baseline} by {abs(dmean):.2f} points (95% CI {ci}, {n} paired seeds; p = {p:.2g}, "
                f"Holm-adjusted over {comparisons} comparisons {p_holm:.2g})")
    return f"{word} than {baseline} by {abs(dmean):.2f} points (95% CI {ci}, {n} paired seeds)"


def _fmt(x, spec=".2f", none="–") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def interval(lo, hi, spec=".2f", clipped: tuple[bool, bool] = (False, False)) -> str:
    """'[lo, hi]', an end cut at its scale's limit (``clipped``: low, high) marked †."""
    return f"[{_fmt(lo, spec)}{'†' if clipped[0] else ''}, {_fmt(hi, spec)}{'†' if clipped[1] else ''}]"


def table_markdown(table: list[dict]) -> list[str]:
    """Markdown of a :func:`task_tables` table, or of a :func:`mode_tables` table (which
    gets a first column, the residual mode, and is compared with add/identity)."""
    target = table[0]["target_acc"] if table else None
    modes = bool(table) and "residual_mode" in table[0]
    base = "/".join(MODE_BASELINE) if modes else "identity"
    lines = [
        f"| {'residual mode | ' if modes else ''}skip | runs | test acc % (mean ± std) | 95% CI | "
        f"step time / {base}, mean (range over seeds) | epochs to {_fmt(target, '.0f')}% | final ‖W − I‖_F | "
        f"difference vs {base} (95% CI) |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if modes else ""),
    ]
    for t in table:
        runs = f"{t['completed']}/{t['runs']}" + (f" ({'; '.join(t['failed'])})" if t["failed"] else "")
        if t.get("seeds", t["completed"]) < t["completed"]:
            runs += f" of {t['seeds']} seeds‡"
        diff = "–" if t["verdict"] == "baseline" or math.isnan(t["diff_mean"]) else \
            f"{t['diff_mean']:+.2f} " + interval(t["diff_lo"], t["diff_hi"], "+.2f",
                                                 t.get("diff_ci_clipped", (False, False)))
        reach = _fmt(t["epochs_to_target"], ".1f") if not math.isnan(t["epochs_to_target"]) else \
            f"– (reached {t['reached_target']} seeds)"
        ci = interval(t["acc_lo"], t["acc_hi"], clipped=t.get("acc_ci_clipped", (False, False)))
        rlo, rhi = t.get("step_time_ratio_range", (math.nan, math.nan))
        step = _fmt(t["step_time_ratio"], ".2f") + ("" if t["verdict"] == "baseline" or math.isnan(rlo) else
                                                    f" ({rlo:.2f}–{rhi:.2f})")
        lines.append(
            f"| {t['residual_mode'] + ' | ' if modes else ''}{t['variant']} | {runs} | "
            f"{_fmt(t['acc_mean'])} ± {_fmt(t['acc_std'])} | {ci} | {step} | {reach} | "
            f"{_distance_cell(t)} | {diff} |"
        )
    if target is not None:  # the column's threshold is computed (_target_acc): say from what
        of = (f"95% of {base}'s mean final accuracy" if any(t["verdict"] == "baseline" and t["completed"]
                                                            for t in table)
              else f"95% of the mean final accuracy of all completed runs (no {base} run completed)")
        lines += ["", f"Epochs to {target:.0f}%: mean over seeds of the first epoch whose test accuracy reached "
                      f"{target:.0f}%, {of}, rounded down; – where a seed never reached it (how many did: "
                      f"reached k/n seeds)."]
    if any(any(t.get("acc_ci_clipped", ())) or any(t.get("diff_ci_clipped", ())) for t in table):
        lines += ["", "† the t-interval reached past 100% (or below 0%) and is clipped there; for a difference, past "
                      "±100 points."]
    if any("moved" in _distance_cell(t) for t in table):
        lines += ["", "(moved x): the mean over the skips of ‖W − W₀‖_F, how far training moved them from their start "
                      "W₀, given where they did not start at I (init=haar, fixed_orth, idempotent)."]
    if any(t.get("seeds", t["completed"]) < t["completed"] for t in table):
        lines += ["", "‡ several runs of one seed (e.g. a sweep over a setting this skip ignores, such as model.method "
                      "for identity): they are averaged into one sample per seed, so the statistics count seeds, "
                      "not runs."]
    return lines


def _distance_cell(t: dict) -> str:
    """The final mean ‖W − I‖_F; after it, how far the skips moved (‖W − W₀‖_F) where that
    differs, i.e. where they did not start at I."""
    d, moved = t["identity_distance"], t.get("start_distance", math.nan)
    return _fmt(d, ".3f") + (f" (moved {moved:.3f})" if started_away_from_identity(d, moved) else "")


def detectable_difference(table: list[dict], rows: list[dict]) -> dict:
    """What a task's comparison with identity could resolve: the test-set size N (accuracy
    moves in steps of 100/N points), the number n of paired seeds, the pooled std s of the
    paired differences over the m variants compared, and the smallest difference the
    verdicts could tell from 0 at that spread: the first step of Holm's procedure tests at
    0.05 / m, so t_{1 - 0.025/m, n-1} s / sqrt(n) (m = 1: the paired 95% t-interval's half
    width), never less than one test example. None where fewer than two seeds are paired."""
    from scipy import stats

    sizes = {r["n_test"] for r in rows if r.get("n_test")}
    n_test = max(sizes) if sizes else None
    paired = [t for t in table if t["verdict"] != "baseline" and t["paired_seeds"] >= 2]
    n = min((t["paired_seeds"] for t in paired), default=0)
    step = 100.0 / n_test if n_test else None
    m = len(paired)
    if n < 2:
        return {"n_test": n_test, "step": step, "seeds": n, "pooled_sd": None, "smallest": None, "comparisons": m}
    pooled = math.sqrt(float(np.mean([t["diff_sd"] ** 2 for t in paired if not math.isnan(t["diff_sd"])] or [0.0])))
    smallest = float(stats.t.ppf(1 - 0.025 / m, n - 1)) * pooled / math.sqrt(n)
    return {"n_test": n_test, "step": step, "seeds": n, "pooled_sd": pooled,
            "smallest": max(smallest, step or 0.0), "comparisons": m}


def caveat(task: str, table: list[dict], rows: list[dict]) -> str:
    """The one line above a task's table: how big a difference the study could have seen."""
    d = detectable_difference(table, rows)
    accs = [t["acc_mean"] for t in table if not math.isnan(t["acc_mean"])]
    if d["n_test"]:
        size = f"{d['n_test']} test images (accuracy moves in steps of {d['step']:.2f} points)"
    elif any(r["status"] in ("completed", "diverged") for r in rows):  # their summaries record n_test
        size = "test-set size unknown (runs made before it was recorded)"
    else:  # a failure's summary has no n_test; a running or stopped run has no summary
        size = "test-set size unknown (no completed run to read it from)"
    if d["smallest"] is None:
        return (f"**Caveat**: {size}; fewer than 2 seeds paired with identity, so no difference can be judged"
                f"{_at_chance(table, rows)}.")
    text = (f"**Caveat**: {size}; at {d['seeds']} seeds, with the paired differences' pooled std of "
            f"{d['pooled_sd']:.2f} points, ")
    holm = (f" (among {d['comparisons']} comparisons, Holm's first step tests at 0.05 / {d['comparisons']})"
            if d["comparisons"] > 1 else "")
    if d["smallest"] >= 100.0:  # two accuracies differ by at most 100 points
        text += (f"a difference would have to exceed about {d['smallest']:.0f} points to be told from 0{holm}, more "
                 "than the whole scale, so no difference could be: more seeds are needed")
    else:
        text += f"only differences larger than about {d['smallest']:.2f} points could be told from 0{holm}"
    if accs and min(accs) >= 95.0:
        text += (f"; every variant scores {min(accs):.1f}–{max(accs):.1f}%, so the task is near saturation and "
                 "'no detectable difference' means 'cannot tell', not 'equal'")
    return text + _at_chance(table, rows) + "."


def _at_chance(table: list[dict], rows: list[dict]) -> str:
    """'; <arms> ended within 2 points of chance ...' for the arms whose mean accuracy did (they
    did not train: a comparison of them says nothing about their skip), else ''."""
    classes = {NUM_CLASSES.get(r.get("dataset")) for r in rows} - {None}
    if len(classes) != 1:
        return ""
    chance = 100.0 / classes.pop()
    idle, said = near_chance([(t["variant"] if _is_add(t) else f"{t['residual_mode']}/{t['variant']}",
                               t["acc_mean"], chance) for t in table])
    if not idle:
        return ""
    one = len(idle) == 1
    says = "its comparison says" if one else "their comparisons say"
    return f"; {said}: {'it' if one else 'they'} did not train, so {says} nothing about the skip"


def started_away(run: RunRecord) -> bool:
    """Whether a run's skip matrices started away from I (init=haar, fixed_orth): then their
    distance from I says where the draw put them, and only ||W - W_0||_F what training did."""
    return any(started_away_from_identity(e["identity_distance"], e.get("start_distance")) for e in run.evals)


def moved_from_start_arms(task: str, runs: list[RunRecord]) -> list[str]:
    """The variants of ``task`` whose completed runs started away from I with skips that
    train (``model.init=haar``): for them only ||W - W_0||_F shows what training did. The
    fixed kinds (fixed_orth, idempotent) start away from I too but never move, so a figure of
    the distance moved says nothing of them."""
    return sorted({r.variant for r in runs if r.task == task and r.status == "completed" and started_away(r)
                   and r.variant.split("/")[0] not in FIXED_KINDS})


def _known_start(key: str, group: list[RunRecord]) -> bool:
    """Whether each run's value before its first step is 0: the distance moved from the start
    always, the distance from I when every run started at I."""
    return key == "start_distance" or (key == "identity_distance" and not any(started_away(r) for r in group))


# what curves_figure can draw over epochs: (y label, title, file name prefix)
CURVES = {
    "test_acc": ("test accuracy (%)", "test accuracy", "accuracy"),
    "identity_distance": ("mean ||W - I||_F over the skips", "distance of the skip matrices from I",
                          "identity_distance"),
    "start_distance": ("mean ||W - W_0||_F over the skips", "distance the skip matrices moved from their start",
                       "start_distance"),
    "relu_kept": ("mean ||relu(W s)||² / ||W s||² over the blocks", "share of the skip path kept by the ReLU "
                  "after the sum", "relu_kept"),
}


def curves_figure(task: str, runs: list[RunRecord], out_dir: Path, modes: bool = False,
                  key: str = "test_acc") -> Path | None:
    """``key`` (test accuracy, or the skip matrices' mean distance from I) over epochs, one band
    per skip variant of the ``add`` runs, or with ``modes`` one band per (residual mode, skip
    variant) arm of every run; arms without the measure (no skip matrix) are left out."""
    shown = [r for r in runs if r.task == task and r.status == "completed" and r.evals
             and (modes or r.residual_mode == "add")]
    by_arm: dict[tuple[str, str], list[RunRecord]] = {}
    for r in shown:
        if all(e[key] is not None for e in r.evals):
            by_arm.setdefault((r.residual_mode, r.variant), []).append(r)
    if not by_arm:
        return None
    ylabel, what, prefix = CURVES[key]
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    # colours: a skip variant's own in every figure (plots.VARIANT_COLORS); with residual modes, by the
    # arm's place among all the task's arms, so an arm has one colour in the accuracy and the distance
    # figure (which leaves out arms without a skip matrix, identity among them)
    arms = {(r.residual_mode, r.variant) for r in shown}
    mode_order, variant_order = _mode_order([a[0] for a in arms]), _variant_order([a[1] for a in arms])
    arms = sorted(arms, key=lambda a: (mode_order.index(a[0]), variant_order.index(a[1])))
    colors = variant_colors(variant_order)  # a skip variant's colour; with modes, the mode's line style
    styles = dict(zip(mode_order, ("-", "--", ":", "-.") * len(mode_order)))
    baseline = ("add", "identity")
    for arm in [a for a in arms if a in by_arm]:
        group = by_arm[arm]
        epochs = sorted(set.intersection(*[{e["epoch"] for e in r.evals} for r in group]))
        ys = [[next(e[key] for e in r.evals if e["epoch"] == ep) for ep in epochs] for r in group]
        if _known_start(key, group):  # W = W_0 before the first step: the curve starts where training did
            epochs, ys = [0] + epochs, [[0.0] + y for y in ys]
        band(ax, epochs, ys, label=f"{' / '.join(arm) if modes else arm[1]} (n={len(group)})",
             color=colors[arm[1]], linestyle=styles[arm[0]] if modes else "-",
             # the baseline thick and beneath the others: an arm at the same value (zero and fixed_orth at
             # chance, scalar's kept share at identity's) stays visible on it as a thin line, and the
             # baseline as the wide line around it (on top, it hid that arm whole)
             **({"zorder": 1.9, "linewidth": 3.5} if arm == baseline else {}))
    classes = {NUM_CLASSES.get(r.labels.get("dataset")) for r in shown} - {None}
    if key == "test_acc" and len(classes) == 1:  # what an arm that did not train scores: flat curves read as such
        ax.axhline(100.0 / classes.pop(), color="grey", linestyle=":", linewidth=1.0, label="chance")
    ax.set_xlabel("epoch")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(ylabel)
    if key in ("identity_distance", "start_distance"):  # from 0: autoscaled, skips that stay far from I (a Haar
        top = ax.get_ylim()[1]  # start, ~8.3 throughout) would look as if they travelled the height; a little
        ax.set_ylim(-0.02 * top, 1.08 * top)  # below 0, so a skip that never moves (fixed_orth) shows on the axis
    if key == "relu_kept":  # a share: 0 to 1, so that identity's ~1 and a Haar skip's ~0.5 read as such
        ax.set_ylim(0, 1.04)
    ax.set_title(f"{task}{': residual modes' if modes else ''}\n{what}, mean ± std over seeds", fontsize=10)
    # beside the axes, not over the curves: accuracy curves fill any corner by the last epoch
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    name = f"{prefix}_{'modes_' if modes else ''}{re.sub(r'[^A-Za-z0-9]+', '_', task).strip('_')}.png"
    return savefig(fig, out_dir / name)
