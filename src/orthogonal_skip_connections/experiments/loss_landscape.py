"""`osc loss_landscape`: loss landscapes and sharpness of trained classifiers, per skip kind.

For every run dir (a trained image classifier: config.yaml and checkpoint.pt, as
``osc run_experiments`` writes them) this app evaluates, on a fixed subset of the training
images with BatchNorm in eval mode (:mod:`~orthogonal_skip_connections.landscape`):

- the loss on a 2-D grid theta* + a d1 + b d2 along two filter-normalised Gaussian
  directions (Li et al. 2018), constrained skips kept on O(n);
- the loss along (1 - t) theta_0 + t theta* from the initialisation (Goodfellow et al. 2015);
- the top Hessian eigenvalue (Lanczos, with a bound on its error) and the Hessian trace
  (Hutchinson, deflated by the Lanczos vectors) at theta*.

With ``runs=[]`` it analyses its default runs (resnet56 on digits with zero, identity and
learnable_orth skips, ``train.seeds`` each) under ``train.dir``, training those that are
missing (``train_missing=true``) through the shared classifier loop. Results are cached
in ``cache_dir``, one file per run and settings (keyed by the hashes of the checkpoint's
weights and of the images evaluated on, and every setting), so running again with the same
arguments only redraws.

    osc loss_landscape                                   # the default runs, trained if missing
    osc loss_landscape steps=31 radius=0.5 n_eval=1000
    osc loss_landscape 'runs=[outputs/run_experiments/a,outputs/run_experiments/b]'

Writes config.yaml, summary.json, landscape_2d.png and landscape_1d.png into the run dir.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from ..landscape import LandscapeSettings, landscape_of, skip_handling
from ..analysis.stats import geometric_interval, t_interval
from ..data.vision import fetch, fetch_each
from ..rundir import RunDir, check_dir_writable, column, holding, make_dir
from ..runs import UserError, atomic_write_text, check_memory, read_json, resolve_device, to_jsonable
from ..train.classifier import TrainConfig, train_classifier
from ..train.image import ClassifierSpec, build_classifier, check_batch_size, load_run, run_variant
from ._app import App, check_seed, choice, number, path_or_null, require, threads

SPLITS = ("train", "test")


@dataclass
class TrainSection:
    dir: Optional[str]
    dataset: str
    model_type: str
    variants: list[str]
    seeds: int
    n_train: Optional[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float


@dataclass
class HessianSection:
    iters: int
    tol: float
    samples: int


@dataclass
class Config:
    runs: list[str]
    train_missing: bool
    train: TrainSection
    steps: int
    radius: float
    steps_1d: int
    t_range: list[float]
    n_eval: int
    eval_split: str
    direction_seed: int
    batch_size: int
    hessian: HessianSection
    cache_dir: Optional[str]
    device: str
    num_threads: Optional[int]
    progress: bool

    def check(self) -> None:
        from ..data.vision import DATASETS
        from ..models.resnet import RESNETS
        from ..skips import SKIP_KINDS, skip

        require(self.steps >= 1 and self.steps % 2 == 1, "steps", "an odd integer >= 1 (the centre is a grid point)",
                self.steps)
        # radius in filter norms (1: each filter moves by its own norm); far past it the losses overflow float32
        number("radius", self.radius, 0, strict=True, high=1e6)
        require(self.steps_1d >= 2, "steps_1d", "an integer >= 2", self.steps_1d)
        require(len(self.t_range) == 2 and all(math.isfinite(t) for t in self.t_range)
                and self.t_range[0] < self.t_range[1], "t_range", "[t_min, t_max], finite, with t_min < t_max",
                self.t_range)
        check_memory(f"steps={self.steps} and steps_1d={self.steps_1d} (their grids of losses)",
                     8 * (self.steps ** 2 + self.steps_1d))
        require(self.n_eval >= 1, "n_eval", "an integer >= 1", self.n_eval)
        choice("eval_split", self.eval_split, SPLITS)
        check_seed("direction_seed", self.direction_seed)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.hessian.iters >= 1, "hessian.iters", "an integer >= 1", self.hessian.iters)
        number("hessian.tol", self.hessian.tol, 0, strict=True)
        require(self.hessian.samples >= 2, "hessian.samples", "an integer >= 2", self.hessian.samples)
        threads(self.num_threads)
        for run in self.runs:
            path_or_null("runs", run)
        seen = [str(Path(run).expanduser().resolve()) for run in self.runs]
        twice = sorted({run for run, r in zip(self.runs, seen) if seen.count(r) > 1})
        require(not twice, "runs", "a list of different run dirs (one given twice counts as two seeds)", twice)
        t = self.train
        for key, value in (("cache_dir", self.cache_dir), ("train.dir", t.dir)):
            path_or_null(key, value)
            if value is not None:  # a file, under one, not writable: refused before Hydra makes a run dir
                check_dir_writable(Path(value).expanduser(), key)
        # '~' as data.root takes it (Hydra leaves it as written: a dir named '~' under the working dir)
        self.cache_dir = None if self.cache_dir is None else str(Path(self.cache_dir).expanduser())
        t.dir = None if t.dir is None else str(Path(t.dir).expanduser())
        choice("train.dataset", t.dataset, DATASETS)
        choice("train.model_type", t.model_type, RESNETS)
        require(len(t.variants) > 0, "train.variants", "a non-empty list of kind[/method[/init]]", t.variants)
        require(len(set(t.variants)) == len(t.variants), "train.variants", "a list without repeats (a variant's runs "
                "would count twice)", t.variants)
        for v in t.variants:
            parts = v.split("/")
            require(parts[0] in SKIP_KINDS and len(parts) <= 3, "train.variants",
                    f"kind[/method[/init]] entries with kind one of {', '.join(SKIP_KINDS)}", v)
            try:
                skip(parts[0], **variant_spec(self, v).model_options)
            except (TypeError, ValueError) as err:
                raise UserError(f"train.variants: {v}: {err}") from None
        require(t.seeds >= 1, "train.seeds", "an integer >= 1", t.seeds)
        require(t.n_train is None or t.n_train >= 2, "train.n_train", "an integer >= 2 or null", t.n_train)
        self.train_config().validate()
        if not self.runs:  # it trains (or reads) the default runs
            check_batch_size("train.batch_size", t.batch_size, t.dataset, t.n_train)
        resolve_device(self.device)

    def train_config(self) -> TrainConfig:
        t = self.train
        return TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                           weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs, channels_last=True,
                           progress=self.progress)

    def settings(self) -> LandscapeSettings:
        return LandscapeSettings(steps=self.steps, radius=self.radius, steps_1d=self.steps_1d, t_min=self.t_range[0],
                                 t_max=self.t_range[1], n_eval=self.n_eval, eval_split=self.eval_split,
                                 direction_seed=self.direction_seed, batch_size=self.batch_size,
                                 hessian_iters=self.hessian.iters, hessian_tol=self.hessian.tol,
                                 hutchinson_samples=self.hessian.samples)


# --------------------------------------------------------------------------- the runs


def variant_spec(cfg: Config, variant: str) -> ClassifierSpec:
    """``kind[/method[/init]]`` -> the spec of a default run."""
    parts = variant.split("/")
    options = {}
    if len(parts) > 1:
        options["method"] = parts[1]
    if len(parts) > 2:
        options["init"] = parts[2]
    return ClassifierSpec(cfg.train.dataset, cfg.train.model_type, parts[0], options, n_train=cfg.train.n_train)


def runs_key(cfg: Config, rd: RunDir) -> str:
    """The setting that chose where the default runs live: ``train.dir``, or (null: inside this
    run dir) the one that chose this run dir."""
    return "train.dir" if cfg.train.dir else rd.key


def default_runs(cfg: Config, rd: RunDir) -> list[tuple[Path, ClassifierSpec, int]]:
    """(run dir, spec, seed) of every default run; a dir holding a run with other settings
    is refused (one line) before anything is trained."""
    root = Path(cfg.train.dir) if cfg.train.dir else rd.path / "runs"
    key = runs_key(cfg, rd)
    out = []
    for variant in cfg.train.variants:
        spec = variant_spec(cfg, variant)
        for seed in range(cfg.train.seeds):
            path = root / f"{cfg.train.dataset}_{cfg.train.model_type}" / re.sub(r"[^A-Za-z0-9]+", "_", variant) / \
                f"seed{seed}"
            want = run_config(cfg, spec, seed)
            if (path / "config.yaml").is_file():
                try:
                    saved = yaml.safe_load((path / "config.yaml").read_text())
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                    raise UserError(f"cannot read {path / 'config.yaml'} ({type(err).__name__}); "
                                    f"{rd.remake_advice(path) or f'move the run away or choose another {key}'}") from None
                if saved != want:
                    raise UserError(f"{path} holds a run with other settings; "
                                    f"{rd.remake_advice(path) or f'choose another {key}'}")
            out.append((path, spec, seed))
    return out


def run_config(cfg: Config, spec: ClassifierSpec, seed: int) -> dict:
    """What a default run's config.yaml holds (plain YAML types, as read back)."""
    tcfg = cfg.train_config()
    tcfg.seed = seed
    return to_jsonable({**spec.to_config(), "seed": seed,
                        "train": {k: v for k, v in asdict(tcfg).items() if k != "progress"}})


