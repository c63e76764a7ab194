"""The main job: a small, complete study of skip kinds, and its report.

    osc study                  # default scale: <= 10 min on 2 CPU cores, no network
    osc study scale=smoke      # every kind, fewer seeds and epochs
    osc study scale=full       # the GPU setting (CIFAR-10/100, ResNet-18/56, 5 seeds)

It drives the other apps (their ``run`` functions, with configs composed from their own
YAML plus the scale's overrides) and never copies them: classification runs through
``run_experiments`` (several at once with joblib), then ``teacher_student`` and the
synthetic apps, then ``report.build_report`` over everything it made. A study killed
half-way and started again with the same ``hydra.run.dir`` skips the runs already
completed and resumes the unfinished ones from their checkpoints.
"""

from __future__ import annotations

import importlib
import re
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..cli import APPS
from ..report import build_report
from ..runs import UserError, compose_config, hydra_app, progress_bar, read_json, save_config, write_json

SCALES = ("smoke", "default", "full")
PARTS = ("classification", "teacher_student", "synthetic")
SYNTHETIC_APPS = ("orth_to_id", "orth_residual_synthetic_data")


def variant_overrides(variant: str) -> list[str]:
    """``kind[/method[/init]]`` -> run_experiments overrides."""
    parts = variant.split("/")
    if not 1 <= len(parts) <= 3:
        raise UserError(f"variant {variant!r} must look like kind, kind/method or kind/method/init")
    out = [f"model.skip_kind={parts[0]}"]
    if len(parts) > 1:
        out.append(f"model.method={parts[1]}")
    if len(parts) > 2:
        out.append(f"model.init={parts[2]}")
    return out


def classification_jobs(cfg: DictConfig, study_dir: Path) -> list[tuple[str, dict, Path]]:
    """(label, resolved run_experiments config, run dir) for every (task, variant, seed)."""
    c = cfg.scales[cfg.scale].classification
    jobs = []
    for task in c.tasks:
        if task.count("/") != 1:
            raise UserError(f"classification task {task!r} must look like dataset/model_type")
        dataset, model_type = task.split("/")
        for variant in c.variants:
            for seed in range(int(c.seeds)):
                overrides = [f"dataset={dataset}", f"model.model_type={model_type}", *variant_overrides(variant),
                             f"seed={seed}", "progress=false", *c.overrides, *cfg.overrides.run_experiments]
                run_cfg = compose_config("run_experiments", overrides)
                name = re.sub(r"[^A-Za-z0-9]+", "_", variant)
                run_dir = study_dir / "classification" / f"{dataset}_{model_type}" / name / f"seed{seed}"
                jobs.append((f"{task} {variant} seed {seed}",
                             OmegaConf.to_container(run_cfg, resolve=True), run_dir))
    return jobs


def run_classification_job(cfg_dict: dict, run_dir: Path) -> str:
    """One run_experiments run (in this process or a joblib worker); returns its status.
    A completed run is kept as it is; an unfinished one resumes from its checkpoint."""
    from . import run_experiments

    summary = run_dir / "summary.json"
    if summary.exists():
        status = read_json(summary).get("status", "unknown")
        if status == "completed":
            return status
    cfg = OmegaConf.create(cfg_dict)
    cfg.resume = (run_dir / "checkpoint.pt").exists() or summary.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run_experiments.run(cfg, run_dir)
    except SystemExit:  # run() exits 1 after writing a "diverged" summary
        pass
    except Exception as err:  # a crash is recorded and reported, and the study goes on
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(err)))
        return f"failed: {type(err).__name__}: {err}"
    return read_json(summary).get("status", "unknown") if summary.exists() else "failed"


def _labelled_job(label: str, cfg_dict: dict, run_dir: Path) -> tuple[str, str]:
    return label, run_classification_job(cfg_dict, run_dir)


def run_classification(cfg: DictConfig, study_dir: Path) -> dict[str, str]:
    jobs = classification_jobs(cfg, study_dir)
    bar = progress_bar(total=len(jobs), enabled=cfg.progress, desc="classification runs")
    statuses = {}
    if int(cfg.jobs) > 1 and len(jobs) > 1:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=int(cfg.jobs), return_as="generator_unordered")(
            delayed(_labelled_job)(*job) for job in jobs
        )
    else:
        results = (_labelled_job(*job) for job in jobs)
    for label, status in results:
        statuses[label] = status
        bar.set_postfix_str(f"{label}: {status}")
        bar.update()
    bar.close()
    return statuses


def run_app(name: str, overrides: list[str], run_dir: Path, progress: bool) -> str:
    """Run another app's ``run(cfg, run_dir)`` unless its summary is already there."""
    if (run_dir / "summary.json").exists():
        return "completed"
    module = importlib.import_module(f"orthogonal_skip_connections.experiments.{APPS[name][0]}")
    cfg = compose_config(name, [*overrides, f"progress={str(progress).lower()}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    module.main.run(cfg, run_dir)
    return "completed"


def validate(cfg: DictConfig) -> None:
    if cfg.scale not in SCALES:
        raise UserError(f"unknown scale {cfg.scale!r}; allowed: {', '.join(SCALES)}")
    unknown = [p for p in cfg.parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown part(s) {unknown}; allowed: {', '.join(PARTS)}")
    if int(cfg.jobs) < 1:
        raise UserError(f"jobs must be >= 1; got {cfg.jobs}")
    if int(cfg.scales[cfg.scale].classification.seeds) < 1:
        raise UserError("classification seeds must be >= 1")


def run(cfg: DictConfig, study_dir: Path) -> dict:
    validate(cfg)
    t0 = time.perf_counter()
    save_config(cfg, study_dir)
    scale = cfg.scales[cfg.scale]
    status: dict[str, object] = {}
    seconds: dict[str, float] = {}

    def timed(part: str, fn, *args):
        start = time.perf_counter()
        status[part] = fn(*args)
        seconds[part] = time.perf_counter() - start

    if "classification" in cfg.parts:
        timed("classification", run_classification, cfg, study_dir)
    apps = (["teacher_student"] if "teacher_student" in cfg.parts else []) + \
        (list(SYNTHETIC_APPS) if "synthetic" in cfg.parts else [])
    for name in apps:
        if name in APPS:
            timed(name, run_app, name, [*scale[name], *cfg.overrides[name]], study_dir / name, cfg.progress)
    report = build_report([study_dir], study_dir, title=f"Do orthogonal skips help? (osc study, scale={cfg.scale})")
    wall = time.perf_counter() - t0
    write_json(study_dir / "study.json", {"scale": cfg.scale, "wall_time_s": wall, "seconds": seconds,
                                          "status": status})
    print(f"study finished in {wall:.0f} s; report: {report['report'].resolve()} (also report.html, results.csv)")
    return {"wall_time_s": wall, "status": status, **report}


main = hydra_app("study")(run)

if __name__ == "__main__":
    main()
