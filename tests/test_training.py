"""The training loop and the run_experiments app: files, resume, CIFAR files, bad input."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from orthogonal_skip_connections.train import classifier as training
from orthogonal_skip_connections.cli import main as osc_main
from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator, load_image_data
from orthogonal_skip_connections.experiments import run_experiments
from orthogonal_skip_connections.experiments._app import CONFIG_DIR
from orthogonal_skip_connections.runs import UserError
from orthogonal_skip_connections.optim import lr_factor
from orthogonal_skip_connections.train.classifier import TrainConfig

APP = "orthogonal_skip_connections.experiments.run_experiments"


def config(*overrides, name="run_experiments"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def digits_cfg(*overrides):
    return config("dataset=digits", "model.model_type=resnet20", "device=cpu", "progress=false", *overrides)


def test_digits_two_epochs_writes_all_files(tmp_path):
    summary = run_experiments.main.run(digits_cfg("scheduler.epochs=2", "model.skip_kind=learnable_orth"), tmp_path)
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))  # what was returned is what was saved
    assert saved["status"] == "completed" and saved["epochs"] == 2 and saved["steps"] == 2 * (1437 // 128)
    assert 10.0 < saved["test_acc"] <= 100.0 and saved["best_test_acc"] >= saved["test_acc"]
    assert saved["train_time_s"] > 0 and saved["method"] == "steepest"
    assert saved["skip_orth_error_max"] < 1e-4 and saved["skip_identity_distance_mean"] > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["train", "eval", "train", "eval"]
    assert len(records[1]["skips"]) == 9
    # an epoch's lr is that of its last step (it was the next epoch's first: 0 for the last, never used)
    from orthogonal_skip_connections.optim import OptimConfig

    cfg = digits_cfg("scheduler.epochs=2")
    sched = OptimConfig(schedule=cfg.scheduler.name, warmup_epochs=cfg.scheduler.warmup_epochs)
    spe = 1437 // 128
    for epoch, r in ((1, records[0]), (2, records[2])):
        assert r["lr"] == pytest.approx(cfg.optimizer.lr * lr_factor(epoch * spe - 1, spe, 2, sched), rel=1e-12)
    assert records[2]["lr"] > 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2
    # what the ReLU after each sum keeps, measured on the trained model and the first 256 test images
    from orthogonal_skip_connections.diagnostics import relu_kept_energy
    from orthogonal_skip_connections.train.image import load_run

    run = load_run(tmp_path)  # the trained weights, in eval mode
    # the saved test figures, against the trained model on the whole normalised test set at once
    # (an oracle outside the loader and classification_sums): accuracy in percent, mean cross-entropy
    d = run.data
    x_test = (d.x_test.float() / d.scale - torch.tensor(d.mean).view(1, -1, 1, 1)) / torch.tensor(d.std).view(
        1, -1, 1, 1)
    with torch.no_grad():
        logits = run.model(x_test)
    assert saved["test_acc"] == pytest.approx(100.0 * float((logits.argmax(1) == d.y_test).double().mean()), abs=1e-9)
    assert saved["test_loss"] == records[3]["test_loss"] == pytest.approx(float(F.cross_entropy(logits, d.y_test)),
                                                                         rel=1e-5)
    assert records[3]["test_acc"] == saved["test_acc"] and len(d.y_test) == 1797 - 1437
    probe, _ = next(iter(TensorLoader(load_image_data("digits"), 256, False, torch.device("cpu"), False).epoch()))
    rows = relu_kept_energy(run.model, probe)
    assert [r["name"] for r in records[3]["relu_kept_blocks"]] == [r["name"] for r in rows]
    for key in ("skip_kept", "sum_kept"):
        assert [r[key] for r in records[3]["relu_kept_blocks"]] == pytest.approx([r[key] for r in rows], rel=1e-5)
    assert saved["relu_kept_skip_mean"] == records[3]["relu_kept_skip_mean"] == pytest.approx(
        sum(r["skip_kept"] for r in rows) / 9, rel=1e-5)
    assert 0.0 < saved["relu_kept_skip_mean"] < 1.0 and 0.0 < saved["relu_kept_sum_mean"] < 1.0
    # the report's step time: the epochs after the first (which pays one-off costs), per step
    from orthogonal_skip_connections.report import find_runs, results_rows

    (row,) = results_rows(find_runs([tmp_path])[0])
    assert row["step_time_s"] == pytest.approx(records[2]["epoch_time_s"] / (1437 // 128))
    # the saved result is never overwritten by a second run in the same dir
    with pytest.raises(UserError, match="already holds a finished run"):
        run_experiments.main.run(digits_cfg("scheduler.epochs=2"), tmp_path)


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, monkeypatch):
    overrides = ("scheduler.epochs=2", "model.skip_kind=learnable_orth", "model.method=steepest",
                 "model.init=haar", "mixup_alpha=0.2", "optimizer.nesterov=true")
    full = run_experiments.main.run(digits_cfg(*overrides), tmp_path / "full")

    real_forward, calls = training._forward, {"n": 0}

    def dying_forward(*args, **kwargs):  # the process dies in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == (1437 // 128) + 4:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(training, "_forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        run_experiments.main.run(digits_cfg(*overrides), tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "summary.json").exists()
    monkeypatch.setattr(training, "_forward", real_forward)
    resumed = run_experiments.main.run(digits_cfg(*overrides, "resume=true"), tmp_path / "resumed")

    timing = {"train_time_s", "seconds_per_epoch", "provenance", "report"}  # wall times
    assert {k: v for k, v in full.items() if k not in timing} == {k: v for k, v in resumed.items() if k not in timing}
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    lines = lambda p: [{k: v for k, v in json.loads(s).items() if k != "epoch_time_s"}  # noqa: E731
                       for s in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(tmp_path / "full") == lines(tmp_path / "resumed")


def test_a_run_killed_after_training_but_before_its_summary_resumes_to_a_whole_summary(tmp_path, monkeypatch):
    """summary.json is written once, by RunDir.finish with its report section: a kill between
    the last checkpoint and finish leaves none (the loop wrote a report-less "completed" one,
    which resume=true took as done and then died on), and resume finishes the run. A
    report-less "completed" summary an earlier version left is finished again too."""
    from orthogonal_skip_connections.rundir import RunDir

    def killed(self, summary, device=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            run_experiments.main.run(digits_cfg("scheduler.epochs=1"), tmp_path)
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "checkpoint.pt").exists()
    first = run_experiments.main.run(digits_cfg("scheduler.epochs=1", "resume=true"), tmp_path)
    assert first["status"] == "completed" and "report" in json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({k: v for k, v in first.items() if k != "report"}))
    again = run_experiments.main.run(digits_cfg("scheduler.epochs=1", "resume=true"), tmp_path)
    assert again["report"]["verdict"] == first["report"]["verdict"] and again["test_acc"] == first["test_acc"]


def _generator_copy(gen: torch.Generator) -> torch.Generator:
    return torch.Generator().set_state(gen.get_state())


def test_mixup_loss_mixes_both_labels_on_the_mixed_batch():
    """_forward with mixup, against the loss written out from the same draws (the Beta draw
    seeded from the epoch generator, then the permutation): lam CE(f(lam x + (1 - lam) x[perm]),
    y) + (1 - lam) CE(same logits, y[perm]), label smoothing in both terms."""
    import numpy as np

    from helpers import digits_subset

    x, y = digits_subset(32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    cfg = TrainConfig(mixup_alpha=0.4, label_smoothing=0.1, amp="off")
    gen = epoch_generator(0, 2)  # lam = 0.155: y[perm] weighs most and is y_hard
    twin = _generator_copy(gen)
    loss, logits, y_hard = training._forward(model, x, y, cfg, gen, torch.device("cpu"))
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=twin))).beta(0.4, 0.4))
    perm = torch.randperm(len(x), generator=twin)
    assert 0.1 < lam < 0.2 and (y[perm] != y).float().mean() > 0.5  # both terms weigh, on other labels
    with torch.no_grad():
        want_logits = model(lam * x + (1 - lam) * x[perm])
        want = lam * F.cross_entropy(want_logits, y, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
            want_logits, y[perm], label_smoothing=0.1)
    torch.testing.assert_close(logits.detach(), want_logits)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    assert torch.equal(y_hard, y if lam >= 0.5 else y[perm])
    assert torch.equal(gen.get_state(), twin.get_state())  # _forward drew exactly these, nothing more


def test_grad_clip_scales_the_gradients_to_the_bound_and_returns_the_norm_before():
    """_grad_norm(model, c): the global norm before clipping is returned, and afterwards the
    gradients are those before times min(1, c / norm) (norm min(c, norm), direction kept);
    c = 0 and c above the norm leave them as they are."""
    from helpers import digits_subset

    x, y = digits_subset(32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    F.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = float(torch.cat([g.double().flatten() for g in before]).norm())
    assert norm > 0.1
    for clip in (0.0, 2 * norm, norm / 3):
        for p, g in zip(model.parameters(), before):
            p.grad = g.clone()
        returned = training._grad_norm(model, clip, torch.device("cpu"))
        assert float(returned) == pytest.approx(norm, rel=1e-5), clip
        after = [p.grad for p in model.parameters()]
        scale = 1.0 if clip == 0 else min(1.0, clip / norm)
        assert float(torch.cat([g.double().flatten() for g in after]).norm()) == pytest.approx(
            (norm if clip == 0 else min(clip, norm)), rel=1e-5), clip
        for a, b in zip(after, before):
            torch.testing.assert_close(a, b * scale, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("capability,want", [((9, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                             ((7, 5), torch.float16), ((7, 0), torch.float16), ((6, 1), None)])
def test_amp_auto_picks_native_half_precision_by_compute_capability(monkeypatch, capability, want):
    """amp=auto: bf16 where GPUs run it natively (8.0+), fp16 on Volta/Turing (7.x: fp16 tensor
    cores, bf16 only emulated), float32 on older GPUs and off CUDA; the explicit modes as named."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert training.amp_dtype(cuda, "auto") == want
    assert training.amp_dtype(torch.device("cpu"), "auto") is None
    assert (training.amp_dtype(cuda, "bf16"), training.amp_dtype(cuda, "fp16"), training.amp_dtype(cuda, "off")) \
        == (torch.bfloat16, torch.float16, None)


