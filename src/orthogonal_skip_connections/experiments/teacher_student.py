"""Teacher-student convergence study (Li & Yuan 2017 and the blog's ResNet variants).

    python -m orthogonal_skip_connections.experiments.teacher_student d=5 seeds=8
    osc teacher_student teacher.init=gaussian teacher.scale=0.1 output=vector

Trains a student of every architecture in ``archs`` against a teacher of the same
architecture, all seeds at once (``train/teacher_student.py``), and writes into the
run dir: config.yaml, trajectories.npz (per architecture: steps, per-seed metrics (train,
test and exact population loss, distances), teacher and final student weights),
summary.json (per architecture: final losses and distances, means over seeds, the fits /
recovered verdicts with their thresholds, and the seeds that fit without being recovered
up to symmetry), distance.png and loss.png (every seed's distances to its teacher, relative
to the all-zero student's, and its train, test and population loss / Var(y) over the steps,
coloured by its verdict) and
outcomes.png (each seed's final loss against its teacher's closest pair of hidden units,
marked by verdict).
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..analysis.teacher_student import seed_outcomes, summarize
from ..models.teacher_student import ARCHS
from ..train import teacher_student as ts
from ..rundir import RunDir, column
from ..runs import UserError, check_memory, resolve_device, write_npz
from ._app import MAX_SEED, App, check_seed, one_of, require, threads, typed


@dataclass
class Teacher:
    init: str
    scale: float


@dataclass
class Student:
    init: str
    scale: float
    orth_init: str
    start: Optional[str]


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
    data_draw: int
    start_draw: int
    batch_size: int
    teacher: Teacher
    student: Student
    orth_update: str
    optimizer: str
    upkeep_adaptive: bool
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
        check_seed("seed (the first seed)", self.seed, MAX_SEED - (self.seeds - 1))  # seeds seed .. seed + seeds - 1
        for key in ("fit", "recover"):
            value = getattr(self.thresholds, key)
            require(np.isfinite(value) and value > 0, f"thresholds.{key}", "> 0", value)
        threads(self.num_threads, nullable=False)
        self.train_config()
        if self.student.start is not None and self.start_draw:
            raise UserError(f"start_draw={self.start_draw} draws a new start, and student.start={self.student.start} "
                            f"gives one: choose one")
        if self.student.start is not None:
            seeds = list(range(self.seed, self.seed + self.seeds))
            try:
                ts.check_start(self.archs, self.train_config(), seeds, load_start(self.student.start, self.archs, seeds))
            except ValueError as err:
                raise UserError(f"student.start={self.student.start}: {err}") from None
        # at least a (d, d) student matrix and its gradient per seed and the data, in dtype
        check_memory(f"d={self.d}, n_train={self.n_train}, n_test={self.n_test}, seeds={self.seeds}",
                     torch.finfo(getattr(torch, self.dtype)).bits // 8 *
                     (2 * self.seeds * self.d ** 2 + (self.n_train + self.n_test) * self.d))

    def train_config(self) -> ts.TeacherStudentConfig:
        device = resolve_device(self.device)
        try:
            return ts.TeacherStudentConfig(
                d=self.d, output=self.output, n_train=self.n_train, n_test=self.n_test, data_draw=self.data_draw,
                start_draw=self.start_draw, batch_size=self.batch_size,
                teacher_init=self.teacher.init, teacher_scale=self.teacher.scale, student_init=self.student.init,
                student_scale=self.student.scale, orth_init=self.student.orth_init, orth_update=self.orth_update,
                optimizer=self.optimizer, upkeep_adaptive=self.upkeep_adaptive, lr=self.lr, momentum=self.momentum,
                epochs=self.epochs, steps=self.steps, log_every=self.log_every, dtype=self.dtype, device=str(device),
            )
        except ValueError as err:  # the trainer's checks of these values, raised before anything runs
            raise UserError(str(err)) from None


def load_start(path: str, archs: list[str], seeds: list[int]) -> dict[str, dict]:
    """The final teacher and student weights of an earlier run (its dir or its
    trajectories.npz) for ``archs`` and ``seeds``, as :func:`ts.train`'s ``start`` takes them."""
    file = Path(path)
    if file.is_dir() and not (file / "trajectories.npz").is_file():  # (another app's run dir, or none)
        app = RunDir.app_of(file)
        raise UserError(f"student.start={path!r}: that dir holds no trajectories.npz" + (
            f" (a {app} run, not a teacher_student one)" if app not in (None, "teacher_student") else
            " (a teacher_student run saves it when it ends)"))
    file = file / "trajectories.npz" if file.is_dir() else file
    if not file.is_file():
        raise UserError(f"student.start={path!r}: no such run dir or trajectories.npz")
    try:
        with np.load(file) as z:
            start = {}
            for a in archs:
                if f"{a}.seeds" not in z:
                    held = ", ".join(str(x) for x in z["archs"]) if "archs" in z else "none"
                    raise UserError(f"student.start: {file} holds no {a} run (it holds: {held})")
                saved = [int(x) for x in z[f"{a}.seeds"]]
                missing = [s for s in seeds if s not in saved]
                if missing:
                    raise UserError(f"student.start: {file} has no seed {missing[0]} for {a} (it has seeds "
                                    f"{', '.join(map(str, saved))})")
                rows = [saved.index(s) for s in seeds]
                start[a] = {k: {n: z[f"{a}.{k}.{n}"][rows] for n in ARCHS[a].params} for k in ("teacher", "student")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        # not an npz, one cut short (BadZipFile, EOFError, zlib.error), or one without the weights; numpy calls
        # any file that is not .npy/.npz 'pickled (object) data' and offers the unsafe loader: neither helps
        detail = "not an .npz file" if "pickled" in str(err) else \
            (str(err).splitlines()[0][:100] if str(err) else type(err).__name__)
        raise UserError(f"student.start: cannot read the weights in {file} ({detail})") from None
    return start


def build(cfg: Config) -> tuple[list[str], ts.TeacherStudentConfig, list[int]]:
    """(archs, training config, seeds) of a checked config (or of a composed one)."""
    cfg = typed(Config, cfg)
    return list(cfg.archs), cfg.train_config(), list(range(cfg.seed, cfg.seed + cfg.seeds))


# Each seed's verdict (analysis.teacher_student.seed_outcomes, as summarize counts them) with the
# marker and colour that every figure of the app gives it: outcomes.png's points, the lines of
# distance.png and loss.png.
VERDICTS = (("recovered up to symmetry", "o", "tab:green"), ("fits, not recovered", "^", "tab:orange"),
            ("neither", "x", "tab:gray"))


def verdict_groups(t: ts.Trajectory, fit: float, recover: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Each seed's final train loss / Var(y) (S,) and the masks (S,) of :data:`VERDICTS`' three
    groups: recovered up to symmetry, fits only, neither (a diverged seed: neither)."""
    rel, fits, rec = seed_outcomes(t, fit, recover)
    return rel, (rec, fits & ~rec, ~fits & ~rec)


def _group_title(name: str, masks) -> str:
    return f"{name}: " + ", ".join(f"{int(m.sum())} {word}" for m, word in zip(masks, ("recovered", "fit only", "neither")))


def plot_outcomes(trajs: dict[str, ts.Trajectory], run_dir: Path, fit: float, recover: float) -> Path:
    """outcomes.png: per architecture, each seed's final train loss / Var(y) against the angle
    between its teacher's two closest hidden units, marked by verdict (recovered up to
    symmetry, fits only, neither), with the fit threshold: whether the seeds that fail are
    the near-degenerate teachers (notes/teacher_student_findings.md, finding 3)."""
    from ..plots import plain_log_labels, plt, savefig, shared_legend

    names = list(trajs)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 0.6), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    for k, (ax, name) in enumerate(zip(axes.flat, names)):
        t = trajs[name]
        rel, masks = verdict_groups(t, fit, recover)
        for (label, marker, color), mask in zip(VERDICTS, masks):
            ax.scatter(t.teacher_closest_angle[mask], np.clip(np.nan_to_num(rel[mask], nan=1.0, posinf=1.0), 1e-16, None),
                       marker=marker, color=color, s=22, label=label)
        ax.axhline(fit, color="black", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(_group_title(name, masks), fontsize="medium")
        if k % ncols == 0:
            ax.set_ylabel("final train loss / Var(y)")
        if k >= len(names) - ncols:
            ax.set_xlabel("angle of the teacher's closest hidden units (°)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    plain_log_labels(axes.flat[0], "y")
    shared_legend(fig, axes.flat[0])
    fig.suptitle(f"each seed's outcome against its teacher's closest pair of hidden units (dashed: the fit threshold {fit:g})")
    return savefig(fig, run_dir / "outcomes.png")


def _seed_panels(trajs: dict[str, ts.Trajectory], groups: dict, series: dict, styles: dict, path: Path, ylabel: str,
                 title: str, threshold: tuple[float, str] | None = None) -> Path:
    """One panel per architecture, one thin line per seed and series, coloured by the seed's
    verdict (:data:`VERDICTS`), styled per series (``styles``: label -> ``ax.plot`` keywords);
    ``threshold``: (value, legend label) drawn dashed in black. The seeds are drawn one by one,
    not as a mean: where some fit and some stall a mean over seeds describes none of them."""
    from matplotlib.lines import Line2D

    from ..plots import plain_log_labels, plt, savefig

    names = list(series)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    width = max(4.2 * ncols, 6.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.2 * nrows + 0.8), squeeze=False, sharey=True,
                             layout="constrained")
    for k, (ax, name) in enumerate(zip(axes.flat, names)):
        masks = groups[name]
        for (_, _, color), mask in reversed(list(zip(VERDICTS, masks))):  # the fitting seeds drawn last, on top
            for s in np.flatnonzero(mask):
                for label, ys in series[name].items():
                    y = np.asarray(ys[s], dtype=float)
                    with np.errstate(invalid="ignore"):
                        y = np.where(y > 0, y, np.nan)  # a log axis cannot show 0 (nor a diverged seed's nan)
                    ax.plot(trajs[name].steps, y, **{"color": color, **styles[label]})
        if threshold is not None:
            ax.axhline(threshold[0], color="black", linestyle="--", linewidth=0.9)
        ax.set_yscale("log")
        ax.set_title(_group_title(name, masks), fontsize="medium")
        ax.set_xlabel("step")
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    plain_log_labels(axes.flat[0], "y")
    handles = [Line2D([], [], color=c, linewidth=2, label=f"seed: {v}") for i, (v, _, c) in enumerate(VERDICTS)
               if any(groups[n][i].any() for n in names)]  # the verdicts some seed has
    handles += [Line2D([], [], color="0.3", label=label, **{k: v for k, v in st.items() if k != "color"})
                for label, st in styles.items()]
    if threshold is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.9, label=threshold[1]))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4 if ncols > 1 else 2),
               fontsize="small")
    fig.suptitle("\n".join(textwrap.fill(line, int(10 * width)) for line in title.split("\n")))  # ~10 chars an inch
    return savefig(fig, path)


LOSS_STYLES = {"train": {"linewidth": 3.0, "alpha": 0.35}, "test": {"linewidth": 1.0},
               "population (exact)": {"linewidth": 0.8, "linestyle": (0, (2, 2)), "color": "black", "alpha": 0.6}}
DISTANCE_STYLES = {"aligned (perm. + rescaling)": {"linewidth": 1.2},
                   "||W - W*||_F (summed)": {"linewidth": 1.0, "linestyle": ":"}}


def distance_series(t: ts.Trajectory) -> dict[str, np.ndarray]:
    """distance.png's curves of one architecture: each seed's aligned and plain distance to its
    teacher divided by the all-zero student's (the scale of the recovered verdicts and their
    threshold), (S, T) each."""
    tiny = np.finfo(float).tiny
    return {"aligned (perm. + rescaling)": t.aligned_distance / np.maximum(t.teacher_aligned_norm, tiny)[:, None],
            "||W - W*||_F (summed)": t.distance / np.maximum(t.teacher_norm, tiny)[:, None]}


def loss_series(t: ts.Trajectory) -> dict[str, np.ndarray]:
    """loss.png's curves of one architecture: the train, test and exact population loss
    divided by each seed's Var(y) (the table's and the fit threshold's scale), (S, T) each."""
    var = np.maximum(t.label_variance, np.finfo(float).tiny)[:, None]
    return {"train": t.train_loss / var, "test": t.test_loss / var, "population (exact)": t.population_loss / var}


