"""The training loop reads the device at most once per step (issue 13: on a GPU every host
read of a tensor's value is a synchronisation that stops the CPU from queueing the next
step; an H100 run spent 10-25% of identity's step time waiting on three of them).

A host read is counted where every path from a tensor's value to a Python number goes:
``aten._local_scalar_dense`` (``float()``, ``int()``, ``bool()``, ``.item()``, recorded by
a TorchDispatchMode) and ``Tensor.tolist`` (which copies to the CPU and reads memory
without that op, so it is wrapped). Reads are attributed to training steps by wrapping the
training loader: the reads between handing out batch i and asking for batch i + 1 are step
i's; the end of an epoch (metrics, evaluation, diagnostics, checkpoint) is outside every step.
"""

import pytest
import torch
from helpers import HostReads

from orthogonal_skip_connections.data.vision import ImageData, TensorLoader, load_image_data
from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet
from orthogonal_skip_connections.skips import skip
from orthogonal_skip_connections.train import classifier
from orthogonal_skip_connections.train.classifier import TrainConfig, train_classifier


def reads_per_step(monkeypatch, model, cfg, tmp_path, n_train=256):
    """Train ``model`` on a slice of digits: the host reads of each training step, per
    epoch; all reads; the :class:`Diverged` raised, if any."""
    d = load_image_data("digits")
    data = ImageData(d.name, d.x_train[:n_train], d.y_train[:n_train], d.x_test[:128], d.y_test[:128],
                     d.num_classes, d.mean, d.std, d.scale, d.crop_padding, d.flip)
    counter, marks = HostReads(), []
    real_epoch, real_tolist = TensorLoader.epoch, torch.Tensor.tolist

    def epoch(self, gen=None):
        if not self.train:
            yield from real_epoch(self, gen)
            return
        marks.append([counter.count])
        for batch in real_epoch(self, gen):
            yield batch
            marks[-1].append(counter.count)  # the loop asks for the next batch: the step is over

    def tolist(self):
        counter.count += 1
        return real_tolist(self)

    monkeypatch.setattr(TensorLoader, "epoch", epoch)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    diverged = None
    with counter:
        try:
            train_classifier(model, data, cfg, tmp_path, torch.device("cpu"))
        except classifier.Diverged as err:
            diverged = err
    return [[b - a for a, b in zip(m, m[1:])] for m in marks], counter.count, diverged


def resnet(kind, **options):
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1], [16, 32, 64], 10, in_channels=1, skip_layer=skip(kind, **options))


SKIPS = {  # skips whose upkeep has no retraction (a retraction's maths reads the host; not this loop's)
    "identity": {},
    "linear": {},
    "learnable_orth/cayley": {"method": "cayley", "init": "haar"},
}


@pytest.mark.parametrize("name", sorted(SKIPS))
@pytest.mark.parametrize("progress", [False, True])
def test_at_most_one_host_read_per_training_step(monkeypatch, tmp_path, name, progress):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, progress=progress, grad_clip=1.0 if progress else 0.0)
    steps, total, diverged = reads_per_step(monkeypatch, resnet(name.split("/")[0], **SKIPS[name]), cfg, tmp_path)
    assert diverged is None and [len(s) for s in steps] == [256 // 64] * 2
    assert max(max(s) for s in steps) <= 1, steps
    assert total > sum(map(sum, steps))  # the counter sees the reads at the epochs' ends too


def test_mixup_adds_only_its_cpu_generator_draw(monkeypatch, tmp_path):
    """Mixup's Beta draw is seeded by an int read from the epoch's CPU generator: a read of
    a CPU tensor, never of the device, so it may add one to the count and nothing more."""
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False, mixup_alpha=0.2)
    steps, _, diverged = reads_per_step(monkeypatch, resnet("identity"), cfg, tmp_path)
    assert diverged is None and len(steps[0]) == 4 and max(steps[0]) <= 2, steps


def test_skipped_steps_take_one_read_and_the_rule_still_counts_them(monkeypatch, tmp_path):
    """lr 1e30: the weights blow up after step 1 and every later step is non-finite and
    skipped; each still takes one read, and the run diverges after 10 skipped in a row."""
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e30, warmup_epochs=0, progress=False)
    steps, _, diverged = reads_per_step(monkeypatch, resnet("identity"), cfg, tmp_path)
    assert diverged is not None and "10 optimiser steps in a row" in str(diverged)
    info = diverged.info
    assert info["step"] == 11 and info["skipped_steps"] == 10 and info["last_finite_step"] == 1
    assert len(steps[0]) == 10 and max(steps[0]) <= 1, steps  # the 11th step raised before asking for a batch
