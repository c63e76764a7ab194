"""osc study and osc report: files, one row per run, the same table twice, failures kept."""

import csv

import numpy as np
import pytest

from orthogonal_skip_connections.train import classifier as training
from orthogonal_skip_connections.cli import main as osc_main
from orthogonal_skip_connections.experiments import run_experiments, study
from orthogonal_skip_connections.report import build_report
from orthogonal_skip_connections.experiments._app import compose as compose_config
from orthogonal_skip_connections.runs import UserError
from orthogonal_skip_connections.train.classifier import Diverged

VARIANTS = ["identity", "zero", "learnable_orth/cayley"]
TINY = [
    "scale=smoke",
    "jobs=2",  # Hydra's joblib launcher, two worker processes
    "progress=false",
    f"scales.smoke.classification.variants=[{','.join(VARIANTS)}]",
    "scales.smoke.classification.seeds=2",
    "scales.smoke.classification.overrides=['scheduler.epochs=1','device=cpu']",
    "scales.smoke.residual_modes.tasks=[digits/preact_resnet20]",
    "scales.smoke.residual_modes.modes=[add,rotation]",
    "scales.smoke.residual_modes.overrides=['scheduler.epochs=1','device=cpu']",
    # two of the six architectures: the section and its figures are what is read here (each figure's
    # panels cost ~1 s apiece to lay out; all six are drawn by tests/test_teacher_student.py)
    "scales.smoke.teacher_student=['d=3','n_train=200','n_test=100','epochs=2','batch_size=50','lr=0.01',"
    "'seeds=2','log_every=2','archs=[li_yuan,orth_resnet]']",
    "overrides.loss_landscape=['n_eval=32','hessian.iters=2','hessian.samples=2','steps=3','steps_1d=3']",
    "overrides.two_stage=['n_train=64','batch_size=32','fit_images=32']",
    # the synthetic part's three apps at test_apps.py's tiny sizes (each is read here for its section only)
    "overrides.orth_to_id=['dims=[2]','n_blocks=[1,2]','epochs=1','n_samples=100','log_points=2','pca_grid=10']",
    "overrides.orth_residual_synthetic_data=['epochs=1','n_blocks=1','n_samples=100','region_grid=10']",
    "overrides.construction_validity=['n_blocks=[1]','seeds=2','epochs=1','n_samples=100']",
]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study.main.run(compose_config("study", TINY), out)
    return out


def test_study_writes_report_files_and_one_row_per_run(study_dir):
    for name in ("report.md", "report.html", "results.csv", "accuracy_digits_resnet20.png",
                 "identity_distance_digits_resnet20.png", "study.json"):
        assert (study_dir / name).is_file(), name
    rows = read_csv(study_dir / "results.csv")
    skip_rows = [r for r in rows if r["task"] == "digits/resnet20"]
    assert sorted((r["variant"], r["seed"]) for r in skip_rows) == \
        sorted((v, str(s)) for v in VARIANTS for s in (0, 1))
    assert sorted((r["residual_mode"], r["seed"]) for r in rows if r["task"] == "digits/preact_resnet20") == \
        [("add", "0"), ("add", "1"), ("rotation/channel", "0"), ("rotation/channel", "1")]
    assert all(r["status"] == "completed" and r["precision"] == "fp32" for r in rows)  # CPU runs: amp=auto is off
    md = (study_dir / "report.md").read_text()
    assert "| learnable_orth/cayley | 2/2 |" in md and "## teacher_student" in md
    # comparisons.csv: one row per compared arm, with the verdicts the report prints and Holm's p
    arms = read_csv(study_dir / "comparisons.csv")
    assert sorted(r["variant"] for r in arms if r["task"] == "digits/resnet20") == sorted(VARIANTS)
    assert sorted(r["residual_mode"] for r in arms if r["task"] == "digits/preact_resnet20") == \
        ["add", "rotation/channel"]
    for r in arms:
        if r["verdict"] == "baseline":
            assert r["p_value"] == "" and r["variant"] == "identity"
            continue
        assert f"{r['verdict']}." in md
        if r["p_value"]:
            assert float(r["p_value"]) <= float(r["p_holm"]) <= 1.0 and int(r["comparisons"]) >= 1
    assert any(r["p_holm"] for r in arms)
    for r in arms:  # an interval cut at 0 / 100 is flagged, as report.md's dagger does
        if r["acc_lo"]:
            assert ("low" in r["acc_ci_clipped"]) == (float(r["acc_lo"]) == 0.0), r
            assert ("high" in r["acc_ci_clipped"]) == (float(r["acc_hi"]) == 100.0), r
        assert set(r["diff_ci_clipped"].split()) <= {"low", "high"}
    # the threshold of "epochs to X%", per task: in comparisons.csv beside epochs_to_target, and said in the report
    for task in {r["task"] for r in rows}:
        target = {r["target_acc"] for r in rows if r["task"] == task}
        assert len(target) == 1 and {r["target_acc"] for r in arms if r["task"] == task} == target
        assert f"Epochs to {float(target.pop()):.0f}%: mean over seeds of the first epoch" in md
    assert "## construction_validity" in md  # the synthetic part runs all three synthetic apps
    assert "## Residual modes: digits/preact_resnet20" in md and "| rotation/channel | identity | 2/2 |" in md
    assert "data:image/png;base64," in (study_dir / "report.html").read_text()
    import json
    verdict = json.loads((study_dir / "summary.json").read_text())["report"]["verdict"]
    assert verdict.startswith(f"{2 * len(VARIANTS)} of {2 * len(VARIANTS)} classification runs and 4 of 4 "
                              "residual-mode runs completed"), verdict
    assert verdict.endswith("report.html (also report.md, results.csv, comparisons.csv)."), verdict
    assert "seed" in md and "paired" in md
    # the headline's caveat: test-set size and the smallest difference the seeds could tell
    assert "**Caveat**: 360 test images (accuracy moves in steps of 0.28 points)" in md
    assert "could be told from 0" in md
    # figures stay where their app wrote them (linked, never copied); no checkpoints by default
    assert sorted(p.name for p in study_dir.glob("*.png")) == ["accuracy_digits_resnet20.png",
                                                               "accuracy_modes_digits_preact_resnet20.png",
                                                               "identity_distance_digits_resnet20.png",
                                                               "relu_kept_digits_resnet20.png"]
    assert "![digits/resnet20 distance from I](identity_distance_digits_resnet20.png)" in md
    assert "![digits/resnet20 share kept by the ReLU](relu_kept_digits_resnet20.png)" in md
    # every figure is captioned: the paragraph before it says what it shows (not a verdict list, a table, a heading)
    lines = [line for line in md.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("!["):
            assert not lines[i - 1].startswith(("![", "- ", "|", "#")), (lines[i - 1], line)
    # the answers on one screen, before the sections: a line per classification task and per app
    short = md.split("## In short", 1)[1].split("\n## ", 1)[0]
    assert md.index("## In short") < md.index("## Classification: digits/resnet20")
    assert "- **digits/resnet20**: " in short and "- **Residual modes: digits/preact_resnet20**: " in short
    # smoke's depths m = 1, 2 hold no rate of log(m)/m: cannot tell (it was "no", from a slope held to 0)
    assert "- **teacher_student**: " in short and "- **orth_to_id**: cannot tell (log(m)/m does not fall" in short, short
    assert "not told apart from identity: " in short
    for line in short.splitlines():  # a first clause cut inside brackets read "(learnable_orth lowest."
        assert line.count("(") == line.count(")") and line.count("[") == line.count("]"), line
    assert "](teacher_student/distance.png)" in md
    # ... except in the classification runs loss_landscape reads (smoke: seed 0 of zero, identity, learnable_orth/steepest)
    assert sorted(p.parent for p in study_dir.rglob("checkpoint.pt")) == sorted(
        study_dir / "classification" / "digits_resnet20" / v / "seed0" for v in ("zero", "identity"))
    assert not list(study_dir.rglob("*.log"))


def test_study_has_landscape_of_its_own_runs_and_two_stage(study_dir):
    import json

    md = (study_dir / "report.md").read_text()
    assert "## loss_landscape: Loss landscapes and sharpness" in md and "## two_stage: Two-stage training" in md
    landscape = json.loads((study_dir / "loss_landscape" / "summary.json").read_text())
    # the classification runs of the variants it was asked for (smoke: zero, identity, learnable_orth/steepest;
    # this study ran zero and identity of those), seed 0: nothing trained anew
    assert sorted(r["run_dir"] for r in landscape["runs"]) == sorted(
        str(study_dir / "classification" / "digits_resnet20" / v / "seed0") for v in ("zero", "identity"))
    assert landscape["trained"] == []
    for fig in ("loss_landscape/landscape_2d.png", "loss_landscape/landscape_1d.png", "two_stage/two_stage.png"):
        assert f"]({fig})" in md and (study_dir / fig).is_file(), fig


def test_study_rerun_keeps_completed_runs(study_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in (study_dir / "classification").rglob("summary.json")}
    study.main.run(compose_config("study", [*TINY, "resume=true"]), study_dir)
    assert before == {p: p.stat().st_mtime_ns for p in (study_dir / "classification").rglob("summary.json")}
    # each part is named on stdout as it starts, in the order it runs
    parts = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("study, part ")]
    assert parts == ["classification", "residual_modes", "teacher_student", "orth_to_id",
                     "orth_residual_synthetic_data", "construction_validity", "loss_landscape", "two_stage"]