def _spread(a: np.ndarray, b: np.ndarray) -> float:
    """max over seeds and steps of max(a/b, b/a), over the finite positive pairs (1.0 if none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(np.log(a / b))
    r = r[np.isfinite(r)]
    return float(np.exp(r.max())) if r.size else 1.0


def plot(trajs: dict[str, ts.Trajectory], run_dir: Path, fit: float, recover: float) -> dict[str, dict]:
    """distance.png and loss.png: every seed's curve, coloured by its verdict. Returns what they
    draw: {file: {arch: {label: (S, T)}}}."""
    groups = {a: verdict_groups(t, fit, recover)[1] for a, t in trajs.items()}
    distances = {a: distance_series(t) for a, t in trajs.items()}
    _seed_panels(trajs, groups, distances, DISTANCE_STYLES, run_dir / "distance.png",
                 "distance / the zero student's",
                 "student-teacher distance relative to the all-zero student's (the verdicts' scale), one line per "
                 "seed and distance, coloured by the seed's final verdict (as in outcomes.png)",
                 threshold=(recover, f"recovered threshold {recover:g}"))
    losses = {a: loss_series(t) for a, t in trajs.items()}
    gap = max(max(_spread(v["test"], v["train"]), _spread(v["population (exact)"], v["train"])) for v in losses.values())
    _seed_panels(trajs, groups, losses, LOSS_STYLES, run_dir / "loss.png", "loss / Var(y)",
                 "train, test and exact population loss / Var(y), one line per seed, coloured by the seed's final "
                 "verdict (as in outcomes.png)\n"
                 f"(test and population stay within ×/÷ {gap:.2g} of train at every seed and step"
                 + (": the three lines lie on one another)" if gap < 2 else ")"),
                 threshold=(fit, f"fit threshold {fit:g}"))
    return {"distance.png": distances, "loss.png": losses}


def _geo(s: dict, key: str) -> str:
    """'g ×/÷ f': the geometric mean over seeds and the geometric sd factor ('g' alone for one
    seed, which has no spread to give)."""
    g, f = s.get(f"{key}_final_geomean"), s.get(f"{key}_final_gsd")
    if g is None:
        return "diverged"
    return f"{g:.2g}" if f is None or math.isnan(f) else f"{g:.2g} ×/÷ {f:.2g}"


def _optimizer_text(cfg: Config) -> str:
    """The optimiser as the run used it: Adam's betas rather than its (unused) momentum."""
    beta1, beta2 = ts.ADAM_BETAS
    if cfg.optimizer == "adam":
        return f"adam lr {cfg.lr:g} (betas {beta1:g}, {beta2:g})"
    return f"{cfg.optimizer} lr {cfg.lr:g}" + (f" momentum {cfg.momentum:g}" if cfg.momentum else "")


