"""Teacher-student convergence study (Li & Yuan 2017 and the blog's ResNet variants).

    python -m orthogonal_skip_connections.experiments.teacher_student d=5 seeds=8
    osc teacher_student teacher.init=gaussian teacher.scale=0.1 output=vector

Trains a student of every architecture in ``archs`` against a teacher of the same
architecture, all seeds at once (``models/teacher_student.py``), and writes into the
run dir: config.yaml, trajectories.npz (per architecture: steps, per-seed metrics,
teacher and final student weights), summary.json (per architecture: final losses and
distances, means over seeds, and the fits / recovered verdicts with their thresholds),
distance.png and loss.png.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..models import teacher_student as ts
from ..runs import UserError, hydra_app, resolve_device, save_config, write_json


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0


def build(cfg: DictConfig) -> tuple[list[str], ts.TeacherStudentConfig, list[int]]:
    """Check the whole config up front; return (archs, training config, seeds)."""
    archs = cfg.archs
    if isinstance(archs, str):
        archs = [archs]
    if not OmegaConf.is_list(archs) and not isinstance(archs, list):
        raise UserError(f"archs must be a list of architectures from {', '.join(ts.ARCHS)}; got {archs!r}")
    archs = list(archs)
    if not archs:
        raise UserError(f"archs is empty; allowed: {', '.join(ts.ARCHS)}")
    for a in archs:
        if a not in ts.ARCHS:
            raise UserError(f"unknown architecture {a!r}; allowed: {', '.join(ts.ARCHS)}")
    if len(set(archs)) != len(archs):
        raise UserError(f"archs lists an architecture twice: {archs}")
    if not _is_int(cfg.seeds) or cfg.seeds < 1:
        raise UserError(f"seeds (the number of runs) must be an integer >= 1; got {cfg.seeds!r}")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise UserError(f"seed (the first seed) must be an integer >= 0; got {cfg.seed!r}")
    for key in ("fit", "recover"):
        if not _positive(cfg.thresholds[key]):
            raise UserError(f"thresholds.{key} must be > 0; got {cfg.thresholds[key]!r}")
    if not _is_int(cfg.num_threads) or cfg.num_threads < 1:
        raise UserError(f"num_threads must be an integer >= 1; got {cfg.num_threads!r}")
    if not isinstance(cfg.progress, bool):
        raise UserError(f"progress must be true or false; got {cfg.progress!r}")
    device = resolve_device(str(cfg.device))
    try:
        train_cfg = ts.TeacherStudentConfig(
            d=cfg.d,
            output=cfg.output,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            batch_size=cfg.batch_size,
            teacher_init=cfg.teacher.init,
            teacher_scale=cfg.teacher.scale,
            student_init=cfg.student.init,
            student_scale=cfg.student.scale,
            orth_init=cfg.student.orth_init,
            orth_update=cfg.orth_update,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            momentum=cfg.momentum,
            epochs=cfg.epochs,
            steps=cfg.steps,
            log_every=cfg.log_every,
            dtype=cfg.dtype,
            device=str(device),
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    return archs, train_cfg, list(range(cfg.seed, cfg.seed + cfg.seeds))


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


@hydra_app("teacher_student")
def main(cfg: DictConfig, run_dir: Path):
    archs, train_cfg, seeds = build(cfg)
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        raise UserError(f"{run_dir} already holds a finished run (summary.json); choose another hydra.run.dir")
    torch.set_num_threads(cfg.num_threads)
    save_config(cfg, run_dir)
    start = time.perf_counter()
    trajs = ts.train(archs, train_cfg, seeds, progress=cfg.progress)
    elapsed = time.perf_counter() - start

    arrays = {"archs": np.array(archs)}
    for t in trajs.values():
        arrays.update(t.arrays())
    _save_npz(run_dir / "trajectories.npz", arrays)
    summary = {a: ts.summarize(t, cfg.thresholds.fit, cfg.thresholds.recover) for a, t in trajs.items()}
    summary["meta"] = {
        "formulas": {a: ts.ARCHS[a].formula for a in archs},
        "seeds": seeds,
        "steps": train_cfg.total_steps,
        "train_seconds": elapsed,
        "seconds_per_step": elapsed / max(train_cfg.total_steps, 1),
    }
    plot(trajs, run_dir)
    write_json(run_dir / "summary.json", summary)  # written last: its presence marks a finished run
    print(table(summary, archs, len(seeds)))
    print(f"run dir: {run_dir}")
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


if __name__ == "__main__":
    main()
