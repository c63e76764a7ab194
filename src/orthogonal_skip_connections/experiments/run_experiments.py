"""Train an image classifier with any skip kind: the original project's main experiment.

    python -m orthogonal_skip_connections.experiments.run_experiments \
        model.skip_kind=learnable_orth dataset=cifar100
    osc run_experiments dataset=digits model.model_type=resnet20 scheduler.epochs=2

Writes config.yaml, run.json, metrics.jsonl, checkpoint.pt and summary.json into the run
dir; ``resume=true`` continues an unfinished run from its checkpoint. ``compile=true`` runs
the training step through torch.compile. Under torchrun it trains with
DistributedDataParallel, one process per device (``batch_size`` is the global batch;
rank 0 writes the run dir; ``sync_batchnorm=true`` on GPUs):

    torchrun --nproc_per_node=4 -m orthogonal_skip_connections.experiments.run_experiments \
        dataset=cifar10 model.skip_kind=learnable_orth hydra.run.dir=outputs/ddp_run
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..data.vision import DATASETS, fetch_each
from ..diagnostics import started_away_from_identity
from ..models import MODEL_TYPES, STEMS, VIT_SIZES, check_model_options
from ..rundir import RunDir, column
from ..runs import UserError, resolve_device
from ..models.vit import POOLS
from ..skips import (DEFAULT_METHOD, ORTHOGONAL_METHODS, RESIDUAL_MODES, STREAM_NORMS, resolve_stream_norm, skip,
                     variant_label)
from ..train import distributed
from ..train.classifier import TensorBoardSink, TrainConfig, WandbSink, require_sink_package, train_classifier
from ..train.image import ClassifierSpec, build_classifier, check_batch_size, check_classifier
from ._app import App, check_seed, choice, number, path_or_null, require, threads

WANDB_MODES = ("disabled", "offline", "online")
CHECKPOINT_MODES = ("last", "none")


@dataclass
class ModelConfig:
    model_type: str
    stem: str
    skip_kind: str
    method: Optional[str]
    update_rule: Optional[str]
    update_rule_iters: Optional[int]
    init: str
    special: bool
    rank_fraction: float
    lr_scale: float
    zero_init_residual: bool
    residual_mode: str
    orthogonal_method: str
    residual_eps: float
    stream_norm: Optional[str]
    patch_size: Optional[int]
    width: Optional[int]
    depth: Optional[int]
    heads: Optional[int]
    mlp_ratio: Optional[float]
    pool: Optional[str]

    @property
    def is_vit(self) -> bool:
        return self.model_type in VIT_SIZES

    def model_options(self) -> dict:
        """get_model's options: the residual mode for every model, and the architecture
        keys that were set. A ViT gets ``stem``/``zero_init_residual`` only when they
        differ from the ResNet default (cifar, false) and a ResNet gets a ViT key only when
        it is not null, so get_model refuses the other family's options in one line. (The
        image size and a ViT's default patch size come from the data: train.image.)"""
        opts = {"residual_mode": self.residual_mode, "orthogonal_method": self.orthogonal_method,
                "residual_eps": self.residual_eps}
        vit_keys = {"patch_size": self.patch_size, "width": self.width, "depth": self.depth, "heads": self.heads,
                    "mlp_ratio": self.mlp_ratio, "pool": self.pool, "stream_norm": self.stream_norm}
        opts.update({k: v for k, v in vit_keys.items() if v is not None})
        if not self.is_vit:
            return {**opts, "stem": self.stem, "zero_init_residual": self.zero_init_residual}
        resnet_set = {"stem": self.stem != "cifar", "zero_init_residual": self.zero_init_residual}
        opts.update({k: getattr(self, k) for k, given in resnet_set.items() if given})
        return opts

    @property
    def residual_label(self) -> str:
        """The residual mode as a report groups it: ``add``, or ``<mode>/<method>``, with
        ``/sqrt_d`` where a ViT's stream is rescaled (``rotation``'s default; a rotation run
        labelled without it kept the embeddings' scale, as every run before 2026-11-30)."""
        label = "add" if self.residual_mode == "add" else f"{self.residual_mode}/{self.orthogonal_method}"
        if self.is_vit and resolve_stream_norm(self.stream_norm, self.residual_mode) == "sqrt_d":
            label += "/sqrt_d"
        return label

    def skip_options(self) -> dict:
        """The skip options; None means "the kind's default"."""
        opts = {"method": self.method, "update_rule": self.update_rule, "update_rule_iters": self.update_rule_iters,
                "init": self.init, "special": self.special, "rank_fraction": self.rank_fraction,
                "lr_scale": self.lr_scale}
        return {k: v for k, v in opts.items() if v is not None}

    @property
    def orth_method(self) -> str | None:
        """The learnable_orth method (its original name ``update_rule`` accepted)."""
        if self.skip_kind != "learnable_orth":
            return None
        return self.method or self.update_rule or DEFAULT_METHOD