def _q_rule(cfg: Config) -> str:
    """How orth_resnet's Q moved on O(d) (train/teacher_student.py's docstring)."""
    rule = {"polar": "the polar retraction", "steepest": "the spectral steepest step"}[cfg.orth_update]
    if cfg.upkeep_adaptive:
        return f"{rule} along Adam's step in so(d) (upkeep_adaptive)"
    mu = ts.ADAM_BETAS[0] if cfg.optimizer == "adam" else cfg.momentum
    return f"{rule} along " + (f"the heavy-ball momentum ({mu:g}) of its gradient" if mu else "its gradient")


def report(summary: dict, archs: list[str], n_seeds: int, cfg: Config) -> dict:
    rows = [{"arch": a, "formula": ARCHS[a].formula,
             **{k: _geo(summary[a], k) for k in ("relative_train_loss", "test_loss", "relative_population_loss",
                                                 "distance", "aligned_distance")},
             "fits": f"{summary[a]['fits_seeds']}/{n_seeds}", "recovered": f"{summary[a]['recovered_seeds']}/{n_seeds}",
             "symmetry": f"{summary[a]['recovered_up_to_symmetry_seeds']}/{n_seeds}"} for a in archs]
    fit_any = [a for a in archs if summary[a]["fits_seeds"] > 0]
    rec_any = [a for a in archs if summary[a]["recovered_seeds"] > 0]
    sym = [a for a in archs if summary[a]["recovered_up_to_symmetry_seeds"] > summary[a]["recovered_seeds"]]
    diverged = [a for a in archs if summary[a]["diverged_seeds"] > 0]
    count = lambda a, k: f"{a} {summary[a][k]}/{n_seeds}"  # noqa: E731
    verdict = (f"over {n_seeds} seeds of {summary['meta']['steps']} steps, "
               + (f"{', '.join(count(a, 'fits_seeds') for a in fit_any)} fit the data" if fit_any
                  else "no architecture fits the data in any seed (cannot tell stuck from slow: train longer)")
               + (f"; {', '.join(count(a, 'recovered_seeds') for a in rec_any)} recover the teacher's weights as they are"
                  if rec_any else "; none recovers the teacher's weights as they are")
               + (f"; {', '.join(count(a, 'recovered_up_to_symmetry_seeds') for a in sym)} recover them only up to a "
                  "permutation and rescaling of hidden units" if sym else "")
               + (f"; {', '.join(count(a, 'diverged_seeds') for a in diverged)} diverged (non-finite loss: lower lr)"
                  if diverged else "") + ".")
    thr = cfg.thresholds
    same = "sum_modified" in archs and "modified_resnet" in archs
    notes = []
    if same:
        notes.append("sum_modified and modified_resnet differ only by the outer + x, which teacher and student share: "
                     "it cancels in f_student(x) - f_teacher(x), so both train identically and their rows agree "
                     "(only the relative loss can differ, since Var(y) includes the + x term); likewise resnet_block "
                     "trains as the plain net W2^T ReLU(W1^T x).")
    if cfg.output == "sum":
        notes.append("with a summed output only W2 1 (and 1^T Q) reach the output: the rest of W2 never moves, so the "
                     "plain distance cannot fall to 0 for the two-layer architectures; the aligned distance compares "
                     "only what the output sees.")
    odd = [f"{a} seed {e['seed']} (loss/Var(y) {e['relative_train_loss']:.2g}, population {e['relative_population_loss']:.2g}, "
           f"aligned distance {e['relative_aligned_distance']:.2g} of the zero student's; its teacher's two closest "
           f"hidden units are {e['teacher_closest_angle_deg']:.2g} degrees apart)"
           for a in archs for e in summary[a]["fits_not_recovered"]]
    if odd:
        notes.append("fit but not recovered up to symmetry: " + "; ".join(odd) + ". A small angle means two "
                     "near-collinear teacher units: the loss is then almost flat along the directions that tell them "
                     "apart, and a student can sit just under the fit threshold for a long time "
                     "(notes/teacher_student_findings.md, finding 3).")
    near = [f"{a} seed {e['seed']} (loss/Var(y) {e['relative_train_loss']:.2g}, aligned distance "
            f"{e['relative_aligned_distance']:.2g} of the zero student's)"
            for a in archs for e in summary[a]["recovered_not_fit"]]
    if near:
        notes.append("recovered up to symmetry without fitting yet: " + "; ".join(near) + f". Recovery is a distance "
                     f"within {thr.recover:g} of the zero student's, fitting a loss below {thr.fit:g} of Var(y): a "
                     "loss falls like a distance squared, so a student near its teacher can still sit above the fit "
                     "threshold, and counts as recovered but not as fitting.")
    tested = [(a, summary[a]["closest_angle"]) for a in archs if summary[a]["closest_angle"]["p_value"] is not None]
    if tested:
        notes.append("closest pair of the teacher's hidden units (the effective first layer's columns), median over "
                     "the seeds that fit / that do not, with the two-sided Mann-Whitney p-value: " + "; ".join(
                         f"{a} {c['fit_median']:.1f}° / {c['not_fit_median']:.1f}° (p = {c['p_value']:.2g})"
                         for a, c in tested) + " (outcomes.png draws every seed; in earlier runs, not this one, closer "
                     "units stalled more seeds on plateaus at d = 5 and not at d = 10: notes/teacher_student_findings.md).")
    return {
        "title": "Teacher-student convergence (Li & Yuan 2017 and the one-block ResNet variants)",
        "question": "does gradient descent recover the teacher's weights, and up to which symmetry, for each "
                    "architecture?",
        "measures": [
            f"setting: each seed draws its own teacher of the same architecture ({cfg.teacher.init} entries, scale "
            f"{cfg.teacher.scale:g}) and student ("
            + (f"{cfg.student.init} init" + (f", draw {cfg.start_draw}" if cfg.start_draw else "")
               if cfg.student.start is None
               else f"warm-started from the final weights of {cfg.student.start}") + f"); inputs x ~ N(0, I_d), d = {cfg.d}, "
            f"{cfg.n_train} training and {cfg.n_test} test samples"
            + (f" (draw {cfg.data_draw} of each seed's inputs)" if cfg.data_draw else "") + f", {_optimizer_text(cfg)}, "
            f"batch {cfg.batch_size}, {summary['meta']['steps']} steps, "
            f"output {'summed to a scalar' if cfg.output == 'sum' else 'the d-vector'}",
            "architectures (W, W1, W2 are d x d"
            + (f"; Q is orthogonal, kept on O(d) by {_q_rule(cfg)}" if "orth_resnet" in archs else "") + "): "
            + "; ".join(f"{a}: f(x) = {ARCHS[a].formula}" for a in archs),
            "statistic: the table's losses and distances are geometric means over seeds ×/÷ the geometric std "
            "factor, since seeds spread over orders of magnitude; where some seeds fit and others stall such a mean "
            "describes no seed, so distance.png and loss.png draw every seed as its own line, coloured by its verdict "
            "as in outcomes.png (green: recovered up to symmetry, orange: fits only, grey: neither); loss.png divides "
            f"each seed's losses by its Var(y), the table's scale, and dashes the fit threshold {cfg.thresholds.fit:g}; "
            "distance.png divides its distances by the all-zero student's and dashes the recovered threshold "
            f"{cfg.thresholds.recover:g}",
            "relative train loss: final training MSE / Var(y), i.e. 1 - R^2 (Var(y) is the loss of the best constant)",
            "population loss: E ||f(x) - f*(x)||^2 / k over x ~ N(0, I_d) in closed form (arc-cosine kernel, Cho & "
            "Saul 2009), the test loss on infinitely many inputs, divided by Var(y)",
            "distance: sum over weight matrices of ||W - W*||_F; aligned distance: the same after matching hidden "
            "units to the teacher's (an optimal assignment, scipy's linear_sum_assignment) and rescaling each "
            "by c > 0 to its teacher unit's incoming norm (ReLU is positively homogeneous): an upper bound on the "
            "distance up to these symmetries, since c is fixed, not minimised",
            f"fits: relative train loss <= {thr.fit:g}; recovered: distance / (distance of the all-zero student) <= "
            f"{thr.recover:g}; up to symmetry: aligned distance / (aligned distance of the all-zero student) <= "
            f"{thr.recover:g}; each counted per seed, k of n",
        ],
        "tables": [{"caption": "final numbers: geometric mean over seeds ×/÷ geometric std; verdicts as seed counts",
                    "columns": [
            column("arch", "architecture"), column("formula", "student f(x)"),
            column("relative_train_loss", "train loss / Var(y)"), column("test_loss", "test loss", "MSE"),
            column("relative_population_loss", "population loss / Var(y)"),
            column("distance", "distance to teacher ||W - W*||_F"),
            column("aligned_distance", "aligned distance (perm. + rescaling)"),
            column("fits", f"fits (loss/Var(y) <= {thr.fit:g})", "seeds"),
            column("recovered", f"recovered (rel. distance <= {thr.recover:g})", "seeds"),
            column("symmetry", f"up to symmetry (rel. aligned <= {thr.recover:g})", "seeds")], "rows": rows,
            "note": notes[0] if same else ""}],
        "notes": notes[1:] if same else notes,
        "verdict": verdict,
        "figures": ["distance.png", "loss.png", "outcomes.png"],
        "captions": {
            "distance.png": "each seed's distance to its teacher over training, relative to the all-zero "
                            "student's, per architecture, coloured by its final verdict, with the recovered "
                            "threshold: do the seeds that fit converge to the teacher's weights up to a permutation "
                            "and rescaling of hidden units (aligned, solid), or only in what the output sees?",
            "loss.png": "each seed's train, test and exact population loss / Var(y) over training, with the fit "
                        "threshold: which architectures fit, and whether the seeds that stall sit on plateaus",
            "outcomes.png": "each seed's final loss against the angle between its teacher's two closest hidden units: "
                            "do the seeds that stall have teachers with near-collinear units?"},
    }