_REAL_SCALER = torch.amp.GradScaler


def _fp16_model():
    """resnet20's layout with one block per stage (a resnet8: fp16 on a CPU is slow), SVD-retracted skips."""
    from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1], [16, 32, 64], 10, skip_kind="learnable_orth", method="svd", in_channels=1,
                  stem="cifar")


def _fp16_run(run_dir, monkeypatch, init_scale: float, growth_interval: int, epochs: int, resume=False, **cfg):
    """A resnet8 (:func:`_fp16_model`) on 128 digits images, amp=fp16 (on the CPU here), torch's
    GradScaler started at ``init_scale`` and doubling after ``growth_interval`` clean steps;
    (summary, model)."""
    import functools

    from helpers import small_digits

    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(_REAL_SCALER, init_scale=init_scale,
                                                                   growth_interval=growth_interval))
    model = _fp16_model()
    tcfg = TrainConfig(epochs=epochs, batch_size=32, amp="fp16", warmup_epochs=0, progress=False, **cfg)
    summary = training.train_classifier(model, small_digits(128, 64), tcfg, run_dir, torch.device("cpu"),
                                        resume=resume)
    return summary, model


def test_fp16_loss_scale_cancels_exactly_clipping_included(tmp_path, monkeypatch):
    """amp=fp16 (what amp=auto picks on Volta and Turing GPUs) scales the loss before backward
    and unscales the gradients before clipping and the step: scaling by a power of two is
    exact in floating point, so runs at scales 2^12 and 2^13 take the same steps, to float32
    round-off in the clipping (measured 1e-7 of the distance moved). Unscaled too late
    (after clipping, or never), their steps would differ by 2x."""
    a, model_a = _fp16_run(tmp_path / "a", monkeypatch, 2.0**12, 10**6, 1, grad_clip=0.5)
    b, model_b = _fp16_run(tmp_path / "b", monkeypatch, 2.0**13, 10**6, 1, grad_clip=0.5)
    assert a["precision"] == "fp16" and a["overflow_steps"] == b["overflow_steps"] == 0
    start = _fp16_model()
    for (name, p), q, p0 in zip(model_a.named_parameters(), model_b.parameters(), start.parameters()):
        p, q, p0 = p.detach(), q.detach(), p0.detach()
        moved = float((p - p0).abs().max())
        assert moved > 0 and float((p - q).abs().max()) <= 1e-5 * moved, name


