"""Loss landscapes and sharpness (landscape.py) on a tiny trained run dir: the grid's centre
is the loaded model's loss, directions are filter-normalised, orthogonal skips stay on O(n)
wherever the grid goes, the cache answers without a forward pass, and the Lanczos process
finds the top eigenvalue of a quadratic whose Hessian is known."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from orthogonal_skip_connections import landscape as L
from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.skips import iter_skips
from orthogonal_skip_connections.train.classifier import TrainConfig, train_classifier
from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier, load_run

SETTINGS = L.LandscapeSettings(steps=3, radius=0.5, steps_1d=3, n_eval=64, batch_size=32, hessian_iters=3,
                               hutchinson_samples=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A resnet20 with retracted orthogonal skips, trained 1 epoch on 128 digits images."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("run")
    spec = ClassifierSpec("digits", "resnet20", "learnable_orth", {"method": "steepest", "init": "haar"}, n_train=128)
    model, data = build_classifier(spec, seed=3)
    (path / "config.yaml").write_text(yaml.safe_dump({**spec.to_config(), "seed": 3}))
    train_classifier(model, data, TrainConfig(epochs=1, batch_size=64, progress=False, seed=3), path,
                     torch.device("cpu"))
    return path


class Counter:
    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(lambda *args: setattr(self, "n", self.n + 1))


def test_centre_is_the_loaded_models_loss_and_the_cache_skips_every_forward(run_dir, tmp_path):
    run = load_run(run_dir)
    assert run.variant == "learnable_orth/steepest/haar" and run.seed == 3
    # the initial weights are rebuilt from the seed: not the trained ones
    assert not torch.equal(run.model.fc.weight, run.init_model.fc.weight)
    cache = tmp_path / "cache"
    out = L.landscape_of(run.model, run.init_model, run.data, SETTINGS, run.checkpoint_sha256, run.seed, cache)
    assert not out["cached"] and out["loss"].shape == (3, 3) and out["checkpoint_sha256"] == run.checkpoint_sha256
    # an independent evaluation of the loaded model on the same subset, in one batch
    x, y = L.eval_subset(run.data, SETTINGS.n_eval, SETTINGS.eval_seed, "train")
    with torch.no_grad():
        fresh = load_run(run_dir).model.eval()
        loss = float(F.cross_entropy(fresh(x), y))
    assert out["loss"][1, 1] == out["centre_loss"]
    assert math.isclose(out["centre_loss"], loss, rel_tol=1e-5)
    assert np.isclose(out["loss_1d"][np.isclose(out["ts"], 1.0)][0], loss, rtol=1e-5)  # t = 1: the trained model
    # t = 0: the initial weights, measured (the default 41 points from -0.25 to 1.25 miss it; so do these 3)
    with torch.no_grad():
        init_loss = float(F.cross_entropy(load_run(run_dir).init_model.eval()(x), y))
    assert 0.0 not in np.linspace(SETTINGS.t_min, SETTINGS.t_max, SETTINGS.steps_1d)
    assert np.isclose(out["loss_1d"][np.isclose(out["ts"], 0.0)][0], init_loss, rtol=1e-5)
    assert out["loss"].max() > out["centre_loss"]  # the trained weights sit lower than the corners

    counter = Counter(run.model)
    again = L.landscape_of(run.model, run.init_model, run.data, SETTINGS, run.checkpoint_sha256, run.seed, cache)
    assert again["cached"] and counter.n == 0
    np.testing.assert_array_equal(again["loss"], out["loss"])
    assert again["top_eigenvalue"] == out["top_eigenvalue"]
    # another radius is another landscape: computed, not read
    other = L.LandscapeSettings(**{**SETTINGS.__dict__, "radius": 0.25})
    redo = L.landscape_of(run.model, run.init_model, run.data, other, run.checkpoint_sha256, run.seed, cache)
    assert not redo["cached"] and counter.n > 0



def test_the_cache_is_keyed_by_the_images_evaluated_on(run_dir, tmp_path):
    """The same weights on other images (the first 100 training images, not 128) are computed
    again, not read from the cache; the same images loaded afresh (augmentation off: the
    evaluation never augments) are read with no forward pass. An entry keyed as before the
    images were (version 3) is not read."""
    from orthogonal_skip_connections.data.vision import load_image_data
    from orthogonal_skip_connections.train.image import subset_train

    run = load_run(run_dir)
    cache = tmp_path / "cache"
    args = (SETTINGS, run.checkpoint_sha256, run.seed, cache)
    first = L.landscape_of(run.model, run.init_model, run.data, *args)
    assert not first["cached"]
    counter = Counter(run.model)
    same = subset_train(load_image_data("digits", augment=False), 128)
    assert L.landscape_of(run.model, run.init_model, same, *args)["cached"] and counter.n == 0
    fewer = L.landscape_of(run.model, run.init_model, subset_train(run.data, 100), *args)
    assert not fewer["cached"] and counter.n > 0 and fewer["centre_loss"] != first["centre_loss"]
    s = SETTINGS  # fewer's entry, its key rewritten as a version-3 one (no images in it)
    fewer_file = L.cache_file(cache, L._key(s, run.checkpoint_sha256, run.seed, L.eval_subset_sha256(
        subset_train(run.data, 100), s.n_eval, s.eval_seed, s.eval_split)))
    with np.load(fewer_file) as z:
        arrays = {k: z[k] for k in z.files}
    old = L._key(SETTINGS, run.checkpoint_sha256, run.seed, "")
    del old["eval_data_sha256"]
    arrays["key"] = np.array(json.dumps({**old, "version": 3}, sort_keys=True))
    np.savez(fewer_file, **arrays)
    n = counter.n
    assert not L.landscape_of(run.model, run.init_model, subset_train(run.data, 100), *args)["cached"]
    assert counter.n > n


def test_the_evaluated_images_hash_changes_with_the_images_only():
    """What the cache key holds of the data: the chosen images, their labels and their
    normalisation; so n_train counts for the train split only, and augmentation not at all."""
    import dataclasses

    from orthogonal_skip_connections.data.vision import load_image_data
    from orthogonal_skip_connections.train.image import subset_train

    data = load_image_data("digits")
    h = L.eval_subset_sha256(data, 64)
    assert L.eval_subset_sha256(load_image_data("digits", augment=False), 64) == h
    assert L.eval_subset_sha256(subset_train(data, 1000), 64) != h
    test = L.eval_subset_sha256(data, 64, split="test")
    assert test != h and L.eval_subset_sha256(subset_train(data, 1000), 64, split="test") == test
    assert L.eval_subset_sha256(data, 65) != h and L.eval_subset_sha256(data, 64, seed=1) != h
    for change in ({"x_train": data.x_train + 1}, {"y_train": (data.y_train + 1) % 10}, {"mean": (0.5,)},
                   {"std": (0.5,)}, {"scale": 15.0}):
        assert L.eval_subset_sha256(dataclasses.replace(data, **change), 64) != h, change


def test_the_app_recomputes_a_landscape_on_other_images(run_dir, tmp_path):
    """Through the app: copies of one run whose config.yaml differs only in data settings.
    data.augment and a digits data.root (the embedded images whatever the root) leave the
    evaluated images alone: read from the cache; n_train changes them: computed again. Each
    of the two keys keeps a cache file of its own: run again, all three are read."""
    import shutil

    from orthogonal_skip_connections.cli import main as osc

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    same, fewer = tmp_path / "same", tmp_path / "fewer"
    for path, changed in ((same, {"data": {**cfg["data"], "augment": False, "root": str(tmp_path / "r")}}),
                          (fewer, {"n_train": 100})):
        shutil.copytree(run_dir, path)
        (path / "config.yaml").write_text(yaml.safe_dump({**cfg, **changed}))
    args = [f"runs=[{run_dir},{same},{fewer}]", f"cache_dir={tmp_path / 'cache'}", "steps=3", "steps_1d=3",
            "n_eval=64", "hessian.iters=2", "hessian.samples=2", "device=cpu", "progress=false"]
    out = tmp_path / "out"
    assert osc(["loss_landscape", *args, f"hydra.run.dir={out}"]) == 0
    rows = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["cached"] for r in rows] == [False, True, False]
    assert rows[1]["centre_loss"] == rows[0]["centre_loss"] != rows[2]["centre_loss"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one per key, not one per weights
    assert osc(["loss_landscape", *args, f"hydra.run.dir={tmp_path / 'again'}"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["runs"]
    assert [r["cached"] for r in again] == [True, True, True]
    assert [r["centre_loss"] for r in again] == [r["centre_loss"] for r in rows]


def test_the_checkpoint_hash_is_of_the_weights_not_of_the_training_time(run_dir, tmp_path):
    """The same training run twice writes checkpoints that differ in the wall-clock training
    time they carry (for a resumed run's train_time_s): the hash that keys the landscape cache
    and that summary.json reports is the same for both, and another set of weights has another."""
    import shutil

    from orthogonal_skip_connections.train.classifier import load_checkpoint

    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    ckpt = load_checkpoint(again / "checkpoint.pt", torch.device("cpu"))
    ckpt["state"]["train_time_s"] += 1.0
    torch.save(ckpt, again / "checkpoint.pt")
    assert load_run(again).checkpoint_sha256 == load_run(run_dir).checkpoint_sha256
    ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"] + 1e-6
    torch.save(ckpt, again / "checkpoint.pt")
    assert load_run(again).checkpoint_sha256 != load_run(run_dir).checkpoint_sha256

def test_directions_are_filter_normalised(run_dir):
    model = load_run(run_dir).model
    d = L.random_direction(model, seed=1, k=0)
    roles = {c.name: c.role for c in L.coordinates(model)}
    assert {"filter", "flat", "retracted", "buffer"} <= set(roles.values())
    for c in L.coordinates(model):
        theta, dc = c.tensor.detach().double(), d[c.name].double()
        if c.role == "filter":  # every filter (slice along dim 0) as long as the weight's
            torch.testing.assert_close(dc.flatten(1).norm(dim=1), theta.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
            assert not torch.allclose(dc, theta)
        elif c.role == "retracted":  # tangent at W (W^T D skew) and as long as W
            torch.testing.assert_close((theta.T @ dc + dc.T @ theta).norm(), torch.zeros((), dtype=torch.float64),
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(dc.norm(), theta.norm(), rtol=1e-5, atol=0)
        else:  # biases, BatchNorm parameters and statistics
            assert torch.count_nonzero(dc) == 0, c.name
    # the same name gets the same draw in another model (zero and identity skips share every conv)
    other, _ = build_classifier(ClassifierSpec("digits", "resnet20", "identity", n_train=128), seed=3)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if ".skip." not in k})
    d_other = L.random_direction(other, seed=1, k=0)
    torch.testing.assert_close(d_other["stages.1.0.branch.0.weight"], d["stages.1.0.branch.0.weight"])


@pytest.mark.parametrize("method", ["steepest", "cayley", "householder"])
def test_orthogonal_skips_stay_orthogonal_across_the_grid(method):
    model, _ = build_classifier(ClassifierSpec("digits", "resnet20", "learnable_orth",
                                               {"method": method, "init": "haar"}), seed=0)
    base = L.snapshot(model)
    directions = [L.random_direction(model, 0, k) for k in (0, 1)]
    init, _ = build_classifier(ClassifierSpec("digits", "resnet20", "learnable_orth",
                                              {"method": method, "init": "identity"}), seed=1)
    moved = []
    for a, b in [(2.0, -2.0), (-0.7, 1.3)]:
        L.set_point(model, base, directions, [a, b])
        moved.append(model.stages[0][0].skip.weight.detach().clone())
        for _, s in iter_skips(model):
            assert float(orth.orth_error(s.weight.detach().double())) <= 1e-5
    L.set_interpolation(model, L.snapshot(init), base, 0.4)
    for _, s in iter_skips(model):
        assert float(orth.orth_error(s.weight.detach().double())) <= 1e-5
    assert not torch.allclose(moved[0], moved[1])  # the skips did move
    L.restore(model, base)
    assert all(torch.equal(c.tensor, base[c.name]) for c in L.coordinates(model))


def test_lanczos_and_hutchinson_on_a_known_quadratic():
    g = torch.Generator().manual_seed(0)
    eig = torch.tensor([7.0, 3.0, 2.5, 1.0, 0.5, 0.1, -0.5, -2.0], dtype=torch.float64)
    Q = orth.haar_orthogonal(8, generator=g, dtype=torch.float64)
    A = Q @ torch.diag(eig) @ Q.T  # f(theta) = 1/2 theta^T A theta + b^T theta: Hessian A everywhere
    b = torch.randn(8, generator=g, dtype=torch.float64)
    theta = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)  # any parameter shape
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # and a parameter it does not depend on

    def loss():
        t = theta.reshape(-1)
        return 0.5 * t @ A @ t + b @ t + 0.0 * bias.sum()

    hvp = L.make_hvp([loss], [theta, bias])
    top = L.lanczos(hvp, [theta, bias], iters=300, tol=1e-10)
    assert top["converged"] and math.isclose(top["eigenvalue"], 7.0, rel_tol=1e-10)
    # H has 9 distinct eigenvalues (A's and the bias's 0), so its Krylov spaces have dimension <= 9
    assert top["iterations"] == len(top["history"]) <= 9
    # ... and the Krylov space holds every direction H does not annihilate: deflated by it, the
    # trace is exact whatever the probes
    kept = L.lanczos(hvp, [theta, bias], iters=300, tol=0.0, keep_basis=True)
    exact = L.hutchinson_trace(hvp, [theta, bias], 3, 1, kept["basis"], kept["basis_trace"])
    assert math.isclose(exact["trace"], float(eig.sum()), rel_tol=1e-10) and exact["trace_se"] < 1e-10
    assert exact["trace_deflation"] == kept["iterations"] == len(kept["basis"])
    trace = L.hutchinson_trace(hvp, [theta, bias], samples=400)
    assert abs(trace["trace"] - float(eig.sum())) < 4 * trace["trace_se"]
    # a diagonal Hessian: every Rademacher probe gives the trace exactly
    diag = L.make_hvp([lambda: 0.5 * (eig * theta.reshape(-1) ** 2).sum()], [theta])
    exact = L.hutchinson_trace(diag, [theta], samples=3)
    assert math.isclose(exact["trace"], float(eig.sum()), rel_tol=1e-12) and exact["trace_se"] < 1e-12


def test_grid_axis_has_the_centre_exactly():
    assert L.grid_axis(5, 2.0).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="odd"):
        L.grid_axis(4, 1.0)


def test_app_refuses_a_run_dir_without_checkpoint_in_one_line(tmp_path, capsys):
    from orthogonal_skip_connections.cli import main as osc

    (tmp_path / "half").mkdir()
    out = tmp_path / "out"
    assert osc(["loss_landscape", f"runs=[{tmp_path / 'half'}]", f"hydra.run.dir={out}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a trained classifier run dir" in err[0] and not (out / "summary.json").exists()
    assert osc(["loss_landscape", "steps=4", f"hydra.run.dir={out}"]) == 2
    assert "steps must be an odd integer" in capsys.readouterr().err


def test_sharpness_verdict_shows_no_nan_interval_for_one_seed():
    from orthogonal_skip_connections.experiments.loss_landscape import verdict

    nan = float("nan")
    one = [{"variant": v, "top_eigenvalue": lam, "top_eigenvalue_lo": nan, "top_eigenvalue_hi": nan, "trace": 2 * lam}
           for v, lam in (("identity", 537.0), ("zero", 898.0))]
    text = verdict(one, 1)
    assert "nan" not in text and "identity (537) < zero (898)" in text and "cannot tell" in text
    two = [dict(t, top_eigenvalue_lo=t["top_eigenvalue"] / 2, top_eigenvalue_hi=t["top_eigenvalue"] * 2) for t in one]
    # three significant digits, written plainly: 1070 beside 898, not 1.07e+03
    assert "identity (537 [268, 1070]) < zero (898 [449, 1800])" in verdict(two, 3)
    assert "Hessian traces: identity 1070, zero 1800." in verdict(two, 3) and "Lanczos" not in verdict(two, 3)
    # a Lanczos run stopped at its iteration limit gives a lower bound: the verdict says so
    # the report's "In short" line is the verdict's first clause: an order the intervals do not establish is not it
    from pathlib import Path

    from orthogonal_skip_connections.report import _in_short

    for tab, n in ((one, 1), (two, 3)):
        line = _in_short({}, {}, {Path("loss_landscape"): {"report": {"verdict": verdict(tab, n)}},
                                  Path("other"): {"report": {"verdict": "x"}}})[2]
        assert "cannot tell which variant is flattest" in line and "<" not in line, line
    # a clause inside brackets is part of the answer's: construction_validity's verdict was cut at its "; "
    cv = ("no kind ends detectably closer to orthogonal maps than the others (learnable_orth lowest; its difference "
          "from identity's has a 95% interval that holds 0); identity: further from orthogonal")
    assert _in_short({}, {}, {Path("construction_validity"): {"report": {"verdict": cv}},
                              Path("other"): {"report": {"verdict": "x. y"}}})[2:4] == [
        f"- **construction_validity**: {cv.split('; identity')[0]}.", "- **other**: x."]
    apart = [dict(t, top_eigenvalue_lo=t["top_eigenvalue"] * 0.9, top_eigenvalue_hi=t["top_eigenvalue"] * 1.1)
             for t in one]
    assert verdict(apart, 3).startswith("Top Hessian eigenvalue at the trained weights (geometric mean over seeds, "
                                        "95% interval), flattest to sharpest: identity (537 [483, 591]) < zero (898 "
                                        "[808, 988]); the 95% intervals over seeds of identity and zero do not overlap")
    short = [dict(t, converged="3/3" if t["variant"] == "identity" else "1/3") for t in two]
    assert verdict(short, 3).endswith("Lanczos did not converge in every run of zero (1/3 converged): their values "
                                      "are lower bounds, which may change the order.")


def test_a_non_finite_top_eigenvalue_is_named_not_ranked():
    """A diverged run's top eigenvalue is NaN (or inf): NaN compares false with everything, so
    the verdict read it as "<= 0", inf was ranked as a number, and the 2-D panel's run hung on
    the order of the seeds. It reads as not finite, outside any comparison."""
    from orthogonal_skip_connections.experiments.loss_landscape import representative, variant_rows, verdict

    def rows(variant, *lams):
        return [{"variant": variant, "seed": s, "test_acc": 50.0, "centre_loss": 1.0, "edge_loss_mean": 2.0,
                 "top_eigenvalue": lam, "trace": 10 * lam, "lanczos_converged": True, "interpolation_monotone": True}
                for s, lam in enumerate(lams)]

    for bad in (float("nan"), float("inf")):
        table = variant_rows(rows("identity", 500.0, 600.0) + rows("zero", bad, 800.0))
        zero = table[1]
        assert zero["top_eigenvalue_not_finite"] == 1 and table[0]["top_eigenvalue_not_finite"] == 0
        assert all(math.isnan(zero[k]) for k in ("top_eigenvalue", "top_eigenvalue_lo", "top_eigenvalue_hi"))
        assert verdict(table, 2) == ("a top Hessian eigenvalue is not finite (NaN or infinite) in 1 of 2 runs of "
                                     "zero, so the variants cannot be ranked by sharpness: see the per-run table.")
        assert verdict(table[1:], 2) == ("one variant (zero): top Hessian eigenvalue not finite (NaN or infinite) in "
                                         "1 of 2 runs, trace undefined (a run's value is <= 0 or not finite); "
                                         "nothing to compare it with.")
        for runs in (rows("zero", bad, 800.0), rows("zero", 800.0, bad), rows("zero", bad, 700.0, 800.0, 900.0)):
            chosen, g = representative(runs)
            assert math.isnan(g) and chosen["top_eigenvalue"] == 800.0, runs
        chosen, g = representative(rows("zero", bad, bad))
        assert math.isnan(g) and chosen["seed"] == 0
    # an eigenvalue <= 0 keeps its own reason
    table = variant_rows(rows("identity", 500.0, 600.0) + rows("zero", -3.0, 800.0))
    assert table[1]["top_eigenvalue_not_finite"] == 0 and "is <= 0" in verdict(table, 2)
    assert "top Hessian eigenvalue undefined (a run's value is <= 0)" in verdict(table[1:], 2)


def _landscape_result(seed: int, loss_1d, loss_2d=None, variant: str = "zero") -> dict:
    """What landscape_of returns for one run (and the app adds), with the given 1-D and 2-D losses."""
    loss_2d = np.full((3, 3), 2.0) if loss_2d is None else np.asarray(loss_2d, dtype=float)
    return {"variant": variant, "seed": seed, "run_dir": f"r{seed}", "test_acc": 90.0, "centre_loss": 1.0,
            "centre_acc": 90.0, "alphas": np.linspace(-1, 1, 3), "betas": np.linspace(-1, 1, 3), "loss": loss_2d,
            "top_eigenvalue": 10.0 + seed, "lanczos_iterations": 3, "lanczos_converged": True,
            "lanczos_residual": 0.0, "trace": 100.0, "trace_se": 1.0, "ts": np.linspace(0.0, 1.0, 5),
            "loss_1d": np.asarray(loss_1d, dtype=float), "checkpoint_sha256": "abc", "cached": False,
            "skip_handling": ""}


def test_a_non_finite_interpolation_path_is_not_counted_as_rising():
    """A NaN (or inf) loss on the 1-D path from init compared false in np.diff(...) <= tol, so
    the run counted silently as "not monotone": its answer is unknown (None), and the
    variant's count leaves it out and names it."""
    from orthogonal_skip_connections.experiments import loss_landscape as app

    run_row, variant_rows = app.run_row, app.variant_rows
    down, up = [3.0, 2.0, 1.5, 1.0, 0.5], [3.0, 2.0, 2.5, 1.0, 0.5]
    for bad in (float("nan"), float("inf")):
        rows = [run_row(_landscape_result(0, down)), run_row(_landscape_result(1, [3.0, bad, 1.5, 1.0, 0.5])),
                run_row(_landscape_result(2, up))]
        assert [r["interpolation_monotone"] for r in rows] == [True, None, False]
        assert variant_rows(rows)[0]["interpolation_monotone"] == "1/2 (1 run's path not finite)"
        assert variant_rows(rows[1:2])[0]["interpolation_monotone"] == "– (1 run's path not finite)"
    assert variant_rows(rows[::2])[0]["interpolation_monotone"] == "1/2"


def test_the_2d_colour_scale_spans_the_finite_losses_whatever_the_order(tmp_path, monkeypatch):
    """A grid with a NaN loss (a diverged point) made Python's min/max over the grids' .min()
    and .max() NaN or dependent on the variants' order: the colour scale (read on the 3-D
    axes' log10 z-limits) spans the finite losses, the same in either order."""
    from orthogonal_skip_connections.experiments import loss_landscape as app

    figures = []
    monkeypatch.setattr("orthogonal_skip_connections.plots.savefig",
                        lambda fig, path: figures.append(fig) or path)
    nan_grid = np.array([[0.5, 2.0, 3.0], [1.0, np.nan, 2.0], [4.0, np.inf, 2.0]])
    fine_grid = np.array([[0.2, 1.0, 1.0], [1.0, 0.3, 1.0], [1.0, 1.0, 8.0]])
    a = _landscape_result(0, [1.0] * 5, nan_grid, variant="identity")
    b = _landscape_result(0, [1.0] * 5, fine_grid, variant="zero")
    limits = []
    for results in ([a, b], [b, a]):
        app.draw_2d(results, tmp_path / "landscape_2d.png")
        fig = figures.pop()
        limits.append([ax.get_zlim() for ax in fig.axes if ax.name == "3d"])
    for zlims in limits:
        assert len(zlims) == 2
        for lim in zlims:
            assert lim == pytest.approx((np.log10(0.2), np.log10(8.0)))
    # each face of the 3-D surface is coloured by the geometric mean of its four corners, not by one corner
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    app.draw_2d([b], tmp_path / "faces.png")
    (surface,) = [c for ax in figures.pop().axes if ax.name == "3d" for c in ax.collections]
    cmap, norm = plt.get_cmap("viridis"), LogNorm(0.2, 8.0)
    first = (0.2 * 1.0 * 1.0 * 0.3) ** 0.25  # fine_grid's top-left face: corners 0.2, 1.0, 1.0, 0.3
    colours = surface.get_facecolor()
    assert len(colours) == 4 and any(np.allclose(c, cmap(norm(first))) for c in colours)
    assert not any(np.allclose(c, cmap(norm(0.2))) for c in colours)
    blank = _landscape_result(0, [1.0] * 5, np.full((3, 3), np.nan))  # no finite loss: drawn blank, not an error
    app.draw_2d([blank], tmp_path / "blank.png")
    # a Lanczos run stopped at its iteration limit gives a lower bound: its panel says so
    short = {**b, "lanczos_converged": False}
    app.draw_2d([short], tmp_path / "short.png")
    titles = [ax.get_title() for ax in figures.pop().axes]
    assert any("$\\lambda_{max}$ $\\geq$ 10" in t for t in titles), titles
    assert all(np.isfinite(ax.get_zlim()).all() for ax in figures.pop().axes if ax.name == "3d")


def test_the_1d_path_of_a_variant_stays_drawn_where_one_seed_is_not_finite(tmp_path, monkeypatch):
    """A seed whose loss is NaN or inf at some t made the variant's mean (and band) NaN there:
    its line had a gap wherever any seed diverged. The mean and band are over the seeds that
    are finite at each t (accuracy too), and the legend says how many seeds were not."""
    from orthogonal_skip_connections.experiments import loss_landscape as app

    figures = []
    monkeypatch.setattr("orthogonal_skip_connections.plots.savefig",
                        lambda fig, path: figures.append(fig) or path)
    good = [3.0, 2.0, 1.5, 1.0, 0.5]
    rs = [_landscape_result(0, good), _landscape_result(1, [4.0, np.nan, np.inf, 2.0, 1.5])]
    for r, acc in zip(rs, ([10.0, 20.0, 30.0, 40.0, 50.0], [30.0, 0.0, 0.0, 60.0, 70.0])):
        r["acc_1d"] = np.asarray(acc)
    app.draw_1d(rs, tmp_path / "landscape_1d.png")
    loss_ax, acc_ax = figures.pop().axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [3.5, 2.0, 1.5, 1.5, 1.0])
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [20.0, 20.0, 30.0, 50.0, 60.0])
    assert loss_ax.lines[0].get_label() == "zero (2 seeds; 1 with a loss not finite on the path)"
    (poly,) = loss_ax.collections
    assert np.isfinite(poly.get_paths()[0].vertices).all()  # the band is drawn at every t
    app.draw_1d(rs[:1], tmp_path / "one.png")  # all finite: the legend as before
    assert figures.pop().axes[0].lines[0].get_label() == "zero (1 seed)"


