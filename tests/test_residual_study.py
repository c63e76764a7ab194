"""Residual modes in the apps: run_experiments trains a ViT / pre-activation ResNet with any
residual mode (one-line refusals for bad values), the study plans its residual-mode task,
and the report's mode table pairs each (mode, skip) arm with add/identity by seed."""

import json
import math

import pytest

from orthogonal_skip_connections.cli import main as osc
from orthogonal_skip_connections.experiments import run_experiments, study
from orthogonal_skip_connections.report import mode_tables, task_tables
from orthogonal_skip_connections.report.classification import table_markdown

TINY_VIT = ["dataset=digits", "model.model_type=vit_tiny", "model.depth=1", "model.width=16", "model.heads=2",
            "batch_size=256", "scheduler.epochs=1", "device=cpu", "progress=false"]


def test_run_experiments_trains_a_vit_with_global_orthogonal_updates(tmp_path, capsys):
    run_dir = tmp_path / "vit"
    args = [*TINY_VIT, "model.residual_mode=orthogonal_update", "model.orthogonal_method=global",
            "model.skip_kind=learnable_orth", "optimizer.name=adamw", "optimizer.lr=1e-3"]
    assert osc(["run_experiments", *args, f"hydra.run.dir={run_dir}"]) == 0, capsys.readouterr().err
    labels = json.loads((run_dir / "run.json").read_text())["labels"]
    assert labels["residual_mode"] == "orthogonal_update/global"
    assert labels["task"] == "digits/vit_tiny[width=16,depth=1,heads=2]"  # a resized ViT is its own task
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and math.isfinite(summary["test_loss"])
    assert "orthogonal_update/global residuals" in summary["report"]["verdict"]


def test_model_options_go_to_the_right_family():
    from orthogonal_skip_connections.train.image import build_classifier

    cfg = run_experiments.main.config(["dataset=digits", "model.model_type=vit_tiny", "model.residual_mode=rotation",
                                       "model.depth=1"])
    opts = cfg.model.model_options()
    assert opts["residual_mode"] == "rotation" and "stem" not in opts and "zero_init_residual" not in opts
    assert "width" not in opts  # null keeps the named size's value
    model, _ = build_classifier(cfg.spec(), seed=0)
    assert (model.patch_size, model.image_size) == (2, 8)  # from the data: 8x8 digits in 2x2 patches
    cfg = run_experiments.main.config(["dataset=digits", "model.model_type=preact_resnet20"])
    opts = cfg.model.model_options()
    assert opts["stem"] == "cifar" and opts["residual_mode"] == "add" and "patch_size" not in opts


