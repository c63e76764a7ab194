"""Teacher-student convergence study (Li & Yuan 2017 and the blog's ResNet variants).

    python -m orthogonal_skip_connections.experiments.teacher_student d=5 seeds=8
    osc teacher_student teacher.init=gaussian teacher.scale=0.1 output=vector

Trains a student of every architecture in ``archs`` against a teacher of the same
architecture, all seeds at once (``train/teacher_student.py``), and writes into the
run dir: config.yaml, trajectories.npz (per architecture: steps, per-seed metrics,
teacher and final student weights), summary.json (per architecture: final losses and
distances, means over seeds, and the fits / recovered verdicts with their thresholds),
distance.png and loss.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..analysis.teacher_student import summarize
from ..models.teacher_student import ARCHS
from ..train import teacher_student as ts
from ..rundir import RunDir, column
from ..runs import UserError, resolve_device
from ._app import App, one_of, require, typed


@dataclass
class Teacher:
    init: str
    scale: float


@dataclass
class Student:
    init: str
    scale: float
    orth_init: str


@dataclass
class Thresholds:
    fit: float
    recover: float


@dataclass
class Config:
    archs: list[str]
    output: str
    d: int
    n_train: int
    n_test: int
    batch_size: int
    teacher: Teacher
    student: Student
    orth_update: str
    optimizer: str
    lr: float
    momentum: float
    epochs: int
    steps: Optional[int]
    log_every: int
    seeds: int
    seed: int
    thresholds: Thresholds
    dtype: str
    device: str
    num_threads: int
    progress: bool

    def check(self) -> None:
        for a in self.archs:
            if a not in ARCHS:
                raise UserError(f"unknown architecture {a!r}; allowed: {', '.join(ARCHS)}")
        require(len(set(self.archs)) == len(self.archs), "archs", "a list without repeats", self.archs)
        self.archs = one_of("archs", self.archs, ARCHS)
        require(self.seeds >= 1, "seeds (the number of runs)", "an integer >= 1", self.seeds)
        require(self.seed >= 0, "seed (the first seed)", "an integer >= 0", self.seed)
        for key in ("fit", "recover"):
            value = getattr(self.thresholds, key)
            require(np.isfinite(value) and value > 0, f"thresholds.{key}", "> 0", value)
        require(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        self.train_config()

    def train_config(self) -> ts.TeacherStudentConfig:
        device = resolve_device(self.device)
        try:
            return ts.TeacherStudentConfig(
                d=self.d, output=self.output, n_train=self.n_train, n_test=self.n_test, batch_size=self.batch_size,
                teacher_init=self.teacher.init, teacher_scale=self.teacher.scale, student_init=self.student.init,
                student_scale=self.student.scale, orth_init=self.student.orth_init, orth_update=self.orth_update,
                optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, epochs=self.epochs, steps=self.steps,
                log_every=self.log_every, dtype=self.dtype, device=str(device),
            )
        except ValueError as err:  # the trainer's checks of these values, raised before anything runs
            raise UserError(str(err)) from None


def build(cfg: Config) -> tuple[list[str], ts.TeacherStudentConfig, list[int]]:
    """(archs, training config, seeds) of a checked config (or of a composed one)."""
    cfg = typed(Config, cfg)
    return list(cfg.archs), cfg.train_config(), list(range(cfg.seed, cfg.seed + cfg.seeds))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot(trajs: dict[str, ts.Trajectory], run_dir: Path) -> None:
    from ..plots import panels_over_steps

    steps = {a: t.steps for a, t in trajs.items()}
    panels_over_steps(
        steps,
        {a: {"||W - W*||_F (summed)": t.distance, "aligned (perm. + rescaling)": t.aligned_distance}
         for a, t in trajs.items()},
        run_dir / "distance.png",
        ylabel="distance to teacher",
        title="student-teacher distance (mean, band: geometric std over seeds)",
    )
    panels_over_steps(
        steps,
        {a: {"train": t.train_loss, "test": t.test_loss} for a, t in trajs.items()},
        run_dir / "loss.png",
        ylabel="MSE",
        title="training and test loss (mean, band: geometric std over seeds)",
    )


def report(summary: dict, archs: list[str], n_seeds: int, cfg: Config) -> dict:
    rows = [{"arch": a, "formula": ARCHS[a].formula, **{k: summary[a][k] for k in (
        "train_loss_final", "test_loss_final", "distance_final", "aligned_distance_final")},
        "fits": f"{summary[a]['fits_seeds']}/{n_seeds}", "recovered": f"{summary[a]['recovered_seeds']}/{n_seeds}",
        "symmetry": f"{summary[a]['recovered_up_to_symmetry_seeds']}/{n_seeds}"} for a in archs]
    fit_all = [a for a in archs if summary[a]["fits_seeds"] == n_seeds]
    rec_all = [a for a in archs if summary[a]["recovered_seeds"] == n_seeds]
    sym_only = [a for a in archs if summary[a]["recovered_up_to_symmetry_seeds"] > summary[a]["recovered_seeds"]]
    verdict = (f"over {n_seeds} seeds, {len(fit_all)} of {len(archs)} architectures fit the data in every seed "
               f"(train loss <= {cfg.thresholds.fit:g} Var(y)){': ' + ', '.join(fit_all) if fit_all else ''}; "
               f"{len(rec_all)} recover the teacher's weights in every seed{': ' + ', '.join(rec_all) if rec_all else ''}")
    verdict += (f"; {', '.join(sym_only)} recover it only up to a symmetry (permutation, rescaling) in some seeds."
                if sym_only else ".")
    return {
        "title": "Teacher-student convergence (Li & Yuan 2017 and the one-block ResNet variants)",
        "question": "does SGD recover the teacher's weights, and up to which symmetry, for each architecture?",
        "tables": [{"caption": "final numbers, means over seeds; verdicts as seed counts", "columns": [
            column("arch", "architecture"), column("formula", "student f(x)"),
            column("train_loss_final", "train loss", "MSE"), column("test_loss_final", "test loss", "MSE"),
            column("distance_final", "||W - W*||_F"), column("aligned_distance_final", "aligned distance"),
            column("fits", "fits", "seeds"), column("recovered", "recovered", "seeds"),
            column("symmetry", "up to symmetry", "seeds")], "rows": rows}],
        "verdict": verdict,
        "figures": ["distance.png", "loss.png"],
    }


def run(cfg: Config, rd: RunDir) -> dict:
    archs, train_cfg, seeds = build(cfg)
    torch.set_num_threads(cfg.num_threads)
    rd.start(cfg)
    rd.device = train_cfg.device
    trajs = ts.train(archs, train_cfg, seeds, progress=cfg.progress)
    elapsed = time.perf_counter() - rd.started

    arrays = {"archs": np.array(archs)}
    for t in trajs.values():
        arrays.update(t.arrays())
    _save_npz(rd.path / "trajectories.npz", arrays)
    summary = {a: summarize(t, cfg.thresholds.fit, cfg.thresholds.recover) for a, t in trajs.items()}
    summary["meta"] = {
        "formulas": {a: ARCHS[a].formula for a in archs},
        "seeds": seeds,
        "steps": train_cfg.total_steps,
        "train_seconds": elapsed,
        "seconds_per_step": elapsed / max(train_cfg.total_steps, 1),
    }
    plot(trajs, rd.path)
    print(table(summary, archs, len(seeds)))
    print(f"run dir: {rd.path}")
    summary["report"] = report(summary, archs, len(seeds), cfg)
    return summary


def table(summary: dict, archs: list[str], n_seeds: int) -> str:
    """The final numbers as a plain-text table (means over seeds; verdicts as seed counts)."""
    head = f"{'arch':<16}{'train loss':>11}{'test loss':>11}{'distance':>10}{'aligned':>10}{'fits':>6}{'recov.':>8}{'up to sym.':>12}"
    rows = [head]
    for a in archs:
        s = summary[a]
        rows.append(
            f"{a:<16}{_fmt(s['train_loss_final']):>11}{_fmt(s['test_loss_final']):>11}"
            f"{_fmt(s['distance_final']):>10}{_fmt(s['aligned_distance_final']):>10}"
            f"{s['fits_seeds']:>4}/{n_seeds}{s['recovered_seeds']:>6}/{n_seeds}{s['recovered_up_to_symmetry_seeds']:>10}/{n_seeds}"
        )
    return "\n".join(rows)


def _fmt(v) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3g}"


main = App("teacher_student", Config, run)

if __name__ == "__main__":
    sys.exit(main())