def completed(path: Path, key: str = "train.dir", advice: str | None = None) -> bool:
    """Whether the default run in ``path`` completed; ``key``: the setting that chose ``path``
    (:func:`runs_key`), named when its summary.json cannot be read, unless ``advice`` (what
    that refusal asks for instead: :meth:`~..rundir.RunDir.remake_advice`)."""
    return _summary(path, advice or f"move the run away or choose another {key}").get("status") == "completed"


def _summary(path: Path, advice: str) -> dict:
    """A run's summary.json ({} without one); one that cannot be read is one line with ``advice``."""
    if not (path / "summary.json").is_file():
        return {}
    try:
        summary = read_json(path / "summary.json")
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (OSError, ValueError) as err:  # not JSON, not text, not an object
        raise UserError(f"cannot read {path / 'summary.json'} ({type(err).__name__}); {advice}") from None


def train_run(cfg: Config, path: Path, spec: ClassifierSpec, seed: int, device, key: str = "train.dir",
              advice: str | None = None) -> None:
    """Train one default run through the shared classifier loop (resuming a killed one);
    ``key``: the setting that chose ``path`` (:func:`runs_key`), named when its checkpoint
    cannot be resumed from, unless ``advice`` (what that refusal asks for instead:
    :meth:`~..rundir.RunDir.remake_advice`). One job at a time trains into ``path`` (a flock on the dir:
    the default runs are shared by every landscape job of a sweep or a study); another that
    wants the same run waits for it, then uses it."""
    with holding(path, key):
        if completed(path, key, advice):  # another job trained it while this one waited
            return
        model, data = build_classifier(spec, seed)
        atomic_write_text(path / "config.yaml", yaml.safe_dump(run_config(cfg, spec, seed), sort_keys=False))
        tcfg = cfg.train_config()
        tcfg.seed = seed
        print(f"training {run_variant(spec)} seed {seed} into {path}")
        train_classifier(model, data, tcfg, path, device, resume=(path / "checkpoint.pt").exists(),
                         extra_summary={"skip_kind": spec.skip_kind, "seed": seed}, key=key, advice=advice)


