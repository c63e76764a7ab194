"""What the report sections say: the orth_to_id verdict is about what training did (not
about where the random starts were), and its "cannot tell" is honest."""

import math
import os
import statistics

import numpy as np
import pytest
import scipy.stats
import torch

from orthogonal_skip_connections.analysis.depth import answer, by_depth, corrected_distance, verdict
from orthogonal_skip_connections.analysis.stats import (geometric_interval, geometric_spread, seed_sd, t_interval,
                                                        t_interval_within)
from orthogonal_skip_connections.maths import orthogonal as orth

DEPTHS = [2, 4, 8, 16]
DIM, SEEDS = 4, 4


def _rows(end_of):
    """orth_to_id rows for DEPTHS: every seed's m skips start at W0 and end at end_of(W0, m)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for m in DEPTHS:
        A = orth.skew(torch.randn(SEEDS, m, DIM, DIM, generator=g, dtype=torch.float64))  # (S, m, d, d)
        W0 = orth.expm(A)
        W1 = end_of(A, W0, m)
        rows.append({"dataset": "blobs", "dim": DIM, "n_blocks": m,
                     "initial_identity_distance": orth.identity_distance(W0).numpy(),
                     "final_identity_distance": orth.identity_distance(W1).numpy(),
                     "final_det_sign": torch.linalg.slogdet(W1).sign.numpy()})
    return rows


def _answer(rows):
    ans = answer(by_depth(rows), rows, fraction=0.5)
    return ans["blobs/d=4"], verdict(ans, 0.5)


def test_skips_left_at_their_haar_draws_do_not_approach_identity():
    def haar(A, W0, m):
        return W0

    g = torch.Generator().manual_seed(1)
    rows = []
    for m in DEPTHS:  # Haar draws: a depth trend can only come from the draws themselves
        W0 = orth.haar_orthogonal(DIM, SEEDS, m, generator=g, dtype=torch.float64)
        rows.append({"dataset": "blobs", "dim": DIM, "n_blocks": m,
                     "initial_identity_distance": orth.identity_distance(W0).numpy(),
                     "final_identity_distance": orth.identity_distance(W0).numpy(),
                     "final_det_sign": np.ones((SEEDS, m))})
    a, text = _answer(rows)
    assert a["moved_towards_identity"] is False and a["approaches_identity_with_depth"] is False
    assert a["moved_at_largest_depth"] == 0.0
    assert text.startswith("no:")
    assert _answer(_rows(haar))[0]["approaches_identity_with_depth"] is False


def test_skips_moved_towards_identity_at_the_theorems_rate_approach_it():
    def towards(A, W0, m):  # along the geodesic to I, the part log(m)/m of the way left
        return orth.expm(A * math.log(m) / m)

    a, text = _answer(_rows(towards))
    assert a["moved_towards_identity"] is True and a["falls_with_depth"] is True
    assert a["approaches_identity_with_depth"] is True
    lo, hi = a["moved_at_largest_depth_ci"]
    assert 0 < lo < a["moved_at_largest_depth"] < hi
    # it is scipy's 95% t-interval of the per-seed moves (start - end, mean over blocks)
    deepest = _rows(towards)[-1]
    moved = np.mean(deepest["initial_identity_distance"], 1) - np.mean(deepest["final_identity_distance"], 1)
    want = scipy.stats.t.interval(0.95, len(moved) - 1, loc=moved.mean(), scale=scipy.stats.sem(moved))
    assert (lo, hi) == pytest.approx(want, rel=1e-12)
    assert text.startswith("yes:")


def test_t_interval_is_scipys_95_percent_student_interval():
    """(mean, low, high) against scipy.stats.t.interval(0.95, n - 1, mean, sem) for a few n
    (a 90% one is 18 to 50% narrower at these n, a normal one more so); nan bounds for one
    value, none of width for values that do not spread."""
    g = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        x = g.normal(1.0, 2.0, n)
        mean, lo, hi = t_interval(x)
        want = scipy.stats.t.interval(0.95, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert mean == pytest.approx(x.mean(), rel=1e-12)
        assert (lo, hi) == pytest.approx(want, rel=1e-12)
    mean, lo, hi = t_interval([0.3])
    assert mean == 0.3 and math.isnan(lo) and math.isnan(hi)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_an_interval_within_its_range_is_cut_there_and_says_which_end():
    """t_interval_within is t_interval with each end cut to the values' range, flagging the
    cut ends (the tables' †); an interval inside the range, or of one value (NaN ends), is
    t_interval's unchanged."""
    x = [99.0, 91.0]
    mean, lo, hi = t_interval(x)
    assert hi > 100.0
    assert t_interval_within(x, 0.0, 100.0) == (mean, lo, 100.0, (False, True))
    assert t_interval_within([-0.5, 3.0], 0.0) == (1.25, 0.0, t_interval([-0.5, 3.0])[2], (True, False))
    assert t_interval_within([95.0, 95.5], 0.0, 100.0) == (*t_interval([95.0, 95.5]), (False, False))
    m, lo, hi, cut = t_interval_within([50.0], 0.0, 100.0)
    assert m == 50.0 and math.isnan(lo) and math.isnan(hi) and cut == (False, False)


def test_the_spread_over_seeds_is_the_sample_sd_along_any_axis():
    """seed_sd is statistics.stdev (ddof=1) over all values or along the seeds' axis, and
    geometric_spread is (scipy.stats.gmean, scipy.stats.gstd): the sds every table, band and
    report gives; nan where one seed gives no spread."""
    g = np.random.default_rng(1)
    ys = g.lognormal(0.0, 1.5, size=(4, 6))  # (seeds, points)
    assert seed_sd(ys[:, 0]) == pytest.approx(statistics.stdev(ys[:, 0]), rel=1e-12)
    np.testing.assert_allclose(seed_sd(ys, axis=0), [statistics.stdev(c) for c in ys.T], rtol=1e-12)
    np.testing.assert_allclose(seed_sd(ys.T, axis=1), [statistics.stdev(c) for c in ys.T], rtol=1e-12)
    mid, factor = geometric_spread(ys, axis=0)
    np.testing.assert_allclose(mid, scipy.stats.gmean(ys, axis=0), rtol=1e-12)
    np.testing.assert_allclose(factor, scipy.stats.gstd(ys, axis=0), rtol=1e-12)
    assert geometric_spread(ys[:, 2]) == pytest.approx((scipy.stats.gmean(ys[:, 2]), scipy.stats.gstd(ys[:, 2])))
    assert np.isnan(seed_sd(ys[:1], axis=0)).all() and math.isnan(seed_sd([0.4]))
    assert math.isnan(geometric_spread([0.4])[1]) and geometric_spread([0.4])[0] == pytest.approx(0.4)


def test_the_geometric_interval_is_scipys_t_interval_of_the_logs_and_nan_where_a_log_is_not():
    """Landscape sharpness and two-stage losses (one function since they differed: two_stage's
    copy gave (inf, nan, nan) for an inf loss, the landscape's nan)."""
    x = [0.02, 3.0, 0.4, 11.0]
    lo, hi = scipy.stats.t.interval(0.95, len(x) - 1, loc=np.mean(np.log(x)), scale=scipy.stats.sem(np.log(x)))
    assert geometric_interval(x + [None]) == pytest.approx((scipy.stats.gmean(x), math.exp(lo), math.exp(hi)))
    for bad in ([0.1, math.inf], [0.1, math.nan], [0.1, 0.0], [0.1, -2.0], [], [None]):
        assert all(math.isnan(v) for v in geometric_interval(bad)), bad


def test_moving_towards_identity_by_the_same_share_at_every_depth_is_not_a_depth_trend():
    def half(A, W0, m):
        return orth.expm(A / 2)

    a, _ = _answer(_rows(half))
    assert a["moved_towards_identity"] is True and a["approaches_identity_with_depth"] is False


def test_depths_over_which_log_m_over_m_does_not_fall_cannot_tell_a_rate():
    """m = 2 and 4 (log(m)/m the same at both): the slope was held to fraction x 0 = 0, so a 1 %
    fall at m = 4 read "yes: training brings the W_i towards I, the more so the deeper the net"."""
    def one_percent_more_at_4(A, W0, m):
        return orth.expm(A * (0.99 if m == 2 else 0.98))

    rows = [r for r in _rows(one_percent_more_at_4) if r["n_blocks"] in (2, 4)]
    a, text = _answer(rows)
    assert a["rate_can_be_told"] is False and a["falls_with_depth"] is None
    assert a["approaches_identity_with_depth"] is None
    assert text.startswith("cannot tell (log(m)/m does not fall over m = 2, 4 (it peaks at m = 3)"), text


def test_intervals_that_hold_both_answers_cannot_tell():
    """A move towards I whose interval over seeds holds 0 read "no: ... does not bring the W_i
    towards I": it is "cannot tell"; one that rules the move out is still "no"."""
    g = torch.Generator().manual_seed(4)

    def noisy(A, W0, m):  # each seed moved by its own small random turn: no direction in common
        return W0 @ orth.expm(0.05 * orth.skew(torch.randn(W0.shape, generator=g, dtype=W0.dtype)))

    a, text = _answer(_rows(noisy))
    lo, hi = a["moved_at_largest_depth_ci"]
    assert lo < 0 < hi and a["moved_towards_identity"] is None
    # its slope's interval, about 0, rules out half log(m)/m's: that part is a "no", and so the answer
    assert a["loglog_slope_ci"][0] > 0.5 * a["reference_slope_log_m_over_m"] and a["falls_with_depth"] is False
    assert a["approaches_identity_with_depth"] is False and text.startswith("no:")
    from orthogonal_skip_connections.analysis.depth import _why_unknown

    assert _why_unknown({**a, "falls_with_depth": None}) == "the 95% intervals over seeds hold both answers"


def test_the_depth_figure_draws_what_the_verdict_judges():
    """corrected_distance (orth_to_id_depth.png's top row) is end / start per seed, the table's
    "distance left" per depth; moved along the geodesic to I with the part log(m)/m of the
    angle left, it falls with depth in every seed. From I, it is the end itself."""
    rows = _rows(lambda A, W0, m: orth.expm(A * math.log(m) / m))
    ms, y, from_identity = corrected_distance(rows[::-1])  # any order in, sorted by depth out
    assert ms == DEPTHS and y.shape == (SEEDS, len(DEPTHS)) and not from_identity
    np.testing.assert_allclose(y.mean(0), [t["distance_left"] for t in by_depth(rows)], rtol=1e-12)
    assert np.all(np.diff(y[:, 1:], axis=1) < 0) and np.all(y < 1)  # log(m)/m: equal at m = 2 and 4
    for r in rows:
        r["initial_identity_distance"] = np.zeros_like(r["initial_identity_distance"])
    ms, y, from_identity = corrected_distance(rows)
    assert from_identity
    np.testing.assert_array_equal(y[:, 0], np.asarray(rows[0]["final_identity_distance"]).mean(1))


def test_depths_with_fewer_seeds_are_compared_over_the_seeds_all_have():
    """A depth with fewer seeds than the others: the first seeds common to all, as the cut to
    the smallest seed count meant; the arrays were stacked before the cut (a ValueError)."""
    rows = _rows(lambda A, W0, m: orth.expm(A * math.log(m) / m))
    full = corrected_distance(rows)[1]
    for key in ("initial_identity_distance", "final_identity_distance", "final_det_sign"):
        rows[1][key] = rows[1][key][:2]
    ms, y, _ = corrected_distance(rows)
    assert ms == DEPTHS and y.shape == (2, len(DEPTHS))
    np.testing.assert_array_equal(y, full[:2])
    assert _answer(rows)[0]["approaches_identity_with_depth"] is not None


def test_spreads_over_seeds_are_sample_sds():
    """by_depth's sds over seeds are the sample sd (ddof=1; statistics.stdev), the sd the tables'
    t-intervals use (they were ddof=0, 1/sqrt(2) of it for two seeds); none for one seed."""
    import statistics

    rows = _rows(lambda A, W0, m: orth.expm(A / 2))
    for r in rows:
        r["test_acc"] = [90.0, 92.5, 91.0, 97.0]
    for r, t in zip(rows, by_depth(rows)):
        assert t["final_identity_distance_sd"] == pytest.approx(
            statistics.stdev(np.mean(r["final_identity_distance"], 1)), rel=1e-12)
        assert t["test_acc_sd"] == pytest.approx(statistics.stdev(r["test_acc"]), rel=1e-12)
    one = [{**r, "initial_identity_distance": r["initial_identity_distance"][:1],
            "final_identity_distance": r["final_identity_distance"][:1], "test_acc": [90.0]} for r in rows]
    assert all(math.isnan(t["final_identity_distance_sd"]) and math.isnan(t["test_acc_sd"]) for t in by_depth(one))


def test_one_seed_cannot_tell():
    global SEEDS
    saved, SEEDS = SEEDS, 1
    try:
        a, text = _answer(_rows(lambda A, W0, m: orth.expm(A * math.log(m) / m)))
    finally:
        SEEDS = saved
    assert a["approaches_identity_with_depth"] is None
    assert text.startswith("cannot tell")


def test_a_distance_of_zero_at_a_depth_cannot_tell_and_says_why():
    """Skips that end exactly at I at some depth give log 0: no log-log slope. The slope was
    taken over the other depths (a "yes" here), or, with no depth left, the verdict blamed too
    few seeds or depths."""
    def at_identity_when_deep(A, W0, m):
        return orth.expm(A * math.log(m) / m) if m < 16 else torch.eye(DIM, dtype=W0.dtype).expand_as(W0)

    a, text = _answer(_rows(at_identity_when_deep))
    assert a["zero_distance_at"] == [16] and a["falls_with_depth"] is None
    assert a["approaches_identity_with_depth"] is None
    assert text.startswith("cannot tell (the distance is 0 at m = 16: no log-log slope)"), text
    rows = _rows(lambda A, W0, m: torch.eye(DIM, dtype=W0.dtype).expand_as(W0))  # started at I, never moved
    for r in rows:
        r["initial_identity_distance"] = np.zeros_like(r["initial_identity_distance"])
    a, text = _answer(rows)
    assert a["started_at_identity"] and a["zero_distance_at"] == DEPTHS
    assert text.startswith("cannot tell (the distance is 0 at m = 2, 4, 8, 16: no log-log slope)"), text


def test_the_classifier_depth_section_says_a_distance_of_zero_has_no_slope(tmp_path):
    """The report's "skip distance vs depth" row of a variant whose skips sit at I at a depth
    said "cannot tell (fewer than two seeds at two depths)" with two seeds at three depths, or
    gave a slope over the depths left."""
    from orthogonal_skip_connections.report.classification import RunRecord
    from orthogonal_skip_connections.report.depth import (
        depth_groups,
        depth_markdown,
        depth_tables,
    )

    depths = {"resnet20": 9, "resnet32": 15, "resnet56": 27}
    ends = {"fixed_orth": lambda m: 0.0, "learnable_orth": lambda m: 0.0 if m == 15 else 3.0 / m,
            "linear": lambda m: 3.0 / m}
    runs = [RunRecord(tmp_path / f"{v}{model}{seed}", {"task": f"digits/{model}", "variant": v, "seed": seed,
                                                      "dataset": "digits", "model_type": model},
                      {"status": "completed", "test_acc": 90.0}, [],
                      [{"name": f"stages.0.{i}.skip", "identity_distance": end(m) * (1 + seed)} for i in range(m)])
            for v, end in ends.items() for model, m in depths.items() for seed in (0, 1)]
    groups = depth_groups(runs)
    (key, table), = depth_tables(groups).items()
    rows = {t["variant"]: t for t in table}
    assert rows["fixed_orth"]["zero_at"] == [9, 15, 27] and rows["learnable_orth"]["zero_at"] == [15]
    assert math.isnan(rows["learnable_orth"]["slope"]) and rows["linear"]["zero_at"] == []
    assert rows["linear"]["slope"] == pytest.approx(-1.0)  # 3 / m and 6 / m
    md = "\n".join(depth_markdown(key, table, []))
    assert "cannot tell: the distance is 0 at m = 9, 15, 27: no log-log slope" in md
    assert "cannot tell: the distance is 0 at m = 15: no log-log slope" in md
    assert "fewer than two seeds" not in md


def test_the_block_profile_averages_a_seeds_runs_before_the_seeds(tmp_path):
    """profile_rows' "mean over seeds" was a mean over runs: a seed with three runs of a sweep
    over a setting the variant ignores weighed three times, where the depth table beside it
    (depth_tables) averages each seed's runs first."""
    from orthogonal_skip_connections.report.classification import RunRecord
    from orthogonal_skip_connections.report.depth import depth_tables, profile_rows

    m = 9

    def run(seed, rep, d):
        skips = [{"name": f"stages.{i // 3}.{i % 3}.skip", "identity_distance": d * (1 + i // 3)} for i in range(m)]
        return RunRecord(tmp_path / f"s{seed}r{rep}", {"task": "digits/resnet20", "variant": "fixed_orth", "seed": seed,
                                                      "dataset": "digits", "model_type": "resnet20"},
                         {"status": "completed", "test_acc": 90.0}, [], skips)

    groups = {"digits/resnet{20}": [run(0, rep, 1.0) for rep in range(3)] + [run(1, 0, 4.0)]}
    (key, (row,)), = profile_rows(groups).items()
    assert row["seeds"] == 2
    assert row["first"] == pytest.approx(2.5) and row["last"] == pytest.approx(2.5 * 3)  # (1 + 4) / 2, stage 2 x3
    assert row["stages"] == pytest.approx({0: 2.5, 1: 5.0, 2: 7.5})
    (cell,) = depth_tables(groups)[key][0]["cells"]
    assert cell["seeds"] == 2 and cell["dist_mean"] == pytest.approx(np.mean([2.5 * (1 + 2 + 3) / 3]))


# --------------------------------------------------------------------------- teacher-student defaults


def test_teacher_student_defaults_show_the_modified_resnets_fitting(tmp_path):
    """The app's defaults (the blog's Nesterov setting) at a smaller data size but the same
    10,000 steps: the modified ResNets fit the data in at least one of three seeds, and
    the table says which statistic it shows."""
    from orthogonal_skip_connections.experiments import teacher_student
    from orthogonal_skip_connections.experiments._app import compose

    cfg = compose("teacher_student", ["archs=[sum_modified,modified_resnet]", "n_train=2000", "n_test=200",
                                      "epochs=1000", "seeds=3", "log_every=5000", "progress=false"])
    assert cfg.optimizer == "nesterov" and cfg.d == 5 and cfg.batch_size == 200  # the defaults kept
    summary = teacher_student.main.run(cfg, tmp_path / "run")
    assert summary["meta"]["steps"] == 10_000
    for arch in ("sum_modified", "modified_resnet"):
        assert summary[arch]["fits_seeds"] >= 1, summary[arch]
    report = summary["report"]
    assert "geometric mean" in report["tables"][0]["caption"]
    assert "+ x" in report["tables"][0]["note"]  # why the two rows agree
    assert any("sum_modified: f(x) = W2^T ReLU((W1+I)^T x)" in m for m in report["measures"])
    assert "fit the data" in report["verdict"]


def test_runs_found_are_in_the_same_order_whatever_the_order_of_the_dirs_given(tmp_path):
    """osc report a b and osc report b a write the same report: the runs found (whose ties,
    such as one seed run twice, keep this order in results.csv) and the other apps' sections
    follow the run dirs' paths, not the order of the dirs on the command line."""
    import json

    from orthogonal_skip_connections.report.classification import LABELS, find_runs

    labels = {key: 1 for key in LABELS} | {"task": "digits/resnet20", "variant": "identity", "seed": 0}
    for sweep in ("b", "a"):
        for name, meta in (("run", {"app": "run_experiments", "labels": labels}), ("other", {"app": "theorem"})):
            d = tmp_path / sweep / name
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps(meta))
            (d / "summary.json").write_text(json.dumps({"status": "completed", "test_acc": 50.0}))
    found = [find_runs([tmp_path / first, tmp_path / second]) for first, second in (("a", "b"), ("b", "a"))]
    runs, others = ([[r.path for r in f[0]] for f in found], [f[1] for f in found])
    assert runs[0] == runs[1] == [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    assert others[0] == others[1] == [tmp_path / "a" / "other", tmp_path / "b" / "other"]


def test_other_apps_runs_without_a_summary_are_named_with_what_continues_them(tmp_path, capsys):
    """A report cannot show an app's run that has no summary.json yet; it names it, saying
    whether it is still running, stopped after saving what it resumes from (two_stage's
    parts.json), or stopped before; a report of such runs alone says so rather than "no run
    dirs found"."""
    import fcntl
    import json

    from orthogonal_skip_connections.cli import main as osc
    from orthogonal_skip_connections.report import build_report

    def run_dir(name, app, summary=None):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"app": app, "labels": {}}))
        if summary is not None:
            (d / "summary.json").write_text(json.dumps(summary))
        return d

    report = {"title": "theorem", "question": "q?", "tables": [], "verdict": "v.", "figures": []}
    run_dir("done", "theorem", {"status": "completed", "report": report})
    run_dir("killed", "theorem")
    (run_dir("parts", "two_stage") / "parts.json").write_text('{"seeds": {}}')
    (run_dir("cut", "two_stage") / "parts.json").write_text('{"seeds": {"0": [')
    running = run_dir("running", "two_stage")
    fd = os.open(running / ".lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held as by a run going on
        md = build_report([tmp_path / "runs"], tmp_path / "out")["report"].read_text()
    finally:
        os.close(fd)
    runs = tmp_path / "runs"
    assert (f"Not in this report, without a summary.json yet: {runs / 'cut'} (two_stage: stopped, its parts.json "
            f"not whole: move it away to run it anew); {runs / 'killed'} (theorem: stopped before it saved "
            f"anything to resume from; run it again); {runs / 'parts'} (two_stage: stopped after it saved parts.json; "
            f"resume=true with its hydra.run.dir continues it); {runs / 'running'} (two_stage: still running).") in md
    assert "## done: theorem" in md and md.count("\n## ") == 1  # the finished run alone has a section
    assert osc(["report", str(runs / "parts"), "--out", str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err == (f"error: no finished run under {runs / 'parts'}; without a summary.json yet: "
                                       f"{runs / 'parts'} (two_stage: stopped after it saved parts.json; resume=true "
                                       "with its hydra.run.dir continues it)\n")
    assert not (tmp_path / "out2").exists()


def test_runs_of_different_apps_side_by_side_are_not_named_as_one_sweeps_jobs(tmp_path):
    """Runs of several apps in one dir were named as jobs of one sweep: "theorem (seeds=(default),
    steps=(default), ...)", keys theorem does not have, in an order that changed between reports."""
    import json

    from orthogonal_skip_connections.report import _sweep_names

    def run_dir(name, app, overrides):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"app": app, "labels": {}}))
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        return d

    theorem = run_dir("theorem", "theorem", [])
    ts = [run_dir(f"ts{i}", "teacher_student", [f"steps={s}", f"seeds={n}"]) for i, (s, n) in
          enumerate(((100, 2), (200, 3), (100, 3)))]
    stage = run_dir("two_stage", "two_stage", ["stage1_epochs=2"])
    names = _sweep_names([theorem, *ts, stage])
    assert names[theorem] == "theorem" and names[stage] == "two_stage"
    assert [names[d] for d in ts] == ["ts0 (steps=100, seeds=2)", "ts1 (steps=200, seeds=3)",
                                      "ts2 (steps=100, seeds=3)"]


def test_the_in_short_answer_is_not_cut_at_the_minus_inside_a_norm():
    """The theorem's line read "theorem: max_i ||h_i." (cut at the " - " of ||h_i - W_i||)."""
    from orthogonal_skip_connections.report import _first_clause

    verdict = "max_i ||h_i - W_i||_L decays at least at the rate log(m)/m for 1 of 3 maps h; the others do not"
    assert _first_clause(verdict) == "max_i ||h_i - W_i||_L decays at least at the rate log(m)/m for 1 of 3 maps h"
    assert _first_clause("no: in none of 2 settings - blobs: 0.1; parity: 0.2") == "no: in none of 2 settings"


def test_a_runs_status_is_read_once_per_report(tmp_path):
    """A run that took (or let go of) its lock while a report was built had two statuses in it:
    "1 still running" and "1 incomplete" for one run (results_rows and stopped_note each asked)."""
    import fcntl

    from orthogonal_skip_connections.report.classification import RunRecord, stopped_note

    record = RunRecord(tmp_path, {"task": "t", "variant": "identity"}, None)
    assert record.status == "interrupted"
    fd = os.open(tmp_path / ".lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the run is going again, after the report read its status
        assert record.status == "interrupted" and "interrupted" in stopped_note([record])
        assert RunRecord(tmp_path, {}, None).status == "running"  # (a report built now reads it anew)
    finally:
        os.close(fd)
