"""The training loop: one, for every experiment that trains an image classifier.

Per step: (mixup) -> forward under autocast where it helps -> loss -> backward ->
clip -> if the loss and every gradient are finite: optimiser step (which also retracts the
retracted orthogonal skips, :mod:`~orthogonal_skip_connections.optim`), else the step is
skipped; then the learning-rate schedule. The host reads the device once per step (the
loss and the gradient norm, in one transfer: on a GPU each read is a synchronisation that
stops the CPU from queueing the next step); the epoch's loss and accuracy sums stay on
the device until the epoch's end. When the run counts as diverged is the rule of
:mod:`~orthogonal_skip_connections.train.divergence` (the reference loss: log C). Per epoch: metrics, evaluation every ``eval_every`` epochs with
per-skip diagnostics, and an atomic checkpoint from which ``resume`` continues with the
same numbers (bit for bit on CPU: every random draw of an epoch comes from a generator
seeded by (seed, epoch)).

``compile``: the forward and backward run through ``torch.compile`` (backend
``compile_backend``, inductor's mode ``compile_mode``; the model's
parametrized orthogonal skips included), and so does the retraction where it runs from
matrix products (on CUDA, see :meth:`~orthogonal_skip_connections.optim.RetractingOptimizer.compile_retraction`);
the rest of the optimiser step, and the retraction where it factors (SVD, QR: on the CPU),
stay eager. Under ``torchrun`` the model is wrapped in
DistributedDataParallel and the data are sharded per rank (see :mod:`.distributed`).
"""

from __future__ import annotations

import importlib
import math
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..data.vision import ImageData, TensorLoader, epoch_generator, to_device
from ..diagnostics import skip_diagnostics, skip_weights, summarize_relu_kept, summarize_skips
from ..skips import iter_skips
from ..runs import (UserError, append_jsonl, atomic_torch_save, atomic_write_text, progress_bar, read_jsonl,
                    write_json)
from ..optim import OptimConfig, build_optimizer, lr_scheduler
from . import distributed
from .divergence import Diverged, DivergenceGuard

__all__ = ["TrainConfig", "MetricSink", "Diverged", "train_classifier", "evaluate", "classification_sums",
           "require_sink_package"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# torch.compile backends: inductor generates fused kernels (C++ on the CPU, Triton on CUDA);
# aot_eager captures the same forward and backward graphs and runs them with eager kernels
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
# inductor's modes: reduce-overhead replays the compiled kernels as CUDA graphs (on a GPU: one
# launch for a graph's hundreds; nothing changes on the CPU), the max-autotune ones also time
# alternative kernels while compiling
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# compile=true's oldest torch: 2.4's dynamo cannot trace the batching hooks of parametrized skips
# (attribute writes on modules) and splits a model into dozens of graphs (33 where 2 are due,
# tests/test_compile.py); 2.5.1 passes that file. Compared as (major, minor), so that 2.5's
# pre-releases and local builds ("2.5.0a0+git...") pass too, since no cheap feature test tells
# how a model will trace.
COMPILE_MIN_TORCH = (2, 5)
AMP_MODES = ("auto", "bf16", "fp16", "off")


def torch_release() -> tuple[int, int]:
    """(major, minor) of the running torch, pre-release and local parts ignored."""
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norms_and_biases: bool = False  # weight decay on 1-D parameters (norms, biases, scalars)
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 1.0
    milestones: list[int] = field(default_factory=lambda: [])  # step schedule, in epochs
    gamma: float = 0.1  # step schedule factor
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    upkeep_momentum: float | None = None  # momentum of the retracted skips' step (None: momentum)
    upkeep_adaptive: bool = False  # adam/adamw: Adam's moments in so(n) for the retracted skips' step
    amp: str = "auto"  # auto (see amp_dtype: bf16 on CUDA 8.0+, fp16 on 7.x, else off) | bf16 | fp16 | off
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward/backward, and the retraction where it runs from products
    compile_backend: str = "inductor"  # torch.compile's backend: inductor | aot_eager | eager
    compile_mode: str = "default"  # inductor's mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over the global batch
    eval_every: int = 1
    seed: int = 0
    progress: bool = True

    def optim(self) -> OptimConfig:
        """The optimiser and schedule part, for :mod:`~orthogonal_skip_connections.optim`."""
        return OptimConfig(
            name=self.optimizer, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
            weight_decay=self.weight_decay, decay_norms_and_biases=self.decay_norms_and_biases,
            betas=tuple(self.betas), retraction_momentum=self.upkeep_momentum,
            retraction_adaptive=self.upkeep_adaptive, schedule=self.schedule,
            warmup_epochs=self.warmup_epochs, milestones=list(self.milestones), gamma=self.gamma,
        )

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1); got {self.label_smoothing}"),
            (0 <= self.mixup_alpha < math.inf, f"mixup_alpha must be a finite number >= 0; got {self.mixup_alpha}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0; got {self.grad_clip}"),
            (self.amp in AMP_MODES, f"unknown amp {self.amp!r}; allowed: {', '.join(AMP_MODES)}"),
            (self.eval_every >= 1, f"eval_every must be >= 1; got {self.eval_every}"),
            (self.compile_backend in COMPILE_BACKENDS,
             f"unknown compile_backend {self.compile_backend!r}; allowed: {', '.join(COMPILE_BACKENDS)}"),
            (self.compile_mode in COMPILE_MODES,
             f"unknown compile_mode {self.compile_mode!r}; allowed: {', '.join(COMPILE_MODES)}"),
            (self.compile_mode == "default" or self.compile,
             f"compile_mode={self.compile_mode} needs compile=true"),
            (self.compile_mode == "default" or self.compile_backend == "inductor",
             f"compile_mode={self.compile_mode} is a mode of the inductor backend; compile_backend is "
             f"{self.compile_backend}"),
            (not self.compile or torch_release() >= COMPILE_MIN_TORCH,
             f"compile=true needs torch >= {'.'.join(map(str, COMPILE_MIN_TORCH))} (torch 2.4's compiler splits "
             f"these models into dozens of graphs); this is torch {torch.__version__}"),
        ]
        problems = [message for ok, message in checks if not ok] + self.optim().problems()
        if problems:
            raise UserError(problems[0])