@pytest.mark.parametrize("override,expected", [
    (["model.model_type=preact_resnet20", "model.residual_mode=bogus"], "unknown model.residual_mode 'bogus'"),
    (["model.model_type=vit_tiny", "model.orthogonal_method=rows"], "unknown model.orthogonal_method 'rows'"),
    (["model.model_type=vit_tiny", "model.stem=imagenet"], "['stem'] apply to ResNet models only"),
    (["model.model_type=vit_tiny", "model.zero_init_residual=true"], "['zero_init_residual'] apply to ResNet"),
    (["model.model_type=resnet20", "model.width=16"], "['width'] apply to ViT models only"),
    (["model.model_type=vit_tiny", "model.pool=max"], "unknown model.pool 'max'"),
    (["model.model_type=vit_tiny", "model.heads=0"], "model.heads must be null or an integer >= 1"),
])
def test_bad_model_keys_are_one_line_and_no_run_dir(override, expected, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert osc(["run_experiments", "dataset=digits", *override, f"hydra.run.dir={run_dir}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not run_dir.exists()


def test_a_vit_shape_the_data_cannot_take_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"  # 8x8 digits in 3x3 patches: found when the data is known, before the run dir
    assert osc(["run_experiments", *TINY_VIT, "model.patch_size=3", f"hydra.run.dir={run_dir}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a multiple of patch_size 3" in lines[0], lines
    assert not (run_dir / "run.json").exists()  # the run never started


def test_study_plans_the_residual_mode_task(tmp_path):
    cfg = study.main.config(["scale=default"])
    assert "residual_modes" in cfg.parts
    r = cfg.scales["default"].residual_modes
    assert {"digits/preact_resnet20", "digits/vit_tiny"} <= set(r.tasks) and r.seeds >= 2
    cfg = study.main.config(["scale=default", "scales.default.residual_modes.seeds=1"])  # a quicker plan
    r = cfg.scales["default"].residual_modes
    jobs = study.mode_jobs(cfg, tmp_path)
    assert {"add", "orthogonal_update", "rotation"} <= set(r.modes) and "learnable_orth/steepest" in r.variants
    assert len(jobs) == len(r.tasks) * len(r.modes) * len(r.variants) * r.seeds
    arms = {(c["model"]["model_type"], c["model"]["residual_mode"], c["model"]["skip_kind"], c["seed"])
            for _, c, _, _ in jobs}
    assert len(arms) == len(jobs)  # every (model, mode, skip, seed) once
    vit = [c for _, c, _, _ in jobs if c["model"]["model_type"] == "vit_tiny"]
    assert all(c["optimizer"]["name"] == "adamw" and c["model"]["depth"] == 4 for c in vit)  # its own overrides
    dirs = [d for _, _, d, _ in jobs]
    assert len(set(dirs)) == len(dirs) and all(d.relative_to(tmp_path).parts[0] == "residual_modes" for d in dirs)
    full = study.main.config(["scale=full"]).scales["full"].residual_modes
    assert {"cifar10/vit_small", "cifar100/vit_small", "cifar10/resnet18v2", "cifar100/resnet18v2"} <= set(full.tasks)


def test_study_refuses_a_bad_mode_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "study"
    assert osc(["study", "scale=smoke", "progress=false", "parts=[residual_modes]", "scales.smoke.residual_modes.modes=[add,bogus]",
                "scales.smoke.residual_modes.tasks=[digits/preact_resnet20]", "scales.smoke.residual_modes.seeds=1",
                f"hydra.run.dir={run_dir}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.residual_mode 'bogus'" in lines[0], lines
    assert not list(run_dir.rglob("run.json"))  # planned and refused before any run started


def _row(mode, variant, seed, acc):
    return {"task": "t", "residual_mode": mode, "variant": variant, "seed": seed, "status": "completed",
            "test_acc": acc, "step_time_s": 1.0, "epochs_to_target": 1, "skip_identity_distance_mean": None,
            "target_acc": 80}


def test_mode_table_pairs_arms_with_add_identity_by_seed():
    rows = [_row("add", "identity", s, a) for s, a in enumerate([90.0, 92.0, 94.0])]
    rows += [_row("orthogonal_update/channel", "identity", s, a) for s, a in enumerate([91.0, 94.0, 94.0])]
    rows += [_row("rotation/channel", "identity", s, a) for s, a in enumerate([80.0, 81.0, 83.0])]
    rows += [_row("add", "learnable_orth/steepest", s, a) for s, a in enumerate([93.0, 92.0])]  # seed 2 missing
    table = {(t["residual_mode"], t["variant"]): t for t in mode_tables(rows)["t"]}
    assert list(table)[0] == ("add", "identity") and table["add", "identity"]["verdict"] == "baseline"

    t975_2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)
    ortho = table["orthogonal_update/channel", "identity"]  # differences 1, 2, 0: mean 1, sd 1
    assert ortho["diff_mean"] == pytest.approx(1.0)
    assert (ortho["diff_lo"], ortho["diff_hi"]) == pytest.approx((1 - t975_2 / 3 ** 0.5, 1 + t975_2 / 3 ** 0.5))
    assert ortho["verdict"].startswith("no detectable difference from add/identity at 3 seeds")
    rot = table["rotation/channel", "identity"]  # differences -10, -11, -11
    half = t975_2 * (1 / 3) ** 0.5 / 3 ** 0.5  # sd = sqrt(1/3)
    assert rot["diff_mean"] == pytest.approx(-32 / 3)
    assert (rot["diff_lo"], rot["diff_hi"]) == pytest.approx((-32 / 3 - half, -32 / 3 + half))
    assert rot["verdict"].startswith("worse than add/identity by 10.67 points")
    lo = table["add", "learnable_orth/steepest"]  # differences 3, 0 over the 2 seeds both have
    assert lo["paired_seeds"] == 2 and lo["diff_mean"] == pytest.approx(1.5)

    # a task with residual modes is tabled by mode; without, by skip kind; the mode table
    # renders with its own column
    assert task_tables(rows) == {}
    add_only = task_tables([r for r in rows if r["residual_mode"] == "add"])["t"]
    assert [t["variant"] for t in add_only] == ["identity", "learnable_orth/steepest"]
    assert add_only[1]["diff_mean"] == pytest.approx(lo["diff_mean"])
    md = table_markdown(mode_tables(rows)["t"])
    assert md[0].startswith("| residual mode | skip |") and "difference vs add/identity" in md[0]
    assert any(line.startswith("| rotation/channel | identity | 3/3 |") and "-10.67" in line for line in md)
    assert mode_tables([r for r in rows if r["residual_mode"] == "add"]) == {}  # no other mode, no mode table


def test_the_run_experiments_commands_in_related_work_compose():
    """Every `osc run_experiments ...` command docs/related_work.md gives is a valid config."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "related_work.md").read_text()
    commands = re.findall(r"`osc run_experiments([^`]*)`", text)
    assert len(commands) >= 3
    for args in commands:
        run_experiments.main.config(shlex.split(args))  # raises a one-line UserError if not
