"""The main job: a small, complete study of skip kinds, and its report.

    osc study                  # default scale: <= 10 min on 2 CPU cores, no network
    osc study scale=smoke      # every kind, fewer seeds and epochs
    osc study scale=full       # the GPU setting (CIFAR-10/100, ResNet-18/56, 5 seeds)

Its ``residual_modes`` part trains residual modes (add, orthogonal_update, rotation) x
skip kinds on a pre-activation ResNet and a ViT; the report gives them their own table,
paired with add residuals and identity skips.

It drives the other apps (their ``run`` functions, with configs composed from their own
YAML plus the scale's overrides) and never copies them: classification runs through
``run_experiments``, launched by Hydra's launchers (``jobs`` at once in worker processes
with the joblib launcher; one after another in this process with the basic launcher
when ``jobs=1``), then ``teacher_student`` and the
synthetic apps (``orth_to_id``, ``orth_residual_synthetic_data``, ``construction_validity``),
then ``report.build_report`` over everything it made. A study killed
half-way and started again with the same ``hydra.run.dir`` skips the runs already
completed and starts the unfinished ones again (from their checkpoints with
``save_checkpoint=last``; the default, ``none``, keeps no checkpoints). A run whose dir it
cannot use (a checkpoint or file it cannot read) is refused in words for the study's user,
who named no run dir: move that dir out of the study and run the same study again with
``resume=true`` and its ``hydra.run.dir``, which makes that run anew (``rundir.study_advice``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from ..rundir import ERROR, RunDir, column, saved_state, study_advice
from ..runs import UserError, progress_bar, read_json, write_json
from ..train.classifier import Diverged
from ._app import APPS, CONFIG_DIR, App, choice, load_app, one_of, require, typed
from ._compose import compose_each

SCALES = ("smoke", "default", "full")
PARTS = ("classification", "residual_modes", "teacher_student", "synthetic", "landscape", "two_stage")
SYNTHETIC_APPS = ("orth_to_id", "orth_residual_synthetic_data", "construction_validity")


@dataclass
class Classification:
    tasks: list[str]
    seeds: int
    variants: list[str]
    overrides: list[str]


@dataclass
class ResidualModes:
    tasks: list[str]
    seeds: int
    modes: list[str]  # residual_mode[/orthogonal_method[/stream_norm]]
    variants: list[str]
    overrides: list[str]
    model_overrides: dict[str, list[str]]  # model_type -> its run_experiments overrides (before `overrides`)


@dataclass
class LandscapeRuns:
    """Which classification runs of this study ``loss_landscape`` analyses: those of ``task``
    with these variants and seeds < ``seeds`` (none ran: the app trains its own)."""

    task: str
    variants: list[str]
    seeds: int


@dataclass
class Scale:
    classification: Classification
    residual_modes: ResidualModes
    teacher_student: list[str]
    orth_to_id: list[str]
    orth_residual_synthetic_data: list[str]
    construction_validity: list[str]
    landscape_runs: LandscapeRuns
    loss_landscape: list[str]
    two_stage: list[str]


@dataclass
class Overrides:
    run_experiments: list[str]
    teacher_student: list[str]
    orth_to_id: list[str]
    orth_residual_synthetic_data: list[str]
    construction_validity: list[str]
    loss_landscape: list[str]
    two_stage: list[str]


@dataclass
class Config:
    scale: str
    parts: list[str]
    jobs: int
    progress: bool
    resume: bool
    save_checkpoint: str
    overrides: Overrides
    scales: dict[str, Scale]

    def check(self) -> None:
        choice("scale", self.scale, [s for s in SCALES if s in self.scales])
        one_of("parts", self.parts, PARTS)
        require(self.jobs >= 1, "jobs", "an integer >= 1", self.jobs)
        choice("save_checkpoint", self.save_checkpoint, ("last", "none"))
        c = self.scales[self.scale].classification
        require(c.seeds >= 1, f"scales.{self.scale}.classification.seeds", "an integer >= 1", c.seeds)
        for task in c.tasks:
            require(task.count("/") == 1, f"scales.{self.scale}.classification.tasks", "dataset/model_type entries",
                    task)
        for variant in c.variants:
            require(1 <= len(variant.split("/")) <= 3, f"scales.{self.scale}.classification.variants",
                    "kind, kind/method or kind/method/init entries", variant)
        r, key = self.scales[self.scale].residual_modes, f"scales.{self.scale}.residual_modes"
        require(r.seeds >= 1, f"{key}.seeds", "an integer >= 1", r.seeds)
        for task in r.tasks:
            require(task.count("/") == 1, f"{key}.tasks", "dataset/model_type entries", task)
        for mode in r.modes:
            require(1 <= len(mode.split("/")) <= 3, f"{key}.modes",
                    "mode, mode/orthogonal_method or mode/orthogonal_method/stream_norm entries", mode)
        for variant in r.variants:
            require(1 <= len(variant.split("/")) <= 3, f"{key}.variants",
                    "kind, kind/method or kind/method/init entries", variant)
        for part, key, lists in (("classification", f"scales.{self.scale}.classification", ("tasks", "variants")),
                                 ("residual_modes", key, ("tasks", "modes", "variants"))):
            settings = c if part == "classification" else r
            for name in lists:  # an empty one runs nothing, and the report then finds no run dirs
                require(part not in self.parts or len(getattr(settings, name)) > 0, f"{key}.{name}",
                        f"a non-empty list (part {part} is in parts)", getattr(settings, name))
        lr = self.scales[self.scale].landscape_runs
        require(lr.task.count("/") == 1, f"scales.{self.scale}.landscape_runs.task", "a dataset/model_type", lr.task)
        require(lr.seeds >= 0, f"scales.{self.scale}.landscape_runs.seeds", "an integer >= 0", lr.seeds)
        self.check_apps()

    def check_apps(self) -> None:
        """Compose and check every config this study would run, before anything runs (so
        before Hydra makes the study's run dir): each classification and residual-mode
        setting once (seeds aside: they only set ``seed``), then every other app's config
        (the scale's overrides, then ``overrides.<app>``). Every part is checked, also one
        not in ``parts``: its overrides are the user's all the same, and a resumed study
        may run it later. A mistake is one line naming the part and the setting. Each
        config is checked once per process (the command line checks before Hydra runs,
        the app again when it starts)."""
        for part, plan in (("classification", classification_plan(self, seeds=1)),
                           ("residual_modes", mode_plan(self, seeds=1))):
            plan = [job for job in plan if ("run_experiments", job[1], job[2], *job[3]) not in _CHECKED]
            done = 0
            try:
                for _ in _composed(plan):
                    _CHECKED.add(("run_experiments", plan[done][1], plan[done][2], *plan[done][3]))
                    done += 1
            except UserError as err:
                label = plan[done][0].removesuffix(" seed 0")
                raise UserError(f"study part {part}{_unused(self, part)}, {label}: {err}") from None
        scale = self.scales[self.scale]
        for name in OTHER_APPS:
            overrides = [*(["train.dir=null", "cache_dir=null"] if name == "loss_landscape" else []),
                         *getattr(scale, name), *getattr(self.overrides, name)]
            if name not in APPS or (name, *overrides) in _CHECKED:
                continue
            part = next(p for p, names in PART_APPS.items() if name in names)
            try:
                load_app(name).config(overrides)
            except UserError as err:
                raise UserError(f"study part {part}{_unused(self, part)}, {name}: {err}") from None
            _CHECKED.add((name, *overrides))


_CHECKED: set[tuple] = set()  # (app, *overrides) of the configs checked in this process
# the parts that run other apps than run_experiments, and their apps
PART_APPS = {"teacher_student": ("teacher_student",), "synthetic": SYNTHETIC_APPS, "landscape": ("loss_landscape",),
             "two_stage": ("two_stage",)}
OTHER_APPS = tuple(name for names in PART_APPS.values() for name in names)


def _unused(cfg: Config, part: str) -> str:
    return "" if part in cfg.parts else " (not in parts, checked all the same)"


def variant_overrides(variant: str) -> list[str]:
    """``kind[/method[/init]]`` -> run_experiments overrides."""
    parts = variant.split("/")
    out = [f"model.skip_kind={parts[0]}"]
    if len(parts) > 1:
        out.append(f"model.method={parts[1]}")
    if len(parts) > 2:
        out.append(f"model.init={parts[2]}")
    return out


def mode_overrides(mode: str) -> list[str]:
    """``mode[/method[/stream_norm]]`` -> run_experiments overrides."""
    keys = ("model.residual_mode", "model.orthogonal_method", "model.stream_norm")
    return [f"{key}={part}" for key, part in zip(keys, mode.split("/"))]


def _composed(plan: list) -> Iterator[tuple[dict, list[str]]]:
    """Each run_experiments config of ``plan`` (resolved) with its overrides (the task's
    first), composed and checked in turn: a mistake is a one-line UserError."""
    schema = load_app("run_experiments").schema
    jobs = [[f"dataset={dataset}", f"model.model_type={model_type}", *overrides]
            for _, dataset, model_type, overrides, _ in plan]
    for overrides, run_cfg in zip(jobs, compose_each("run_experiments", jobs)):
        typed(schema, run_cfg)
        yield OmegaConf.to_container(run_cfg, resolve=True), overrides


def _dir_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text)


def classification_plan(cfg: Config, seeds: int | None = None) -> list[tuple[str, str, str, list[str], Path]]:
    """(label, dataset, model_type, overrides, run dir relative to the study's) of every
    classification run: each (task, variant, seed < ``seeds``; default: the scale's)."""
    c = cfg.scales[cfg.scale].classification
    want = cfg.scales[cfg.scale].landscape_runs
    plan = []
    for task in c.tasks:
        dataset, model_type = task.split("/")
        for variant in c.variants:
            for seed in range(c.seeds if seeds is None else min(seeds, c.seeds)):
                # the runs loss_landscape will read keep their trained weights (checkpoint.pt)
                keep = "landscape" in cfg.parts and task == want.task and variant in want.variants and \
                    seed < want.seeds
                overrides = [*variant_overrides(variant), f"seed={seed}", "progress=false",
                             f"save_checkpoint={'last' if keep else cfg.save_checkpoint}", *c.overrides,
                             *cfg.overrides.run_experiments]
                run_dir = Path("classification", f"{dataset}_{model_type}", _dir_name(variant), f"seed{seed}")
                plan.append((f"{task} {variant} seed {seed}", dataset, model_type, overrides, run_dir))
    return plan


def mode_plan(cfg: Config, seeds: int | None = None) -> list[tuple[str, str, str, list[str], Path]]:
    """The residual_modes part's runs, as :func:`classification_plan`: every (task, residual
    mode, skip variant, seed), in residual_modes/<task>/<mode>/<variant>/seed<k>."""
    r = cfg.scales[cfg.scale].residual_modes
    plan = []
    for task in r.tasks:
        dataset, model_type = task.split("/")
        for mode in r.modes:
            for variant in r.variants:
                for seed in range(r.seeds if seeds is None else min(seeds, r.seeds)):
                    # the model type's own settings first, so a mode's explicit parts (e.g. /sqrt_d) win over them
                    overrides = [*r.model_overrides.get(model_type, []), *mode_overrides(mode),
                                 *variant_overrides(variant), f"seed={seed}", "progress=false",
                                 f"save_checkpoint={cfg.save_checkpoint}", *r.overrides, *cfg.overrides.run_experiments]
                    run_dir = Path("residual_modes", f"{dataset}_{model_type}", _dir_name(mode), _dir_name(variant),
                                   f"seed{seed}")
                    plan.append((f"{task} {mode} {variant} seed {seed}", dataset, model_type, overrides, run_dir))
    return plan


def _jobs(cfg: Config, plan: list, study_dir: Path, desc: str) -> list[tuple[str, dict, Path, list[str]]]:
    """(label, resolved run_experiments config, run dir, its overrides) for every run of
    ``plan``; every config is composed and checked here, before any run starts."""
    composed = progress_bar(_composed(plan), total=len(plan), enabled=cfg.progress, desc=desc, leave=False)
    return [(label, run_cfg, study_dir / run_dir, overrides)
            for (label, _, _, _, run_dir), (run_cfg, overrides) in zip(plan, composed)]


def classification_jobs(cfg: Config, study_dir: Path) -> list[tuple[str, dict, Path, list[str]]]:
    """Every (task, variant, seed) of the classification part, in
    study_dir/classification/<task>/<variant>/seed<k>: see :func:`_jobs`."""
    return _jobs(cfg, classification_plan(cfg), study_dir, "checking run configs")


def mode_jobs(cfg: Config, study_dir: Path) -> list[tuple[str, dict, Path, list[str]]]:
    """Every (task, residual mode, skip variant, seed) of the residual_modes part: see :func:`_jobs`."""
    return _jobs(cfg, mode_plan(cfg), study_dir, "checking residual-mode configs")


def landscape_overrides(cfg: Config, jobs: list, study_dir: Path) -> list[str]:
    """loss_landscape's overrides: the scale's, the user's, and ``runs=[...]`` for the
    completed classification runs named by ``landscape_runs`` (its own training runs and
    cache inside its run dir either way)."""
    want = cfg.scales[cfg.scale].landscape_runs
    dataset, model_type = want.task.split("/")
    runs = []
    for variant in want.variants:
        for seed in range(want.seeds):
            path = study_dir / "classification" / f"{dataset}_{model_type}" / re.sub(r"[^A-Za-z0-9]+", "_", variant) / \
                f"seed{seed}"
            if any(p == path for _, _, p, _ in jobs) and (path / "checkpoint.pt").exists() and \
                    summary_status(path) == "completed":
                runs.append(path)
    chosen = [f"runs=[{','.join(repr(str(p)) for p in runs)}]"] if runs else []
    named = len(want.variants) * want.seeds
    if len(runs) < named:  # (a task, variant or seed the classification part did not train: said, not silent)
        what = f"{want.task} {', '.join(want.variants)}, seeds 0..{want.seeds - 1}"
        print(f"landscape: {len(runs)} of the {named} runs landscape_runs names ({what}) completed in this study's "
              "classification part; " + ("the landscape reads those alone" if runs else
                                        "loss_landscape trains its own default runs"))
    return ["train.dir=null", "cache_dir=null", *cfg.scales[cfg.scale].loss_landscape, *cfg.overrides.loss_landscape,
            *chosen]


def summary_status(run_dir: Path) -> str | None:
    """The status in ``run_dir``'s summary.json; None without one, or with one that cannot be
    read (a study's job then claims its dir, which refuses it, saying what to do)."""
    try:
        status = read_json(run_dir / "summary.json").get("status", "unknown")
    except Exception:  # none, not JSON, not an object
        return None
    return status if isinstance(status, str) else None


def run_classification_job(cfg_dict: dict, run_dir: Path, study: Path | None = None) -> str:
    """One run_experiments run (in this process or a joblib worker) of the study in ``study``;
    returns its status. A completed run is kept as it is; an unfinished one resumes from its
    checkpoint; one whose dir cannot be used (a file it cannot read) fails, saying what the
    study's user can do (:func:`~..rundir.study_advice`)."""
    summary = run_dir / "summary.json"
    if summary_status(run_dir) == "completed":
        return "completed"
    cfg_dict = {**cfg_dict, "resume": (run_dir / "checkpoint.pt").exists() or summary.exists()}
    try:
        load_app("run_experiments").run(cfg_dict, run_dir, study=study)
    except Diverged:  # a "diverged" summary was written; the report lists it
        pass
    except Exception as err:  # a crash is recorded and reported, and the study goes on
        (run_dir / ERROR).write_text("".join(traceback.format_exception(err)))
        return f"failed: {type(err).__name__}: {err}"
    return read_json(summary).get("status", "unknown") if summary.exists() else "failed"


_PARENT_ENV = "OSC_STUDY_PID"  # set by the study for its launcher's worker processes


def _exit_with_parent() -> None:
    """In a worker process of the study (a direct child): a daemon thread that ends the
    process within half a second of the study's death, so a killed study leaves no
    orphaned training behind (its files are written atomically; resume picks them up)."""
    study = int(os.environ.get(_PARENT_ENV, "0"))
    if study in (0, os.getpid()) or os.getppid() != study or getattr(_exit_with_parent, "armed", False):
        return
    _exit_with_parent.armed = True

    def watch():
        while os.getppid() == study:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-study", daemon=True).start()


def classification_task(cfg) -> str:
    """Hydra task of one classification job (run in the launcher's worker process or in
    this one): its run dir is the job's Hydra output dir."""
    from hydra.core.hydra_config import HydraConfig

    _exit_with_parent()
    hc = HydraConfig.get()  # the study's launcher's sweep dir is the study's dir
    return run_classification_job(OmegaConf.to_container(cfg, resolve=True), Path(hc.runtime.output_dir),
                                  Path(hc.sweep.dir))


def _launcher(cfg: Config, study_dir: Path):
    """Hydra's joblib launcher (``cfg.jobs`` worker processes), or its basic launcher (in
    this process) when ``jobs=1``, set up to run :func:`classification_task` with job
    dirs under ``study_dir``."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.plugins import Plugins
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode

    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cfg.jobs}"] if cfg.jobs > 1 else \
        ["hydra/launcher=basic"]
    overrides = [*launcher, f"hydra.sweep.dir={_quote(study_dir)}", "hydra.job.chdir=false",
                 "hydra.job.name=run_experiments", "hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]
    master = loader.load_configuration("run_experiments", overrides=overrides, run_mode=RunMode.MULTIRUN)
    return Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)),
        task_function=classification_task, config=master)


def _quote(value) -> str:
    """A string as a quoted Hydra override value."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_classification(cfg: Config, study_dir: Path, jobs: list) -> dict[str, str]:
    """Every classification job through Hydra's launcher; returns {label: status}. The
    progress bar counts the summaries written so far."""
    from hydra.core.utils import JobStatus

    launcher = _launcher(cfg, study_dir)
    job_overrides = [[*overrides, f"hydra.sweep.subdir={_quote(run_dir.relative_to(study_dir))}"]
                     for _, _, run_dir, overrides in jobs]
    bar = progress_bar(total=len(jobs), enabled=cfg.progress, desc="classification runs")
    done = threading.Event()

    def count():
        while not done.wait(1.0):
            bar.n = sum((run_dir / "summary.json").exists() for _, _, run_dir, _ in jobs)
            bar.refresh()

    watcher = threading.Thread(target=count, daemon=True)
    watcher.start()
    saved = os.environ.get(_PARENT_ENV)
    os.environ[_PARENT_ENV] = str(os.getpid())  # read by the workers: see _exit_with_parent
    try:
        returns = launcher.launch(job_overrides, initial_job_idx=0)
    finally:
        done.set()
        watcher.join()
        if saved is None:
            os.environ.pop(_PARENT_ENV, None)
        else:
            os.environ[_PARENT_ENV] = saved
    statuses = {}
    for (label, *_), ret in zip(jobs, returns):
        if ret.status == JobStatus.COMPLETED:
            statuses[label] = ret.return_value
        else:
            statuses[label] = f"failed: {type(ret._return_value).__name__}: {ret._return_value}"
    bar.n = len(jobs)
    bar.set_postfix_str(f"{sum(s == 'completed' for s in statuses.values())} completed")
    bar.close()
    return statuses


def fetch_datasets(jobs: list) -> None:
    """Each image dataset the runs of ``jobs`` read (its data.root and data.download as each run
    has them), found or downloaded here once, before any run starts. Otherwise every run of a
    CIFAR missing offline failed on its own, each with its error.txt, and with jobs > 1 the
    launcher's workers downloaded the same archive into one root at once."""
    from ..data.vision import fetch_each

    fetch_each(((f"study: run {label}", c["dataset"]["name"], c["data"]["root"], c["data"]["download"])
                for label, c, _run_dir, _overrides in jobs),
               keys=("overrides.run_experiments=[data.root=...]", "overrides.run_experiments=[data.download={}]"))


def run_app(name: str, overrides: list[str], run_dir: Path, progress: bool, study: Path | None = None) -> str:
    """Run another app in this process, as a part of the study in ``study``, unless its summary
    is already there; one that saved parts of its run (two_stage's finished seeds) resumes."""
    if (run_dir / "summary.json").exists():
        return "completed"
    app = load_app(name)
    again = ["resume=true"] if app.supports_resume and saved_state(run_dir) is not None else []
    app.run([*overrides, f"progress={str(progress).lower()}", *again], run_dir, study=study)
    return "completed"


def report(cfg: Config, status: dict, seconds: dict, wall: float, study_dir: Path, written: list[str]) -> dict:
    runs = status.get("classification", {})
    done = sum(s == "completed" for s in runs.values())
    rows = [{"part": part, "status": s if isinstance(s, str) else f"{sum(x == 'completed' for x in s.values())}"
             f"/{len(s)} runs completed", "seconds": seconds.get(part)} for part, s in status.items()]
    mode_runs = status.get("residual_modes", {})
    counts = [f"{n} of {len(r)} {what} runs" for what, r, n in (
        ("classification", runs, done),
        ("residual-mode", mode_runs, sum(s == "completed" for s in mode_runs.values()))) if r]
    verdict = (" and ".join(counts) + " completed" if counts else "no classification runs") + \
        f"; {sum(s == 'completed' for s in status.values() if isinstance(s, str))} other app(s) completed, in " \
        f"{wall:.0f} s; the report (every skip kind against identity, " + \
        ("every residual mode x skip kind against add/identity, " if "residual_modes" in status else "") + \
        "and each app's finding): " \
        f"{(study_dir / 'report.html').resolve()} (also {', '.join(['report.md', *written])})."
    return {
        "title": f"osc study, scale={cfg.scale}",
        "question": "do orthogonal skips help?",
        "tables": [{"caption": "parts of the study", "columns": [
            column("part", "part"), column("status", "status"), column("seconds", "time", "s")], "rows": rows}],
        "verdict": verdict,
        "figures": [],
    }


def run(cfg: Config, rd: RunDir) -> dict:
    study_dir = rd.path
    t0 = time.perf_counter()
    jobs = classification_jobs(cfg, study_dir) if "classification" in cfg.parts else []
    modes = mode_jobs(cfg, study_dir) if "residual_modes" in cfg.parts else []
    scale = cfg.scales[cfg.scale]
    apps = (["teacher_student"] if "teacher_student" in cfg.parts else []) + \
        (list(SYNTHETIC_APPS) if "synthetic" in cfg.parts else []) + \
        (["loss_landscape"] if "landscape" in cfg.parts else []) + (["two_stage"] if "two_stage" in cfg.parts else [])
    apps = [name for name in apps if name in APPS]
    fetch_datasets([*jobs, *modes])  # before anything is written: a dataset missing offline refuses the study
    rd.start(cfg)
    status: dict[str, object] = {}
    seconds: dict[str, float] = {}

    parts = (["classification"] if jobs else []) + (["residual_modes"] if modes else []) + apps

    def timed(part: str, fn, *args):
        # which part runs, on stdout: the parts' bars and lines (loss_landscape's, two_stage's per seed) say
        # nothing of their app, and with progress=false nothing else is printed for minutes
        print(f"study, part {parts.index(part) + 1} of {len(parts)}: {part}", flush=True)
        start = time.perf_counter()
        status[part] = fn(*args)
        seconds[part] = time.perf_counter() - start

    if jobs:
        timed("classification", run_classification, cfg, study_dir, jobs)
        runs = status["classification"]
        if all(str(s).startswith("failed") for s in runs.values()):  # the cause, not "no run dirs found"
            label, why = next(iter(runs.items()))
            raise UserError(f"all {len(runs)} classification runs failed; {label}: {str(why).removeprefix('failed: ')}"
                            f" (each run dir under {study_dir / 'classification'} holds its error.txt)")
    if modes:
        timed("residual_modes", run_classification, cfg, study_dir, modes)
    for name in apps:  # loss_landscape after classification: it reads those runs
        overrides = landscape_overrides(cfg, jobs, study_dir) if name == "loss_landscape" else \
            [*getattr(scale, name), *getattr(cfg.overrides, name)]
        timed(name, run_app, name, overrides, study_dir / name, cfg.progress, study_dir)
    # imported here, not at the top: the report's matplotlib and SciPy would cost every launcher worker
    # (which imports this module for classification_task) and `osc study --help` ~1.5 s of start-up
    from ..report import build_report

    built = build_report([study_dir], study_dir, title=f"Do orthogonal skips help? (osc study, scale={cfg.scale})",
                         advice=lambda d: study_advice(study_dir, d))
    wall = time.perf_counter() - t0
    write_json(study_dir / "study.json", {"scale": cfg.scale, "wall_time_s": wall, "seconds": seconds,
                                          "status": status})
    return {"wall_time_s": wall, "status": status, "seconds": seconds, "rows": built["rows"],
            "report_md": built["report"],
            "report": report(cfg, status, seconds, wall, study_dir, [w for w in built["written"] if w != "report.html"])}


main = App("study", Config, run, resume=True, redo_completed=True)

if __name__ == "__main__":
    sys.exit(main())