# --------------------------------------------------------------------------- figures


def _variants(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def representative(runs: list[dict]) -> tuple[dict, float]:
    """The run of one variant that its 2-D panel shows, and the variant's geometric mean of
    the top Hessian eigenvalue over seeds (the verdict's statistic): the run whose eigenvalue
    is nearest that mean on a log scale (ties, as two seeds always are: the nearer on a
    linear scale, then the lower seed). Some eigenvalue <= 0 or not finite: the mean is NaN
    and the run is the finite one nearest the median of the finite ones (with none finite, the
    lowest seed)."""
    lams = [r["top_eigenvalue"] for r in runs]
    if all(math.isfinite(x) and x > 0 for x in lams):  # NaN > 0 is False: min(lams) > 0 hung on the order
        g = math.exp(float(np.mean(np.log(lams))))
        def key(r):
            return (round(abs(math.log(r["top_eigenvalue"] / g)), 9), abs(r["top_eigenvalue"] - g), r["seed"])
        return min(runs, key=key), g
    finite = [r for r in runs if math.isfinite(r["top_eigenvalue"])]
    if not finite:
        return min(runs, key=lambda r: r["seed"]), math.nan
    med = float(np.median([r["top_eigenvalue"] for r in finite]))
    return min(finite, key=lambda r: (abs(r["top_eigenvalue"] - med), r["seed"])), math.nan


def draw_2d(results: list[dict], path: Path) -> str:
    """Contour (top) and 3-D surface (bottom) of one run of every variant, side by side on
    one logarithmic colour scale: the run whose top eigenvalue is nearest the variant's
    geometric mean over seeds (:func:`representative`), that mean in its title, so the
    panels rank the variants as the verdict does."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    from ..plots import plt, savefig

    shown = []  # (run, geometric mean, seeds of the variant)
    for v in _variants(results):
        rs = [r for r in results if r["variant"] == v]
        shown.append((*representative(rs), len(rs)))
    # the colour scale spans the finite losses only: a NaN grid made min/max NaN or order-dependent
    finite = np.concatenate([r["loss"][np.isfinite(r["loss"])].ravel() for r, _, _ in shown])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (1.0, 1.0)  # none: blank panels
    lo = max(lo, 1e-4)
    norm = LogNorm(vmin=lo, vmax=max(hi, lo * 1.01))
    levels = np.geomspace(norm.vmin, norm.vmax, 25)
    n = len(shown)
    fig = plt.figure(figsize=(4.6 * n + 1.2, 8.9), layout="constrained")  # each panel's labels clear of the next
    for i, (r, g, seeds) in enumerate(shown):
        A, B = np.meshgrid(r["alphas"], r["betas"], indexing="ij")
        Z = np.clip(r["loss"], norm.vmin, norm.vmax)
        ax = fig.add_subplot(2, n, i + 1)
        ax.contourf(A, B, Z, levels=levels, norm=norm, cmap="viridis")
        ax.contour(A, B, Z, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        ax.plot([0], [0], marker="*", color="red", markersize=9)
        top = r["top_eigenvalue"]
        bound = "" if r.get("lanczos_converged", True) or not math.isfinite(top) else "$\\geq$ "  # (a lower bound)
        lam = f"$\\lambda_{{max}}$ {bound}{_g3(top) if math.isfinite(top) else 'not finite'}"
        if seeds == 1:
            which = f"seed {r['seed']} (its only seed)"
        elif math.isnan(g):
            which = f"seed {r['seed']} of {seeds} (the median)"
            lam += "; geometric mean undefined (a value <= 0 or not finite)"
        else:
            which = f"seed {r['seed']} of {seeds} (nearest the mean)"
            lam += f"; geometric mean over seeds {_g3(g)}"
        ax.set_title(f"{r['variant']}\n{which}\n{lam}\ncentre loss {r['centre_loss']:.3g}", fontsize=9)
        ax.set_xlabel("direction 1 (filter-normalised)")
        if i == 0:
            ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
        for axis in (ax.xaxis, ax.yaxis):  # -1, -0.5, 0, ...: at 0.25 steps the labels ran together
            axis.set_major_locator(MaxNLocator(4))
        ax3 = fig.add_subplot(2, n, n + i + 1, projection="3d")
        # each face coloured by the geometric mean of its four corners (the log z axis' mean): matplotlib takes
        # face (i, j)'s colour from facecolors[i, j], so colouring the grid points coloured it by one corner
        with np.errstate(invalid="ignore", divide="ignore"):
            logZ = np.log10(Z)
            face = 10 ** ((logZ[:-1, :-1] + logZ[1:, :-1] + logZ[:-1, 1:] + logZ[1:, 1:]) / 4)
        colours = np.zeros(Z.shape + (4,))
        colours[:-1, :-1] = plt.get_cmap("viridis")(norm(face))  # (the last row and column name no face)
        ax3.plot_surface(A, B, logZ, facecolors=colours, rstride=1, cstride=1, linewidth=0, antialiased=False,
                         shade=False)
        ax3.set_zlim(np.log10(norm.vmin), np.log10(norm.vmax))
        ax3.set_xlabel("direction 1", fontsize=8)
        ax3.set_ylabel("direction 2", fontsize=8)
        ax3.set_zlabel("log10 loss")
        ax3.view_init(elev=30, azim=-60)
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=fig.axes, shrink=0.6,
                 label="training loss (cross-entropy; one colour scale for all)")
    several = max(s for _, _, s in shown) > 1
    fig.suptitle("loss around the trained weights along two random filter-normalised directions\n"
                 "(the same directions for every variant's shared weights)"
                 + ("\neach panel: the seed whose top Hessian eigenvalue $\\lambda_{max}$ is nearest its variant's "
                    "geometric mean over seeds, the statistic the verdict ranks" if several else ""),
                 fontsize=10)
    return savefig(fig, path).name


def draw_1d(results: list[dict], path: Path) -> str:
    """Loss and accuracy along (1 - t) init + t trained, every variant on one axis (mean
    over seeds, band: the lowest to the highest seed). A seed whose loss is not finite at some
    t is left out there (a NaN made the whole variant's line vanish at that t), and the
    legend says how many seeds' paths were not finite."""
    from ..plots import one_two_five_ticks, plt, savefig, variant_colors

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = variant_colors(_variants(results))  # each variant's colour in the report's other figures
    several = False
    for v in _variants(results):
        rs = [r for r in results if r["variant"] == v]
        ts = rs[0]["ts"]
        several |= len(rs) > 1
        finite = np.isfinite(np.stack([r["loss_1d"] for r in rs]))  # (seeds, len(ts)); accuracy shares it
        label = f"{v} ({len(rs)} seed{'s' if len(rs) > 1 else ''}"
        if not finite.all():
            label += f"; {int((~finite).any(1).sum())} with a loss not finite on the path"
        for a, key in ((ax, "loss_1d"), (ax2, "acc_1d")):
            ys = np.where(finite, np.stack([r[key] for r in rs]), np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a t where no seed is finite: NaN, a gap
                mid, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
            line = a.plot(ts, mid, label=label + ")", color=colors[v])[0]
            if len(rs) > 1:
                a.fill_between(ts, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_ylabel("training loss (cross-entropy)")
    ax2.set_ylabel("training accuracy (%)")
    for a in (ax, ax2):
        a.axvline(0, color="grey", linewidth=0.6, linestyle=":")
        a.axvline(1, color="grey", linewidth=0.6, linestyle=":")
        a.set_xlabel("t: (1 - t) initial weights + t trained weights")
        a.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle("from initialisation (t = 0) to the trained weights (t = 1)"
                 + ("\nline: mean over seeds; shaded band: from the lowest to the highest seed at each t"
                    if several else ""), fontsize=10)
    fig.tight_layout()
    one_two_five_ticks(ax.yaxis)  # after the layout: the limits are final
    return savefig(fig, path).name


# --------------------------------------------------------------------------- numbers


def _monotone(path: np.ndarray) -> bool | None:
    """Whether the loss never rises along ``path`` (up to 1e-6 relative); None where a loss on it
    is not finite: then the answer is unknown (NaN compares false, so it read as "rises")."""
    if not np.all(np.isfinite(path)):
        return None
    return bool(np.all(np.diff(path) <= 1e-6 * np.abs(path[:-1]).clip(1e-12)))


def _monotone_count(values: list) -> str:
    """'k/n' runs monotone from init among the n with a finite path, naming the others."""
    known = [v for v in values if v is not None]
    unknown = len(values) - len(known)
    text = f"{sum(known)}/{len(known)}" if known else "–"
    if unknown:
        text += " (1 run's path not finite)" if unknown == 1 else f" ({unknown} runs' paths not finite)"
    return text


def run_row(r: dict) -> dict:
    edge = np.concatenate([r["loss"][0], r["loss"][-1], r["loss"][1:-1, 0], r["loss"][1:-1, -1]])
    ts, l1 = r["ts"], r["loss_1d"]
    inside = (ts >= 0) & (ts <= 1)
    return {
        "variant": r["variant"], "seed": r["seed"], "run_dir": r["run_dir"], "test_acc": r["test_acc"],
        "centre_loss": r["centre_loss"], "centre_acc": r["centre_acc"], "edge_loss_mean": float(edge.mean()),
        "top_eigenvalue": r["top_eigenvalue"], "lanczos_iterations": r["lanczos_iterations"],
        "lanczos_converged": r["lanczos_converged"], "lanczos_residual": r["lanczos_residual"],
        "trace": r["trace"], "trace_se": r["trace_se"],
        "interpolation_max_loss": float(l1[inside].max()), "interpolation_monotone": _monotone(l1[inside]),
        "checkpoint_sha256": r["checkpoint_sha256"], "cached": r["cached"], "skip_handling": r["skip_handling"],
    }


def _ci(values) -> tuple[float, float, float]:
    return t_interval([v for v in values if v is not None])


def variant_rows(rows: list[dict]) -> list[dict]:
    out = []
    for v in _variants(rows):
        rs = [r for r in rows if r["variant"] == v]
        lam, lam_lo, lam_hi = geometric_interval([r["top_eigenvalue"] for r in rs])  # sharpness spans decades
        tr, tr_lo, tr_hi = geometric_interval([r["trace"] for r in rs])
        out.append({
            "variant": v, "runs": len(rs), "test_acc": _ci([r["test_acc"] for r in rs])[0],
            "centre_loss": float(np.mean([r["centre_loss"] for r in rs])),
            "edge_loss_mean": float(np.mean([r["edge_loss_mean"] for r in rs])),
            "top_eigenvalue": lam, "top_eigenvalue_lo": lam_lo, "top_eigenvalue_hi": lam_hi,
            "top_eigenvalue_mean": float(np.mean([r["top_eigenvalue"] for r in rs])),
            "top_eigenvalue_not_finite": sum(not math.isfinite(r["top_eigenvalue"]) for r in rs),
            "trace": tr, "trace_lo": tr_lo, "trace_hi": tr_hi,
            "converged": f"{sum(r['lanczos_converged'] for r in rs)}/{len(rs)}",
            "interpolation_monotone": _monotone_count([r["interpolation_monotone"] for r in rs]),
        })
    return out


def _g3(x: float) -> str:
    """Three significant digits written plainly (1440, not 1.44e+03, beside 983 in one sentence)."""
    return f"{float(f'{x:.3g}'):g}"


def _not_finite(t: dict) -> str:
    """In how many of a variant's runs the top eigenvalue is not finite, in words."""
    return f"{t['top_eigenvalue_not_finite']} of {t['runs']} run{'s' if t['runs'] > 1 else ''}"


def _trace(t: dict) -> str:
    return _g3(t["trace"]) if math.isfinite(t["trace"]) else "undefined (a run's value is <= 0 or not finite)"


def verdict(table: list[dict], n_min: int) -> str:
    """The sharpness verdict. A variant whose geometric mean is NaN (an eigenvalue <= 0, or not
    finite: a NaN compares false both ways, so it would sort anywhere) is named, never ranked."""
    if len(table) < 2:
        t = table[0]
        if math.isfinite(t["top_eigenvalue"]):
            lam = _g3(t["top_eigenvalue"])
        elif t.get("top_eigenvalue_not_finite"):
            lam = f"not finite (NaN or infinite) in {_not_finite(t)}"
        else:
            lam = "undefined (a run's value is <= 0)"
        return (f"one variant ({t['variant']}): top Hessian eigenvalue {lam}, trace {_trace(t)}; nothing to compare "
                "it with.")
    bad = [t for t in table if t.get("top_eigenvalue_not_finite")]
    if bad:
        return ("a top Hessian eigenvalue is not finite (NaN or infinite) in "
                + ", ".join(f"{_not_finite(t)} of {t['variant']}" for t in bad)
                + ", so the variants cannot be ranked by sharpness: see the per-run table.")
    if any(not math.isfinite(t["top_eigenvalue"]) for t in table):
        return ("a top Hessian eigenvalue is <= 0 (the trained weights are not at a minimum along it), so "
                "geometric means are undefined: see the per-run table.")
    by = sorted(table, key=lambda t: t["top_eigenvalue"])
    flat, sharp = by[0], by[-1]
    # where the order is not established, the sentence opens with that: the report's "In short" line is
    # its first clause, which would otherwise state the order alone
    if n_min < 2 or np.isnan(flat["top_eigenvalue_hi"]) or np.isnan(sharp["top_eigenvalue_lo"]):
        unsure = f"with {n_min} seed per variant there are no intervals"
    elif flat["top_eigenvalue_hi"] < sharp["top_eigenvalue_lo"]:
        unsure = None
    else:
        unsure = f"the 95% intervals over seeds of {flat['variant']} and {sharp['variant']} overlap"
    def value(t):  # one seed has no interval: the value alone, not "[nan, nan]"
        if np.isnan(t["top_eigenvalue_lo"]) or np.isnan(t["top_eigenvalue_hi"]):
            return _g3(t["top_eigenvalue"])
        return f"{_g3(t['top_eigenvalue'])} [{_g3(t['top_eigenvalue_lo'])}, {_g3(t['top_eigenvalue_hi'])}]"

    order = " < ".join(f"{t['variant']} ({value(t)})" for t in by)
    # a Lanczos run stopped at its iteration limit: its top Ritz value is at most the top eigenvalue
    short = [f"{t['variant']} ({t['converged']} converged)" for t in table
             if "converged" in t and len(set(t["converged"].split("/"))) > 1]
    caveat = (f" Lanczos did not converge in every run of {', '.join(short)}: their values are "
              "lower bounds, which may change the order." if short else "")
    what = "Top Hessian eigenvalue at the trained weights (geometric mean over seeds, 95% interval)"
    if unsure is None:
        head = (f"{what}, flattest to sharpest: {order}; the 95% intervals over seeds of {flat['variant']} and "
                f"{sharp['variant']} do not overlap")
    else:
        head = (f"{what}: cannot tell which variant is flattest ({unsure}); flattest to sharpest as measured: "
                f"{order}")
    return (f"{head}. Hessian traces: "
            + ", ".join(f"{t['variant']} {_trace(t)}" for t in table) + "." + caveat)


def report(cfg: Config, table: list[dict], rows: list[dict], figures: list[str], handling: dict) -> dict:
    return {
        "title": "Loss landscapes and sharpness per skip kind",
        "question": "how sharp is the training loss around the trained weights of each skip kind, and what lies "
                    "between the initial and the trained weights?",
        "measures": [
            f"loss: mean cross-entropy of the model in eval mode (BatchNorm running statistics) on a fixed subset of "
            f"{cfg.n_eval} {cfg.eval_split} images, evaluated in batches of {cfg.batch_size}",
            f"2-D grid (Li et al. 2018): loss at theta* + a d1 + b d2, a and b in [-{cfg.radius:g}, {cfg.radius:g}] "
            f"({cfg.steps} x {cfg.steps} points), d_k Gaussian directions (seed {cfg.direction_seed}) rescaled filter "
            "by filter to the norms of the trained weights' filters, 0 on biases and BatchNorm parameters; "
            "constrained skips kept on O(n) as the last table says",
            f"1-D path (Goodfellow et al. 2015): loss at (1 - t) theta_0 + t theta*, t in [{cfg.t_range[0]:g}, "
            f"{cfg.t_range[1]:g}], theta_0 the run's initial weights (rebuilt from its seed); running means linearly, "
            "running variances geometrically",
            f"top Hessian eigenvalue: the largest, by the Lanczos process on Hessian-vector products (at most "
            f"{cfg.hessian.iters}, stopped when the Ritz residual bounds its error by {cfg.hessian.tol:g} of its "
            "value); Hessian trace: "
            f"exact on the span of the Lanczos vectors (at least {cfg.hessian.samples // 2}), Hutchinson's estimate "
            f"over {cfg.hessian.samples} Rademacher probes on the rest; both w.r.t. every weight except "
            "the skips' (the coordinates all skip kinds share), on the same images",
            "edge loss: mean loss over the boundary of the 2-D grid; monotone from init: the 1-D loss never rises "
            "on t in [0, 1] (runs whose loss there is not finite are not counted, and named)",
        ],
        "tables": [
            {"caption": f"sharpness per variant over seeds: geometric means, 95% intervals by Student-t on the logs "
                        f"(the values span decades); loss on {cfg.n_eval} "
                        f"{cfg.eval_split} images, BatchNorm in eval mode; Hessian over every weight except the "
                        "skips'; edge loss: mean over the boundary of the 2-D grid "
                        f"(radius {cfg.radius:g} in filter-normalised units)",
             "columns": [column("variant", "variant"), column("runs", "seeds"),
                         column("test_acc", "test accuracy", "%"), column("centre_loss", "loss at the trained weights"),
                         column("top_eigenvalue", "top Hessian eigenvalue (geometric mean)"),
                         column("top_eigenvalue_lo", "95% CI low"), column("top_eigenvalue_hi", "95% CI high"),
                         column("top_eigenvalue_mean", "arithmetic mean"),
                         column("trace", "Hessian trace (Hutchinson, geometric mean)"),
                         column("trace_lo", "95% CI low"),
                         column("trace_hi", "95% CI high"), column("converged", "Lanczos converged"),
                         column("edge_loss_mean", "edge loss"),
                         column("interpolation_monotone", "monotone from init")],
             "rows": table},
            {"caption": "per run",
             "columns": [column("variant", "variant"), column("seed", "seed"), column("centre_loss", "loss"),
                         column("top_eigenvalue", "top Hessian eigenvalue"),
                         column("lanczos_iterations", "Hessian-vector products"),
                         column("lanczos_residual", "error bound / eigenvalue"), column("trace", "trace"),
                         column("trace_se", "trace std. error"), column("interpolation_max_loss",
                                                                         "max loss on t in [0, 1]"),
                         column("cached", "from cache")],
             "rows": rows},
            {"caption": "how each variant's constrained skips were moved",
             "columns": [column("variant", "variant"), column("skip_handling", "skips on the grid")],
             "rows": [{"variant": v, "skip_handling": h} for v, h in handling.items()]},
        ],
        "verdict": verdict(table, min(t["runs"] for t in table)),
        "figures": figures,
        "captions": {f: c for f, c in figure_captions(rows).items() if f in figures},
    }


def figure_captions(rows: list[dict]) -> dict[str, str]:
    """What each figure shows, and of which seeds: which run each 2-D panel is, what the 1-D band is."""
    shown = {v: representative([r for r in rows if r["variant"] == v])[0]["seed"] for v in _variants(rows)}
    one = max(sum(r["variant"] == v for r in rows) for v in shown) == 1
    return {
        "landscape_2d.png": "the loss around the trained weights along two filter-normalised random directions, per "
                            "variant: is the basin wider or narrower than identity's? "
                            + ("One seed per variant." if one else
                               "One run per variant, the seed whose top Hessian eigenvalue is nearest the variant's "
                               "geometric mean over seeds (on a log scale; of two seeds, the nearer on a linear "
                               "scale), titled with that mean, so the panels rank the variants as the verdict does: "
                               + ", ".join(f"{v} seed {s}" for v, s in shown.items()) + "."),
        "landscape_1d.png": "the loss on the straight line from the initial (t = 0) to the trained weights (t = 1) "
                            "and beyond: is the way down monotone, and how steep are the walls past the minimum? "
                            + ("One seed per variant." if one else
                               "Line: mean over seeds; shaded band: from the lowest to the highest seed at each t."),
    }


def run(cfg: Config, rd: RunDir) -> dict:
    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    if cfg.runs:
        paths = [Path(p) for p in cfg.runs]
        for p in paths:
            if not (p / "config.yaml").is_file() or not (p / "checkpoint.pt").is_file():
                raise UserError(f"runs: {p} is not a trained classifier run dir (needs config.yaml and checkpoint.pt)")
        todo = []
    else:
        planned = default_runs(cfg, rd)
        todo = [(p, spec, seed) for p, spec, seed in planned
                if not completed(p, runs_key(cfg, rd), rd.remake_advice(p))]
        if todo and not cfg.train_missing:
            raise UserError(f"{len(todo)} default run(s) missing (first: {todo[0][0]}); set train_missing=true "
                            "to train them, or give runs=[...]")
        if todo:  # the data as loaded (a data root with fewer images than the standard split), before any write
            fetch(cfg.train.dataset, keys=(None, None))  # missing offline: one line naming $OSC_DATA_ROOT, its one way
            _, data = build_classifier(todo[0][1], todo[0][2])
            t = cfg.train
            check_batch_size("train.batch_size", t.batch_size, t.dataset, t.n_train, loaded=data)
        paths = [p for p, _, _ in planned]
    rd.start(cfg)
    rd.device = device
    for key, value in (("train.dir", cfg.train.dir if todo else None), ("cache_dir", cfg.cache_dir)):
        if value is not None:  # one the system will not make (/proc, a read-only mount): one line, not mkdir's traceback
            make_dir(Path(value), key)
    for p, spec, seed in todo:
        train_run(cfg, p, spec, seed, device, runs_key(cfg, rd), rd.remake_advice(p))
    # what a checkpoint that cannot be read or does not fit asks for: the setting that named its run
    # (runs= or where the default runs live), or, for a run of the study this app is a part of,
    # what the study's user can do (they wrote no runs=: the study chose it), and for a default
    # run inside a sweep's job, what runs the job again (rd.remake_advice)
    advice = ("leave its run dir out of runs=" if cfg.runs else
              f"move its run dir away to train the run again, or choose another {runs_key(cfg, rd)}")
    settings = cfg.settings()
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else rd.path / "cache"
    results, handling = [], {}
    # the runs' test accuracies, read before hours of landscapes
    test_accs = {p: _summary(p, rd.remake_advice(p) or advice).get("test_acc") for p in paths}
    for p in paths:
        run = load_run(p, device, rd.remake_advice(p) or advice)
        out = landscape_of(run.model, run.init_model, run.data, settings, run.checkpoint_sha256, run.seed, cache_root,
                           device, cfg.progress, desc=f"{run.variant} seed {run.seed}")
        results.append({**out, "variant": run.variant, "seed": run.seed, "run_dir": str(p), "test_acc": test_accs[p]})
        handling.setdefault(run.variant, skip_handling(run.model))
        print(f"{run.variant} seed {run.seed}: loss {out['centre_loss']:.4g}, top eigenvalue "
              f"{out['top_eigenvalue']:.4g} ({'converged' if out['lanczos_converged'] else 'NOT converged'} after "
              f"{out['lanczos_iterations']} Hessian-vector products), trace {out['trace']:.4g}"
              + (" (cached)" if out["cached"] else ""))
    rows = [run_row(r) for r in results]
    table = variant_rows(rows)
    figures = [draw_2d(results, rd.path / "landscape_2d.png"), draw_1d(results, rd.path / "landscape_1d.png")]
    grids = {f"{r['variant']} seed {r['seed']}": {"alphas": r["alphas"], "loss": r["loss"], "ts": r["ts"],
                                                  "loss_1d": r["loss_1d"]} for r in results}
    return {"runs": rows, "by_variant": table, "skip_handling": handling, "trained": [str(p) for p, _, _ in todo],
            "grids": grids, "figures": figures, "report": report(cfg, table, rows, figures, handling)}


def fetch_datasets(cfgs: list[Config]) -> None:
    """The dataset of a sweep's default runs (jobs without ``runs``, which may train them: from the
    default data root), found or downloaded once before its first job, as run_experiments' sweeps
    do (:func:`~.run_experiments.fetch_datasets`)."""
    fetch_each(((f"sweep: job {num}", cfg.train.dataset, None, True) for num, cfg in enumerate(cfgs)
                if not cfg.runs and cfg.train_missing), what="job", keys=(None, None))


main = App("loss_landscape", Config, run, prepare=fetch_datasets)

if __name__ == "__main__":
    sys.exit(main())
