"""The two-stage scheme: the Procrustes fit of a block that is an orthogonal map is exact
and recovers the map, swapping in the fitted skips then leaves the loss unchanged, and
`osc two_stage` at tiny size compares its four variants over seeds."""

import json
import math

import pytest
import torch

from orthogonal_skip_connections.analysis.two_stage import fit_skips, load_with_skips, skips_by_block
from orthogonal_skip_connections.landscape import eval_subset, evaluate_loss
from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier


def orthogonal_blocks(kind: str):
    """resnet20 whose every branch is switched off (last BN scale and shift 0): each block's
    residual sum is its skip applied to its input, an orthogonal map."""
    model, data = build_classifier(ClassifierSpec("digits", "resnet20", kind, n_train=64), seed=0)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "branch") and hasattr(m, "skip"):
                m.branch[-1].weight.zero_()
                m.branch[-1].bias.zero_()
    return model.eval(), data


@pytest.mark.parametrize("kind", ["fixed_orth", "identity"])
def test_procrustes_fit_is_exact_for_orthogonal_blocks(kind):
    model, data = orthogonal_blocks(kind)
    x, y = eval_subset(data, 48)
    fits = fit_skips(model, x)
    W = skips_by_block(model)
    assert len(fits) == 9
    for f in fits:
        assert f["residual"] < 1e-5, f
        assert float(orth.orth_error(f["Q"])) < 1e-10
        if not f["rank_deficient"]:  # the data span every channel: the map is determined, and found
            target = W[f["name"]] if kind == "fixed_orth" else torch.eye(len(f["Q"]), dtype=torch.float64)
            assert float(torch.linalg.matrix_norm(f["Q"] - target)) < 1e-5
    assert sum(not f["rank_deficient"] for f in fits) >= 3

    # swapped into constrained orthogonal skips (retracted or parametrized), the loss is unchanged
    before = evaluate_loss(model, x, y)
    for method in ("steepest", "cayley"):
        target, _ = build_classifier(ClassifierSpec("digits", "resnet20", "learnable_orth", {"method": method},
                                                    n_train=64), seed=5)
        load_with_skips(target, model, {f["name"]: f["Q"] for f in fits})
        after = evaluate_loss(target, x, y)
        assert after[0] == pytest.approx(before[0], rel=1e-5) and after[1] == before[1]


def test_a_block_far_from_orthogonal_has_a_large_residual():
    model, data = build_classifier(ClassifierSpec("digits", "resnet20", "identity", n_train=64), seed=0)
    x, _ = eval_subset(data, 48)
    assert max(f["residual"] for f in fit_skips(model, x)) > 0.1


def test_load_with_skips_refuses_another_architecture():
    source, _ = build_classifier(ClassifierSpec("digits", "resnet20", "identity"), seed=0)
    other, _ = build_classifier(ClassifierSpec("digits", "resnet32", "learnable_orth"), seed=0)
    with pytest.raises(ValueError, match="differ beyond their skips"):
        load_with_skips(other, source, {})