def test_report_from_run_dirs_matches_study_and_keeps_failures(study_dir, tmp_path, monkeypatch):
    again = build_report([study_dir / "classification"], tmp_path / "again")
    assert len(again["rows"]) == 2 * len(VARIANTS)
    assert read_csv(tmp_path / "again" / "results.csv") == \
        [r for r in read_csv(study_dir / "results.csv") if r["task"] == "digits/resnet20"]  # not residual_modes/
    table = lambda text: [l for l in text.splitlines() if l.startswith("| ")]  # noqa: E741,E731
    n = 1 + len(VARIANTS)  # header and one line per variant
    assert table((tmp_path / "again" / "report.md").read_text())[:n] == \
        table((study_dir / "report.md").read_text())[:n]

    # a diverged run and a run killed before its first checkpoint, next to the good ones, with the
    # study's settings (a run of other settings would be tabled as a task of its own)
    base = ["dataset=digits", "model.model_type=resnet20", "progress=false", "scheduler.epochs=1", "device=cpu"]
    real_forward = training._forward

    def nan_loss(*args, **kwargs):  # every step non-finite: the run diverges after 10
        loss, logits, y = real_forward(*args, **kwargs)
        return loss * float("nan"), logits, y

    monkeypatch.setattr(training, "_forward", nan_loss)
    with pytest.raises(Diverged):
        run_experiments.main.run(compose_config("run_experiments", [*base, "seed=5"]), tmp_path / "sweep" / "diverged")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_forward", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiments.main.run(compose_config("run_experiments", [*base, "seed=6"]), tmp_path / "sweep" / "killed")
    assert osc_main(["report", str(study_dir / "classification"), str(tmp_path / "sweep"),
                     "--out", str(tmp_path / "both")]) == 0
    rows = read_csv(tmp_path / "both" / "results.csv")
    status = {r["seed"]: r["status"] for r in rows if r["variant"] == "identity"}
    # killed before its first checkpoint: interrupted (it was called "failed"), to be rerun
    assert status == {"0": "completed", "1": "completed", "5": "diverged", "6": "interrupted"}
    md = (tmp_path / "both" / "report.md").read_text()
    assert "2/4 (seed 5: diverged; seed 6: interrupted)" in md and "did not complete" in md
    assert "1 interrupted: stopped before it saved a checkpoint" in md


def test_runs_of_other_settings_are_tabled_as_tasks_of_their_own(study_dir, tmp_path):
    """Two sweeps that differ only in a setting (here optimizer.upkeep_adaptive) under one
    directory were pooled as seeds of one arm, each seed counted twice; each is now a task named
    by the differing value, with the same table as the sweep reported alone. Runs of an older
    version (no settings in run.json) are compared by what they have."""
    import json
    import shutil

    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    shutil.copytree(study_dir / "classification", a)
    shutil.copytree(study_dir / "classification", b)
    for run_json in b.rglob("run.json"):
        meta = json.loads(run_json.read_text())
        assert meta["labels"]["settings"]["optimizer.upkeep_adaptive"] is False
        meta["labels"]["settings"]["optimizer.upkeep_adaptive"] = True
        run_json.write_text(json.dumps(meta))
    alone = build_report([a], tmp_path / "alone")
    both = build_report([tmp_path / "runs"], tmp_path / "both")
    assert list(alone["tables"]) == ["digits/resnet20"]
    assert list(both["tables"]) == ["digits/resnet20 [optimizer.upkeep_adaptive=false]",
                                    "digits/resnet20 [optimizer.upkeep_adaptive=true]"]
    for table in both["tables"].values():
        assert table == alone["tables"]["digits/resnet20"]
    md = (tmp_path / "both" / "report.md").read_text()
    assert "## Classification: digits/resnet20 [optimizer.upkeep_adaptive=true]" in md
    # the figure's file named by the task, without the bracket's trailing underscore
    assert "](accuracy_digits_resnet20_optimizer_upkeep_adaptive_true.png)" in md
    for run_json in sorted(b.rglob("run.json"))[::2]:  # a setting of a later version: not in every run
        meta = json.loads(run_json.read_text())
        del meta["labels"]["settings"]["optimizer.upkeep_adaptive"]
        run_json.write_text(json.dumps(meta))
    assert sorted(build_report([tmp_path / "runs"], tmp_path / "mixed")["tables"]) == [
        f"digits/resnet20 [optimizer.upkeep_adaptive={v}]" for v in ("false", "true", "unrecorded")]
    for run_json in b.rglob("run.json"):  # as written before run.json had settings
        meta = json.loads(run_json.read_text())
        del meta["labels"]["settings"]
        run_json.write_text(json.dumps(meta))
    assert list(build_report([tmp_path / "runs"], tmp_path / "old")["tables"]) == ["digits/resnet20"]


def test_runs_of_other_precisions_are_tabled_apart(study_dir, tmp_path):
    """amp=auto is one setting value, yet bf16 on one GPU and fp16 on another: runs that trained
    in different precisions are not seeds of one arm."""
    import json
    import shutil

    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    shutil.copytree(study_dir / "classification", a)
    shutil.copytree(study_dir / "classification", b)
    summaries = sorted(b.rglob("summary.json"))
    assert summaries
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["precision"] == "fp32"
        summary["precision"] = "bf16"
        path.write_text(json.dumps(summary))
    alone = build_report([a], tmp_path / "alone")
    both = build_report([tmp_path / "runs"], tmp_path / "both")
    assert list(both["tables"]) == ["digits/resnet20 [precision=bf16]", "digits/resnet20 [precision=fp32]"]
    for table in both["tables"].values():
        assert table == alone["tables"]["digits/resnet20"]