def mixed_resnet(seed: int = 0):
    """One BasicBlock per stage (BatchNorm everywhere): retracted steepest skips, a
    parametrized Cayley skip in the middle stage; BatchNorm statistics moved off 0 / 1."""
    from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet
    from orthogonal_skip_connections.skips import skip

    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [1, 1, 1], [16, 32, 64], 10, in_channels=1,
                   skip_layer=skip("learnable_orth", method="steepest", init="haar"))
    model.stages[1][0].skip = skip("learnable_orth", method="cayley", init="haar")(32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def oracle_point(model, values: dict, retract, x, y) -> tuple[float, float]:
    """The oracle: every coordinate written by hand from ``values``, each skip named in
    ``retract`` by its own polar factor, the model evaluated in NCHW on all of x at once."""
    with torch.no_grad():
        for c in L.coordinates(model):
            v = values[c.name]
            c.tensor.copy_(orth.polar(v.double()).float() if c.name in retract else v)
        logits = model(x)
    return float(F.cross_entropy(logits, y)), 100.0 * float((logits.argmax(1) == y).float().mean())


def test_fast_grid_and_path_give_the_point_by_point_numbers_and_restore_the_weights():
    """landscape_2d / interpolation_1d in channels_last, in batches (the coordinates listed
    once, only moving ones rewritten, polar factors batched) against the oracle point by
    point; the model's weights afterwards bit for bit the ones before."""
    model = mixed_resnet()
    coords = L.coordinates(model)
    assert {"retracted", "parametrized", "filter", "flat", "buffer"} <= {c.role for c in coords}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    d0, d1 = directions = [L.random_direction(model, 5, k) for k in (0, 1)]
    axis = L.grid_axis(3, 1.0)
    ts = [-0.25, 0.0, 0.4, 1.0, 1.25]
    start = L.snapshot(mixed_resnet(seed=1))  # the 1-D path's initial weights
    base = L.snapshot(model)
    retracted = {c.name for c in coords if c.role == "retracted"}
    oracle = copy.deepcopy(model)

    def grid_values(a, b):
        return {c.name: base[c.name] if c.role == "buffer" else base[c.name] + (a * d0[c.name] + b * d1[c.name])
                for c in coords}

    def path_values(t):
        if t in (0, 1):
            return start if t == 0 else base
        return {c.name: start[c.name].clamp_min(1e-30) ** (1 - t) * base[c.name].clamp_min(1e-30) ** t
                if c.name.endswith("running_var") else (1 - t) * start[c.name] + t * base[c.name] for c in coords}

    ref = np.array([[oracle_point(oracle, grid_values(a, b), retracted if (a, b) != (0, 0) else (), x, y)
                     for b in axis] for a in axis])
    ref_1d = np.array([oracle_point(oracle, path_values(t), retracted if t not in (0, 1) else (), x, y) for t in ts])

    fast, fast_x = L.channels_last(model, x)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.ndim == 4)
    loss, acc = L.landscape_2d(fast, fast_x, y, directions, axis, axis, batch_size=16)
    assert np.ptp(loss) > 0.1  # the grid moved the model
    np.testing.assert_allclose(loss, ref[..., 0], rtol=1e-5, atol=0)
    assert np.abs(acc - ref[..., 1]).max() <= 100 / len(y) + 1e-9  # at most one argmax flipped by round-off
    loss_1d, acc_1d = L.interpolation_1d(fast, start, fast_x, y, ts, batch_size=16)
    np.testing.assert_allclose(loss_1d, ref_1d[:, 0], rtol=1e-5, atol=0)
    assert np.abs(acc_1d - ref_1d[:, 1]).max() <= 100 / len(y) + 1e-9
    for c in L.coordinates(fast):  # restored bit for bit
        assert torch.equal(c.tensor, base[c.name]), c.name