@dataclass
class OptimizerConfig:
    name: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    decay_norms_and_biases: bool
    upkeep_momentum: Optional[float]
    upkeep_adaptive: bool


@dataclass
class SchedulerConfig:
    name: str
    epochs: int
    warmup_epochs: float
    milestones: list[int]
    gamma: float


@dataclass
class DatasetConfig:
    name: str


@dataclass
class DataConfig:
    root: Optional[str]
    download: bool
    augment: bool


@dataclass
class WandbConfig:
    mode: str
    project: str


@dataclass
class Config:
    model: ModelConfig
    dataset: DatasetConfig
    batch_size: int
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    label_smoothing: float
    mixup_alpha: float
    grad_clip: float
    amp: str
    channels_last: bool
    compile: bool
    compile_backend: str
    compile_mode: str
    sync_batchnorm: bool
    eval_every: int
    data: DataConfig
    seed: int
    device: str
    num_threads: Optional[int]
    resume: bool
    save_checkpoint: str
    progress: bool
    tensorboard: bool
    wandb: WandbConfig

    def train_config(self) -> TrainConfig:
        o, s = self.optimizer, self.scheduler
        return TrainConfig(
            epochs=s.epochs, batch_size=self.batch_size, optimizer=o.name, lr=o.lr, momentum=o.momentum,
            nesterov=o.nesterov, weight_decay=o.weight_decay, decay_norms_and_biases=o.decay_norms_and_biases,
            schedule=s.name, warmup_epochs=s.warmup_epochs, milestones=list(s.milestones), gamma=s.gamma,
            label_smoothing=self.label_smoothing, mixup_alpha=self.mixup_alpha, grad_clip=self.grad_clip,
            upkeep_momentum=o.upkeep_momentum, upkeep_adaptive=o.upkeep_adaptive, amp=self.amp, channels_last=self.channels_last,
            compile=self.compile, compile_backend=self.compile_backend, compile_mode=self.compile_mode,
            sync_batchnorm=self.sync_batchnorm,
            eval_every=self.eval_every, seed=self.seed, progress=self.progress,
        )

    def check(self) -> None:
        try:
            self.train_config().validate()
        except UserError as err:  # name the key as the user wrote it
            msg = str(err)
            for short, full in (("lr ", "optimizer.lr "), ("epochs ", "scheduler.epochs "),
                                ("weight_decay ", "optimizer.weight_decay "), ("momentum ", "optimizer.momentum "),
                                ("warmup_epochs ", "scheduler.warmup_epochs "), ("gamma ", "scheduler.gamma "),
                                ("milestones ", "scheduler.milestones "),
                                ("retraction_adaptive ", "optimizer.upkeep_adaptive "),
                                ("nesterov ", "optimizer.nesterov ")):
                msg = msg.replace(short, full, 1) if msg.startswith(short) else msg
            raise UserError(msg) from None
        choice("dataset", self.dataset.name, DATASETS)
        choice("model.model_type", self.model.model_type, MODEL_TYPES)
        m = self.model
        choice("model.stem", m.stem, STEMS)
        choice("model.residual_mode", m.residual_mode, RESIDUAL_MODES)
        choice("model.orthogonal_method", m.orthogonal_method, ORTHOGONAL_METHODS)
        number("model.residual_eps", m.residual_eps, 0)
        if m.stream_norm is not None:
            choice("model.stream_norm", m.stream_norm, STREAM_NORMS)
        for key in ("patch_size", "width", "depth", "heads"):
            value = getattr(m, key)
            require(value is None or value >= (0 if key == "depth" else 1), f"model.{key}",
                    "null or an integer >= " + ("0" if key == "depth" else "1"), value)
        require(m.mlp_ratio is None or m.mlp_ratio > 0, "model.mlp_ratio", "null or a number > 0", m.mlp_ratio)
        if m.pool is not None:
            choice("model.pool", m.pool, POOLS)
        try:  # the other family's options, named as get_model names them (one line)
            check_model_options(m.model_type, m.model_options())
        except ValueError as err:
            raise UserError(f"model: {err}") from None
        path_or_null("data.root", self.data.root)
        root = None if self.data.root is None else Path(self.data.root).expanduser()
        require(root is None or not root.exists() or root.is_dir(), "data.root", "a dir (or null: $OSC_DATA_ROOT, "
                "else ~/.data), not a file", self.data.root)
        choice("wandb.mode", self.wandb.mode, WANDB_MODES)
        require(self.wandb.project.strip() != "", "wandb.project", "a W&B project name", self.wandb.project)
        if self.tensorboard:  # the sinks are built after config.yaml is written: refuse before Hydra makes a run dir
            require_sink_package("tensorboard", "tensorboard=true")
        if self.wandb.mode != "disabled":
            require_sink_package("wandb", f"wandb.mode={self.wandb.mode}")
        choice("save_checkpoint", self.save_checkpoint, CHECKPOINT_MODES)
        threads(self.num_threads)
        check_seed("seed", self.seed)
        try:
            skip(self.model.skip_kind, **self.model.skip_options())
        except (TypeError, ValueError) as err:
            raise UserError(str(err)) from None
        try:  # the model's shape on this dataset's images (a ViT's patches), before Hydra makes a run dir
            check_classifier(self.spec())
        except (TypeError, ValueError) as err:
            raise UserError(f"model: {err}") from None
        check_batch_size("batch_size", self.batch_size, self.dataset.name)  # the standard split's size
        resolve_device(self.device)

    def spec(self) -> ClassifierSpec:
        """The data and model settings (config.yaml's layout, which train.image.load_run reads)."""
        m = self.model
        return ClassifierSpec(self.dataset.name, m.model_type, m.skip_kind, {**m.model_options(), **m.skip_options()},
                              self.data.root, self.data.download, self.data.augment)

    # Keys that are not a setting of the experiment: the arm a report tables a run in (skip
    # variant, residual mode), the seed, and how a run is executed or logged.
    ARM_KEYS = ("model.skip_kind", "model.method", "model.update_rule", "model.init", "model.residual_mode",
                "model.orthogonal_method", "model.stream_norm", "seed")
    HOW_KEYS = ("device", "num_threads", "resume", "save_checkpoint", "progress", "tensorboard", "wandb.mode",
                "wandb.project", "data.root", "data.download", "eval_every", "compile", "compile_backend",
                "compile_mode", "channels_last")

    def settings(self) -> dict:
        """Every other config value, flattened (``optimizer.lr``, ``model.lr_scale``, ...): a
        report splits a task's runs whose settings differ into tasks of their own."""
        flat = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}{k}.", v)
            else:
                flat[prefix[:-1]] = list(value) if isinstance(value, (list, tuple)) else value

        walk("", asdict(self))
        return {k: v for k, v in flat.items() if k not in self.ARM_KEYS + self.HOW_KEYS}

    def labels(self) -> dict:
        """What a report groups this run by (run.json)."""
        m = self.model
        variant = variant_label(m.skip_kind, m.orth_method, m.init)
        sized = [f"{k}={getattr(m, k)}" for k in ("patch_size", "width", "depth", "heads", "mlp_ratio", "pool")
                 if m.is_vit and getattr(m, k) is not None]  # a resized ViT is its own task
        return {"task": f"{self.dataset.name}/{m.model_type}" + (f"[{','.join(sized)}]" if sized else ""),
                "dataset": self.dataset.name, "model_type": m.model_type, "variant": variant,
                "residual_mode": m.residual_label, "skip_kind": m.skip_kind,
                "method": m.orth_method or "", "init": m.init if m.skip_kind == "learnable_orth" else "",
                "seed": self.seed, "planned_epochs": self.scheduler.epochs, "batch_size": self.batch_size,
                "lr": self.optimizer.lr, "settings": self.settings()}