def test_report_and_study_bad_input(tmp_path, capsys):
    assert osc_main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run dir" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown scale 'huge'"):
        study.main.run(compose_config("study", ["scale=huge"]), tmp_path)
    assert not (tmp_path / "missing").exists()  # nothing created for a bad call
    # a list of overrides written unquoted: the grammar's message, and the list as it must be written
    assert osc_main(["study", "overrides.teacher_student=[d=3,epochs=5]", f"hydra.run.dir={tmp_path / 's'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
    fixed = "overrides.teacher_student=['d=3','epochs=5']"
    assert f'each override in a list is quoted: "{fixed}"' in err
    assert list(compose_config("study", [fixed]).overrides.teacher_student) == ["d=3", "epochs=5"]


def test_paired_verdicts():
    from orthogonal_skip_connections.report import task_tables

    def row(variant, seed, acc):
        return {"task": "t", "variant": variant, "seed": seed, "status": "completed", "test_acc": acc,
                "step_time_s": 1.0, "epochs_to_target": 1, "skip_identity_distance_mean": None, "target_acc": 90}

    base = [row("identity", s, a) for s, a in enumerate([98.0, 97.5, 99.0])]
    same = [row("zero", s, a - 0.8333333333333 + 1e-14 * s) for s, a in enumerate([98.0, 97.5, 99.0])]
    noisy = [row("linear", s, a + d) for s, (a, d) in enumerate(zip([98.0, 97.5, 99.0], [1.0, -1.0, 0.5]))]
    better = [row("scalar", s, a + d) for s, (a, d) in enumerate(zip([98.0, 97.5, 99.0], [2.0, 2.1, 1.9]))]
    table = {t["variant"]: t for t in task_tables(base + same + noisy + better)["t"]}
    assert "worse than identity by 0.83 points in each of 3 paired seeds" in table["zero"]["verdict"]
    assert table["linear"]["verdict"].startswith("no detectable difference from identity at 3 seeds")
    assert table["scalar"]["verdict"].startswith("better than identity by 2.00 points")
    assert table["identity"]["acc_hi"] <= 100.0


def test_step_time_ratio_and_distance_count_seeds_not_runs():
    """A seed run twice in one arm (a sweep plus a lone rerun) once weighed double in the step
    time ratio and the distance from I, and the ratio was mean(times) / mean(identity's): 1.13
    beside its own per-seed range 1.14-1.18. Both are now means over seeds."""
    from orthogonal_skip_connections.report import task_tables

    def row(variant, seed, t, dist=None):
        return {"task": "t", "variant": variant, "seed": seed, "status": "completed", "test_acc": 90.0 + seed,
                "step_time_s": t, "epochs_to_target": 1, "skip_identity_distance_mean": dist, "target_acc": 90}

    base = [row("identity", 0, 1.0), row("identity", 1, 2.0)]
    orth = [row("linear", 0, 1.2, 6.0), row("linear", 0, 1.2, 6.0), row("linear", 1, 2.2, 3.0)]
    t = {a["variant"]: a for a in task_tables(base + orth)["t"]}["linear"]
    assert t["step_time_ratio"] == pytest.approx((1.2 / 1.0 + 2.2 / 2.0) / 2)
    assert t["step_time_ratio_range"] == pytest.approx((1.1, 1.2))
    assert t["identity_distance"] == pytest.approx(4.5)  # (6 + 3) / 2, not (6 + 6 + 3) / 3


def test_caveat_names_the_arms_that_ended_at_chance():
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import caveat

    def row(variant, seed, acc, dataset="digits"):
        return {"task": "t", "dataset": dataset, "variant": variant, "seed": seed, "status": "completed",
                "test_acc": acc, "step_time_s": 1.0, "epochs_to_target": None, "skip_identity_distance_mean": None,
                "target_acc": 90, "n_test": 360}

    rows = [row("identity", s, 95.0 + s) for s in range(3)] + [row("zero", s, 10.0 + 0.3 * s) for s in range(3)]
    text = caveat("t", task_tables(rows)["t"], rows)
    assert text.endswith("; zero ended within 2 points of chance (10%): it did not train, so its comparison says "
                         "nothing about the skip."), text
    # 11% is far above chance for CIFAR-100's 100 classes (1%)
    rows = [dict(r, dataset="cifar100", test_acc=r["test_acc"] + 1) for r in rows]
    assert "chance" not in caveat("t", task_tables(rows)["t"], rows)


def _arm_rows(variant, accs, target=90):
    return [{"task": "t", "variant": variant, "seed": s, "status": "completed", "test_acc": a, "step_time_s": 1.0,
             "epochs_to_target": 1, "skip_identity_distance_mean": None, "target_acc": target}
            for s, a in enumerate(accs)]


def test_verdicts_count_the_comparisons_with_identity_by_holm():
    """Each arm's p is scipy's paired t-test; an arm is called better or worse exactly when
    Holm's step-down procedure (reject the k-th smallest p while p_(k) <= alpha / (m - k + 1),
    stop at the first that is not) rejects it; one raw "better" among many arms is not kept."""
    from scipy import stats

    from orthogonal_skip_connections.report import task_tables

    rng = np.random.default_rng(3)
    kinds = ["zero", "fixed_orth", "learnable_orth/steepest", "linear", "scalar", "idempotent"]
    for trial in range(40):
        n = int(rng.integers(3, 6))
        base = 90 + rng.normal(size=n)
        accs = {k: base + rng.normal(rng.choice([0.0, 0.0, 1.5, -3.0]), rng.uniform(0.2, 2.0), size=n)
                for k in kinds[: int(rng.integers(2, 7))]}
        rows = _arm_rows("identity", base) + [r for k, a in accs.items() for r in _arm_rows(k, a)]
        table = {t["variant"]: t for t in task_tables(rows)["t"]}
        p = {k: stats.ttest_rel(a, base).pvalue for k, a in accs.items()}
        for k in accs:
            assert table[k]["p_value"] == pytest.approx(p[k], rel=1e-9) and table[k]["comparisons"] == len(accs)
        for alpha in (0.01, 0.05, 0.2):
            rejected, m = set(), len(p)
            for j, k in enumerate(sorted(p, key=p.get)):
                if p[k] > alpha / (m - j):
                    break
                rejected.add(k)
            assert {k for k in accs if table[k]["p_holm"] <= alpha} == rejected, (trial, alpha)
        for k in accs:
            said = table[k]["verdict"].split(" ")[0]
            assert (said in ("better", "worse")) == (table[k]["p_holm"] < 0.05), table[k]["verdict"]

    # one raw difference (p = 0.035) among five comparisons: not called better
    base = [90.0, 91.0, 92.0]
    rows = _arm_rows("identity", base) + _arm_rows("scalar", [91.0, 93.0, 93.5])  # differences 1, 2, 1.5
    rows += [r for k, d in zip(kinds[:4], ([0.5, -0.5, 0.1], [1, -1, 0.2], [-0.3, 0.4, -0.2], [2, -1.5, 0.3]))
             for r in _arm_rows(k, np.add(base, d))]
    scalar = next(t for t in task_tables(rows)["t"] if t["variant"] == "scalar")
    assert scalar["diff_lo"] > 0 and scalar["p_value"] < 0.05 <= scalar["p_holm"]
    assert scalar["verdict"].startswith("no detectable difference from identity once the 5 comparisons with it "
                                        "are counted"), scalar["verdict"]


def test_an_arm_with_the_same_difference_in_every_seed_counts_among_holms_comparisons():
    """An arm whose paired differences do not spread (linear: -2 points in every seed) was
    left out of Holm's m, yet called "worse": the other arms' adjusted p-values divided the 5% over
    two comparisons where the table made three. scipy's ttest_rel gives such an arm p = 0 (t is
    infinite), and Holm's step-down over all three is the oracle. Round-off alone (an arm's
    per-seed mean of equal accuracies off by an ulp) is no difference."""
    import warnings

    from scipy import stats

    from orthogonal_skip_connections.report import task_tables

    base = [90.0, 91.0, 92.0]
    accs = {"zero": np.add(base, [-5.0, -4.9, -4.8]), "linear": np.add(base, -2.0),
            "scalar": np.add(base, [0.3, -0.2, 0.5])}
    rows = _arm_rows("identity", base) + [r for k, a in accs.items() for r in _arm_rows(k, a)]
    table = {t["variant"]: t for t in task_tables(rows)["t"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of the infinite t
        p = {k: float(stats.ttest_rel(a, base).pvalue) for k, a in accs.items()}
    assert p["linear"] == 0.0
    order = sorted(p, key=p.get)
    holm = {}
    for j, k in enumerate(order):  # Holm 1979: max over the smaller p's of min(1, (m - rank + 1) p)
        holm[k] = max([min(1.0, (len(p) - i) * p[order[i]]) for i in range(j + 1)])
    for k in accs:
        assert table[k]["comparisons"] == 3 and table[k]["p_value"] == pytest.approx(p[k], rel=1e-9)
        assert table[k]["p_holm"] == pytest.approx(holm[k], rel=1e-9)
    assert table["linear"]["verdict"].startswith("worse than identity by 2.00 points in each of 3 paired seeds")
    assert table["zero"]["verdict"].startswith("worse") and "over 3 comparisons" in table["zero"]["verdict"]

    # identity's runs of a seed (one per model.method) average to an accuracy an ulp off the variant's equal one
    acc = 310 / 360 * 100
    assert float(np.mean([acc] * 3)) != acc
    rows = [dict(r, seed=s) for s in range(3) for r in _arm_rows("identity", [acc] * 3)]
    rows += _arm_rows("linear", [acc] * 3) + _arm_rows("scalar", np.add(acc, [0.3, -0.2, 0.5]))
    table = {t["variant"]: t for t in task_tables(rows)["t"]}
    assert table["linear"]["verdict"].startswith("no different than identity by 0.00 points"), table["linear"]
    assert table["linear"]["p_value"] == 1.0 and table["scalar"]["comparisons"] == 2


def test_a_completed_run_with_a_nan_accuracy_is_one_line(tmp_path):
    """summary.json holding test_acc NaN (this code writes none, but JSON readers accept it)
    made the arm's numbers NaN and its verdict "cannot compare with identity (3 paired seeds;
    need 2)", with a caveat of "pooled std 0.00 points": a NaN read as a finding."""
    import json

    from orthogonal_skip_connections.report.classification import find_runs

    labels = {"task": "digits/resnet20", "dataset": "digits", "model_type": "resnet20", "variant": "zero",
              "skip_kind": "zero", "method": "none", "init": "identity", "seed": 0, "planned_epochs": 1,
              "batch_size": 8, "lr": 0.1}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps({"app": "run_experiments", "labels": labels}))
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "completed", "test_acc": float("nan")}))
    with pytest.raises(UserError, match="a completed run needs a finite test_acc; got nan"):
        find_runs([tmp_path])


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    import os

    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":  # a zombie has already exited
                parents[int(entry)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:

    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_killed_study_leaves_no_orphaned_worker(tmp_path):
    """osc study with jobs=2 runs its classification jobs in Hydra's joblib launcher's worker
    processes; SIGKILL the study mid-run and, within 5 s, none of its processes is left."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "orthogonal_skip_connections.cli", "study", "scale=smoke", "jobs=2", "progress=false",
           "parts=[classification]", "scales.smoke.classification.variants=[identity,linear]",
           "scales.smoke.classification.seeds=1",
           "scales.smoke.classification.overrides=['scheduler.epochs=200','device=cpu']", f"hydra.run.dir={tmp_path}"]
    study_proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  start_new_session=True)
    workers = set()
    try:
        deadline = time.monotonic() + 120
        started = []
        while time.monotonic() < deadline and len(started) < 2 and study_proc.poll() is None:
            time.sleep(0.2)  # both jobs have started training (config.yaml is written by each run)
            # each run's own config.yaml (Hydra's copy under .hydra/ may come first)
            started = [p for p in (tmp_path / "classification").rglob("config.yaml") if p.parent.name != ".hydra"]
        assert len(started) == 2, study_proc.stderr.read().decode()[-2000:] if study_proc.poll() else "timed out"
        workers = _children(study_proc.pid)
        assert len(workers) >= 2  # the launcher's worker processes
        study_proc.send_signal(signal.SIGKILL)
        study_proc.wait()
        deadline, left = time.monotonic() + 5, _alive(workers)
        while left and time.monotonic() < deadline:  # a dead pid stays dead: no need to wait out the 5 s
            time.sleep(0.1)
            left = _alive(workers)
        assert not left, f"orphaned 5 s after the study died: {left}"
    finally:
        if study_proc.poll() is None:
            study_proc.kill()
        for pid in _alive(workers | _children(study_proc.pid)):
            os.kill(pid, signal.SIGKILL)

def test_smallest_detectable_difference():
    """t_{1 - 0.025/m, n-1} s / sqrt(n) with s the pooled std of the paired differences of the m
    kinds compared, never below one test example (100 / N points); clipped intervals are marked."""
    from scipy import stats

    from orthogonal_skip_connections.report.classification import detectable_difference, table_markdown
    from orthogonal_skip_connections.report import task_tables

    def row(variant, seed, acc):
        return {"task": "t", "variant": variant, "seed": seed, "status": "completed", "test_acc": acc,
                "step_time_s": 1.0 + 0.1 * seed, "epochs_to_target": 1, "skip_identity_distance_mean": None,
                "target_acc": 90, "n_test": 400}

    base = [row("identity", s, a) for s, a in enumerate([99.0, 99.5, 100.0])]
    a = [row("zero", s, x + d) for s, (x, d) in enumerate(zip([99.0, 99.5, 100.0], [1.0, -1.0, 0.0]))]
    b = [row("linear", s, x + d) for s, (x, d) in enumerate(zip([99.0, 99.5, 100.0], [0.5, 0.0, -0.5]))]
    rows = base + a + b
    table = task_tables(rows)["t"]
    d = detectable_difference(table, rows)
    pooled = ((1.0 + 0.25) / 2) ** 0.5  # sample variances 1 and 0.25
    assert d["n_test"] == 400 and d["step"] == 0.25 and d["seeds"] == 3
    assert abs(d["pooled_sd"] - pooled) < 1e-12
    # two comparisons with identity: Holm's first step tests at 0.05 / 2
    assert d["comparisons"] == 2 and abs(d["smallest"] - stats.t.ppf(1 - 0.025 / 2, 2) * pooled / 3 ** 0.5) < 1e-12
    md = "\n".join(table_markdown(table))
    assert "100.00†]" in md and "clipped" in md  # identity's interval passes 100 and is cut there
    assert "(1.00–1.00)" in md  # step-time ratio per seed, paired with identity


def test_epochs_to_target_note_names_its_threshold():
    """The "epochs to X%" column's note says what X is: 95% of identity's mean final accuracy,
    or of all completed runs' when no identity run completed (an `osc report` of one kind)."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import table_markdown

    with_identity = "\n".join(table_markdown(task_tables(_arm_rows("identity", [95, 96]) +
                                                         _arm_rows("zero", [90, 91]))["t"]))
    assert "| epochs to 90% |" in with_identity and "reached 90%, 95% of identity's mean final accuracy" in with_identity
    alone = "\n".join(table_markdown(task_tables(_arm_rows("zero", [90, 91], target=86))["t"]))
    assert "reached 86%, 95% of the mean final accuracy of all completed runs (no identity run" in alone


def test_runs_of_one_seed_are_one_sample():
    """A sweep over a setting identity ignores (``model.skip_kind=identity,learnable_orth
    model.method=steepest,cayley``) repeats each identity seed: the statistics average an
    arm's runs per seed and count seeds, so the repeats neither narrow identity's interval
    nor change the paired differences (here identity's runs of a seed differ, as two runs
    of one seed on a GPU can)."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import table_markdown

    ident = _arm_rows("identity", [90.0, 92.0, 95.0])
    twice = ident + [{**r, "test_acc": r["test_acc"] + 1.0} for r in ident]  # each seed run again: +1 point
    rows = _arm_rows("zero", [89.0, 93.0, 94.0])
    once = {t["variant"]: t for t in task_tables(_arm_rows("identity", [90.5, 92.5, 95.5]) + rows)["t"]}
    table = {t["variant"]: t for t in task_tables(twice + rows)["t"]}
    assert table["identity"]["runs"] == 6 and table["identity"]["seeds"] == 3
    for key in ("acc_mean", "acc_std", "acc_lo", "acc_hi"):
        assert table["identity"][key] == pytest.approx(once["identity"][key], rel=1e-12), key
    for key in ("diff_mean", "diff_lo", "diff_hi", "p_value", "paired_seeds"):
        assert table["zero"][key] == pytest.approx(once["zero"][key], rel=1e-12), key
    assert table["zero"]["paired_seeds"] == 3
    md = "\n".join(table_markdown(list(table.values())))
    assert "| identity | 6/6 of 3 seeds‡ |" in md and "one sample per seed" in md
    assert "‡" not in "\n".join(table_markdown(list(once.values())))
    # "epochs to X%" too: a seed's runs are averaged, and a seed with a run that never got there has not reached it
    later = [{**r, "epochs_to_target": 1 + 2 * r["seed"]} for r in ident] + \
        [{**r, "epochs_to_target": 2 + 2 * r["seed"]} for r in ident]  # seed s: epochs 1 + 2s and 2 + 2s
    identity = next(t for t in task_tables(later + rows)["t"] if t["variant"] == "identity")
    assert identity["epochs_to_target"] == pytest.approx(np.mean([1.5, 3.5, 5.5])) and identity["reached_target"] == "3/3"
    later[-1]["epochs_to_target"] = None  # seed 2's second run never reached the target
    identity = next(t for t in task_tables(later + rows)["t"] if t["variant"] == "identity")
    assert np.isnan(identity["epochs_to_target"]) and identity["reached_target"] == "2/3"
    assert "– (reached 2/3 seeds)" in "\n".join(table_markdown([identity]))


def test_a_paired_difference_interval_is_clipped_at_100_points():
    """Two accuracies differ by at most 100 points: a wider t-interval of the paired
    differences is cut there and marked, and the verdict still reads its signs."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import table_markdown

    def row(variant, seed, acc):
        return {"task": "t", "variant": variant, "seed": seed, "status": "completed", "test_acc": acc,
                "step_time_s": 1.0, "epochs_to_target": 1, "skip_identity_distance_mean": None,
                "target_acc": 90, "n_test": 360}

    accs = [98.0, 97.0, 98.5]
    rows = [row("identity", s, a) for s, a in enumerate(accs)] + \
        [row("zero", s, a) for s, a in enumerate([10.0, 96.0, 97.5])]  # one seed collapsed to chance
    zero = next(t for t in task_tables(rows)["t"] if t["variant"] == "zero")
    assert zero["diff_lo"] == -100.0 and zero["diff_ci_clipped"] == (True, False)
    assert -100.0 < zero["diff_mean"] < 0 < zero["diff_hi"] <= 100.0
    md = "\n".join(table_markdown([t for t in task_tables(rows)["t"]]))
    assert "[-100.00†," in md and "±100 points" in md
    assert "[-100.00†, +" in zero["verdict"]  # the verdict marks the cut end as the table does


def test_caveat_says_when_the_seeds_cannot_tell_anything():
    """At 2 seeds t_{0.975, 1} = 12.7: a paired spread of 20 points gives an interval wider
    than the 100-point scale, and the caveat says so instead of naming a 'smallest
    detectable difference' of ~115 points."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import caveat

    def row(variant, seed, acc):
        return {"task": "t", "variant": variant, "seed": seed, "status": "completed", "test_acc": acc,
                "step_time_s": 1.0, "epochs_to_target": 1, "skip_identity_distance_mean": None,
                "target_acc": 90, "n_test": 360}

    rows = [row("identity", s, a) for s, a in enumerate([90.0, 92.0])] + \
        [row("zero", s, a) for s, a in enumerate([80.0, 100.0])]  # paired differences -10, +8
    text = caveat("t", task_tables(rows)["t"], rows)
    assert "more than the whole scale" in text and "more seeds are needed" in text
    assert "only differences larger than" not in text
    close = [row("identity", s, a) for s, a in enumerate([90.0, 92.0])] + \
        [row("zero", s, a) for s, a in enumerate([90.5, 92.4])]
    assert "only differences larger than about" in caveat("t", task_tables(close)["t"], close)


def test_caveat_of_a_task_without_a_completed_run_says_so():
    """The test-set size is read from completed runs' summaries: where a task's runs are all
    running, interrupted or failed, the caveat says there is none to read it from, not that
    the runs were made before it was recorded (which it still says of completed old runs)."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import caveat

    def row(variant, seed, status):
        return {"task": "t", "variant": variant, "seed": seed, "status": status, "test_acc": None,
                "step_time_s": None, "epochs_to_target": None, "skip_identity_distance_mean": None,
                "target_acc": None, "n_test": None}

    rows = [row("identity", 0, "running"), row("identity", 1, "interrupted"), row("zero", 0, "failed")]
    text = caveat("t", task_tables(rows)["t"], rows)
    assert "test-set size unknown (no completed run to read it from)" in text, text
    assert "made before" not in text
    old = [dict(r, status="completed", test_acc=90.0 + r["seed"], step_time_s=1.0) for r in rows]
    assert "test-set size unknown (runs made before it was recorded)" in caveat("t", task_tables(old)["t"], old)


def test_full_scale_plan_checks_every_config_and_builds_every_model(tmp_path, fake_cifar):
    """`osc study scale=full` has never run (it needs a GPU): every job it plans is composed
    and checked, each of its model settings (model type, residual mode, ViT shape...; the
    skip kinds are tested at small scale elsewhere) is built on CIFAR-shaped data and takes
    a training step with finite gradients, and every other app's full-scale config is valid."""
    import torch
    import torch.nn.functional as F

    from orthogonal_skip_connections.experiments._app import load_app, typed
    from orthogonal_skip_connections.train.image import build_classifier

    root = tmp_path / "data"
    fake_cifar(root, "cifar10", n_train=10, n_test=10)
    fake_cifar(root, "cifar100", n_train=10, n_test=10)
    cfg = study.main.config(["scale=full", "progress=false", "scales.full.classification.seeds=1",
                             "scales.full.residual_modes.seeds=1",
                             f"overrides.run_experiments=['data.root={root}','data.download=false']"])
    full = cfg.scales["full"]
    jobs = study.classification_jobs(cfg, tmp_path / "s") + study.mode_jobs(cfg, tmp_path / "s")
    assert len(jobs) == len(full.classification.tasks) * len(full.classification.variants) + \
        len(full.residual_modes.tasks) * len(full.residual_modes.modes) * len(full.residual_modes.variants)
    schema = load_app("run_experiments").schema
    built = set()
    for label, run_cfg, _, _ in jobs:
        spec = typed(schema, run_cfg).spec()
        skip_options = ("method", "init", "special", "lr_scale", "ns_steps", "update_rule", "update_rule_iters")
        key = repr((spec.model_type, sorted((k, v) for k, v in spec.model_options.items() if k not in skip_options)))
        if key in built:
            continue
        built.add(key)
        model, data = build_classifier(spec, 0)
        x = torch.randn(2, data.in_channels, data.image_size, data.image_size)
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), label
    assert len(built) >= 2 + len(full.residual_modes.modes) * 2  # resnet18, resnet56; each mode of vit_small, resnet18v2
    for name in study.SYNTHETIC_APPS + ("teacher_student", "loss_landscape", "two_stage"):
        load_app(name).config(list(getattr(full, name)))