def test_fp16_overflows_are_skipped_not_divergence_and_resume_exactly(tmp_path, monkeypatch):
    """Started at a loss scale of 2^20, float16's gradients overflow: those steps are skipped
    and halve the scale, but they are counted as overflow_steps, not as skipped steps towards
    divergence; the scale grows again every 3 clean steps. Killed in epoch 2 and resumed, the
    run equals the uninterrupted one, the loss scale included (saved in the checkpoint)."""
    full, _ = _fp16_run(tmp_path / "full", monkeypatch, 2.0**20, 3, 2)
    assert full["status"] == "completed" and full["overflow_steps"] >= 2 and full["skipped_steps"] == 0
    real_forward, calls = training._forward, {"n": 0}

    def dying_forward(*args, **kwargs):  # the process dies in the middle of epoch 2 (4 steps each)
        calls["n"] += 1
        if calls["n"] == 4 + 2:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(training, "_forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        _fp16_run(tmp_path / "resumed", monkeypatch, 2.0**20, 3, 2)
    monkeypatch.setattr(training, "_forward", real_forward)
    resumed, _ = _fp16_run(tmp_path / "resumed", monkeypatch, 2.0**20, 3, 2, resume=True)
    timing = {"train_time_s", "seconds_per_epoch"}
    assert {k: v for k, v in full.items() if k not in timing} == {k: v for k, v in resumed.items() if k not in timing}
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] < 2.0**20
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_batch_with_a_nan_pixel_is_skipped_without_poisoning_batchnorm(tmp_path, monkeypatch):
    """A non-finite batch's step is skipped, but its forward had already moved BatchNorm's running
    statistics to NaN: every later evaluation was NaN (test_acc at chance) in a run that said
    completed. The skipped step puts them back: they are, after it, what they were before it (the
    count of batches seen too, which momentum=None's cumulative average divides by)."""
    from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

    model, data = build_classifier(ClassifierSpec("digits", "resnet20", "identity", {}), 0)
    stats = lambda: [b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n]  # noqa: E731
    real_forward, calls, seen = training._forward, {"n": 0}, {}

    def forward(m, x, y, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # one pixel of the 5th batch
            seen["before"] = stats()
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        elif calls["n"] == 6:
            seen["after"] = stats()
        return real_forward(m, x, y, *args, **kwargs)

    monkeypatch.setattr(training, "_forward", forward)
    summary = training.train_classifier(model, data, TrainConfig(progress=False, epochs=2), tmp_path,
                                        torch.device("cpu"))
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(seen["before"], seen["after"]))
    assert all(torch.isfinite(b).all() for b in stats()) and math.isfinite(summary["test_loss"])
    assert summary["test_acc"] > 20  # (10 % is chance)