def schedule_caveat(s: SchedulerConfig) -> str:
    """What the verdict should add when the schedule outlasts the run (a shortened run keeps its
    dataset's warm-up and milestones; refusing them would refuse the common scheduler.epochs=1):
    a warm-up as long as the run never lets the lr decay, and a milestone at or past the last
    epoch never lowers it; milestones under another schedule than step are not used (a sweep
    over scheduler.name may set them for its step jobs). '' otherwise."""
    notes = []
    if 0 < s.epochs <= s.warmup_epochs:
        notes.append(f"the learning rate warmed up for the whole run (scheduler.warmup_epochs {s.warmup_epochs:g} >= "
                     f"scheduler.epochs {s.epochs}), so it never decayed")
    late = [m for m in s.milestones if m >= s.epochs]
    if s.name == "step" and late:
        notes.append(f"scheduler.milestones {late} fall at or after the last epoch ({s.epochs}): the lr never dropped "
                     "there")
    if s.name != "step" and s.milestones:
        notes.append(f"scheduler.milestones {list(s.milestones)} were not used: they apply to scheduler.name=step, and "
                     f"this run's schedule is {s.name}")
    return "".join(f" Note: {n}." for n in notes)


def report(cfg: Config, s: dict) -> dict:
    labels = cfg.labels()
    moved = s.get("skip_identity_distance_mean")
    mode = "" if labels["residual_mode"] == "add" else f" and {labels['residual_mode']} residuals"
    verdict = (f"{labels['variant']} skips{mode} on {labels['task']}: test accuracy {s['test_acc']:.2f}% after "
               f"{s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} (best {s['best_test_acc']:.2f}%)")
    start = s.get("skip_start_distance_mean")  # skips that did not start at I (a Haar start): also how far they moved
    if moved is not None:
        verdict += f"; the skip matrices end a mean ||W - I||_F = {moved:.3g} from I" + \
            (f" ({start:.3g} from where they started)" if started_away_from_identity(moved, start) else "")
    verdict += "." + schedule_caveat(cfg.scheduler)
    return {
        "title": f"{labels['task']} with {labels['variant']} skips{mode}, seed {cfg.seed}",
        "question": "how accurate is this classifier with this skip kind, and how far do its skips move from I?",
        "tables": [{
            "caption": "final numbers",
            "columns": [column("test_acc", "test accuracy", "%"), column("best_test_acc", "best test accuracy", "%"),
                        column("test_loss", "test loss", "nats"), column("epochs", "epochs", ""),
                        column("train_time_s", "training time", "s"),
                        column("skip_identity_distance_mean", "mean ||W - I||_F", ""),
                        column("skip_start_distance_mean", "mean ||W - W_0||_F (moved from the start)", ""),
                        column("skip_orth_error_max", "max ||W^T W - I||_F", "")],
            "rows": [{k: s.get(k) for k in ("test_acc", "best_test_acc", "test_loss", "epochs", "train_time_s",
                                            "skip_identity_distance_mean", "skip_start_distance_mean",
                                            "skip_orth_error_max")}],
        }],
        "verdict": verdict,
        "figures": [],
    }