def test_report_of_identity_runs_alone_has_no_empty_verdict_list(study_dir, tmp_path, capsys):
    assert osc_main(["report", str(study_dir / "classification" / "digits_resnet20" / "identity"),
                     str(study_dir / "teacher_student"), "--out", str(tmp_path / "r")]) == 0
    assert "2 classifier runs, 1 other app run(s); report:" in capsys.readouterr().out
    # no classifier run: no comparisons.csv, and the line names only the files written
    assert osc_main(["report", str(study_dir / "teacher_student"), "--out", str(tmp_path / "ts")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("report.md (also report.html, results.csv)")
    assert not (tmp_path / "ts" / "comparisons.csv").exists()
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Verdicts:" not in md and "No verdict: identity is the only skip kind here" in md
    # identity skips have no matrix: no distance-from-I figure
    assert "distance from I" not in md and not list((tmp_path / "r").glob("identity_distance_*.png"))


def test_compose_gives_what_hydra_composes_whole():
    """compose and compose_each (a study's plans, every command line's checks) apply Hydra's
    override rule to one composition per set of group overrides, kept for the process: the
    same configs and the same one-line mistakes as Hydra composing each job whole, whatever
    run dir a job names (left out of the kept compositions) and after a first call has kept
    one."""
    from omegaconf import OmegaConf

    from orthogonal_skip_connections.experiments._app import load_app
    from orthogonal_skip_connections.experiments._compose import _compose_whole, check_overrides, compose, compose_each

    schema = load_app("run_experiments").schema

    def whole(job):  # what compose did before it kept compositions: the key check, then Hydra's
        check_overrides(schema, job)
        return _compose_whole("run_experiments", job, schema)

    cfg = study.main.config(["scale=default", "progress=false"])
    plan = (study.classification_plan(cfg, seeds=1) + study.mode_plan(cfg, seeds=1))[::3]
    jobs = [[f"dataset={d}", f"model.model_type={m}", *o] for _, d, m, o, _ in plan]
    jobs.append(["dataset=cifar10", "+wandb.extra=1", "optimizer.lr=0.3", "model.method=null"])
    jobs.append(["dataset=digits", "seed=4", "hydra.run.dir=/tmp/a b", "hydra.job.name=x"])
    jobs.append(["dataset=digits", "seed=5", "hydra.sweep.dir=elsewhere", "hydra.sweep.subdir=${hydra.job.num}"])
    for job, fast in zip(jobs, compose_each("run_experiments", jobs)):
        slow = OmegaConf.to_container(whole(job), resolve=True)
        assert OmegaConf.to_container(fast, resolve=True) == slow, job
        assert OmegaConf.to_container(compose("run_experiments", job), resolve=True) == slow, job
    for bad in (["bogus=1"], ["optimizer.lr=abc"], ["resume=no"], ["dataset=bogus"], ["+optimizer.lr=1"],
                ["seed=1,2"], ["hydra.bogus=1"], ["hydra.run.dir=[a,b]"], ["dataset=digits", "seed=x"]):
        with pytest.raises(UserError) as slow:
            whole(bad)
        for _ in range(2):  # the second after the first has kept its composition
            with pytest.raises(UserError) as fast:
                compose("run_experiments", bad)
            assert str(fast.value) == str(slow.value), bad


def test_report_tables_skip_distance_vs_depth(study_dir, tmp_path):
    """Runs of one dataset at three depths of one CIFAR ResNet family get a "skip distance vs
    depth" section: per variant the mean ||W_i - I||_F per depth and the per-seed log-log slope
    against the number of blocks m with its t-interval, checked against distances planted as
    c_seed * m^p_seed (np.polyfit and scipy's t-interval as the oracles); the per-block profile
    reads the first and last block and the stages. One depth alone has no such section."""
    import json
    import shutil

    from scipy import stats

    planted = {0: (2.0, -0.5), 1: (3.0, -0.7)}  # seed: (c, p)
    depths = {"resnet20": 9, "resnet32": 15, "resnet56": 27}
    for model_type, m in depths.items():
        dst = tmp_path / "runs" / model_type
        shutil.copytree(study_dir / "classification", dst)
        for run_json in dst.rglob("run.json"):
            meta = json.loads(run_json.read_text())
            meta["labels"]["model_type"] = model_type
            meta["labels"]["task"] = f"digits/{model_type}"
            run_json.write_text(json.dumps(meta))
            if meta["labels"]["variant"] != "learnable_orth/cayley":
                continue
            c, p = planted[meta["labels"]["seed"]]
            x = c * m ** p
            dist = [x] * m
            dist[0], dist[-1] = 1.2 * x, 0.8 * x  # the mean over blocks stays x
            n = m // 3
            skips = [{"name": f"stages.{i // n}.{i % n}.skip", "kind": "learnable_orth", "method": "cayley",
                      "identity_distance": d, "identity_distance_spectral": 0.5 * d * m ** 0.25}
                     for i, d in enumerate(dist)]  # the spectral distance planted 0.25 steeper
            metrics = run_json.parent / "metrics.jsonl"
            recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            last = max(i for i, r in enumerate(recs) if r["type"] == "eval")
            recs[last]["skips"] = skips
            metrics.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = build_report([tmp_path / "runs"], tmp_path / "report")
    key = "digits/resnet{20,32,56}"
    assert list(out["depth_tables"]) == [key]
    rows = {t["variant"]: t for t in out["depth_tables"][key]}
    assert set(rows) == set(VARIANTS)
    ms = [9, 15, 27]
    cay = rows["learnable_orth/cayley"]
    assert cay["ms"] == ms and cay["has_matrix"] and not rows["identity"]["has_matrix"]
    for cell, m in zip(cay["cells"], ms):
        assert cell["dist_mean"] == pytest.approx(np.mean([c * m ** p for c, p in planted.values()]))
        assert cell["seeds"] == 2
    slopes = [np.polyfit(np.log(ms), np.log([c * m ** p for m in ms]), 1)[0] for c, p in planted.values()]
    assert slopes == pytest.approx([-0.5, -0.7])
    half = stats.t.ppf(0.975, 1) * np.std(slopes, ddof=1) / np.sqrt(2)
    assert cay["slope"] == pytest.approx(-0.6)
    assert (cay["slope_lo"], cay["slope_hi"]) == pytest.approx((-0.6 - half, -0.6 + half))
    assert cay["spectral_slope"] == pytest.approx(-0.35)  # each seed's slope + 0.25
    assert (cay["spectral_slope_lo"], cay["spectral_slope_hi"]) == pytest.approx((-0.35 - half, -0.35 + half))
    assert np.isnan(rows["identity"]["spectral_slope"])
    assert cay["reference_slope"] == pytest.approx(np.polyfit(np.log(ms), np.log([np.log(m) / m for m in ms]), 1)[0])
    prof = {p["m"]: p for p in out["depth_profiles"][key] if p["variant"] == "learnable_orth/cayley"}
    for m in ms:
        xs = [c * m ** p for c, p in planted.values()]
        assert prof[m]["first"] == pytest.approx(1.2 * np.mean(xs)) and prof[m]["last"] == pytest.approx(0.8 * np.mean(xs))
        assert prof[m]["stages"][1] == pytest.approx(np.mean(xs))
        n = m // 3
        assert prof[m]["stages"][0] == pytest.approx(np.mean(xs) * (n + 0.2) / n)
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"## Skip distance vs depth: {key}" in md
    assert "no clear trend" in md  # two seeds: the slope's t-interval (1 dof) holds 0
    assert "read the trend with care" not in md  # every depth trained alike (the same copied runs)
    for path in (tmp_path / "runs" / "resnet56").rglob("summary.json"):  # the deepest net "did not train"
        summary = json.loads(path.read_text())
        summary["test_acc"] -= 50.0
        path.write_text(json.dumps(summary))
    md = build_report([tmp_path / "runs"], tmp_path / "untrained")["report"].read_text()
    assert md.count("m = 27 trained to") == 1 and "read the trend with care" in md  # cayley's row (identity, zero: no matrix)
    assert (tmp_path / "report" / "skip_distance_vs_depth_digits_resnet_20_32_56.png").is_file()
    alone = build_report([tmp_path / "runs" / "resnet20"], tmp_path / "alone")
    assert alone["depth_tables"] == {}
    assert "Skip distance vs depth" not in (tmp_path / "alone" / "report.md").read_text()


def test_depth_section_counts_a_seed_once():
    """The depth section's per-depth samples are seeds too: two runs of one seed and depth
    (a sweep over a setting the variant ignores) are averaged, not one of them dropped."""
    from orthogonal_skip_connections.report.depth import _seed_means

    runs = [{"m": 9, "seed": 0, "acc": 90.0, "dist": [1.0, 1.0]}, {"m": 9, "seed": 0, "acc": 92.0, "dist": [3.0, 3.0]},
            {"m": 9, "seed": 1, "acc": 95.0, "dist": [2.0, None]}, {"m": 15, "seed": 1, "acc": 96.0, "dist": [4.0, 6.0]}]
    assert _seed_means(runs, "dist") == {9: {0: 2.0}, 15: {1: 5.0}}  # a run with a block unmeasured is left out
    assert _seed_means(runs, "acc") == {9: {0: 91.0, 1: 95.0}, 15: {1: 96.0}}


def _depth_row(tmp_path, runs: dict) -> tuple[str, dict]:
    """The depth table's (group key, row) of learnable_orth runs on digits, ``runs``:
    (m, seed) -> (each block's ||W - I||_F, test accuracy)."""
    from orthogonal_skip_connections.report.classification import RunRecord
    from orthogonal_skip_connections.report.depth import depth_groups, depth_tables

    records = [RunRecord(tmp_path / f"{m}_{seed}", {"task": f"digits/resnet{2 * m + 2}", "variant": "learnable_orth",
                                                    "seed": seed, "dataset": "digits",
                                                    "model_type": f"resnet{2 * m + 2}"},
                         {"status": "completed", "test_acc": acc},
                         skips=[{"name": f"stages.0.{i}.skip", "identity_distance": d} for i in range(m)])
               for (m, seed), (d, acc) in runs.items()]
    groups = depth_groups(records)
    (key,) = groups
    (row,) = depth_tables(groups)[key]
    return key, row


def test_depth_distance_interval_is_clipped_at_zero(tmp_path):
    """A distance ||W_i - I||_F is never negative: its t-interval over two far-apart seeds,
    which runs below 0, is cut at 0 and marked † with a footnote, as the classification
    table does for an accuracy cut at 0 or 100; a tight interval is left alone."""
    from scipy import stats

    from orthogonal_skip_connections.report.depth import depth_markdown

    dist = {(9, 0): 0.1, (9, 1): 2.0, (15, 0): 1.0, (15, 1): 1.02}  # (m, seed): each block's distance
    key, row = _depth_row(tmp_path, {ms: (d, 90.0) for ms, d in dist.items()})
    wide, tight = row["cells"]
    half = stats.t.ppf(0.975, 1) * np.std([0.1, 2.0], ddof=1) / np.sqrt(2)
    assert 1.05 - half < 0  # the interval the t-distribution gives runs below 0
    assert (wide["dist_lo"], wide["dist_hi"]) == pytest.approx((0.0, 1.05 + half))
    assert wide["dist_ci_clipped"] == (True, False)
    assert tight["dist_lo"] > 0 and tight["dist_ci_clipped"] == (False, False)
    md = "\n".join(depth_markdown(key, [row], []))
    assert f"1.05 [0.00†, {1.05 + half:.2f}]" in md and "1.01 [" in md and md.count("†") == 2
    assert "clipped there: a distance is never negative" in md


def test_depth_table_gives_the_accuracy_its_interval_too(tmp_path):
    """The depth table's accuracy beside each distance was the mean alone (its interval was
    computed and dropped): it carries the same 95% t-interval over seeds, cut at 100% and
    marked † with its own footnote, as the classification table's accuracy."""
    from scipy import stats

    from orthogonal_skip_connections.report.depth import depth_markdown

    acc = {(9, 0): 99.0, (9, 1): 91.0, (15, 0): 95.0, (15, 1): 95.5}  # (m, seed): test accuracy
    key, row = _depth_row(tmp_path, {ms: (1.0, a) for ms, a in acc.items()})
    wide, tight = row["cells"]
    half = stats.t.ppf(0.975, 1) * np.std([99.0, 91.0], ddof=1) / np.sqrt(2)
    assert (wide["acc_lo"], wide["acc_hi"]) == pytest.approx((95.0 - half, 100.0))
    assert wide["acc_ci_clipped"] == (False, True) and tight["acc_ci_clipped"] == (False, False)
    tight_half = stats.t.ppf(0.975, 1) * np.std([95.0, 95.5], ddof=1) / np.sqrt(2)
    md = "\n".join(depth_markdown(key, [row], []))
    assert f"95.0 [{95.0 - half:.1f}, 100.0†]" in md
    assert f"95.2 [{95.25 - tight_half:.1f}, {95.25 + tight_half:.1f}]" in md
    assert "acc % [95% CI]" in md and "by an accuracy: its t-interval reached past 100%" in md


def test_distance_figure_starts_at_zero(tmp_path, monkeypatch):
    """The distance-from-I curves are drawn from 0 (the skip at I): skips that start far away
    and barely move (Haar starts: 8.31 to 8.33) are a flat line, not a curve filling the axes."""
    from orthogonal_skip_connections.report import classification

    figures = []
    monkeypatch.setattr(classification, "savefig", lambda fig, path: figures.append(fig) or path)
    runs = [classification.RunRecord(tmp_path / f"s{seed}", {"task": "digits/resnet20", "variant": "learnable_orth",
                                                              "seed": seed}, {"status": "completed"},
                                     [{"epoch": e, "test_acc": 90.0, "identity_distance": 8.31 + 0.01 * e * seed}
                                      for e in (1, 2, 3)]) for seed in (0, 1)]
    classification.curves_figure("digits/resnet20", runs, tmp_path, key="identity_distance")
    classification.curves_figure("digits/resnet20", runs, tmp_path, key="test_acc")
    distance, accuracy = (fig.axes[0].get_ylim() for fig in figures)
    assert -0.03 * distance[1] < distance[0] < 0 and distance[1] > 8.31  # 0 in view, a flat 0 curve above the axis
    assert accuracy[0] > 0  # accuracy keeps its autoscaled axis


def test_haar_started_skips_get_a_figure_of_how_far_they_moved(tmp_path, monkeypatch):
    """||W - I||_F of a Haar start stays ~8.3 however far training moves W: the report draws
    ||W - W_0||_F too, from 0 at epoch 0. Curves of runs started at I begin at 0 at epoch 0;
    a Haar start's distance from I before training is not recorded, so its curve begins at 1."""
    from orthogonal_skip_connections.report import classification

    figures = []
    monkeypatch.setattr(classification, "savefig", lambda fig, path: figures.append(fig) or path)

    def runs(variant, ident, start):
        return [classification.RunRecord(tmp_path / f"{variant}{seed}", {"task": "t", "variant": variant, "seed": seed},
                                         {"status": "completed"},
                                         [{"epoch": e, "test_acc": 90.0, "identity_distance": ident(e),
                                           "start_distance": start(e)} for e in (1, 2, 3)]) for seed in (0, 1)]

    haar = runs("learnable_orth/steepest/haar", lambda e: 8.3, lambda e: 2.0 * e)
    at_i = runs("learnable_orth/steepest", lambda e: 1.5 * e, lambda e: 1.5 * e)
    assert all(classification.started_away(r) for r in haar) and not any(classification.started_away(r) for r in at_i)
    classification.curves_figure("t", haar + at_i, tmp_path, key="start_distance")
    classification.curves_figure("t", haar + at_i, tmp_path, key="identity_distance")
    moved, from_i = ({line.get_label().split(" (")[0]: line.get_xydata().tolist() for line in fig.axes[0].lines}
                     for fig in figures)
    assert moved["learnable_orth/steepest/haar"] == [[0, 0], [1, 2], [2, 4], [3, 6]]
    assert from_i["learnable_orth/steepest/haar"] == [[1, 8.3], [2, 8.3], [3, 8.3]]
    assert from_i["learnable_orth/steepest"] == [[0, 0], [1, 1.5], [2, 3], [3, 4.5]]


def test_the_distance_moved_figure_is_for_trained_skips_that_started_away_from_identity(tmp_path):
    """fixed_orth and idempotent start away from I but never train: their ||W - W_0||_F is 0
    by construction. The study's default arms used to draw the 'distance moved' figure for them
    alone, captioned as showing whether they moved; only a trained arm off I calls for it."""
    from orthogonal_skip_connections.report import classification
    from orthogonal_skip_connections.skips import FIXED_KINDS, SKIP_KINDS, skip

    for kind in SKIP_KINDS:  # the constant says what the skips do: only the fixed matrix kinds never train
        trains = any(p.requires_grad for p in skip(kind)(4).parameters())
        assert trains == (kind not in FIXED_KINDS + ("identity", "zero")), kind

    def runs(variant, ident, start):
        return [classification.RunRecord(tmp_path / f"{variant}{seed}", {"task": "t", "variant": variant, "seed": seed},
                                         {"status": "completed"},
                                         [{"epoch": e, "test_acc": 90.0, "identity_distance": ident(e),
                                           "start_distance": start(e)} for e in (1, 2, 3)]) for seed in (0, 1)]

    fixed = runs("fixed_orth", lambda e: 8.3, lambda e: 0.0) + runs("idempotent", lambda e: 4.2, lambda e: 0.0) + \
        runs("learnable_orth/steepest", lambda e: 1.5 * e, lambda e: 1.5 * e)
    haar = runs("learnable_orth/steepest/haar", lambda e: 8.3, lambda e: 2.0 * e)
    assert all(classification.started_away(r) for r in fixed[:4])  # off I, as a Haar start is
    assert classification.moved_from_start_arms("t", fixed) == []
    assert classification.moved_from_start_arms("t", fixed + haar) == ["learnable_orth/steepest/haar"]
    assert classification.moved_from_start_arms("other task", fixed + haar) == []


def test_the_table_says_how_far_skips_moved_where_they_did_not_start_at_identity():
    """From a Haar start the final ‖W − I‖_F (~8.3) says nothing of training: the cell adds
    ‖W − W₀‖_F. Started at I the two are one number, given once; runs from before the start
    was kept have none."""
    from orthogonal_skip_connections.report import task_tables
    from orthogonal_skip_connections.report.classification import table_markdown

    def arm(variant, ident, start):
        return [{**r, "skip_identity_distance_mean": ident, "skip_start_distance_mean": start}
                for r in _arm_rows(variant, [95.0, 96.0])]

    rows = _arm_rows("identity", [95.0, 96.0]) + arm("learnable_orth/cayley/haar", 8.3, 0.6) + \
        arm("learnable_orth/cayley", 0.5, 0.5) + arm("learnable_orth/steepest", 3.0, None)
    md = "\n".join(table_markdown(task_tables(rows)["t"]))
    assert "| 8.300 (moved 0.600) |" in md and "| 0.500 |" in md and "| 3.000 |" in md
    assert md.count("(moved") == 2 and "‖W − W₀‖_F" in md  # the cell and the note under the table


def test_a_dataset_missing_offline_refuses_the_study_before_any_run(tmp_path, capsys):
    """Every run of a missing CIFAR (data.download=false) failed on its own, each writing its
    error.txt under a study dir; now the study finds each dataset once, before anything is
    written, and refuses in one line."""
    study_dir, empty = tmp_path / "s", tmp_path / "no_data"
    code = osc_main(["study", "scale=smoke", "parts=[classification]", "progress=false",
                     "scales.smoke.classification.tasks=[cifar10/resnet20]",
                     "scales.smoke.classification.variants=[identity,linear]",
                     f"scales.smoke.classification.overrides=['data.root={empty}','data.download=false']",
                     f"hydra.run.dir={study_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "study: run cifar10/resnet20 identity seed 0 and every other run on cifar10" in err and "cifar10 not found under" in err, err
    # what to do, in the study's own keys (osc study has no data.root: it was refused as an unknown key)
    assert "and overrides.run_experiments=[data.download=false]; pass overrides.run_experiments=[data.download=true]" \
        in err and "(or set overrides.run_experiments=[data.root=...] / $OSC_DATA_ROOT)" in err, err
    assert not study_dir.exists() and not empty.exists()


def test_each_dataset_is_fetched_once_per_root(tmp_path, monkeypatch):
    """fetch_datasets: one call per (dataset, root, download) however many runs read it, the
    runs' own data settings passed on."""
    from orthogonal_skip_connections.data import vision

    calls = []
    monkeypatch.setattr(vision, "fetch", lambda *key, keys: calls.append(key))
    cfg = study.main.config(["scale=smoke", "progress=false", "scales.smoke.classification.seeds=2",
                             "scales.smoke.classification.tasks=[cifar10/resnet20,cifar100/resnet20,digits/resnet20]",
                             "scales.smoke.classification.variants=[identity,linear]",
                             f"scales.smoke.classification.overrides=['data.root={tmp_path}']"])
    jobs = study.classification_jobs(cfg, tmp_path / "s")
    assert len(jobs) == 12
    study.fetch_datasets(jobs)
    assert calls == [("cifar10", str(tmp_path), True), ("cifar100", str(tmp_path), True), ("digits", str(tmp_path), True)]


def test_a_report_written_again_into_its_dir_leaves_no_earlier_figure(study_dir, tmp_path):
    """osc report into a dir that holds an earlier report of more runs: the earlier figures of
    runs no longer reported were left beside the new report.md as if they were part of it.
    Files the earlier report did not write (a user's notes) stay."""
    import re

    out = tmp_path / "out"
    build_report([study_dir / "classification", study_dir / "residual_modes"], out)
    first = {p.name for p in out.glob("*.png")}
    (out / "notes.txt").write_text("mine")
    build_report([study_dir / "classification"], out)
    shown = set(re.findall(r"\]\(([^()\s/]+\.png)\)", (out / "report.md").read_text()))
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == shown and first - shown  # the residual modes' figures went with their section
    assert (out / "notes.txt").read_text() == "mine"
    again = build_report([study_dir / "classification"], out)  # nothing to remove: all kept
    assert {p.name for p in out.glob("*.png")} == pngs and again["report"].is_file()


def test_the_figures_a_report_lists_include_those_with_brackets_in_their_caption():
    """A residual-modes task of a ViT is named digits/vit_tiny[width=32,...]: its figure's caption
    holds brackets, and a caption pattern without them missed it (never removed when stale)."""
    from orthogonal_skip_connections.report import _figure_names

    md = ("![digits/resnet20 accuracy](accuracy_digits_resnet20.png)\n"
          "![digits/vit_tiny[width=32,depth=2] accuracy by residual mode](accuracy_modes_vit.png) and "
          "[a table](results.csv), ![elsewhere](teacher_student/fit.png)")
    assert _figure_names(md) == ["accuracy_digits_resnet20.png", "accuracy_modes_vit.png"]


def test_landscape_runs_the_classification_part_did_not_train_are_said_not_skipped_silently(tmp_path, capsys):
    """landscape_runs naming a task, variant or seed the study's classification part does not
    train: the landscape falls back to its own runs (or to those that did complete), and says so."""
    cfg = study.main.config(["scale=smoke", "scales.smoke.landscape_runs.variants=[bogus]"])
    overrides = study.landscape_overrides(cfg, [], tmp_path)
    assert not [o for o in overrides if o.startswith("runs=")]
    out = capsys.readouterr().out  # (stdout: news, not an error; a refusal's one line is stderr's)
    assert "landscape: 0 of the 1 runs landscape_runs names (digits/resnet20 bogus, seeds 0..0)" in out
    assert "loss_landscape trains its own default runs" in out
