"""compile=true: the training step through torch.compile, with a parametrized (cayley) and a
retracted (steepest) orthogonal skip in one model, matches eager training.

Backend: inductor's C++ code generation takes minutes on the 2 shared CPU cores of CI (a
3-block ResNet took 300 s to compile), so these tests compile with ``aot_eager``: the same
graph capture (Dynamo) and forward/backward tracing (AOTAutograd) that inductor receives,
run with eager kernels. Set OSC_TEST_INDUCTOR=1 to run the inductor case too (slow).
"""

import json
import os

import pytest
import torch

from orthogonal_skip_connections.data.vision import ImageData, load_image_data
from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet
from orthogonal_skip_connections.runs import UserError
from orthogonal_skip_connections.skips import skip
from orthogonal_skip_connections.train.classifier import TrainConfig, train_classifier

BACKENDS = ["aot_eager"] + (["inductor"] if os.environ.get("OSC_TEST_INDUCTOR") == "1" else [])


def small_digits(n_train: int = 256, n_test: int = 128) -> ImageData:
    d = load_image_data("digits")
    return ImageData(d.name, d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test],
                     d.num_classes, d.mean, d.std, d.scale, d.crop_padding, d.flip)


def mixed_model() -> ResNet:
    """The smallest CIFAR-style ResNet (one block per stage): retracted steepest skips, and
    a parametrized Cayley skip in the middle stage."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1], [16, 32, 64], 10, in_channels=1,
                   skip_layer=skip("learnable_orth", method="steepest", init="haar"))
    model.stages[1][0].skip = skip("learnable_orth", method="cayley", init="haar")(32)
    return model


def train(tmp_path, name, **options):
    model = mixed_model()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, channels_last=True, progress=False, **options)
    summary = train_classifier(model, small_digits(), cfg, tmp_path / name, torch.device("cpu"))
    records = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return model, summary, records


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_matches_eager_with_parametrized_and_retracted_skips(tmp_path, backend):
    eager, s_eager, r_eager = train(tmp_path, "eager")
    compiled, s_comp, r_comp = train(tmp_path, "compiled", compile=True, compile_backend=backend)
    assert s_comp["steps"] == s_eager["steps"] == 2 * (256 // 64)
    for a, b in zip(r_eager, r_comp):  # every logged loss: 2 epochs of training and evaluation
        for key in ("train_loss", "test_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-4), name
    assert s_comp["skip_orth_error_max"] < 1e-4  # the retraction still ran (eagerly, in opt.step)
    assert compiled.stages[1][0].skip.upkeep == "parametrized" and compiled.stages[0][0].skip.upkeep == "retracted"
    # what is saved is the model's own state_dict, not the compiled wrapper's
    saved = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)["model"]
    assert saved.keys() == eager.state_dict().keys()


def test_compile_backend_is_checked():
    with pytest.raises(UserError, match="unknown compile_backend 'fast'; allowed: inductor, aot_eager, eager"):
        TrainConfig(compile=True, compile_backend="fast").validate()


def test_run_experiments_compile_true_matches_eager(tmp_path):
    """The app's compile=true key end to end (resnet20 on digits, Cayley skips, one epoch)."""
    from orthogonal_skip_connections.experiments import run_experiments

    base = ["dataset=digits", "model.model_type=resnet20", "device=cpu", "progress=false", "scheduler.epochs=1",
            "batch_size=256", "model.skip_kind=learnable_orth", "model.method=cayley", "model.init=haar"]
    eager = run_experiments.main.run(base, tmp_path / "eager")
    compiled = run_experiments.main.run([*base, "compile=true", "compile_backend=aot_eager"], tmp_path / "compiled")
    assert compiled["config"]["compile"] is True and eager["config"]["compile"] is False
    for key in ("train_loss", "test_loss"):
        assert abs(eager[key] - compiled[key]) < 1e-4, key


def test_a_disabled_one_thread_block_compiles_as_plain_code():
    """On a GPU the skips' small-matrix blocks run ``one_thread(False)``: dynamo must trace
    through it (a torch call before the enabled test made dynamo skip the whole frame)."""
    from orthogonal_skip_connections.maths import orthogonal as orth

    def f(x):
        with orth.one_thread(False):
            y = x * 2
        return y + 1

    torch._dynamo.reset()
    explained = torch._dynamo.explain(f)(torch.randn(3))
    assert explained.graph_count == 1 and explained.graph_break_count == 0