def run(cfg: Config, rd: RunDir) -> dict:
    archs, train_cfg, seeds = build(cfg)
    torch.set_num_threads(cfg.num_threads)
    rd.start(cfg)
    rd.device = train_cfg.device
    start = None if cfg.student.start is None else load_start(cfg.student.start, archs, seeds)
    trajs = ts.train(archs, train_cfg, seeds, progress=cfg.progress, start=start)  # start: checked by cfg.check()
    elapsed = time.perf_counter() - rd.started

    arrays = {"archs": np.array(archs)}
    for t in trajs.values():
        arrays.update(t.arrays())
    write_npz(rd.path / "trajectories.npz", arrays)
    summary = {a: summarize(t, cfg.thresholds.fit, cfg.thresholds.recover) for a, t in trajs.items()}
    summary["meta"] = {
        "archs": archs,
        "formulas": {a: ARCHS[a].formula for a in archs},
        "seeds": seeds,
        "steps": train_cfg.total_steps,
        "train_seconds": elapsed,
        "seconds_per_step": elapsed / max(train_cfg.total_steps, 1),
    }
    plot(trajs, rd.path, cfg.thresholds.fit, cfg.thresholds.recover)
    plot_outcomes(trajs, rd.path, cfg.thresholds.fit, cfg.thresholds.recover)
    summary["report"] = report(summary, archs, len(seeds), cfg)
    return summary