# torch's jvp rule for nll_loss_backward is registered through torch.jit.script (deprecated: a
# FutureWarning in torch 2.14, a DeprecationWarning in 2.11)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_hvp_reusing_the_gradient_graph_matches_rebuilding_it_and_a_finite_difference():
    """make_hvp with one part builds g and its graph once and reuses it; the products equal
    those of the graph rebuilt per call (the old path; several parts too), forward-over-reverse
    AD (torch.func.jvp of torch.func.grad) and a central finite difference of the gradient,
    all in float64 (eps small enough that no ReLU input changes sign), and H v stays linear
    in v across reuses. The parameters and their .grad are left untouched."""
    from torch.func import functional_call, grad, jvp

    model = mixed_resnet().double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (24,), generator=g)
    params = L.hessian_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    before = [p.detach().clone() for p in params]

    def parts(k):
        return [lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb, reduction="sum") / len(y)
                for xb, yb in zip(x.split(len(y) // k), y.split(len(y) // k))]

    reused, rebuilt, split = L.make_hvp(parts(1), params), L.make_hvp(parts(1), params, reuse_graph=False), \
        L.make_hvp(parts(3), params)
    vs = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params] for _ in range(2)]

    def loss_at(values):  # a functional call: the model's own tensors untouched
        return F.cross_entropy(functional_call(model, {names[id(p)]: t for p, t in zip(params, values)}, (x,)), y)

    theta = tuple(p.detach() for p in params)
    eps = 1e-7
    for v in vs:
        hv = reused(v)
        scale = max(float(t.abs().max()) for t in hv)
        assert scale > 1e-3  # a Hessian that is not 0
        forward_over_reverse = jvp(grad(loss_at), (theta,), (tuple(v),))[1]
        plus, minus = (grad(loss_at)(tuple(t + s * eps * d for t, d in zip(theta, v))) for s in (1, -1))
        fd = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
        for other, tol in ((rebuilt(v), 1e-12), (split(v), 1e-12), (forward_over_reverse, 1e-12), (fd, 1e-6)):
            for a, b in zip(hv, other):
                torch.testing.assert_close(a, b, rtol=0, atol=tol * scale)
    # the graph is reused, not consumed: a third product is still linear in v
    both = reused([a + 2 * b for a, b in zip(*vs)])
    for h, a, b in zip(both, reused(vs[0]), reused(vs[1])):
        torch.testing.assert_close(h, a + 2 * b, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(params, before))