class MetricSink:
    """Receives every logged record (a flat-ish dict with ``type`` "train" or "eval")."""

    def log(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full float32). ``auto``: bfloat16
    on CUDA GPUs of compute capability 8.0 and later (Ampere, Hopper, ...), which run it
    natively; float16 on 7.x (Volta, Turing: fp16 tensor cores, bfloat16 only emulated),
    with dynamic loss scaling in the training loop; float32 elsewhere (older GPUs, CPU, MPS)."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        major = torch.cuda.get_device_capability(device)[0]
        return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _autocast(device: torch.device, amp: str):
    dtype = amp_dtype(device, amp)
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, amp: str = "auto") -> dict:
    """Test loss (mean cross-entropy) and accuracy (percent) over the whole loader, in eval mode;
    the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:  # parametrized skips: W = B phi(A) is computed once for the whole pass, not per batch
        with parametrize.cached():
            return _evaluate(model, loader, amp)
    finally:
        model.train(was_training)


def _evaluate(model: nn.Module, loader: TensorLoader, amp: str) -> dict:
    loss_sum, correct, n = classification_sums(model, loader.epoch(), lambda: _autocast(loader.device, amp))
    return {"test_loss": loss_sum / n, "test_acc": 100.0 * correct / n}


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums kept on ``device``: float64, so that they equal the Python
    floats they replace bit for bit (float32 on MPS, which has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def classification_sums(model: nn.Module, batches, autocast=nullcontext) -> tuple[float, int, int]:
    """Summed cross-entropy, number of correct predictions and number of samples of ``model``
    over ``batches`` ((x, y) pairs; the forward inside ``autocast()``). The sums stay on the
    device until the end: one host read (one GPU synchronisation) for the whole pass."""
    loss_sum = correct = None
    n = 0
    for x, y in batches:
        with autocast():
            logits = model(x)
        if loss_sum is None:
            loss_sum = torch.zeros((), dtype=sum_dtype(y.device), device=y.device)
            correct = torch.zeros((), dtype=torch.int64, device=y.device)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").to(loss_sum.dtype)
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    if loss_sum is None:
        return 0.0, 0, 0
    total, right = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
    return total, int(right), n


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    # The checkpoint is loaded with map_location=device, but RNG states must be CPU ByteTensors.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def resume_advice(key: str = "hydra.run.dir") -> str:
    """What to do about a run dir's own checkpoint that cannot be resumed from: ``key`` is the
    setting that chose the dir (``hydra.run.dir``; ``hydra.sweep.dir`` for a sweep's job; an
    app's own key, like loss_landscape's ``train.dir``), the one the user can change."""
    return f"move it away to start this run over, or choose another {key}"


def load_checkpoint(path: Path, device: torch.device, advice: str | None = None) -> dict:
    """The checkpoint at ``path``, read by torch's safe loader (tensors and plain containers only);
    a file it cannot read is a one-line UserError saying what to do: ``advice`` (default
    :func:`resume_advice`), from the caller, which knows which setting named the file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch's own text is many lines, and for a pickle offers the unsafe loader
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}): not a whole checkpoint of this "
                        f"library (a write cut short, another file); {advice or resume_advice()}") from None


