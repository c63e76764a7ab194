"""An image classifier built from its settings, and a trained run dir loaded back.

One building function for every app that trains or reads an image classifier
(``run_experiments``, ``loss_landscape``, ``two_stage``): the torch seed is set, then the
data are loaded, then the model is built, in that order, so the same settings and seed
give the same initial weights. That is what lets :func:`load_run` rebuild a run's
initialisation from its seed (``run_experiments`` saves no initial weights).

A run dir holds ``config.yaml`` in ``run_experiments``' layout (``model.*``,
``dataset.name``, ``data.*``, ``seed``; ``n_train`` optional) and ``checkpoint.pt``
written by :func:`~.classifier.train_classifier`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from ..data.vision import IMAGE_SHAPES, TRAIN_SIZES, ImageData, load_image_data
from ..models import VIT_SIZES, check_model_options, check_vit, get_model
from ..models.vit import vit_min_parameters
from ..runs import UserError, check_memory
from ..skips import variant_label
from .classifier import CHECKPOINT, UNFIT, load_checkpoint, unfit_checkpoint

__all__ = ["ClassifierSpec", "build_classifier", "check_classifier", "check_batch_size",
           "model_options", "subset_train", "TrainedRun",
           "load_run", "weights_sha256", "run_variant"]

CONFIG = "config.yaml"


@dataclass
class ClassifierSpec:
    """Data and model settings of an image classifier. ``model_options`` go to
    :func:`~orthogonal_skip_connections.models.get_model` (skip options, ``stem``,
    ``zero_init_residual``, ``residual_mode``...); None values mean "the default"."""

    dataset: str
    model_type: str
    skip_kind: str
    model_options: dict = field(default_factory=dict)
    data_root: str | None = None
    download: bool = True
    augment: bool = True
    n_train: int | None = None  # the first n_train training images only (None: all)

    def to_config(self) -> dict:
        """The spec in run_experiments' config.yaml layout (what :func:`load_run` reads)."""
        return {"model": {"model_type": self.model_type, "skip_kind": self.skip_kind, **self.model_options},
                "dataset": {"name": self.dataset},
                "data": {"root": self.data_root, "download": self.download, "augment": self.augment},
                "n_train": self.n_train}

    @classmethod
    def from_config(cls, cfg: dict) -> "ClassifierSpec":
        model = dict(cfg["model"])
        data = cfg.get("data") or {}
        if model.get("model_type") in VIT_SIZES and model.get("residual_mode") == "rotation" \
                and "stream_norm" not in model:
            model["stream_norm"] = "none"  # a run from before stream_norm existed: its tokens were never rescaled
        return cls(dataset=cfg["dataset"]["name"], model_type=model.pop("model_type"),
                   skip_kind=model.pop("skip_kind"), model_options=model, data_root=data.get("root"),
                   download=bool(data.get("download", True)), augment=bool(data.get("augment", True)),
                   n_train=cfg.get("n_train"))


def subset_train(data: ImageData, n_train: int | None) -> ImageData:
    """``data`` with only its first ``n_train`` training images (the test set unchanged)."""
    if n_train is None or n_train >= len(data.x_train):
        return data
    return dataclasses.replace(data, x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])


def build_classifier(spec: ClassifierSpec, seed: int) -> tuple[nn.Module, ImageData]:
    """Seed torch with ``seed``, load the data, build the model (in that order). A bad
    model option is one line (UserError)."""
    torch.manual_seed(seed)
    data = subset_train(load_image_data(spec.dataset, spec.data_root, spec.download, spec.augment), spec.n_train)
    options = model_options(spec, data.image_size)
    try:
        model = get_model(spec.model_type, data.num_classes, spec.skip_kind, in_channels=data.in_channels,
                          **options)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None
    return model, data


def model_options(spec: ClassifierSpec, image_size: int) -> dict:
    """The options :func:`build_classifier` hands to ``get_model`` for images of side
    ``image_size`` (None values dropped: the defaults)."""
    options = {k: v for k, v in spec.model_options.items() if v is not None}
    if spec.model_type in VIT_SIZES:  # a ViT's size comes from the data; a config.yaml's ResNet defaults do not apply
        options = {k: v for k, v in options.items() if (k, v) not in (("stem", "cifar"), ("zero_init_residual", False))}
        options.setdefault("image_size", image_size)
        options.setdefault("patch_size", 2 if image_size <= 16 else 4)  # 8x8 digits: 16 tokens; 32x32: 64
    return options