def table(summary: dict, archs: list[str], n_seeds: int) -> str:
    """The final numbers as a plain-text table: geometric means over seeds (as in the
    figures); verdicts as seed counts."""
    head = (f"{'arch':<16}{'loss/Var(y)':>12}{'test MSE':>10}{'distance':>10}{'aligned':>10}{'fits':>6}"
            f"{'recov.':>8}{'up to sym.':>12}   (geometric means over {n_seeds} seeds)")
    rows = [head]
    for a in archs:
        s = summary[a]
        rows.append(
            f"{a:<16}{_fmt(s['relative_train_loss_final_geomean']):>12}{_fmt(s['test_loss_final_geomean']):>10}"
            f"{_fmt(s['distance_final_geomean']):>10}{_fmt(s['aligned_distance_final_geomean']):>10}"
            f"{s['fits_seeds']:>4}/{n_seeds}{s['recovered_seeds']:>6}/{n_seeds}{s['recovered_up_to_symmetry_seeds']:>10}/{n_seeds}"
        )
    return "\n".join(rows)


def _fmt(v) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3g}"


main = App("teacher_student", Config, run,
           console=lambda s: table(s, s["meta"]["archs"], len(s["meta"]["seeds"])))

if __name__ == "__main__":
    sys.exit(main())