# what restoring a readable checkpoint raises when it was saved by another model, optimiser or
# version (a missing or unexpected key, a shape, a list where a dict was)
UNFIT = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def unfit_checkpoint(path: Path, err: BaseException, advice: str | None = None) -> UserError:
    """The one line for a checkpoint torch read but this run cannot take (``err``, one of
    :data:`UNFIT`; torch's state_dict errors list every key, over several lines), ending in
    ``advice`` (default :func:`resume_advice`), as :func:`load_checkpoint`'s does."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [""]
    for i, line in enumerate(lines[1:], 1):  # 'Missing key(s) in state_dict: "a", "b", ...': a count and the first
        head, found, keys = line.partition(" in state_dict: ")
        names = re.findall(r'"([^"]+)"', keys)
        if found and names:
            lines[i] = f"{len(names)} {head[0].lower()}{head[1:]} (first {names[0]})"
    detail = " ".join(lines[:1]) + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
    detail = detail if len(detail) <= 300 else detail[:300] + " ..."
    return UserError(f"checkpoint {path} does not fit this run ({type(err).__name__}: {detail}): it was saved by "
                     f"another model or version; {advice or resume_advice()}")


def train_classifier(
    model: nn.Module,
    data: ImageData,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    sinks: list[MetricSink] = (),
    resume: bool = False,
    extra_summary: dict | None = None,
    save_checkpoint: bool = True,
    key: str = "hydra.run.dir",
    advice: str | None = None,
    write_summary: bool = True,
) -> dict:
    """Train ``model`` on ``data``; write metrics.jsonl, checkpoint.pt (after every epoch,
    unless ``save_checkpoint`` is false: then a killed run cannot resume) and summary.json
    into ``run_dir``; return the summary. ``write_summary=False``: the caller writes
    summary.json (a :class:`~..rundir.RunDir`'s finish, with its report section), so that it
    appears once, whole: a run killed between the two would otherwise leave a "completed"
    summary without a report, which resume takes as done. Raises :class:`Diverged` (after writing a summary
    with ``status: diverged``, also its ``partial``) when the run diverges by the rule of
    :mod:`.divergence`. ``key``: the setting that chose ``run_dir``, named when its checkpoint
    cannot be resumed from (see :func:`resume_advice`); ``advice``: what that refusal asks for
    instead (a study's run: what the study's user can do)."""
    cfg.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    main = distributed.is_main()  # only rank 0 writes files
    if cfg.batch_size % distributed.world_size():
        raise UserError(f"batch_size {cfg.batch_size} (the global batch) does not split evenly over "
                        f"{distributed.world_size()} processes")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = _step_model(model, cfg, device)
    train_loader = TensorLoader(data, cfg.batch_size, True, device, cfg.channels_last,
                                rank=distributed.rank(), world=distributed.world_size())
    test_loader = TensorLoader(data, max(cfg.batch_size, 256), False, device, cfg.channels_last)
    # the first 256 test images: what the ReLU after each block's sum keeps is measured on them
    probe = next(iter(test_loader.epoch()))[0][:256]
    steps_per_epoch = len(train_loader)
    opt = build_optimizer(model, cfg.optim())
    if cfg.compile:
        opt.compile_retraction(cfg.compile_backend, _mode(cfg))
    sched = lr_scheduler(opt, cfg.optim(), steps_per_epoch, cfg.epochs)
    precision = amp_dtype(device, cfg.amp)
    # float16 autocast: dynamic loss scaling (Micikevicius et al. 2018, "Mixed precision
    # training", sec. 3.2) by torch's GradScaler, its scale kept on the device (read with the
    # step's one host read): the loss scaled before backward, the gradients unscaled before
    # clipping and the step; gradients that overflowed make the step a skipped one and halve
    # the scale, 2000 clean steps double it
    scaler = torch.amp.GradScaler(device.type) if precision == torch.float16 else None
    one = torch.ones((), device=device)  # scaler.scale(one): the step's loss scale, on the device

    state = {"epoch": 0, "step": 0, "train_time_s": 0.0, "best_test_acc": None, "skipped_steps": 0,
             "overflow_steps": 0, "last_eval": None, "guard": None, "skip_start": None}
    guard = DivergenceGuard(trivial_loss=math.log(max(2, data.num_classes)))
    if resume and ckpt_path.exists():
        advice = advice or resume_advice(key)
        ckpt = load_checkpoint(ckpt_path, device, advice)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if scaler is not None and "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            state.update(ckpt["state"])
            guard.load_state(state.get("guard"))
        except UNFIT as err:
            raise unfit_checkpoint(ckpt_path, err, advice) from None
        if main:
            _truncate_metrics(metrics_path, state["epoch"])
    else:
        # each skip's W_0, kept in the checkpoint: how far training moves it (a checkpoint from
        # before this was kept has none, and its run reports no such distance)
        state["skip_start"] = skip_weights(model)
        if metrics_path.exists() and main:
            metrics_path.unlink()  # a fresh run in a dir without a checkpoint: start the log anew

    def log(record: dict) -> None:
        if not main:
            return
        append_jsonl(metrics_path, record)
        for sink in sinks:
            sink.log(record)

    def summary(status: str) -> dict:
        last = state["last_eval"] or {}
        out = {
            "status": status,
            "test_acc": last.get("test_acc"),
            "best_test_acc": state["best_test_acc"],
            "test_loss": last.get("test_loss"),
            "train_loss": state.get("train_loss"),
            "train_acc": state.get("train_acc"),
            "epochs": state["epoch"],
            "steps": state["step"],
            "train_time_s": state["train_time_s"],
            "seconds_per_epoch": state["train_time_s"] / max(1, state["epoch"]),
            "skipped_steps": guard.skipped_steps,
            "overflow_steps": state.get("overflow_steps", 0),
            "precision": {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[precision],
            **summarize_skips(skip_diagnostics(model, state["skip_start"])),
            "relu_kept_skip_mean": last.get("relu_kept_skip_mean"),
            "relu_kept_sum_mean": last.get("relu_kept_sum_mean"),
            "device": str(device),
            "world_size": distributed.world_size(),
            "config": asdict(cfg),
        }
        out.update(extra_summary or {})
        return out

    model.train()
    # BatchNorm's running statistics move in the forward, before the step's finite test: a skipped
    # step (a non-finite batch) puts them back, else one NaN pixel made every later evaluation NaN
    stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]  # (the count:
    # what momentum=None's cumulative average divides by)
    stats_before = [torch.empty_like(b) for b in stats]
    show = cfg.progress and main
    lr_used = opt.param_groups[0]["lr"]
    epochs_bar = progress_bar(range(state["epoch"], cfg.epochs), enabled=show, desc="epochs",
                              initial=state["epoch"], total=cfg.epochs)
    try:
        for epoch in epochs_bar:
            gen = epoch_generator(cfg.seed, epoch)
            # the epoch's sums stay on the device; the host reads them at the epoch's end
            loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            t0 = time.perf_counter()
            bar = progress_bar(train_loader.epoch(gen), enabled=show, total=steps_per_epoch,
                               desc=f"epoch {epoch + 1}", leave=False)
            for x, y in bar:
                if stats:
                    torch._foreach_copy_(stats_before, stats)
                loss, logits, y_hard = _forward(step_model, x, y, cfg, gen, device)
                opt.zero_grad(set_to_none=True)
                # also for a non-finite loss: its gradients are non-finite, and the step is skipped
                (loss if scaler is None else scaler.scale(loss)).backward()
                if scaler is not None:
                    scaler.unscale_(opt)  # the gradients as unscaled (non-finite where they overflowed)
                norm = _grad_norm(model, cfg.grad_clip, device)
                # every rank judges the same numbers: the global batch's loss; DDP's averaged gradients
                batch_loss = distributed.all_mean(loss.detach().to(loss_sum.dtype))
                read = [batch_loss, norm.to(loss_sum.dtype)]
                if show:  # the bar's figures ride along: the sums up to the previous step
                    read += [loss_sum, correct.to(loss_sum.dtype)]
                if scaler is not None:  # the loss scale of this step
                    read.append(scaler.scale(one).to(loss_sum.dtype))
                values = torch.stack(read).tolist()  # the step's one host read
                loss_value = values[0]
                finite = math.isfinite(loss_value) and math.isfinite(values[1])
                # gradients that overflowed at a scale above 1 with a finite loss: the scale was too
                # large, which the halving fixes; skipped, but no sign of divergence
                overflow = scaler is not None and not finite and math.isfinite(loss_value) and values[-1] > 1
                if finite:
                    guard.optimizer_step(opt, state["step"] + 1)  # retracted skips included
                else:  # skip the update (retraction included), keep the schedule moving
                    opt.zero_grad(set_to_none=True)
                    if stats:
                        torch._foreach_copy_(stats, stats_before)
                if scaler is not None:
                    scaler.update()
                lr_used = opt.param_groups[0]["lr"]  # (the epoch's record: its last step's, not the next one's)
                sched.step(skipped=not finite)
                state["step"] += 1
                state["overflow_steps"] = state.get("overflow_steps", 0) + overflow
                guard.step(state["step"], loss_value, finite or overflow)  # raises Diverged after too many skipped
                state["skipped_steps"] = guard.skipped_steps
                if show and seen:
                    bar.set_postfix(loss=f"{values[2] / seen:.3f}", acc=f"{100 * values[3] / seen:.1f}",
                                    refresh=False)
                if finite or overflow:  # an overflow's loss is that of the weights as they were: counted
                    loss_sum += batch_loss * len(y)
                    correct += (logits.argmax(1) == y_hard).sum()
                    seen += len(y)
            loss_sum, correct = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
            correct = int(correct)
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_time = time.perf_counter() - t0
            if distributed.world_size() > 1:  # the epoch's numbers over the global batches
                loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], None)
                distributed.broadcast_buffers(model)  # BatchNorm statistics: rank 0's, on every rank
            state.update(epoch=epoch + 1, train_time_s=state["train_time_s"] + epoch_time,
                         train_loss=loss_sum / seen if seen else float("nan"),
                         train_acc=100.0 * correct / seen if seen else float("nan"))
            log({"type": "train", "epoch": epoch + 1, "step": state["step"], "lr": lr_used,
                 "train_loss": state["train_loss"], "train_acc": state["train_acc"], "epoch_time_s": epoch_time})
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                ev = evaluate(model, test_loader, cfg.amp)
                ev.update(summarize_relu_kept(model, probe))  # post-activation ResNets; None for others
                skips = skip_diagnostics(model, state["skip_start"])
                state["last_eval"] = ev
                best = state["best_test_acc"]
                state["best_test_acc"] = ev["test_acc"] if best is None else max(best, ev["test_acc"])
                log({"type": "eval", "epoch": epoch + 1, "step": state["step"], **ev,
                     **summarize_skips(skips), "skips": skips})
                if show:
                    epochs_bar.set_postfix(test_acc=f"{ev['test_acc']:.2f}")
            # test losses are not judged; nor an epoch whose every step was skipped (no loss, not a nan of
            # its own: rule 1, the skipped steps in a row, judges it)
            guard.check(state["step"], {"train loss": state["train_loss"] if seen else None})
            state["guard"] = guard.state()
            if save_checkpoint and main:
                atomic_torch_save(
                    {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "rng": _rng_state(), "state": state,
                     **({"scaler": scaler.state_dict()} if scaler is not None else {})},
                    ckpt_path,
                )
    except Diverged as err:
        err.partial = {**summary("diverged"), "divergence": err.info}
        if main and write_summary:
            write_json(run_dir / SUMMARY, err.partial)
        raise
    finally:
        for sink in sinks:
            sink.close()
    result = summary("completed")
    if main and write_summary:
        write_json(run_dir / SUMMARY, result)
    return result


def _step_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """What the training step calls: ``model`` itself, wrapped in DistributedDataParallel
    under a process group (BatchNorm synchronised if asked), compiled if asked. Its
    parameters are ``model``'s, so ``model.state_dict()`` is what is saved."""
    out = model
    if distributed.world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        if cfg.sync_batchnorm:
            if device.type != "cuda":  # torch's SyncBatchNorm runs on GPUs only
                raise UserError(f"sync_batchnorm=true needs CUDA devices; this run is on {device}")
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm children in place
        # a block without a skip path (the zero kind) leaves its projection shortcut unused
        unused = any(not s.has_path for _, s in iter_skips(model))
        out = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    if cfg.compile:
        out = torch.compile(out, backend=cfg.compile_backend, mode=_mode(cfg))
    return out


def _mode(cfg: TrainConfig) -> str | None:
    """torch.compile's ``mode`` argument: None for the default."""
    return None if cfg.compile_mode == "default" else cfg.compile_mode


def _forward(model, x, y, cfg: TrainConfig, gen: torch.Generator, device: torch.device):
    """Loss and logits of one batch; with mixup (Zhang et al. 2018) the inputs are convex
    combinations lam x + (1 - lam) x[perm] and the loss mixes the two labels alike.

    Under DDP (``x``: this rank's share of the global batch) every rank draws the permutation
    of the whole global batch, as one process does, so the epoch generator's later draws (the
    loader's crops and flips) stay those of one process; each rank mixes within its share, in
    the order the global permutation gives its samples (one process: that permutation)."""
    with _autocast(device, cfg.amp):
        if cfg.mixup_alpha > 0:
            lam = _beta(cfg.mixup_alpha, gen)
            world, share = distributed.world_size(), len(x)
            perm = torch.randperm(share * world, generator=gen)  # (B_global,)
            if world > 1:
                first = distributed.rank() * share
                perm = perm[(perm >= first) & (perm < first + share)] - first  # (share,)
            perm = to_device(perm, device)
            logits = model(lam * x + (1 - lam) * x[perm]).float()
            loss = lam * F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing) + (1 - lam) * \
                F.cross_entropy(logits, y[perm], label_smoothing=cfg.label_smoothing)
            y_hard = y if lam >= 0.5 else y[perm]
        else:
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            y_hard = y
    return loss, logits, y_hard


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw determined by the epoch generator (torch's Beta sampler
    takes no generator, so a NumPy generator is seeded from it)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _grad_norm(model: nn.Module, clip: float, device: torch.device) -> torch.Tensor:
    """The global gradient norm, a tensor on ``device`` (not read); if ``clip`` > 0 the
    gradients are clipped to norm ``clip`` too. Without clipping the norm alone is computed
    (clip_grad_norm_ at an infinite bound would also multiply every gradient by 1.0)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), device=device)
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if clip > 0 or total_norm is None:
        return torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    return total_norm([p.grad for p in params])


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop records logged after the checkpoint's epoch (a run killed mid-epoch, perhaps
    mid-line: :func:`read_jsonl` leaves that line out)."""
    if not path.exists():
        return
    kept = [line for _, line, rec in read_jsonl(path) if rec.get("epoch", 0) <= epoch]
    atomic_write_text(path, "".join(line + "\n" for line in kept))  # a kill here keeps the old records


def require_sink_package(package: str, setting: str) -> None:
    """Raise the one-line :class:`UserError` naming ``setting`` when the optional
    ``package`` (tensorboard, wandb) cannot be imported. An app's config check calls it, so
    the refusal comes before Hydra makes a run dir, not after config.yaml is written."""
    try:
        importlib.import_module(package)
    except ImportError:
        raise UserError(f"{setting} needs the {package} package: pip install {package}") from None


class TensorBoardSink(MetricSink):
    """Scalars of every record into a TensorBoard event file under ``log_dir``."""

    def __init__(self, log_dir: Path):
        require_sink_package("tensorboard", "tensorboard=true")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.writer.add_scalar(f"{record['type']}/{key}", value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink(MetricSink):
    """Scalars of every record into a Weights & Biases run (mode online or offline)."""

    def __init__(self, mode: str, project: str, config: dict, run_dir: Path, name: str | None = None):
        require_sink_package("wandb", f"wandb.mode={mode}")
        import wandb

        self.run = wandb.init(mode=mode, project=project, config=config, dir=str(run_dir), name=name)

    def log(self, record: dict) -> None:
        scalars = {f"{record['type']}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
        self.run.log(scalars, step=record["step"])

    def close(self) -> None:
        self.run.finish()