def check_classifier(spec: ClassifierSpec) -> None:
    """The ValueError :func:`build_classifier` would meet in the model's shape for this
    dataset (a ViT's patches and heads; the other family's options), found from the
    dataset's known image shape without loading data or building the model; a UserError
    for a ViT too large for this machine's memory (:func:`~..runs.check_memory`)."""
    channels, side, _ = IMAGE_SHAPES[spec.dataset]
    options = model_options(spec, side)
    check_model_options(spec.model_type, options)
    if spec.model_type in VIT_SIZES:
        try:
            check_vit(spec.model_type, in_channels=channels, **options)
        except ValueError as err:
            raise ValueError(f"{err} ({spec.dataset} images are {side}x{side})") from None
        size = {**VIT_SIZES[spec.model_type], **options}
        check_memory(f"{spec.model_type} of width {size['width']} and depth {size['depth']} (its float32 weights and "
                     f"gradients)", 8 * vit_min_parameters(spec.model_type, in_channels=channels, **options))


def check_batch_size(key: str, batch_size: int, dataset: str, n_train: int | None = None,
                     loaded: ImageData | None = None) -> None:
    """Refuse (one line) a training batch larger than the training set: the loader drops
    the last partial batch, so such a batch could never be drawn (it would be cut to the
    set's size, a different run from the one configured). The set's size comes from the
    ``loaded`` data when given, else from the dataset's standard split (``TRAIN_SIZES``)
    and ``n_train`` (the first n_train images only), known before anything is loaded."""
    n = len(loaded.x_train) if loaded is not None else \
        min(TRAIN_SIZES[dataset], n_train if n_train is not None else TRAIN_SIZES[dataset])
    if batch_size > n:
        what = f"{dataset} with n_train={n_train}" if n_train is not None and n < TRAIN_SIZES[dataset] else dataset
        raise UserError(f"{key} must be at most the training set's size ({n} images of {what}); got {batch_size}")


def weights_sha256(state: dict) -> str:
    """The hash of a model's state_dict (names, dtypes, shapes and bytes, in its order): what a
    checkpoint's weights are, whatever else the file holds (its optimiser state, and the
    wall-clock training time that makes two runs of one command write different files)."""
    h = hashlib.sha256()
    for name, value in state.items():
        h.update(f"{name}\0{getattr(value, 'dtype', type(value).__name__)}\0{tuple(getattr(value, 'shape', ()))}\0"
                 .encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def run_variant(spec: ClassifierSpec) -> str:
    """The variant label of a run: the skip kind, with ``/method`` for learnable_orth and
    ``/haar`` for a Haar initialisation (as run_experiments labels its runs)."""
    o = spec.model_options
    return variant_label(spec.skip_kind, o.get("method") or o.get("update_rule"), o.get("init"))


@dataclass
class TrainedRun:
    """A trained run dir loaded back: the model at its trained weights (eval mode), the
    same model at its initial weights, its data, spec, seed, and the hash of the checkpoint's
    weights (:func:`weights_sha256`: the same for the same weights, which keys the landscape cache)."""

    path: Path
    spec: ClassifierSpec
    seed: int
    model: nn.Module
    init_model: nn.Module
    data: ImageData
    checkpoint_sha256: str
    variant: str


def load_run(path: Path, device: torch.device | str = "cpu", advice: str = "give another run dir") -> TrainedRun:
    """Load ``path`` (config.yaml and checkpoint.pt). The initial weights are rebuilt from
    the run's seed (see the module docstring). Missing or unreadable files are one line; one
    for a config.yaml or checkpoint that cannot be read, or a checkpoint that does not fit, ends
    in ``advice``, the caller's, which knows the setting that named ``path``."""
    path = Path(path)
    cfg_path, ckpt_path = path / CONFIG, path / CHECKPOINT
    for f in (cfg_path, ckpt_path):
        if not f.is_file():
            raise UserError(f"{path} is not a trained classifier run dir (no {f.name})")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
        spec = ClassifierSpec.from_config(cfg)
        seed = int(cfg.get("seed", 0))
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""  # a YAML error's context is lines more
        raise UserError(f"cannot read {cfg_path} as a classifier run's config ({type(err).__name__}: {first}); "
                        f"{advice}") from None
    model, data = build_classifier(spec, seed)
    init_model = copy.deepcopy(model)
    ckpt = load_checkpoint(ckpt_path, torch.device("cpu"), advice)
    try:
        model.load_state_dict(ckpt["model"])
    except UNFIT as err:
        raise unfit_checkpoint(ckpt_path, err, advice) from None
    device = torch.device(device)
    return TrainedRun(path, spec, seed, model.to(device).eval(), init_model.to(device).eval(), data,
                      weights_sha256(ckpt["model"]), run_variant(spec))