TINY = ["two_stage", "n_train=64", "seeds=2", "stage1_epochs=1", "stage2_epochs=1", "batch_size=32", "fit_images=32",
        "device=cpu", "method=cayley", "progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An uninterrupted two-seed run at tiny size."""
    from orthogonal_skip_connections.cli import main as osc

    out = tmp_path_factory.mktemp("two_stage") / "run"
    assert osc([*TINY, f"hydra.run.dir={out}"]) == 0
    return out


def test_two_stage_app_at_tiny_size(tiny_run):
    out = tiny_run
    s = json.loads((out / "summary.json").read_text())
    rows = s["runs"]
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted(
        (v, seed) for v in ("two_stage", "identity", "orth_identity", "orth_haar") for seed in (0, 1))
    for seed in (0, 1):
        two, ident = (next(r for r in rows if r["variant"] == v and r["seed"] == seed) for v in ("two_stage", "identity"))
        assert two["loss_before_swap"] == ident["loss_before_swap"]  # one stage-1 model, paired
        assert two["stage1_test_acc"] == ident["stage1_test_acc"]
        assert two["loss_after_swap"] is not None and 0 <= two["fit_residual_mean"] <= 1
        assert [e["epoch"] for e in two["curve"]] == [1, 1, 2] and two["curve"][1]["test_loss"] == two["loss_after_swap"]
    for r in rows:
        if r["variant"] != "identity":
            assert r["skip_orth_error_max"] < 1e-4 and r["drift_stage2"] > 0
    table = {t["variant"]: t for t in s["report"]["tables"][0]["rows"]}
    assert set(table) == {"two_stage", "identity", "orth_identity", "orth_haar"}
    assert table["two_stage"]["test_acc_lo"] <= table["two_stage"]["test_acc"] <= table["two_stage"]["test_acc_hi"]
    assert (out / "two_stage.png").is_file() and s["report"]["figures"] == ["two_stage.png"]


def test_a_stopped_run_resumes_by_seed_and_matches_an_uninterrupted_one(tiny_run, tmp_path, monkeypatch, capsys):
    """Stopped in its second seed, a run keeps its first (parts.json); resume=true trains the
    second alone, and the summary's rows are those of the run that was never stopped."""
    from orthogonal_skip_connections.cli import main as osc
    from orthogonal_skip_connections.experiments import two_stage

    trained, run_seed = [], two_stage.run_seed

    def stop_at_seed_1(cfg, seed, *args):
        trained.append(seed)
        if seed == 1 and stop_at_seed_1.stop:
            raise KeyboardInterrupt
        return run_seed(cfg, seed, *args)

    stop_at_seed_1.stop = True
    monkeypatch.setattr(two_stage, "run_seed", stop_at_seed_1)
    out = tmp_path / "run"
    assert osc([*TINY, f"hydra.run.dir={out}"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"resume=true hydra.run.dir={out}")
    assert not (out / "summary.json").exists()
    assert list(json.loads((out / "parts.json").read_text())["seeds"]) == ["0"]
    assert osc([*TINY, f"hydra.run.dir={out}"]) == 2  # without resume=true: refused, not overwritten
    assert "unfinished run (parts.json; resume=true continues it)" in capsys.readouterr().err
    stop_at_seed_1.stop = False
    trained.clear()
    assert osc([*TINY, f"hydra.run.dir={out}", "resume=true"]) == 0
    assert trained == [1]  # seed 0 kept, not trained again
    assert "seed 0 (kept from parts.json): two_stage" in capsys.readouterr().out
    resumed, whole = (json.loads((d / "summary.json").read_text()) for d in (out, tiny_run))
    assert resumed["runs"] == whole["runs"] and resumed["by_variant"] == whole["by_variant"]


def test_a_studys_stopped_two_stage_part_resumes_by_seed(tiny_run, tmp_path, monkeypatch):
    """osc study run again with resume=true continues its two_stage part from the seeds it
    finished: the part's dir holds parts.json, which a run without resume=true is refused."""
    import shutil

    from orthogonal_skip_connections.experiments import study, two_stage

    part = tmp_path / "two_stage"
    shutil.copytree(tiny_run, part, ignore=shutil.ignore_patterns(".lock"))
    (part / "summary.json").unlink()
    parts = json.loads((part / "parts.json").read_text())
    del parts["seeds"]["1"]  # as the study was killed in seed 1
    (part / "parts.json").write_text(json.dumps(parts))
    trained, run_seed = [], two_stage.run_seed
    monkeypatch.setattr(two_stage, "run_seed", lambda cfg, seed, *a: trained.append(seed) or run_seed(cfg, seed, *a))
    overrides = [a for a in TINY[1:] if not a.startswith("progress=")]
    assert study.run_app("two_stage", overrides, part, progress=False, study=tmp_path) == "completed"
    assert trained == [1]
    resumed, whole = (json.loads((d / "summary.json").read_text()) for d in (part, tiny_run))
    assert resumed["runs"] == whole["runs"]


def test_kept_seeds_keep_an_infinite_loss(tmp_path):
    """parts.json keeps inf and NaN (summary.json writes them as null): a swap that sent the
    test loss to inf counts on resume as it did in the run."""
    from orthogonal_skip_connections.experiments import two_stage
    from orthogonal_skip_connections.rundir import RunDir
    from orthogonal_skip_connections.runs import UserError

    rows = [{"variant": v, "seed": 0, "loss_after_swap": math.inf if v == "two_stage" else None,
             "test_acc": math.nan} for v in two_stage.VARIANTS]
    two_stage.save_seeds(tmp_path, rows)
    cfg = two_stage.main.config(["seeds=1"])
    kept = two_stage.kept_seeds(cfg, RunDir(tmp_path, resume=True))
    assert kept[0][0]["loss_after_swap"] == math.inf and math.isnan(kept[0][0]["test_acc"])
    assert two_stage.kept_seeds(cfg, RunDir(tmp_path, resume=False)) == {}  # a fresh run keeps nothing
    (tmp_path / "parts.json").write_text('{"seeds": [1, 2]}')  # JSON, but no rows by seed
    with pytest.raises(UserError, match="holds no rows by seed"):
        two_stage.kept_seeds(cfg, RunDir(tmp_path, resume=True))


@pytest.mark.parametrize("kind", ["identity", "learnable_orth", "zero"])
def test_skip_io_on_a_residual_mlp_and_its_outputs_unchanged(kind):
    """The MLP block's add-mode sum goes through its residual module, so skip_io's hooks see
    it; the outputs are bit for bit the plain skip(x) + branch(x) of every block."""
    from orthogonal_skip_connections.analysis.two_stage import skip_io
    from orthogonal_skip_connections.models.mlp import ResidualMLP

    torch.manual_seed(0)
    model = ResidualMLP(4, 2, skip_kind=kind, num_classes=3).eval()
    x = torch.randn(10, 4)
    with torch.no_grad():
        h, inputs, sums = model.embed(x), [], []
        for block in model.blocks:
            inputs.append(h)
            h = block.skip(h) + block.branch(h)  # the block's sum as it was computed before
            sums.append(h)
        expected = model.head(h)
        assert torch.equal(model(x), expected)
    rows = skip_io(model, x, batch_size=4)
    assert [name for name, _, _ in rows] == ["blocks.0", "blocks.1"]
    for (_, X, Y), u, s in zip(rows, inputs, sums):
        assert torch.equal(X, u.double()) and torch.equal(Y, s.double())
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # the hooks are gone, the outputs the same


def test_loss_after_the_swap_is_a_geometric_mean_whose_interval_stays_above_zero():
    from orthogonal_skip_connections.experiments.two_stage import VARIANTS, by_variant, verdict

    after = [0.05, 30.0, 2.0]  # spread over decades: the arithmetic interval, 10.7 +- 42, runs below 0
    rows = [{"variant": v, "seed": s, "test_acc": 90.0 + s, "stage1_test_loss": 0.1, "loss_before_swap": 0.1,
             "loss_after_swap": after[s] if v == "two_stage" else None, "drift_stage2": 0.5,
             "fit_residual_mean": 0.4 if v == "two_stage" else None, "end_identity_distance": 1.0}
            for v in VARIANTS for s in range(3)]
    two = next(t for t in by_variant(rows) if t["variant"] == "two_stage")
    assert two["loss_after_swap"] == pytest.approx((0.05 * 30.0 * 2.0) ** (1 / 3))
    assert 0 < two["loss_after_swap_lo"] < two["loss_after_swap"] < two["loss_after_swap_hi"]
    # x/÷ one factor: the geometric mean is the interval's geometric midpoint
    assert two["loss_after_swap_lo"] * two["loss_after_swap_hi"] == pytest.approx(two["loss_after_swap"] ** 2)
    assert "geometric means over seeds, ×" in verdict(by_variant(rows))


def test_two_stage_figure_colours_are_the_skip_kinds_colours_elsewhere():
    from orthogonal_skip_connections.experiments._compose import compose, typed
    from orthogonal_skip_connections.experiments.two_stage import Config, variant_styles
    from orthogonal_skip_connections.plots import VARIANT_COLORS, variant_colors

    styles = variant_styles(typed(Config, compose("two_stage", ["method=cayley"])))
    assert styles["identity"]["color"] == VARIANT_COLORS["identity"]
    assert styles["orth_identity"]["color"] == VARIANT_COLORS["learnable_orth/cayley"]
    # the Haar start: the colour the classification report gives learnable_orth/cayley/haar beside those
    assert styles["orth_haar"]["color"] == variant_colors(["identity", "learnable_orth/cayley",
                                                          "learnable_orth/cayley/haar"])["learnable_orth/cayley/haar"]
    assert len({s["color"] for s in styles.values()}) == 4
    assert "= identity until the swap" in styles["two_stage"]["label"]


def test_the_report_names_the_images_the_fit_used_not_more_than_the_training_set(monkeypatch):
    """fit_images above the training set fits on all of it (eval_subset takes what there is):
    the report said "on 100000 training images" of a 128-image set."""
    from orthogonal_skip_connections.experiments import load_app, two_stage

    cfg = load_app("two_stage").config(["n_train=128", "fit_images=100000"])
    assert cfg.fitted_images() == 128
    assert load_app("two_stage").config(["fit_images=100"]).fitted_images() == 100
    monkeypatch.setattr(two_stage, "verdict", lambda table: "")  # (of no runs)
    measures = " ".join(two_stage.report(cfg, [], "two_stage.png")["measures"])
    assert "on 128 training images" in measures


def test_the_verdict_says_when_variants_ended_near_chance():
    """A two_stage run whose variants did not train (a tiny run at 12% on digits) was judged as
    any other; the verdict now says which ended near chance."""
    from orthogonal_skip_connections.experiments import two_stage

    cfg = two_stage.main.config([])
    table = [{"variant": v, "test_acc": acc} for v, acc in zip(two_stage.VARIANTS, (11.0, 60.0, 11.9, 12.0))]
    assert two_stage.chance_note(cfg, table) == (
        " Note: two_stage, orth_identity ended within 2 points of chance (10%): they did not train (more epochs, or "
        "another lr), so this comparison says nothing about the skips.")
    assert two_stage.chance_note(cfg, [dict(t, test_acc=50.0) for t in table]) == ""
