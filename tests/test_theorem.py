"""The theorem's construction (construction.py) and the `theorem` app."""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from orthogonal_skip_connections.maths import construction as cons
from orthogonal_skip_connections.experiments import theorem
from orthogonal_skip_connections.experiments._app import CONFIG_DIR
from orthogonal_skip_connections.experiments._app import compose as compose_app
from orthogonal_skip_connections.runs import UserError

TINY = ["ms=[1,2,4,8]", "n_points=24", "n_pairs=16", "progress=false"]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="theorem", overrides=overrides)


def _setup(d=3, angle=1.0, stretch=1.5, eps=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = cons.unit_skew(d, g)
    h = cons.tanh_map(d, angle, stretch, eps, g)
    x = cons.sample_ball(32, d, 2.0, g)
    pairs = (cons.sample_ball(16, d, 2.0, g), cons.sample_ball(16, d, 2.0, g))
    return h, S, x, pairs


def test_map_family_inverse_and_jacobian():
    h, _, x, _ = _setup()
    assert torch.equal(h(torch.zeros(1, 3, dtype=torch.float64)), torch.zeros(1, 3, dtype=torch.float64))
    assert torch.allclose(h.jacobian(torch.zeros(3, dtype=torch.float64)), h.L)  # Dh(0) = L
    assert torch.linalg.det(h.L) > 0
    auto = torch.func.vmap(torch.func.jacrev(h))(x)
    assert torch.allclose(h.jacobian(x), auto, atol=1e-13)
    y, residual = h.inverse(h(x))
    assert residual < 1e-14 and torch.allclose(y, x, atol=1e-13)
    with pytest.raises(ValueError, match="invertible"):
        cons.tanh_map(3, 0.0, 2.0, 0.6, torch.Generator())  # eps >= s_min = 1/2


def test_composition_is_exact_for_linear_h_and_W_m_identity():
    """eps = 0: h = L is linear; with W_m = I the blocks telescope to g_m = h, up to round-off."""
    h, S, x, pairs = _setup(eps=0.0)
    for m in (1, 3, 16):
        con = cons.build_construction(h, m, S, rotation_scale=2.0, last_skip_identity=True)
        assert torch.allclose(con.W[m], torch.eye(3, dtype=torch.float64))
        r = cons.measure_construction(con, x, pairs)
        assert r["composition_error"] < 1e-12, r
        assert r["structural_error"] < 1e-14
        # a linear h_i - W_i: its Lipschitz constant is its norm, and both estimates agree
        assert r["lipschitz_gap_pairs"] == pytest.approx(r["lipschitz_gap_jacobian"], rel=0.2)
        assert r["lipschitz_gap_pairs"] <= r["lipschitz_gap_jacobian"] * (1 + 1e-9)


def test_composition_is_g_m_so_W_m_other_than_identity_breaks_it():
    """h_m o ... o h_1 = g_m = W_m^T h(W_m .): not h when W_m does not commute with h."""
    h, S, x, pairs = _setup(eps=0.0)
    con = cons.build_construction(h, 8, S, rotation_scale=2.0)
    r = cons.measure_construction(con, x, pairs)
    assert r["composition_error"] > 1e-2
    assert r["composition_error"] == pytest.approx(r["structural_error"], rel=1e-9)


def test_a_rises_to_one_so_the_last_block_ends_at_h_itself():
    """a_i = (1 - c)^(m - i): a_0 = (1 - c)^m and a_m = 1, so with W_m = I the last g_m is h
    itself, for a non-linear h too (there a_m != 1 would leave g_m = h(a_m .) / a_m != h),
    and the composition h_m o ... o h_1 equals h to round-off."""
    h, S, x, pairs = _setup(eps=0.3)
    for m in (1, 5):
        con = cons.build_construction(h, m, S, rotation_scale=2.0, last_skip_identity=True)
        c = math.log(m) / m
        assert con.a.tolist() == pytest.approx([(1 - c) ** (m - i) for i in range(m + 1)], rel=1e-14)
        assert con.a[-1] == 1.0
        r = cons.measure_construction(con, x, pairs)
        assert r["structural_error"] < 1e-13 and r["composition_error"] < 1e-12, r


def test_block_jacobians_are_autograds():
    """Dg_k(x) = W_k^T Dh(a_k W_k x) W_k, which the Lipschitz gap's Jacobian estimate is built
    from, against autograd's Jacobian of g_k itself, at every block k (k = 0: the identity)."""
    h, S, x, _ = _setup(eps=0.3)
    con = cons.build_construction(h, 4, S, rotation_scale=2.0)
    k = torch.arange(5)
    for i in range(5):
        auto = torch.func.vmap(torch.func.jacrev(lambda p: con.g(k[i:i + 1], p[None])[0, 0]))(x)
        torch.testing.assert_close(con.g_jacobian(k[i:i + 1], x)[0], auto, rtol=0, atol=1e-12)


def test_sample_ball_is_uniform_in_the_ball_then_on_its_sphere():
    """The first half of the points uniform in volume (|x|^d / R^d uniform on [0, 1], directions
    isotropic), the second half on the sphere |x| = R."""
    import scipy.stats

    x = cons.sample_ball(4000, 3, 2.0, torch.Generator().manual_seed(0))
    r = torch.linalg.vector_norm(x, dim=-1)
    assert scipy.stats.kstest(((r[:2000] / 2.0) ** 3).numpy(), "uniform").pvalue > 1e-3
    torch.testing.assert_close(r[2000:], torch.full((2000,), 2.0, dtype=torch.float64))
    assert float((x / r[:, None]).mean(0).norm()) < 0.06  # no preferred direction: ~ sqrt(3 / 4000)


def test_measure_map_draws_its_close_pairs_pair_distance_R_apart(monkeypatch):
    """The Lipschitz gap's pairs: the first half independent points of B_R, the second half
    p and p + pair_distance R v with |v| = 1 (close pairs, where a Lipschitz ratio is local)."""
    from orthogonal_skip_connections.analysis import rates

    seen = []

    def measure(con, x, pairs):
        seen.append(pairs)
        return {k: 0.1 for k in rates.ROW_KEYS} | {"per_block": {}}

    R, n_pairs = 2.0, 16
    spec = {"angle": 0.5, "stretch": 1.2, "eps": 0.2}
    monkeypatch.setattr(cons, "measure_construction", measure)  # the pairs, as measure_map draws them
    rates.measure_map("h", spec, cons.unit_skew(3, torch.Generator().manual_seed(1)), [2], dim=3, radius=R, seed=0,
                      n_points=8, n_pairs=n_pairs, pair_distance=0.05, c_scale=1.0, rotation_scale=1.0,
                      last_skip_identity=False, slope_tolerance=0.25, exact_tolerance=1e-9)
    (p, q), = seen
    dist = torch.linalg.vector_norm(p - q, dim=-1)
    torch.testing.assert_close(dist[n_pairs // 2:], torch.full((n_pairs // 2,), 0.05 * R, dtype=torch.float64))
    assert float(dist[: n_pairs // 2].min()) > 0.05 * R
    assert float(torch.linalg.vector_norm(p, dim=-1).max()) <= R + 1e-12


def test_rates_for_dh0_identity_and_the_first_block_for_dh0_far_from_identity():
    h, S, x, pairs = _setup(angle=0.0, stretch=1.0, eps=0.5)
    rows = [cons.measure_construction(cons.build_construction(h, m, S), x, pairs) for m in (4, 16, 64)]
    ms = [r["m"] for r in rows]
    ref = cons.loglog_slope(ms, [cons.reference_rate(m) for m in ms])
    for key in ("lipschitz_gap", "identity_distance"):
        assert cons.loglog_slope(ms, [r[key] for r in rows]) < ref + 0.25
    # Dh(0) = a quarter turn: block 1 is ~ W_1^T Dh(0) W_1, its gap stays ||Dh(0) - I|| = sqrt 2
    h, S, x, pairs = _setup(angle=math.pi / 2, stretch=1.0, eps=0.5)
    r = cons.measure_construction(cons.build_construction(h, 64, S), x, pairs)
    assert r["lipschitz_gap_block1"] == pytest.approx(math.sqrt(2), rel=0.02)
    assert r["lipschitz_gap_rest"] < 0.2


def test_rate_checks_say_at_rate_only_for_a_decay_as_fast_as_log_m_over_m():
    """The theorem app's verdicts (rates.rate_checks): a quantity proportional to log(m)/m is
    "at rate", one falling like m^-0.2 (slope -0.2 against log(m)/m's -0.60 over m = 2..256,
    outside the 0.25 tolerance) is not, one at the round-off floor has no slope (None); the
    composition is exact only when every m's error is below the tolerance."""
    from orthogonal_skip_connections.analysis import rates

    ms = [2 ** k for k in range(1, 9)]  # config/theorem.yaml's m = 2, 4, ..., 256

    def rows(lip, ide, comp=lambda m: 1e-12):
        return [{"m": m, "composition_error": comp(m), "lipschitz_gap": lip(m), "lipschitz_gap_rest": lip(m),
                 "identity_distance": ide(m)} for m in ms]

    def checks(r, comp_tol=1e-9):
        slope = rates.slopes(r, floor=1e-9)
        return slope, rates.rate_checks(r, slope, slope_tolerance=0.25, exact_tolerance=comp_tol)

    at_rate = lambda m: 3.0 * math.log(m) / m  # noqa: E731
    slow = lambda m: 0.8 * m ** -0.2  # noqa: E731
    slope, c = checks(rows(at_rate, slow))
    assert slope["reference_log_m_over_m"] == pytest.approx(slope["lipschitz_gap"], abs=1e-12)
    assert slope["identity_distance"] == pytest.approx(-0.2, abs=1e-12)
    assert c == {"composition_exact": True, "lipschitz_gap_at_rate": True, "identity_distance_at_rate": False,
                 "rate_can_be_told": True}
    # faster than the rate (m^-2) counts as at it; a slope just inside / just outside the tolerance
    ref = slope["reference_log_m_over_m"]
    assert checks(rows(lambda m: m ** -2.0, lambda m: m ** (ref + 0.24)))[1]["identity_distance_at_rate"] is True
    assert checks(rows(lambda m: m ** -2.0, lambda m: m ** (ref + 0.26)))[1]["lipschitz_gap_at_rate"] is True
    assert checks(rows(lambda m: m ** -2.0, lambda m: m ** (ref + 0.26)))[1]["identity_distance_at_rate"] is False
    # at the floor at every m but one: no slope to judge, neither True nor False
    floor = lambda m: 1e-12 if m > 2 else 0.5  # noqa: E731
    _, c = checks(rows(floor, slow))
    assert c["lipschitz_gap_at_rate"] is None and c["identity_distance_at_rate"] is False
    # one m with a composition error above the tolerance: not exact
    _, c = checks(rows(at_rate, at_rate, comp=lambda m: 1e-6 if m == 64 else 1e-12))
    assert c == {"composition_exact": False, "lipschitz_gap_at_rate": True, "identity_distance_at_rate": True,
                 "rate_can_be_told": True}
    # and the one-sentence verdict counts them
    maps = {"a": {"checks": checks(rows(at_rate, slow))[1]}, "b": {"checks": checks(rows(floor, at_rate))[1]}}
    assert rates.verdict(maps) == (
        "max_i ||h_i - W_i||_L decays at least at the rate log(m)/m for 1 of 2 maps h, max_i ||I - W_i|| for 1 of "
        "2; the composition h_m o ... o h_1 equals h to round-off for 2 of 2 (1 map(s) without a fitted slope).")


@pytest.mark.parametrize("ms", [[2, 4], [1, 2, 4], [2, 3], [2, 4, 8], [4]])
def test_m_over_which_log_m_over_m_hardly_falls_cannot_tell_a_rate(ms):
    """`osc theorem ms=[2,4]` said "decays at least at the rate log(m)/m for 3 of 3 maps":
    log(m)/m is the same at m = 2 and 4, so anything that does not rise passed. Where its slope
    over the m is within the tolerance of 0 (a flat quantity would pass), no rate is judged."""
    from orthogonal_skip_connections.analysis import rates

    rows = [{"m": m, "composition_error": 1e-12, "lipschitz_gap": 1.0, "lipschitz_gap_rest": 1.0,
             "identity_distance": 1.0} for m in ms]  # flat: no decay at all
    slope = rates.slopes(rows, floor=1e-9)
    c = rates.rate_checks(rows, slope, slope_tolerance=0.25, exact_tolerance=1e-9)
    assert c["rate_can_be_told"] is False and c["lipschitz_gap_at_rate"] is None and c["identity_distance_at_rate"] is None
    text = rates.verdict({"a": {"checks": c, "rows": rows}, "b": {"checks": c, "rows": rows}})
    assert text.startswith(f"cannot tell a rate over m = {', '.join(map(str, ms))}: log(m)/m falls too little")
    assert text.endswith("equals h to round-off for 2 of 2.")
    wide = [{**rows[0], "m": m} for m in (2, 4, 8, 16)]  # from m = 2 to 16 it can: the flat quantity fails
    c = rates.rate_checks(wide, rates.slopes(wide, floor=1e-9), slope_tolerance=0.25, exact_tolerance=1e-9)
    assert c["rate_can_be_told"] is True and c["lipschitz_gap_at_rate"] is False


def test_loglog_slope():
    assert cons.loglog_slope([2, 4, 8], [1 / 2, 1 / 4, 1 / 8]) == pytest.approx(-1.0)
    assert cons.loglog_slope([1, 2], [1.0, 0.5]) is None  # m = 1 is left out
    assert cons.loglog_slope([2, 4, 8], [1e-16, 1e-16, 1e-15], floor=1e-9) is None


def test_app_runs_at_tiny_size_and_writes_its_files(tmp_path):
    cfg = _cfg(TINY + ["maps.dh0_identity.eps=0.0", "last_skip_identity=true"])
    summary = theorem.main.run(cfg, tmp_path)
    names = {"config.yaml", "summary.json", "theorem_lipschitz_gap.png"} | {f"theorem_{n}.png" for n in cfg.maps}
    assert names <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["ms"] == [1, 2, 4, 8] and set(saved["maps"]) == set(cfg.maps)
    for res in saved["maps"].values():
        assert [row["m"] for row in res["rows"]] == [1, 2, 4, 8]
        assert {"m", "composition_error", "lipschitz_gap", "identity_distance"} <= set(res["rows"][0])
        assert {"composition_error", "lipschitz_gap", "identity_distance"} <= set(res["slopes"])
    # h linear (h = I here) and W_m = I: the composition is h to round-off
    assert all(r["composition_error"] < 1e-12 for r in saved["maps"]["dh0_identity"]["rows"])
    assert saved["maps"]["dh0_identity"]["checks"]["composition_exact"] is True
    # Dh(0) far from I: the first block keeps a gap of about ||Dh(0) - I|| at every m
    far = summary["maps"]["dh0_far"]
    assert far["rows"][-1]["lipschitz_gap_block1"] > 0.9 * far["h"]["dh0_identity_distance"] > 1.0
    # the composition error is a length in x's units, the other quantities ratios of lengths
    assert any("composition error" in m and "units of x" in m for m in summary["report"]["measures"])
    # one map linear (eps = 0): its blocks 2.. differ from the others', so the combined figure's
    # legend claims no agreement from block 2 on (nan or far above its 1.5)
    assert not theorem.agreement([r["per_block"]["lipschitz_gap"] for r in saved["maps"].values()]) < 1.5
    # osc report of this run into its own dir: said so (it said "no run dirs found under" the run's dir)
    from orthogonal_skip_connections.report import build_report

    with pytest.raises(UserError, match=f"the only run under {tmp_path} is {tmp_path}, which is --out"):
        build_report([tmp_path], tmp_path)
    assert build_report([tmp_path], tmp_path / "report")["report"].is_file()


def test_figure_helpers_reference_flat_note_and_agreement():
    """The scaled log(m)/m of every theorem figure meets the curve at the first m with
    log(m)/m > 0 (m = 1 has 0), m = 2 and m = 4 share log(m)/m (the flat first segment the
    figures explain), and the per-block agreement ignores block 1, the one that carries Dh(0)."""
    ref, at = theorem.reference([1, 2, 4, 8], [None, 0.5, 0.45, 0.3])
    assert at == 2 and ref[0] == 0.0
    assert ref[1] == pytest.approx(0.5) and ref[2] == pytest.approx(0.5)  # log 2 / 2 = log 4 / 4
    assert ref[3] == pytest.approx(0.5 * (math.log(8) / 8) / (math.log(2) / 2))
    assert theorem.reference([1], [0.3]) == (None, None)
    assert theorem.reference([2, 4], [None, 0.2])[1] == 4  # a missing value is skipped, not divided by
    assert theorem.flat_note([2, 4, 8]) is not None and "log 2 / 2 = log 4 / 4" in theorem.flat_note([1, 2, 4])
    assert theorem.flat_note([2, 8, 32]) is None
    assert theorem.agreement([[1e-4, 2e-4, 3e-2], [1.4, 2.2e-4, 3e-2], [2.0, 2e-4, 2.7e-2]]) == pytest.approx(3 / 2.7)
    assert math.isnan(theorem.agreement([[1.0, 2.0], [1.0]]))  # different m: nothing to compare


@pytest.mark.parametrize(
    "override,match",
    [
        ("ms=[0,4]", "every m in ms must be an integer >= 1; got 0"),
        ("dim=1", "dim must be an integer >= 2"),
        ("maps.dh0_far.eps=0.7", "maps.dh0_far.eps must be < min"),
        ("maps.dh0_far.eps=abc", "maps.dh0_far.eps must be a number; got 'abc'"),
        ("+maps.dh0_far.beta=1", "unknown key 'maps.dh0_far.beta'; allowed in maps.dh0_far: angle, stretch, eps"),
        ("c_scale=3.0", "must be < 1"),
        ("pair_distance=0", "pair_distance must be a finite number > 0"),
        ("progress=maybe", "progress must be true or false"),
    ],
)
def test_bad_config_is_one_user_error(override, match, tmp_path):
    with pytest.raises(UserError, match=match):
        theorem.main.run(compose_app("theorem", [override]), tmp_path)
    assert not (tmp_path / "config.yaml").exists()  # nothing written for a bad run


def test_module_entry_point_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """What ``python -m ...experiments.theorem ms=[0]`` runs: the module's ``main`` (its
    ``__main__`` guard: tests/test_apps.py; a fresh interpreter's stderr: tests/test_training.py)."""
    assert theorem.main([f"hydra.run.dir={tmp_path}", "ms=[0]"]) == 2
    assert capsys.readouterr().err.strip() == "error: every m in ms must be an integer >= 1; got 0"
    assert not (tmp_path / "summary.json").exists()


def test_a_map_can_be_added_from_the_command_line_and_a_malformed_one_is_one_line():
    """The config says "add or remove maps freely": OmegaConf refused a dict into a MapSpec
    slot (``+maps.x={...}`` failed with "dict is not a subclass of MapSpec", naming x)."""
    from orthogonal_skip_connections.experiments import load_app

    app = load_app("theorem")
    cfg = app.config(["+maps.x={angle:1,stretch:2,eps:0.1}", "~maps.dh0_far"])
    assert cfg.maps["x"] == theorem.MapSpec(1.0, 2.0, 0.1) and "dh0_far" not in cfg.maps
    assert all(isinstance(spec, theorem.MapSpec) for spec in cfg.maps.values())
    for override, words in (("+maps.x={angle:1,stretch:1}", "maps.x lacks eps"),
                            ("maps.dh0_far.angle=abc", "maps.dh0_far.angle must be a number"),
                            ("+maps.x={angle:1,stretch:3,eps:0.5}", "maps.x.eps must be < min")):
        with pytest.raises(UserError, match=words):
            app.config([override])