def run(cfg: Config, rd: RunDir) -> dict:
    device = distributed.device_for_rank(resolve_device(cfg.device))
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    m = cfg.model
    model, data = build_classifier(cfg.spec(), cfg.seed)  # seed, data, model: load_run rebuilds the init alike
    check_batch_size("batch_size", cfg.batch_size, data.name, loaded=data)  # a data root with fewer images
    rd.start(cfg, labels=cfg.labels())
    rd.device = device
    sinks = []
    main_rank = distributed.is_main()  # under torchrun only rank 0 logs
    if cfg.tensorboard and main_rank:
        sinks.append(TensorBoardSink(rd.path / "tensorboard"))
    if cfg.wandb.mode != "disabled" and main_rank:
        sinks.append(WandbSink(cfg.wandb.mode, cfg.wandb.project, asdict(cfg), rd.path, name=rd.path.name))
    extra = {"dataset": data.name, "model_type": m.model_type, "skip_kind": m.skip_kind, "method": m.orth_method,
             "residual_mode": m.residual_label, "seed": cfg.seed, "n_test": len(data.y_test)}
    summary = train_classifier(model, data, cfg.train_config(), rd.path, device, sinks, resume=cfg.resume,
                               extra_summary=extra, save_checkpoint=cfg.save_checkpoint == "last",
                               advice=rd.checkpoint_advice(), write_summary=False)
    # train_classifier raises Diverged, whose partial summary rd.diverged writes
    return {**summary, "report": report(cfg, summary)}


def fetch_datasets(cfgs: list[Config]) -> None:
    """A sweep's datasets, found or downloaded once before its first job (:func:`fetch_each`):
    a CIFAR missing offline is one line and no job dir, not a failed job per run, and a joblib
    launcher's workers do not download one archive into one root at once."""
    fetch_each(((f"sweep: job {num}", cfg.dataset.name, cfg.data.root, cfg.data.download)
                for num, cfg in enumerate(cfgs)), what="job")


main = App("run_experiments", Config, run, resume=True, torchrun=True, prepare=fetch_datasets)

if __name__ == "__main__":
    sys.exit(main())