def test_sharpness_with_one_part_gives_the_rebuilt_graphs_numbers():
    """sharpness() with one part (the graph reused) against several parts (rebuilt per
    product, the old path), same seed, the same number of Lanczos steps: top eigenvalue,
    its history and the Hutchinson trace agree to float32 round-off; the model is left in
    its mode, its weights and .grad untouched."""
    model = mixed_resnet().train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    model, x = L.channels_last(model, x)
    before = L.snapshot(model)
    one = L.sharpness(model, x, y, batch_size=32, iters=6, tol=0.0, samples=3, seed=4)
    four = L.sharpness(model, x, y, batch_size=8, iters=6, tol=0.0, samples=3, seed=4)
    assert one["lanczos_iterations"] == four["lanczos_iterations"] == 6
    np.testing.assert_allclose(one["lanczos_history"], four["lanczos_history"], rtol=1e-5)
    assert math.isclose(one["trace"], four["trace"], rel_tol=1e-5) and one["trace"] != 0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(c.tensor, before[c.name]) for c in L.coordinates(model))


def _symmetric(eigenvalues, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = orth.haar_orthogonal(len(eigenvalues), generator=g, dtype=torch.float64)
    return Q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ Q.T


def test_lanczos_finds_the_largest_eigenvalue_not_the_largest_in_magnitude():
    """Sharpness is lambda_max: a more negative eigenvalue (-12, which power iteration would
    find) does not replace the largest (10), and a close second (9.9, 9.8: power iteration's
    rate 0.99) does not stall it. Checked against numpy's eigvalsh."""
    eig = np.concatenate([[10.0, 9.9, 9.8, -12.0], np.linspace(-3, 3, 196)])
    A = _symmetric(eig, seed=1)
    x = torch.zeros(200, dtype=torch.float64)
    top = L.lanczos(lambda v: [A @ v[0]], [x], iters=80, tol=1e-9, seed=3)
    assert top["converged"] and top["iterations"] < 80
    np.testing.assert_allclose(top["eigenvalue"], np.linalg.eigvalsh(A.numpy())[-1], rtol=1e-9)
    longer = L.lanczos(lambda v: [A @ v[0]], [x], iters=80, tol=1e-9, seed=3, min_iters=top["iterations"] + 5)
    assert longer["iterations"] == top["iterations"] + 5 and longer["converged"]


def test_trace_deflated_by_krylov_vectors_is_unbiased_and_tighter():
    """A Hessian with a few dominant eigenvalues (as trained nets have): over the same 200
    probes, the deflated estimate's interval holds the true trace and is several times tighter
    than plain Hutchinson's, which the dominant directions make noisy."""
    rng = np.random.default_rng(0)
    eig = np.concatenate([[100.0, 60.0, 40.0, 25.0, 15.0], rng.normal(size=195)])
    A = _symmetric(eig, seed=4)
    x = torch.zeros(200, dtype=torch.float64)
    hvp = lambda v: [A @ v[0]]  # noqa: E731
    krylov = L.lanczos(hvp, [x], iters=10, tol=0.0, keep_basis=True, seed=5)
    plain = L.hutchinson_trace(hvp, [x], 200, seed=6)
    deflated = L.hutchinson_trace(hvp, [x], 200, 6, krylov["basis"], krylov["basis_trace"])
    for est in (plain, deflated):
        assert abs(est["trace"] - eig.sum()) < 4 * est["trace_se"]
    assert deflated["trace_se"] < plain["trace_se"] / 4 and deflated["trace_deflation"] == 10


@pytest.mark.parametrize("steps", [2, 5, 12])
def test_lanczos_error_bound_holds_before_convergence(steps):
    """Stopped early (tol 0), theta is still a lower bound of lambda_max (interlacing) and an
    eigenvalue of H lies within the reported residual bound of it, in float32 vectors too."""
    eig = np.random.default_rng(steps).normal(size=150) * np.r_[10.0, np.ones(149)]
    A = _symmetric(eig, seed=steps)
    lam = np.linalg.eigvalsh(A.numpy())
    for dtype in (torch.float64, torch.float32):
        x = torch.zeros(150, dtype=dtype)
        top = L.lanczos(lambda v: [(A.to(dtype) @ v[0])], [x], iters=steps, tol=0.0)
        theta, bound = top["eigenvalue"], top["residual"] * abs(top["eigenvalue"])
        slack = 1e-10 if dtype == torch.float64 else 1e-4 * abs(lam).max()
        assert top["iterations"] == steps and not top["converged"]
        assert theta <= lam[-1] + slack
        assert np.abs(lam - theta).min() <= bound + slack
        assert np.all(np.diff(top["history"]) >= -slack)  # Ritz values rise towards lambda_max


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_batchnorm_as_affine_is_the_same_function_with_the_same_hessian():
    """Inside batchnorm_as_affine, eval-mode BatchNorm (2-D and 1-D, with and without its
    own weight and bias) gives BatchNorm's outputs and the same Hessian-vector products
    (float64, against the native module); a training-mode BatchNorm is left alone and every
    module has its own forward back afterwards."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.BatchNorm2d(4, affine=False),
        torch.nn.Flatten(), torch.nn.Linear(4 * 36, 5), torch.nn.BatchNorm1d(5)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def hv():
        part = [lambda: (model(x) ** 2).sum()]  # a loss with curvature in every parameter
        return L.make_hvp(part, params)(v)

    ref_out, ref_hv = model(x), hv()
    with L.batchnorm_as_affine(model):
        assert all("forward" in m.__dict__ for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        torch.testing.assert_close(model(x), ref_out, rtol=1e-12, atol=1e-12)
        assert model[:2](x_cl).is_contiguous(memory_format=torch.channels_last)
        for a, b in zip(hv(), ref_hv):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert not any("forward" in m.__dict__ for m in model.modules())
    model[1].train()
    with L.batchnorm_as_affine(model):
        assert "forward" not in model[1].__dict__ and "forward" in model[3].__dict__


def test_a_run_measures_how_far_its_skips_moved(run_dir):
    """metrics.jsonl's ||W - W_0||_F per skip is the distance between the trained skips and
    W_0 rebuilt from the seed (load_run's init_model): the run kept its true start. From a
    Haar start it is not ||W - I||_F, and summary.json has its mean."""
    import json

    from orthogonal_skip_connections.diagnostics import skip_weights

    run = load_run(run_dir)
    end, start = skip_weights(run.model), skip_weights(run.init_model)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    for row in evals[-1]["skips"]:
        moved = float(torch.linalg.norm(end[row["name"]] - start[row["name"]]))
        assert moved > 0 and row["start_distance"] == pytest.approx(moved, rel=1e-9)
        assert abs(row["start_distance"] - row["identity_distance"]) > 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skip_start_distance_mean"] == pytest.approx(np.mean([r["start_distance"] for r in evals[-1]["skips"]]))


def test_the_2d_panel_of_a_variant_is_its_seed_nearest_the_geometric_mean():
    from orthogonal_skip_connections.experiments.loss_landscape import figure_captions, representative

    def runs(*lams, variant="v"):
        return [{"variant": variant, "seed": s, "top_eigenvalue": lam} for s, lam in enumerate(lams)]

    # geometric mean 14.8: seed 1 (8) on a log scale, where the arithmetic mean (42) would pick seed 2 (60)
    chosen, g = representative(runs(1.0, 8.0, 60.0, 100.0))
    assert chosen["seed"] == 1 and g == pytest.approx((1 * 8 * 60 * 100) ** 0.25)
    # two seeds are equally near on a log scale: the nearer on a linear scale, not the first seed
    assert representative(runs(181.0, 66.8))[0]["seed"] == 1
    assert representative(runs(50.0, 50.0))[0]["seed"] == 0
    # the audit's case: seed 0 alone ranked learnable_orth (181) sharper than zero (176), against the verdict
    lo = representative(runs(181.0, 66.8))
    ze = representative(runs(176.2, 160.2))
    assert (lo[1] < ze[1]) == (lo[0]["top_eigenvalue"] < ze[0]["top_eigenvalue"])
    # an eigenvalue <= 0: no geometric mean; the median run
    chosen, g = representative(runs(-3.0, 40.0, 7.0))
    assert math.isnan(g) and chosen["seed"] == 2
    captions = figure_captions(runs(181.0, 66.8, variant="learnable_orth") + runs(176.2, 160.2, variant="zero"))
    assert "learnable_orth seed 1, zero seed 1" in captions["landscape_2d.png"]
    assert "lowest to the highest seed" in captions["landscape_1d.png"]


def test_parametrized_skip_directions_live_on_the_strict_lower_triangle():
    """A parametrized skip (cayley here) is moved through its unconstrained X, of which torch's
    map reads only the strictly lower triangle: the direction is 0 on and above the diagonal
    (else part of its norm would be spent where it moves nothing)."""
    model = mixed_resnet()
    d = L.random_direction(model, seed=2, k=1)
    params = [c for c in L.coordinates(model) if c.role == "parametrized"]
    assert len(params) == 1
    for c in params:
        dc, n = d[c.name].double(), c.tensor.shape[-1]
        assert torch.count_nonzero(dc.triu()) == 0 and torch.count_nonzero(dc.tril(-1)) == n * (n - 1) // 2


@pytest.mark.parametrize("method", ["steepest", "cayley", "exp", "householder"])
@pytest.mark.parametrize("init", ["identity", "haar"])
def test_a_skips_direction_steps_its_matrix_by_its_norm_whatever_the_method(method, init):
    """The same grid coordinate moves every skip's W by the same amount: ||dW||_F = ||W||_F =
    sqrt(n) to first order (a finite difference), retracted or parametrized. A parametrized
    skip's D was scaled to ||D||_F = ||W||_F in X, which moved W sqrt(2) times as far for cayley
    and exp (A = D - D^T) and 2 sqrt(2) for householder: panels cut on one colour scale."""
    model, _ = build_classifier(ClassifierSpec("digits", "resnet20", "learnable_orth",
                                               {"method": method, "init": init}), seed=0)
    model.double()
    base, h = L.snapshot(model), 1e-5
    d = L.random_direction(model, seed=3, k=0)
    W0 = [s.weight.detach().clone() for _, s in iter_skips(model)]
    L.set_point(model, base, [d], [h])
    for w0, (_, s) in zip(W0, iter_skips(model)):
        n = w0.shape[-1]
        assert math.isclose(float((s.weight.detach() - w0).norm()) / h, math.sqrt(n), rel_tol=1e-3), (method, n)
    L.restore(model, base)


def test_hessian_parameters_are_every_trainable_parameter_but_the_skips():
    """Sharpness is compared across skip kinds over the coordinates they share: every trainable
    parameter of the model except the skips' (retracted and parametrized alike)."""
    model = mixed_resnet()
    model.fc.bias.requires_grad_(False)
    want = {name for name, p in model.named_parameters() if p.requires_grad and ".skip." not in name}
    assert any(".skip." in name for name, _ in model.named_parameters())
    names = {id(p): name for name, p in model.named_parameters()}
    got = [names[id(p)] for p in L.hessian_parameters(model)]
    assert len(got) == len(set(got)) and set(got) == want


def test_eval_subset_is_normalised_as_the_evaluation_loader_does():
    """The landscape's subset is the images the trained model saw, normalised alike: the whole
    test split equals the (unaugmented) evaluation loader's batches, in order."""
    from orthogonal_skip_connections.data.vision import TensorLoader, load_image_data

    data = load_image_data("digits")
    x, y = L.eval_subset(data, len(data.x_test), seed=4, split="test")
    batches = list(TensorLoader(data, 100, train=False, device=torch.device("cpu")).epoch())
    torch.testing.assert_close(x, torch.cat([b[0] for b in batches]), rtol=0, atol=1e-6)
    assert torch.equal(y, torch.cat([b[1] for b in batches]))


def test_directions_are_independent_across_k_and_across_tensors():
    """The plane's two directions are two draws, not one (else the 2-D grid is a line), and two
    tensors of the same shape get their own draws (else every layer is cut along the same
    pattern): every pair of them is nearly orthogonal, as independent Gaussians in >= 256
    dimensions are."""
    model = mixed_resnet()
    d0, d1 = (L.random_direction(model, seed=0, k=k) for k in (0, 1))
    moved = [c for c in L.coordinates(model) if c.role in ("filter", "retracted", "parametrized")]

    def cos(a, b):
        a, b = a.double().flatten(), b.double().flatten()
        return float(a @ b / (a.norm() * b.norm()))

    for c in moved:
        assert abs(cos(d0[c.name], d1[c.name])) < 0.3, c.name
    same_shape = [(a, b) for i, a in enumerate(moved) for b in moved[i + 1:] if a.tensor.shape == b.tensor.shape]
    assert same_shape  # the first stage's two convolutions
    for a, b in same_shape:
        assert abs(cos(d0[a.name], d0[b.name])) < 0.3, (a.name, b.name)


def test_the_cache_key_holds_every_setting_but_the_batch_size():
    """A cached landscape is reused only for the same numbers: any setting but batch_size
    (which changes round-off only), the checkpoint, the init seed or the evaluated images
    changes the key."""
    base = L.LandscapeSettings()
    key = L._key(base, "abc", 0, "img")
    assert L._key(L.LandscapeSettings(batch_size=64), "abc", 0, "img") == key
    assert L._key(base, "abd", 0, "img") != key and L._key(base, "abc", 1, "img") != key
    assert L._key(base, "abc", 0, "other images") != key
    for name, value in base.__dict__.items():
        if name != "batch_size":
            other = {"eval_split": "test"}.get(name, value + 1 if not isinstance(value, str) else value)
            assert L._key(L.LandscapeSettings(**{**base.__dict__, name: other}), "abc", 0, "img") != key, name


def test_a_default_run_another_job_is_training_is_waited_for_then_used(tmp_path, capsys):
    """The default runs are shared by every landscape job (a sweep's, a study's): a job that
    finds one missing while another job trains it (holds the dir's flock) waits, then uses it,
    rather than training into the same files at once."""
    import fcntl
    import os
    import threading
    import time

    from orthogonal_skip_connections.experiments import loss_landscape
    from orthogonal_skip_connections.runs import write_json

    cfg = loss_landscape.main.config(["train.dataset=digits", "train.epochs=1", "progress=false"])
    path = tmp_path / "runs" / "identity_seed0"
    path.mkdir(parents=True)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another job's (flock is per open file: this process counts as another)
    spec = ClassifierSpec("digits", "resnet20", "identity", {}, n_train=64)
    job = threading.Thread(target=loss_landscape.train_run, args=(cfg, path, spec, 0, torch.device("cpu")))
    job.start()
    try:
        time.sleep(1.0)
        assert job.is_alive() and not (path / "config.yaml").exists()  # waiting, nothing written
        write_json(path / "summary.json", {"status": "completed"})  # the other job finishes
    finally:
        os.close(fd)
    job.join(60)
    assert not job.is_alive()
    assert not (path / "checkpoint.pt").exists() and not (path / "config.yaml").exists()  # used, not retrained
    assert f"waiting for {path}" in capsys.readouterr().err