def test_an_epoch_whose_only_step_is_skipped_is_not_divergence(tmp_path, monkeypatch):
    """One step per epoch (n_train = batch_size), its first step non-finite: the epoch had no loss,
    which the check point read as a nan of its own and called divergence after 1 skipped step
    (the rule is 10 in a row). Now it is skipped, counted, and the run completes."""
    from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

    model, data = build_classifier(ClassifierSpec("digits", "resnet20", "identity", {}, n_train=64), 0)
    real_forward, calls = training._forward, {"n": 0}

    def forward(m, x, y, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            x = torch.full_like(x, float("nan"))
        return real_forward(m, x, y, *args, **kwargs)

    monkeypatch.setattr(training, "_forward", forward)
    summary = training.train_classifier(model, data, TrainConfig(progress=False, epochs=3, batch_size=64),
                                        tmp_path, torch.device("cpu"))
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1 and summary["steps"] == 3


def test_a_small_models_epoch_whose_only_step_is_skipped_is_not_divergence(monkeypatch):
    """The same in the small-model trainer (full-batch: one step per epoch)."""
    from orthogonal_skip_connections.data.synthetic import make_synthetic
    from orthogonal_skip_connections.models.mlp import ResidualMLP
    from orthogonal_skip_connections.models.stack import SeedStack
    from orthogonal_skip_connections.train import small

    moons = make_synthetic("moons", n_samples=100, seed=0)
    stack = SeedStack.build(lambda: ResidualMLP(2, 2, skip_kind="identity", num_classes=2), [0, 1])
    real_loss, calls = small._per_seed_loss, {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        out = real_loss(*args, **kwargs)
        return out * float("nan") if calls["n"] == 1 else out

    monkeypatch.setattr(small, "_per_seed_loss", loss)
    result = small.train_small_classifier(stack, moons.X_train, moons.y_train,
                                          TrainConfig(progress=False, epochs=3, batch_size=1000, lr=0.05))
    assert result["steps"] == 3 and result["skipped_steps"] == 1


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_local_files_without_network(tmp_path, name, fake_cifar):
    fake_cifar(tmp_path / "data", name)
    data = load_image_data(name, tmp_path / "data", download=False)
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_test.shape == (20, 3, 32, 32)
    assert data.num_classes == (10 if name == "cifar10" else 100)
    # training batches are augmented and normalised, test batches only normalised
    loader = TensorLoader(data, 8, train=False, device=torch.device("cpu"))
    x, _ = next(loader.epoch())
    expected = (data.x_test[:8].float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(
        data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    train = TensorLoader(data, 8, train=True, device=torch.device("cpu"))
    b1 = [x for x, _ in train.epoch(epoch_generator(0, 0))]
    b2 = [x for x, _ in train.epoch(epoch_generator(0, 0))]
    assert len(b1) == 5 and all(torch.equal(p, q) for p, q in zip(b1, b2))
    summary = run_experiments.main.run(
        config(f"dataset={name}", f"data.root={tmp_path / 'data'}", "data.download=false", "batch_size=16",
               "scheduler.epochs=1", "model.model_type=resnet20", "device=cpu", "progress=false"),
        tmp_path / "run",
    )
    assert summary["status"] == "completed" and summary["steps"] == 2


def test_training_batches_are_the_epochs_permutation_cropped_and_flipped_image_by_image(tmp_path, fake_cifar):
    """TensorLoader's training batches against the augmentation written out one image at a
    time from a copy of the epoch generator, drawn in the loader's order (the permutation, then
    per batch the crop rows, crop columns and flips): zero-pad by 4, slice the 32x32 window,
    mirror left-right (the last axis), normalise."""
    fake_cifar(tmp_path / "data", "cifar10")
    data = load_image_data("cifar10", tmp_path / "data", download=False)
    pad, bs = data.crop_padding, 8
    assert pad == 4 and data.flip
    gen = epoch_generator(0, 1)
    twin = torch.Generator().set_state(gen.get_state())
    batches = list(TensorLoader(data, bs, train=True, device=torch.device("cpu")).epoch(gen))
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    order = torch.randperm(len(data.x_train), generator=twin)
    offsets, flips = set(), []
    for b, (x, y) in enumerate(batches):
        idx = order[b * bs:(b + 1) * bs]
        oy = torch.randint(0, 2 * pad + 1, (bs,), generator=twin)
        ox = torch.randint(0, 2 * pad + 1, (bs,), generator=twin)
        flip = torch.rand(bs, generator=twin) < 0.5
        assert torch.equal(y, data.y_train[idx])
        for i, k in enumerate(idx.tolist()):
            image = F.pad(data.x_train[k].float(), (pad, pad, pad, pad))[:, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
            if flip[i]:
                image = image.flip(-1)
            torch.testing.assert_close(x[i], (image / 255 - mean) / std, rtol=1e-5, atol=1e-5)
            offsets.add((int(oy[i]), int(ox[i])))
        flips += flip.tolist()
    assert len(batches) == 5 and len(offsets) > 20 and 5 < sum(flips) < 35  # the draws vary
    assert torch.equal(gen.get_state(), twin.get_state())  # the loader drew exactly these, in this order


def test_missing_cifar_offline_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"cifar10 not found under .*data.download=false"):
        load_image_data("cifar10", tmp_path, download=False)


def test_lr_schedule_warmup_starts_nonzero_then_cosine_to_zero():
    cfg = TrainConfig(epochs=10, warmup_epochs=1)
    factors = [lr_factor(s, 10, cfg.epochs, cfg.optim()) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    step = TrainConfig(epochs=10, warmup_epochs=0, schedule="step", milestones=[5, 8], gamma=0.1)
    assert [lr_factor(s, 10, step.epochs, step.optim()) for s in (0, 49, 50, 80)] == pytest.approx([1, 1, 0.1, 0.01])


def test_divergence_guard_writes_diverged_summary(tmp_path):
    with pytest.raises(training.Diverged):
        data = load_image_data("digits")
        data.x_train = data.x_train * float("nan")
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        training.train_classifier(model, data, TrainConfig(epochs=1, progress=False), tmp_path, torch.device("cpu"))
    saved = json.loads((tmp_path / "summary.json").read_text())
    # every step's loss is NaN: each is skipped, and the 10th skipped in a row ends the run
    assert saved["status"] == "diverged" and saved["steps"] == 10 and saved["skipped_steps"] == 10
    assert saved["divergence"]["last_finite_loss"] is None and saved["divergence"]["step"] == 10



def test_a_huge_test_loss_with_a_healthy_training_loss_is_not_divergence(tmp_path, monkeypatch):
    """The rule judges training losses only: a plain resnet56 (zero skips) on digits had a
    test loss of 7.2e6 in eval mode after its first epoch, with a training loss of 2.32."""
    real = training.evaluate

    def exploded(*args, **kwargs):
        return {**real(*args, **kwargs), "test_loss": 7.2e6}

    monkeypatch.setattr(training, "evaluate", exploded)
    data = load_image_data("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    summary = training.train_classifier(model, data, TrainConfig(epochs=2, progress=False), tmp_path,
                                        torch.device("cpu"))
    assert summary["status"] == "completed" and summary["test_loss"] == 7.2e6


def test_a_skipped_first_step_makes_no_scheduler_order_warning(tmp_path):
    """A non-finite first step is skipped and the schedule moves on (on purpose): torch's
    "lr_scheduler.step() before optimizer.step()" warning is not shown for it."""
    data = load_image_data("digits")
    data.x_train = data.x_train * float("nan")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(training.Diverged):
            training.train_classifier(model, data, TrainConfig(epochs=1, progress=False), tmp_path,
                                      torch.device("cpu"))
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == 10


def test_every_config_composes():
    for dataset in ("cifar10", "cifar100", "digits"):
        cfg = config(f"dataset={dataset}")
        assert cfg.dataset.name == dataset and cfg.batch_size > 0 and cfg.scheduler.epochs > 0
        run_experiments.main.config([f"dataset={dataset}"]).train_config().validate()
    assert config().dataset.name == "cifar100"  # the original README's default
    assert config("batch_size=64", "dataset=digits").batch_size == 64  # overrides win
    for name in Path(CONFIG_DIR).glob("*.yaml"):
        assert compose_ok(name.stem)


def compose_ok(name):
    from orthogonal_skip_connections.experiments import load_app

    load_app(name)  # registers <name>_schema, the typed schema its YAML starts from (also when run alone)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name) is not None


@pytest.mark.parametrize(
    "override,match",
    [
        ("optimizer.lr=-1", "lr must be > 0"),
        ("model.skip_kind=bogus", "unknown skip kind 'bogus'"),
        ("model.method=adam", "unknown orthogonal method 'adam'"),
        ("wandb.mode=sometimes", "unknown wandb.mode"),
        ("device=tpu", "unknown device"),
    ],
)
def test_bad_overrides_raise_before_anything_is_saved(tmp_path, override, match):
    extra = ["model.skip_kind=learnable_orth"] if "method" in override else []
    with pytest.raises(UserError, match=match):
        run_experiments.main.run(digits_cfg(override, *extra), tmp_path)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_bad_input_from_the_command_line_is_one_line_and_nonzero_exit(tmp_path):
    """``python -m ...run_experiments`` in a fresh interpreter: a mistake found before Hydra runs
    (the config composed and checked) and one found by the run itself are each one line on
    stderr and a non-zero exit. test_faults.py's table holds each kind of mistake in-process
    (optimizer.lr=-1 and dataset=bogus, once cases here, take the first path)."""
    cases = {
        "kind": ["dataset=digits", "model.skip_kind=bogus"],
        "offline": ["dataset=cifar10", f"data.root={tmp_path / 'empty'}", "data.download=false"],
    }
    procs = {
        k: subprocess.Popen([sys.executable, "-m", APP, *args, f"hydra.run.dir={tmp_path / k}", "progress=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, args in cases.items()
    }
    errors = {}
    for k, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        errors[k] = err
        assert proc.returncode != 0, k
        assert "Traceback" not in err, (k, err)
        assert not (tmp_path / k / "summary.json").exists() and not (tmp_path / k / "checkpoint.pt").exists()
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (k, err)
    assert "bogus" in errors["kind"] and "cifar10" in errors["offline"]


def test_osc_cli_lists_apps_and_rejects_unknown(capsys):
    assert osc_main(["list"]) == 0
    assert "run_experiments" in capsys.readouterr().out
    assert osc_main(["nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert osc_main(["reprot", "outputs"]) == 2  # a typo of a command: its nearest name is offered
    assert "unknown experiment 'reprot' (did you mean report?)" in capsys.readouterr().err
    assert osc_main(["run_experiment"]) == 2
    assert "(did you mean run_experiments?)" in capsys.readouterr().err


def test_the_verdict_says_when_the_schedule_outlasts_the_run():
    """A shortened run keeps its dataset's warm-up (digits: 1 epoch) and milestones: its
    verdict says the lr never decayed, rather than leaving a near-chance accuracy unexplained."""
    from orthogonal_skip_connections.experiments.run_experiments import schedule_caveat

    cfg = run_experiments.main.config(["dataset=digits", "scheduler.epochs=1"])
    assert "warmed up for the whole run (scheduler.warmup_epochs 1 >= scheduler.epochs 1)" in \
        schedule_caveat(cfg.scheduler)
    summary = {"test_acc": 10.0, "best_test_acc": 10.0, "epochs": 1}
    assert "never decayed" in run_experiments.report(cfg, summary)["verdict"]
    step = run_experiments.main.config(["dataset=digits", "scheduler.epochs=3", "scheduler.name=step",
                                        "scheduler.milestones=[2,5]"])
    assert schedule_caveat(step.scheduler) == (" Note: scheduler.milestones [5] fall at or after the last epoch (3): "
                                               "the lr never dropped there.")
    assert schedule_caveat(run_experiments.main.config(["dataset=digits", "scheduler.epochs=3"]).scheduler) == ""
    cosine = run_experiments.main.config(["dataset=digits", "scheduler.epochs=3", "scheduler.milestones=[2]"])
    assert schedule_caveat(cosine.scheduler) == (" Note: scheduler.milestones [2] were not used: they apply to "
                                                 "scheduler.name=step, and this run's schedule is cosine.")


def test_evaluate_leaves_the_model_in_the_mode_it_was_in():
    """evaluate() always left the model in training mode, a model in eval mode too (its next
    forward then moved BatchNorm's running statistics)."""
    from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

    model, data = build_classifier(ClassifierSpec("digits", "resnet20", "identity", {}), 0)
    loader = TensorLoader(data, 128, train=False, device=torch.device("cpu"))
    for mode in (False, True):
        model.train(mode)
        result = training.evaluate(model, loader)
        assert model.training is mode and all(m.training is mode for m in model.modules())
        assert 0 <= result["test_acc"] <= 100
