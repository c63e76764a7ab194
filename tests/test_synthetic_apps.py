"""The small-model trainer (seeds stacked) and the three synthetic-data apps:
orth_residual_synthetic_data, orth_to_id, construction_validity."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.cli import APPS
from orthogonal_skip_connections.data.synthetic import make_synthetic
from orthogonal_skip_connections.diagnostics import branch_lipschitz, linear_fit_residual
from orthogonal_skip_connections.experiments import construction_validity, orth_residual_synthetic_data, orth_to_id
from orthogonal_skip_connections.models.mlp import ResidualMLP
from orthogonal_skip_connections.experiments._app import CONFIG_DIR
from orthogonal_skip_connections.runs import UserError
from orthogonal_skip_connections.models.stack import SeedStack
from orthogonal_skip_connections.optim import build_optimizer
from orthogonal_skip_connections.diagnostics import (
    branch_lipschitz_bounds,
    branch_lipschitz_empirical,
    skip_matrices,
)
from orthogonal_skip_connections.train.small import train_small_classifier
from orthogonal_skip_connections.train.classifier import TrainConfig
from orthogonal_skip_connections.train.divergence import Diverged

PKG = "orthogonal_skip_connections.experiments"


def config(name, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=["progress=false", *overrides])


@pytest.fixture(scope="module")
def moons():
    return make_synthetic("moons", n_samples=400, seed=0)


def tcfg(**kw):
    base = dict(epochs=4, batch_size=50, optimizer="adamw", lr=0.02, weight_decay=1e-4, warmup_epochs=0.0, progress=False)
    return TrainConfig(**{**base, **kw})


def mlp(kind="learnable_orth", dim=2, depth=2, classes=2, **options):
    return lambda: ResidualMLP(dim, depth, hidden_mult=4, skip_kind=kind, num_classes=classes, **options)


# --------------------------------------------------------------------------- the trainer


def test_stacked_seeds_follow_their_single_runs(moons):
    """Seed s of a stacked run = the run of seed s alone: same init, same batches, same
    optimiser and retracted-skip steps (up to float round-off of batched matmuls)."""
    make = mlp(init="haar", method="steepest")
    cfg = tcfg(grad_clip=1.0, weight_decay=1e-3)
    stack = SeedStack.build(make, [3, 5, 7])
    many = train_small_classifier(stack, moons.X_train, moons.y_train, cfg, moons.X_test, moons.y_test)
    for s, seed in ((0, 3), (2, 7)):
        alone = SeedStack.build(make, [seed])
        one = train_small_classifier(alone, moons.X_train, moons.y_train, cfg, moons.X_test, moons.y_test)
        a, b = stack.runner.state_dict(), alone.runner.state_dict()
        for key in a:
            torch.testing.assert_close(a[key][s], b[key][0], rtol=1e-5, atol=1e-6, msg=key)
        assert one["test_acc"][0] == pytest.approx(many["test_acc"][s], abs=0.5)
    # seeds differ from each other, and stack.model(s) is seed s as a plain module
    assert not torch.equal(stack.runner.model.blocks[0].skip.weight[0], stack.runner.model.blocks[0].skip.weight[1])
    with torch.no_grad():
        torch.testing.assert_close(stack.model(1)(moons.X_test), stack(moons.X_test)[1])


@pytest.mark.parametrize("kind,options", [("identity", {}), ("learnable_orth", {"method": "steepest", "init": "haar"})])
def test_trainer_learns_moons(moons, kind, options):
    stack = SeedStack.build(mlp(kind, **options), [0, 1])
    result = train_small_classifier(stack, moons.X_train, moons.y_train, tcfg(epochs=40), moons.X_test, moons.y_test)
    assert min(result["test_acc"]) > 85.0 and min(result["train_acc"]) > 85.0  # chance: 50%
    assert max(result["test_acc"]) > 97.0  # (a width-8 ReLU branch can stall a seed near 90%)
    assert result["steps"] == 40 * (320 // 50) and len(result["seeds"]) == 2


def test_a_scalar_skip_stack_trains_and_its_seeds_gradients_are_clipped_apart(moons):
    """A scalar skip's stacked parameter is (S,): the per-seed clip took every gradient as
    (S, ...) with a dim 1 (an IndexError: the scalar kind crashed all three synthetic apps)."""
    from orthogonal_skip_connections.train.small import _clip_per_seed

    stack = SeedStack.build(mlp("scalar"), [0, 1])
    assert stack.runner.model.blocks[0].skip.alpha.shape == (2,)
    result = train_small_classifier(stack, moons.X_train, moons.y_train, tcfg(epochs=1, grad_clip=0.5),
                                    moons.X_test, moons.y_test)
    assert len(result["test_acc"]) == 2
    stack.zero_grad()
    F.cross_entropy(stack(moons.X_train[:64]).flatten(0, 1), moons.y_train[:64].repeat(2)).backward()
    grads = [p.grad.clone() for p in stack.parameters() if p.grad is not None]
    norms = _clip_per_seed(stack, 0.0)  # max_norm 0: measure only
    for s in range(2):  # seed s's global 2-norm, over its own slice of every gradient
        assert float(norms[s]) == pytest.approx(float(torch.linalg.vector_norm(torch.cat([g[s].flatten() for g in grads]))))


@pytest.mark.parametrize("method", ["steepest", "svd", "cayley"])
def test_orthogonal_skips_stay_orthogonal_and_out_of_the_optimiser(moons, method):
    stack = SeedStack.build(mlp(method=method, init="haar", depth=3), [0, 1, 2])
    opt = build_optimizer(stack, tcfg().optim(), batch_dims=1)
    retracted = [p for g in opt.param_groups if "retraction" in g for p in g["params"]]
    skips = [b.skip for b in stack.template.blocks]
    if method == "cayley":  # parametrized: the optimiser moves its unconstrained parameter, without decay
        assert not retracted
        no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        assert all(id(p) in no_decay for s in skips for p in s.parameters())
    else:  # retracted: the optimiser's retracted group holds the stacked (S, n, n) matrices
        assert len(retracted) == 3 and {id(p) for p in retracted} == {id(s.weight) for s in skips}
        assert skips[0].weight.shape == (3, 2, 2)
    biases = [b.branch[0].bias for b in stack.template.blocks]  # (S, hidden): 2-D, still no decay
    assert all(any(id(p) in {id(q) for q in g["params"]} and g["weight_decay"] == 0 for g in opt.param_groups)
               for p in biases)
    W0 = skip_matrices(stack)
    train_small_classifier(stack, moons.X_train, moons.y_train, tcfg(epochs=3))
    W = skip_matrices(stack)  # (S, L, n, n)
    assert W.shape == (3, 3, 2, 2)
    assert float(orth.orth_error(W).max()) < 1e-5
    assert float(torch.linalg.matrix_norm(W - W0).min()) > 1e-3  # they did move


def test_stacked_measurements_equal_per_model_diagnostics():
    stack = SeedStack.build(mlp(init="haar", dim=5, depth=3, classes=3), [0, 1])
    X = torch.randn(40, 5)
    bounds, emp, W = branch_lipschitz_bounds(stack), branch_lipschitz_empirical(stack, X), skip_matrices(stack)
    assert bounds.shape == emp.shape == (2, 3) and W.shape == (2, 3, 5, 5)
    for s in range(2):
        model = stack.model(s)
        for i, row in enumerate(branch_lipschitz(model, X)):
            assert bounds[s, i].item() == pytest.approx(row["lipschitz_bound"], rel=1e-6)
            assert emp[s, i].item() == pytest.approx(row["lipschitz_empirical"], rel=1e-5)
            torch.testing.assert_close(W[s, i], model.blocks[i].skip.weight.double())
    assert skip_matrices(SeedStack.build(mlp("identity"), [0])) is None


def test_linear_fit_residual_is_zero_for_a_linear_map_and_below_procrustes():
    X = torch.randn(50, 4, dtype=torch.float64)
    A = torch.randn(4, 4, dtype=torch.float64)
    assert linear_fit_residual(X, X @ A.T) < 1e-12
    _, rel = orth.procrustes(X, X @ A.T)
    assert float(rel) > 0.05
    # a non-linear map: the relative residual of numpy's least squares (no bias), in (0, 1),
    # and never above the Procrustes one on the same data (an orthogonal map is a linear one)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 4, dtype=torch.float64, generator=g)
    Y = torch.tanh(2 * X @ A.T) + 0.3 * X**2
    coef = np.linalg.lstsq(X.numpy(), Y.numpy(), rcond=None)[0]
    want = np.linalg.norm(Y.numpy() - X.numpy() @ coef) / np.linalg.norm(Y.numpy())
    got = linear_fit_residual(X, Y)
    assert got == pytest.approx(want, rel=1e-10) and 0.1 < got < 0.9
    assert got < float(orth.procrustes(X, Y)[1])
    # and for Y = X Q^T + noise, with Q orthogonal, the two fits nearly agree, linear still below
    Q = orth.haar_orthogonal(4, generator=g, dtype=torch.float64)
    Y = X @ Q.T + 0.1 * torch.randn(80, 4, dtype=torch.float64, generator=g)
    lin, pro = linear_fit_residual(X, Y), float(orth.procrustes(X, Y)[1])
    assert 0.05 < lin <= pro < 1.1 * lin


# --------------------------------------------------------------------------- the apps


def test_orth_residual_synthetic_data_tiny(tmp_path):
    cfg = config("orth_residual_synthetic_data", "dataset_type=blobs", "num_classes=3", "n_blocks=2", "epochs=2",
                 "n_samples=200", "skip_kinds=[identity,learnable_orth,zero]", "skip.init=haar", "region_grid=20")
    summary = orth_residual_synthetic_data.main.run(cfg, tmp_path)
    for f in ("config.yaml", "summary.json", "synthetic_blocks.png"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["accuracy"]) == {"identity", "learnable_orth", "zero"}
    orth_blocks = saved["kinds"][1]["blocks"]
    assert len(orth_blocks) == 2 and all(b["orth_error"] < 1e-5 and b["det_sign"] == 1 for b in orth_blocks)
    assert saved["kinds"][0]["blocks"][0]["identity_distance"] is None  # identity has no matrix
    assert summary["figures"] == ["synthetic_blocks.png"]
    with pytest.raises(UserError, match="already holds a finished run"):
        orth_residual_synthetic_data.main.run(cfg, tmp_path)


def test_orth_to_id_tiny(tmp_path):
    cfg = config("orth_to_id", "dims=[2,3]", "n_blocks=[1,2]", "seeds=2", "epochs=2", "n_samples=200",
                 "log_points=2", "lipschitz_points=16", "pca_grid=10", "skip.special=false", "seed=1")
    summary = orth_to_id.main.run(cfg, tmp_path)
    for f in ("config.yaml", "summary.json", "trajectories.npz", "orth_to_id_depth.png", "orth_to_id_pca.png",
              "orth_to_id_trajectories_blobs.png", "orth_to_id_trajectories_parity.png"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert len(saved["runs"]) == 8 and len(saved["by_depth"]) == 8
    assert set(saved["answer"]) == {"blobs/d=2", "blobs/d=3", "parity/d=2", "parity/d=3"}
    # m = 1, 2: only m = 2 has a log-log point (m = 1 is left out), so no rate, and no "no" from a slope
    assert all(a["falls_with_depth"] is None for a in saved["answer"].values())
    assert saved["report"]["notes"] == []  # the steepest caveat is of identity starts; the default is haar
    assert "Note:" not in saved["report"]["verdict"] or "did not learn the task" in saved["report"]["verdict"]
    conditions = saved["report"]["tables"][1]["rows"]  # a None answer reads "cannot tell", not "–"
    assert conditions and all(r["falls"] == "cannot tell" for r in conditions)
    assert all(r["moved"] in (True, False, "cannot tell") for r in conditions)
    run = saved["runs"][-1]
    assert run["seeds"] == [1, 2] and np.shape(run["final_identity_distance"]) == (2, 2)
    assert np.all(np.abs(run["final_det_sign"]) == 1) and saved["orth_error_max"] < 1e-5
    # a retracted step stays on its component of O(d): the sign of det W never changes
    for r in saved["runs"]:
        assert r["initial_det_sign"] == r["final_det_sign"]
    traj = np.load(tmp_path / "trajectories.npz")
    steps = traj["parity/d=3/m=2/steps"]
    assert steps[0] == 0 and steps[-1] == run["steps"]
    assert traj["parity/d=3/m=2/lipschitz_empirical"].shape == (len(steps), 2, 2)
    # the empirical estimate never exceeds the product bound
    assert np.all(traj["parity/d=3/m=2/lipschitz_empirical"] <= traj["parity/d=3/m=2/lipschitz_bound"] * (1 + 1e-5))
    assert summary["by_depth"][0]["final_relative_to_haar"] > 0
    # spreads over seeds are sample sds (ddof=1), as the tables' (they were ddof=0)
    for r, t in zip(saved["runs"], summary["by_depth"]):
        assert t["final_identity_distance_sd"] == pytest.approx(np.std(np.mean(r["final_identity_distance"], 1),
                                                                       ddof=1), rel=1e-12)
        assert t["test_acc_sd"] == pytest.approx(np.std(r["test_acc"], ddof=1), rel=1e-12, abs=1e-12)


def test_construction_validity_tiny(tmp_path):
    cfg = config("construction_validity", "dims=[2,3]", "num_classes=[2,3]", "n_blocks=[1,2]", "seeds=2",
                 "epochs=2", "n_samples=200", "skip_kinds=[learnable_orth]")
    summary = construction_validity.main.run(cfg, tmp_path)
    for f in ("config.yaml", "summary.json", "construction_validity_grid.png"):
        assert (tmp_path / f).is_file(), f
    grid = json.loads((tmp_path / "summary.json").read_text())["grid"]
    assert len(grid) == 8
    for row in grid:
        res = np.asarray(row["per_block"]["procrustes_residual"])
        assert res.shape == (2, row["n_blocks"]) and np.all((res >= 0) & (res <= 1 + 1e-9))
        # the orthogonal fit can never beat the best linear fit
        assert np.all(res >= np.asarray(row["per_block"]["linear_residual"]) - 1e-9)
        assert row["procrustes_residual_seed_sd"] == pytest.approx(np.std(res.mean(1), ddof=1), rel=1e-12)
    assert set(summary["by_kind"]) == {"learnable_orth"}
    # the per-kind row's "its std over seeds": of each seed's grid mean (it was the grid's mean of the
    # points' sds, larger than the spread of the mean it stands beside)
    per_seed = np.mean([np.asarray(r["per_block"]["procrustes_residual"]).mean(1) for r in grid], axis=0)
    assert summary["by_kind"]["learnable_orth"]["procrustes_residual_seed_sd"] == \
        pytest.approx(np.std(per_seed, ddof=1), rel=1e-12)


@pytest.mark.parametrize(
    "app,override,match",
    [
        (orth_residual_synthetic_data, "dataset_type=parity", "unknown dataset_type 'parity'"),
        (orth_residual_synthetic_data, "skip_kinds=[identity,bogus]", "skip_kinds must be"),
        (orth_residual_synthetic_data, "dataset_type=moons num_classes=3", "moons has 2 classes"),
        (orth_to_id, "dims=[1,4]", "every entry of dims must be an integer >= 2"),
        (orth_to_id, "skip.kind=identity", "has no matrix"),
        (orth_to_id, "datasets=[moons]", "datasets must be"),
        (construction_validity, "fit_on=everything", "unknown fit_on"),
        (construction_validity, "lr=0", "lr must be a finite number > 0"),
        (construction_validity, "skip.method=adam", "unknown orthogonal method"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(tmp_path, app, override, match):
    with pytest.raises(UserError, match=match):
        app.main.run(config(app.main.config_name, *override.split()), tmp_path)
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "summary.json").exists()


def test_original_commands_and_one_line_errors(tmp_path, capsys):
    """The original project's command line works (a fresh interpreter); a user's mistake is
    one line, exit 2 (orth_to_id's ``main``, what its ``python -m`` runs: tests/test_apps.py
    reads each module's ``__main__`` guard)."""
    ok = subprocess.Popen([sys.executable, "-m", f"{PKG}.orth_residual_synthetic_data", "dataset_type=circles",
                           "epochs=1", "n_blocks=1", "n_samples=100", "region_grid=10",
                           f"hydra.run.dir={tmp_path / 'ok'}", "progress=false"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # while the subprocess starts: the mistake, in this process
        bad = tmp_path / "dataset"
        assert orth_to_id.main(["datasets=[spiral]", f"hydra.run.dir={bad}", "progress=false"]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not (bad / "summary.json").exists() and not (bad / "config.yaml").exists()
    finally:
        _, err = ok.communicate(timeout=120)
    assert ok.returncode == 0, err
    assert (tmp_path / "ok" / "summary.json").is_file() and (tmp_path / "ok" / "synthetic_blocks.png").is_file()
    assert {"orth_residual_synthetic_data", "orth_to_id", "construction_validity"} <= set(APPS)


def test_small_trainer_skips_a_non_finite_first_step_without_the_scheduler_order_warning(moons):
    X = moons.X_train.clone()
    X[:] = float("nan")  # every step non-finite: skipped; the 10th in a row ends the run
    stack = SeedStack.build(mlp("identity"), [0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Diverged):
            train_small_classifier(stack, X, moons.y_train, tcfg(), moons.X_test, moons.y_test)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]


def _construction_row(after, change, linear=0.1):
    """A by_kind entry from per-seed grid means: the residual after training and its change."""
    after, change = np.asarray(after, dtype=float), np.asarray(change, dtype=float)
    return {"procrustes_residual_mean": float(after.mean()), "procrustes_residual_at_init_mean": float((after - change).mean()),
            "procrustes_residual_seed_sd": float(after.std()), "linear_residual_mean": linear,
            "procrustes_residual_per_seed": after.tolist(), "procrustes_residual_change_per_seed": change.tolist()}


def test_construction_verdict_names_a_closest_kind_only_when_the_paired_interval_excludes_0():
    """Kinds share their seeds: the closest kind is named only when its residual minus each
    other kind's, seed by seed, has a 95% t-interval below 0."""
    from orthogonal_skip_connections.analysis.blocks import verdict

    flat = [0.0, 0.0, 0.0]
    # mean 0.2444 vs 0.2485, the per-seed differences of both signs: not detectable
    close = verdict({"identity": _construction_row([0.22, 0.28, 0.2455], flat),
                     "learnable_orth": _construction_row([0.25, 0.24, 0.2432], flat)})
    assert close.startswith("no kind ends detectably closer to orthogonal maps than the others (learnable_orth lowest"), close
    # seeds far apart (std 0.1), but learnable_orth below identity by 0.05 +- 0.001 in each: detectable, paired
    apart = verdict({"identity": _construction_row([0.30, 0.50, 0.40], flat),
                     "learnable_orth": _construction_row([0.249, 0.451, 0.350], flat)})
    assert apart.startswith("learnable_orth blocks end closest to orthogonal maps; "), apart
    assert verdict({"identity": _construction_row([0.4], [0.0]), "linear": _construction_row([0.1], [0.0])}).startswith(
        "no kind can be told closest to orthogonal maps (one seed)")


def test_construction_verdict_says_closer_or_further_only_when_the_seeds_change_interval_excludes_0():
    """Per kind, the change of the residual from initialisation, seed by seed (each seed's own
    nets before and after): "closer" when its 95% t-interval lies below 0, "further" above,
    "cannot tell" when it holds 0 or there is one seed."""
    from orthogonal_skip_connections.analysis.blocks import verdict

    def words(change, after=(0.3, 0.5, 0.4)):
        return verdict({"identity": _construction_row(list(after)[:len(change)], change)}).split(
            "identity: ")[1].split(",")[0]

    assert words([-0.10, -0.11, -0.09]) == "closer to orthogonal than at initialisation"
    assert words([0.10, 0.11, 0.09]) == "further from orthogonal than at initialisation"
    assert words([-0.05, 0.04, -0.02]) == "cannot tell (the change's 95% interval over seeds holds 0)"
    assert words([-0.1]) == "cannot tell (one seed)" and words([0.0, 0.0, 0.0]) == "unchanged"


def test_construction_verdict_calls_a_change_about_5_percent_of_the_time_when_there_is_none():
    """Calibration: where training changes nothing (per-seed changes drawn around 0), the
    verdict says "closer" or "further" in about 5% of draws at 3 seeds (a t-interval's 95%),
    not in the ~40% the old rule (after +- the seeds' std against the value at init) did."""
    from orthogonal_skip_connections.analysis.blocks import verdict

    rng = np.random.default_rng(0)
    calls = 0
    for _ in range(600):
        change = rng.normal(0.0, 0.02, size=3)
        text = verdict({"identity": _construction_row(0.3 + rng.normal(0.0, 0.02, size=3), change)})
        calls += "than at initialisation" in text
    assert 0.01 < calls / 600 < 0.09, calls


@pytest.mark.parametrize("app", ["orth_to_id", "orth_residual_synthetic_data", "construction_validity"])
def test_reports_say_how_the_models_were_trained(app):
    """The "what is measured" line names the optimiser, lr, schedule and epochs, and whether
    retracted skips took Adam's step: two runs differing in those read differently."""
    main = {"orth_to_id": orth_to_id, "orth_residual_synthetic_data": orth_residual_synthetic_data,
            "construction_validity": construction_validity}[app].main
    plain = main.config(["optimizer=adamw", "lr=0.02", "epochs=3"]).training_text()
    adaptive = main.config(["optimizer=adamw", "lr=0.02", "epochs=3", "upkeep_adaptive=true"]).training_text()
    assert plain.startswith("3 epochs of batch ") and "adamw lr 0.02" in plain and "schedule" in plain
    assert "milestones" not in plain  # (none set)
    step = main.config(["epochs=3", "schedule=step", "milestones=[2,1,2]", "gamma=0.5"]).training_text()
    assert "step schedule (lr x 0.5 at epochs [1, 2])" in step
    unused = main.config(["epochs=3", "milestones=[2]"]).training_text()
    assert "cosine schedule (milestones [2] not used: they apply to schedule=step)" in unused
    assert "upkeep_adaptive" not in plain
    assert adaptive == plain + "; retracted skips by Adam's step in so(n) (upkeep_adaptive)"


def test_construction_validity_colours_a_kind_as_its_runs():
    from orthogonal_skip_connections.experiments._compose import compose, typed
    from orthogonal_skip_connections.plots import VARIANT_COLORS

    def labels(*overrides):
        cfg = typed(construction_validity.Config, compose("construction_validity", [
            "dims=[2]", "num_classes=[2]", "n_blocks=[1]", "n_samples=100", "skip_kinds=[identity,learnable_orth]",
            *overrides]))
        cfg.check()
        return construction_validity.prepare(cfg)["labels"]

    # learnable_orth takes the colour of run_experiments' learnable_orth/<method> runs (plots.VARIANT_COLORS)
    assert labels("skip.method=cayley") == {"identity": "identity", "learnable_orth": "learnable_orth/cayley"}
    assert "learnable_orth/cayley" in VARIANT_COLORS
    assert labels("skip.init=haar")["learnable_orth"] == "learnable_orth/steepest/haar"


def test_orth_to_id_says_which_nets_did_not_learn_and_what_steepest_distances_measure():
    """A net at chance has no task to bring its W_i towards I for: the verdict says so (a
    tiny run at 24.5% on 4-class blobs was judged as any other). The steepest caveat is of
    identity starts: from a Haar draw the distance from I is the draw's."""
    cfg = config("orth_to_id")
    table = [{"dataset": "blobs", "dim": 2, "n_blocks": 4, "test_acc_mean": 26.0},
             {"dataset": "parity", "dim": 2, "n_blocks": 4, "test_acc_mean": 51.0},
             {"dataset": "blobs", "dim": 8, "n_blocks": 4, "test_acc_mean": 90.0}]
    chance = 100 / cfg.blobs.num_classes, 100 / cfg.parity.num_classes
    assert chance == (25.0, 50.0)
    assert orth_to_id.chance_note(cfg, table) == (
        " Note: the nets of blobs d = 2, m = 4 (chance 25%), parity d = 2, m = 4 (chance 50%) ended within 2 points "
        "of chance: they did not learn the task (more epochs, or another lr), so where their W_i went says nothing "
        "about what learning it does.")
    assert orth_to_id.chance_note(cfg, table[2:]) == ""
    assert orth_to_id.notes(cfg) == []  # haar start
    assert "fixed length" in orth_to_id.notes(config("orth_to_id", "skip.init=identity"))[0]
    assert orth_to_id.notes(config("orth_to_id", "skip.init=identity", "skip.method=svd")) == []
