"""Teacher-student study (issue 4): hand-written gradients, seed independence, the
teacher as its own student, the symmetry-aware distance, and the app end to end."""

import itertools
import json
import math
import statistics
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from hydra import compose, initialize_config_dir

from orthogonal_skip_connections.maths import orthogonal as O
from orthogonal_skip_connections.experiments import teacher_student as app
from orthogonal_skip_connections.analysis import teacher_student as tsa
from orthogonal_skip_connections.models import teacher_student as ts
from orthogonal_skip_connections.train import teacher_student as tst
from orthogonal_skip_connections.experiments._app import CONFIG_DIR
from orthogonal_skip_connections.runs import UserError

ARCHS = list(ts.ARCHS)
TWO_LAYER = [a for a in ARCHS if ts.ARCHS[a].two_layer]
MODULE = "orthogonal_skip_connections.experiments.teacher_student"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """d x d matrices: one thread is fastest and avoids fighting over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> tst.TeacherStudentConfig:
    opts = dict(d=4, n_train=120, n_test=60, batch_size=20, steps=24, log_every=8, lr=1e-2, dtype="float64")
    opts.update(kw)
    return tst.TeacherStudentConfig(**opts)


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("teacher_student", overrides=list(overrides))


# --------------------------------------------------------------------------- maths


@pytest.mark.parametrize("output", ts.OUTPUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_hand_written_gradients_match_autograd(arch, output):
    gens = [ts.seed_generator(s, "model") for s in range(3)]
    params = ts.init_weights(arch, 5, gens, "small", 1.0, "haar")
    X = torch.randn(3, 5, 11, dtype=torch.float64)  # (S, d, B)
    k = 1 if ts.scalar_output(arch, output) else 5
    Y = torch.randn(3, k, 11, dtype=torch.float64)
    loss, grads = ts.loss_and_grads(arch, params, X, Y, output)
    leaves = {n: w.clone().requires_grad_() for n, w in params.items()}
    ref = ts.mse(ts.predict(arch, leaves, X, output), Y)
    ref_grads = torch.autograd.grad(ref.sum(), list(leaves.values()))
    torch.testing.assert_close(loss, ref.detach())
    assert set(grads) == set(leaves)
    for name, g in zip(leaves, ref_grads):
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12)


def test_formulas_as_written():
    """The column-major code computes the formulas of the paper and the blog."""
    gens = [ts.seed_generator(0, "model")]
    x = torch.randn(4, dtype=torch.float64)
    I = torch.eye(4, dtype=torch.float64)
    X = x[None, :, None]  # (S=1, d, B=1)
    relu = torch.relu
    for arch, f in {
        "li_yuan": lambda p: relu((I + p["W"]).T @ x).abs().sum(),
        "vanilla": lambda p: relu(p["W"].T @ x).abs().sum(),
        "resnet_block": lambda p: p["W2"].T @ relu(p["W1"].T @ x) + x,
        "sum_modified": lambda p: p["W2"].T @ relu((p["W1"] + I).T @ x),
        "modified_resnet": lambda p: p["W2"].T @ relu((p["W1"] + I).T @ x) + x,
        "orth_resnet": lambda p: p["Q"] @ x + p["W2"].T @ relu(p["W1"].T @ x),
    }.items():
        p = {n: w[0] for n, w in ts.init_weights(arch, 4, gens, "gaussian", 2.0, "haar").items()}
        batched = {n: w[None] for n, w in p.items()}
        want = f(p)
        torch.testing.assert_close(ts.predict(arch, batched, X, "vector")[0, :, 0], want.reshape(-1))
        torch.testing.assert_close(ts.predict(arch, batched, X, "sum")[0, 0, 0], want.sum())


# --------------------------------------------------------------------------- optimiser


def _student_and_optimizer(arch, optimizer, momentum=0.0, orth_update="polar", S=3, d=4, lr=0.05, **kw):
    cfg = tiny(d=d, optimizer=optimizer, momentum=momentum, orth_update=orth_update, lr=lr, **kw)
    gens = [ts.seed_generator(s, "model") for s in range(S)]
    student = ts.Student(arch, ts.init_weights(arch, d, gens, "small", 1.0, "haar"),
                         orth_method=tst.ORTH_UPDATES[orth_update])
    return student, tst.build_optimizer(student, cfg)


def _gradients(student, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in student.tensors().items()}
            for _ in range(steps)]


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.7), ("nesterov", 0.7), ("adam", 0.0)])
def test_torch_optimizer_steps_follow_the_formulas(optimizer, momentum):
    """The loop's SGD / heavy ball / Nesterov / Adam (torch.optim through osc.optimizer) take
    the steps of the formulas written out here (those of the loop's former hand-written
    optimiser) on (S, d, d) weights: buffer b = g at the first step, then b <- mu b + g,
    direction b (heavy ball) or g + mu b (Nesterov); Adam with betas (0.9, 0.999), eps 1e-8,
    bias-corrected."""
    lr = 0.05
    student, opt = _student_and_optimizer("modified_resnet", optimizer, momentum, lr=lr)
    want = {n: p.detach().clone() for n, p in student.tensors().items()}
    state = {n: {} for n in want}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, grads in enumerate(_gradients(student, 4), start=1):
        for n, p in student.tensors().items():
            p.grad = grads[n].clone()
        opt.step()
        for n, g in grads.items():
            st = state[n]
            if optimizer == "adam":
                st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
                st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
                D = (st["m"] / (1 - b1**t)) / ((st["v"] / (1 - b2**t)).sqrt() + eps)
            elif momentum == 0:
                D = g
            else:
                st["b"] = momentum * st["b"] + g if "b" in st else g.clone()
                D = g + momentum * st["b"] if optimizer == "nesterov" else st["b"]
            want[n] = want[n] - lr * D
        for n, p in student.tensors().items():
            torch.testing.assert_close(p.detach(), want[n], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("nesterov", 0.6), ("adam", 0.0)])
@pytest.mark.parametrize("orth_update", list(tst.ORTH_UPDATES))
def test_q_moves_by_the_library_retraction_rule(orth_update, optimizer, momentum):
    """Q (orth_resnet) is a retracted matrix of osc.optimizer: heavy ball on the Euclidean
    gradient, m <- mu m + G (mu = momentum, beta1 = 0.9 for Adam), then the retraction
    along m: polar(W - lr W skew(W^T m)) for ``polar``, the spectral steepest step of
    length lr for ``steepest``. With sgd and no momentum this is the loop's original
    step (the Riemannian gradient, then the polar factor)."""
    lr = 0.05
    student, opt = _student_and_optimizer("orth_resnet", optimizer, momentum, orth_update, lr=lr)
    Q = student.tensors()["Q"]
    W, m = Q.detach().clone(), None
    mu = 0.9 if optimizer == "adam" else momentum
    for grads in _gradients(student, 4, seed=1):
        for n, p in student.tensors().items():
            p.grad = grads[n].clone()
        opt.step()
        G = grads["Q"]
        m = G.clone() if m is None or mu == 0 else mu * m + G
        if orth_update == "polar":
            W = O.polar(W - lr * O.tangent_gradient(W, m))
        else:
            W = O.steepest_step(W, m, lr)
        torch.testing.assert_close(Q.detach(), W, rtol=1e-10, atol=1e-12)
    assert float(O.orth_error(Q.detach()).max()) < 1e-12


def test_adam_upkeep_adaptive_moves_q_by_adams_step_in_so_d():
    """upkeep_adaptive=true: Q takes Adam's step in so(d) (osc.optimizer's retraction_adaptive).
    At the first step Adam's direction is sign(skew(W^T G)) entrywise, so every seed's Q moves
    by lr sqrt(d(d - 1)) in Frobenius norm (to O(lr^2)), whatever the gradient's scale; without
    it the step is lr x (the gradient's size), which the scale changes."""
    d, lr = 5, 1e-3
    moves = {}
    for adaptive in (False, True):
        for scale in (1.0, 1000.0):
            student, opt = _student_and_optimizer("orth_resnet", "adam", d=d, lr=lr, upkeep_adaptive=adaptive)
            Q = student.tensors()["Q"]
            W = Q.detach().clone()
            for n, g in _gradients(student, 1, seed=2)[0].items():
                student.tensors()[n].grad = scale * g
            opt.step()
            moves[adaptive, scale] = torch.linalg.matrix_norm(Q.detach() - W)  # (S,)
            assert float(O.orth_error(Q.detach()).max()) < 1e-12
    torch.testing.assert_close(moves[True, 1.0], torch.full((3,), lr * math.sqrt(d * (d - 1)), dtype=W.dtype),
                               rtol=1e-3, atol=0)
    torch.testing.assert_close(moves[True, 1000.0], moves[True, 1.0], rtol=1e-6, atol=0)
    assert bool((moves[False, 1000.0] > 100 * moves[False, 1.0]).all())
    with pytest.raises(ValueError, match="upkeep_adaptive=true needs optimizer=adam"):
        tiny(optimizer="sgd", upkeep_adaptive=True)


def test_student_q_is_refused_by_a_plain_torch_optimizer():
    student, _ = _student_and_optimizer("orth_resnet", "sgd")
    plain = torch.optim.SGD(student.parameters(), lr=0.1)
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(TypeError, match="retracted orthogonal matrix"):
        plain.step()


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    "kw",
    [
        dict(optimizer="adam", output="vector", upkeep_adaptive=True),  # Q: Adam's moments per seed's matrix
        dict(optimizer="nesterov", momentum=0.5, output="sum", orth_update="steepest"),
        dict(optimizer="sgd", n_train=0, output="vector", steps=70),  # fresh samples, two chunks
    ],
    ids=["adam-adaptive-vector", "nesterov-sum-steepest", "sgd-fresh"],
)
def test_vectorised_run_equals_single_seed_runs(kw):
    cfg = tiny(**kw)
    seeds = [3, 4, 5]
    together = tst.train(ARCHS, cfg, seeds)
    for i, s in enumerate(seeds):
        alone = tst.train(ARCHS, cfg, [s])
        for a in ARCHS:
            T, A = together[a], alone[a]
            np.testing.assert_array_equal(T.steps, A.steps)
            for name in T.teacher:  # the same random draws, bit for bit
                np.testing.assert_array_equal(T.teacher[name][i], A.teacher[name][0])
            np.testing.assert_array_equal(T.label_variance[i], A.label_variance[0])
            # the same trajectory, up to BLAS round-off
            for key in ("train_loss", "test_loss", "population_loss", "distance", "aligned_distance"):
                np.testing.assert_allclose(getattr(T, key)[i], getattr(A, key)[0], rtol=1e-10, atol=1e-12)
            for name in T.student:
                np.testing.assert_allclose(T.student[name][i], A.student[name][0], rtol=1e-10, atol=1e-12)
    # and the seeds really differ
    assert not np.allclose(together["li_yuan"].teacher["W"][0], together["li_yuan"].teacher["W"][1])


@pytest.mark.parametrize("n_train", [120, 0], ids=["fixed-set", "fresh-samples"])
def test_float64_run_sees_the_float32_runs_data(n_train):
    """A precision comparison needs one data set: the same seed gives the same teacher, test
    set and training inputs in float32 and float64 (torch's draws differ by dtype, so the
    inputs are drawn in float32 and upcast). Both start from one student, so the losses
    logged before any step agree to float32 round-off, and after a few steps of plain SGD on
    the same batches they still agree closely; on different data they would differ by the
    sampling noise of 60 test points (tens of percent)."""
    runs = {dt: tst.train(["li_yuan", "resnet_block"], tiny(dtype=dt, n_train=n_train, steps=16, optimizer="sgd"), [2])
            for dt in ("float32", "float64")}
    for a in ("li_yuan", "resnet_block"):
        t32, t64 = runs["float32"][a], runs["float64"][a]
        np.testing.assert_allclose(t32.label_variance, t64.label_variance, rtol=1e-5)
        for key in ("train_loss", "test_loss", "population_loss"):
            np.testing.assert_allclose(getattr(t32, key)[:, 0], getattr(t64, key)[:, 0], rtol=1e-5, err_msg=key)
            np.testing.assert_allclose(getattr(t32, key), getattr(t64, key), rtol=1e-3, err_msg=key)


def test_another_data_draw_keeps_the_teachers_and_starts():
    """data_draw = k > 0 trains each seed on another sample of inputs, with the same teacher and
    the same start: the population loss at step 0 (a function of teacher and student only)
    agrees to the last bit, the sample losses do not, and two draws differ from each other."""
    runs = {k: tst.train(["resnet_block"], tiny(data_draw=k, steps=4), [0, 1])["resnet_block"] for k in (0, 1, 2)}
    for k in (1, 2):
        for name in runs[0].teacher:
            np.testing.assert_array_equal(runs[k].teacher[name], runs[0].teacher[name])
        np.testing.assert_array_equal(runs[k].population_loss[:, 0], runs[0].population_loss[:, 0])
        assert np.all(np.abs(runs[k].train_loss[:, 0] / runs[0].train_loss[:, 0] - 1) > 1e-4)
        assert np.all(np.abs(runs[k].test_loss[:, 0] / runs[0].test_loss[:, 0] - 1) > 1e-4)
    assert np.all(runs[1].train_loss[:, 0] != runs[2].train_loss[:, 0])
    with pytest.raises(ValueError, match="data_draw must be an integer >= 0"):
        tiny(data_draw=-1)


def test_another_start_draw_keeps_the_teachers_and_data():
    """start_draw = k > 0 starts each seed's student elsewhere, with the same teacher and the
    same inputs: the labels' variance (teacher and data only) agrees to the last bit, the
    step-0 population loss (which depends on the student) does not."""
    runs = {k: tst.train(["resnet_block"], tiny(start_draw=k, steps=4), [0, 1])["resnet_block"] for k in (0, 1)}
    for name in runs[0].teacher:
        np.testing.assert_array_equal(runs[1].teacher[name], runs[0].teacher[name])
    np.testing.assert_array_equal(runs[1].label_variance, runs[0].label_variance)
    assert np.all(np.abs(runs[1].population_loss[:, 0] / runs[0].population_loss[:, 0] - 1) > 1e-4)
    with pytest.raises(ValueError, match="start_draw must be an integer >= 0"):
        tiny(start_draw=-2)
    with pytest.raises(ValueError, match="nothing to draw"):
        tiny(start_draw=1, student_init="teacher")


@pytest.mark.parametrize("output", ts.OUTPUTS)
def test_teacher_as_its_own_student_has_zero_loss_and_distance(output):
    cfg = tiny(student_init="teacher", output=output, optimizer="nesterov", momentum=0.9)
    for a, t in tst.train(ARCHS, cfg, [0, 1]).items():
        assert np.all(t.train_loss <= 1e-24), a
        assert np.all(t.test_loss <= 1e-24), a
        assert np.all(t.population_loss <= 1e-13 * t.label_variance[:, None]), a
        assert np.all(t.distance <= 1e-12), a
        assert np.all(t.aligned_distance <= 1e-12), a
        s = tsa.summarize(t, fit_tol=1e-3, recover_tol=0.05)
        assert s["fits"] and s["recovered"] and s["recovered_up_to_symmetry"], a
        rel, fits, rec = tsa.seed_outcomes(t, fit_tol=1e-3, recover_tol=0.05)  # the per-seed verdicts it counts
        assert fits.all() and rec.all() and np.all(rel <= 1e-20), a


@pytest.mark.parametrize("update", tst.ORTH_UPDATES)
def test_orth_resnet_q_stays_orthogonal(update):
    cfg = tiny(orth_update=update, optimizer="adam", lr=5e-2, steps=40, dtype="float32")
    Q = torch.from_numpy(tst.train(["orth_resnet"], cfg, [0, 1])["orth_resnet"].student["Q"])
    assert float(O.orth_error(Q).max()) < 1e-5


# --------------------------------------------------------------------------- alignment


def _permuted_rescaled(arch, teacher, pi, c):
    """The teacher with its unit k moved to student unit pi[k], and student unit j
    rescaled by c[j] > 0 (incoming weights times c, outgoing divided by c)."""
    A = ts.effective_first_layer(arch, teacher)  # (S, d, d), columns = units
    inv = np.argsort(pi)
    P = torch.eye(A.shape[-1], dtype=A.dtype)[:, inv]  # column pi[k] of A P is column k of A
    A_new = A @ P * c[None, None, :]
    I = torch.eye(A.shape[-1], dtype=A.dtype)
    W1 = A_new - I if arch.identity_in else A_new
    if not arch.two_layer:
        return {"W": W1}
    W2 = (P.T @ teacher["W2"]) / c[None, :, None]
    student = {"W1": W1, "W2": W2}
    if "Q" in teacher:
        student["Q"] = teacher["Q"].clone()
    return student


@pytest.mark.parametrize("output", ts.OUTPUTS)
@pytest.mark.parametrize("arch_name", ARCHS)
def test_aligned_distance_is_zero_for_permuted_rescaled_teacher(arch_name, output):
    arch = ts.ARCHS[arch_name]
    d = 6
    teacher = ts.init_weights(arch, d, [ts.seed_generator(7, "model")], "uniform", orth_init="haar")
    pi = np.array([2, 0, 5, 1, 4, 3])
    g = torch.Generator().manual_seed(1)
    c = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.2 if arch.two_layer else torch.ones(d, dtype=torch.float64)
    student = _permuted_rescaled(arch, teacher, pi, c)
    X = torch.randn(1, d, 50, dtype=torch.float64)
    # a symmetry: the same function ...
    torch.testing.assert_close(ts.predict(arch, student, X, output), ts.predict(arch, teacher, X, output))
    # ... with other weights, at aligned distance zero
    assert float(tsa.weight_distance(student, teacher)[0]) > 0.5
    assert tsa.aligned_distances(arch, student, teacher, output)[0] < 1e-10
    A, A_s = (ts.effective_first_layer(arch, p)[0].numpy() for p in (student, teacher))
    V, V_s = (ts.output_weights(arch, p, output)[0].numpy() for p in (student, teacher))
    dist, match = tsa.aligned_distance(A, V, A_s, V_s, rescale=arch.two_layer)
    assert dist < 1e-10
    np.testing.assert_array_equal(match, pi)  # student unit pi[k] is teacher unit k


def test_summed_output_sees_only_row_sums_of_w2_and_column_sums_of_q():
    """sum(W2^T h) = (W2 1)^T h and sum(Q x) = (1^T Q) x: changing W2 by a matrix with zero
    row sums, or Q by a row permutation, changes neither f nor the aligned distance."""
    arch = ts.ARCHS["orth_resnet"]
    teacher = ts.init_weights(arch, 5, [ts.seed_generator(3, "model")], "uniform", orth_init="haar")
    M = torch.randn(1, 5, 5, dtype=torch.float64)
    student = {
        "W1": teacher["W1"].clone(),
        "W2": teacher["W2"] + M - M.mean(-1, keepdim=True),  # zero row sums added
        "Q": teacher["Q"][:, [3, 0, 4, 1, 2]],  # rows permuted: 1^T Q unchanged
    }
    X = torch.randn(1, 5, 40, dtype=torch.float64)
    torch.testing.assert_close(ts.predict(arch, student, X, "sum"), ts.predict(arch, teacher, X, "sum"))
    assert float(tsa.weight_distance(student, teacher)[0]) > 1.0
    assert tsa.aligned_distances(arch, student, teacher, "sum")[0] < 1e-10
    assert tsa.aligned_distances(arch, student, teacher, "vector")[0] > 1.0  # a vector output sees them


def _brute_force(A, V, A_s, V_s, rescale):
    """min over all permutations, rescaling each student unit to its teacher's incoming norm."""
    m = A.shape[1]
    best = np.inf
    for pi in itertools.permutations(range(m)):
        total = 0.0
        for k, j in enumerate(pi):
            a, v = A[:, j], V[j]
            c = np.linalg.norm(A_s[:, k]) / np.linalg.norm(a) if rescale else 1.0
            total += np.sum((c * a - A_s[:, k]) ** 2) + np.sum((v / c - V_s[k]) ** 2)
        best = min(best, total)
    return np.sqrt(best)


@pytest.mark.parametrize("k_out", [1, 4])
@pytest.mark.parametrize("rescale", [True, False])
def test_aligned_distance_matches_brute_force_at_d4(rescale, k_out):
    rng = np.random.default_rng(0)
    for _ in range(5):
        A, A_s = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
        V, V_s = rng.normal(size=(4, k_out)), rng.normal(size=(4, k_out))
        dist, pi = tsa.aligned_distance(A, V, A_s, V_s, rescale=rescale)
        assert dist == pytest.approx(_brute_force(A, V, A_s, V_s, rescale), rel=1e-12)
        assert sorted(pi) == [0, 1, 2, 3]
        if not rescale:  # the identity matching is one of the candidates
            assert dist <= np.sqrt(np.sum((A - A_s) ** 2) + np.sum((V - V_s) ** 2)) + 1e-12


# --------------------------------------------------------------------------- population loss


def test_relu_kernel_in_column_slices_is_the_kernel_at_once(monkeypatch):
    """relu_kernel bounds its (..., m, n, d) temporaries by slicing A's columns: the same
    numbers (to the last bits of a smaller GEMM) and gradients as at once, with the slices one
    column wide or uneven."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)  # (S, d, m)
    B = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    whole = tsa.relu_kernel(A, B)
    (gw,) = torch.autograd.grad(whole.square().sum(), A)
    for chunk in (3 * 5 * 6, 2 * 3 * 5 * 6 + 1):  # one column of A per slice; two (7 = 2 + 2 + 2 + 1)
        monkeypatch.setattr(tsa, "KERNEL_CHUNK", chunk)
        part = tsa.relu_kernel(A, B)
        (gp,) = torch.autograd.grad(part.square().sum(), A)
        torch.testing.assert_close(part, whole, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(gp, gw, rtol=1e-13, atol=1e-14)


def test_relu_kernel_closed_form_at_known_angles():
    """E[ReLU(a.x)^2] = |a|^2 / 2; ReLU(z) ReLU(-z) = 0; at 90 degrees E = |a||b| / (2 pi)."""
    a = torch.tensor([[3.0], [4.0], [0.0]], dtype=torch.float64)  # |a| = 5
    b = torch.tensor([[0.0], [0.0], [2.0]], dtype=torch.float64)  # orthogonal to a, |b| = 2
    K = tsa.relu_kernel(torch.cat([a, -a, b, 0 * a], 1), torch.cat([a, -a, b, 0 * a], 1))
    assert float(K[0, 0]) == pytest.approx(12.5) and float(K[1, 1]) == pytest.approx(12.5)
    assert abs(float(K[0, 1])) < 1e-12  # never active together
    assert float(K[0, 2]) == pytest.approx(10 / (2 * math.pi))
    assert torch.all(K[3] == 0) and torch.all(K[:, 3] == 0)  # a zero unit


@pytest.mark.parametrize("output", ts.OUTPUTS)
@pytest.mark.parametrize("arch_name", ARCHS)
def test_population_loss_matches_monte_carlo(arch_name, output):
    """The closed form against the mean of ||f - f*||^2 / k over 100,000 fresh Gaussian inputs,
    within 5 standard errors of that mean."""
    arch, d, n = ts.ARCHS[arch_name], 4, 100_000
    gens = [ts.seed_generator(s, "model") for s in (0, 1)]
    teacher = ts.init_weights(arch, d, gens, "uniform", orth_init="haar")
    student = ts.init_weights(arch, d, gens, "small", orth_init="haar")  # Q: another Haar draw
    exact = tsa.population_loss(arch, student, teacher, output)
    X = torch.randn(2, d, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    err = (ts.predict(arch, student, X, output) - ts.predict(arch, teacher, X, output)).square().mean(1)  # (S, n)
    mc, se = err.mean(1), err.std(1) / math.sqrt(n)
    assert torch.all(exact > 0.05) and torch.all(se < 0.02 * exact)  # a test that can fail
    assert torch.all((exact - mc).abs() < 5 * se), (exact, mc, se)


@pytest.mark.parametrize("arch_name", ["vanilla", "resnet_block"])
def test_population_loss_of_a_narrower_student(arch_name):
    """m = 3 hidden units against a teacher of 4 (W1 d x m, W2 m x d): how finding 3's
    best merged students are measured; against Monte Carlo as above."""
    arch, d, n = ts.ARCHS[arch_name], 4, 100_000
    g = torch.Generator().manual_seed(3)
    teacher = ts.init_weights(arch, d, [ts.seed_generator(0, "model")], "uniform")
    student = {k: torch.rand(1, d, 3, generator=g, dtype=torch.float64) if k in ("W", "W1")
               else torch.rand(1, 3, d, generator=g, dtype=torch.float64) for k in teacher}
    X = torch.randn(1, d, n, generator=g, dtype=torch.float64)
    err = (ts.predict(arch, student, X, "sum") - ts.predict(arch, teacher, X, "sum")).square().flatten(1)
    exact = tsa.population_loss(arch, student, teacher, "sum")
    assert float((exact - err.mean()).abs()) < 5 * float(err.std()) / math.sqrt(n)

@pytest.mark.parametrize("output", ts.OUTPUTS)
@pytest.mark.parametrize("arch_name", ARCHS)
def test_population_loss_is_zero_on_the_symmetry_orbit_only(arch_name, output):
    arch, d = ts.ARCHS[arch_name], 6
    teacher = ts.init_weights(arch, d, [ts.seed_generator(7, "model")], "uniform", orth_init="haar")
    c = torch.rand(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 0.2
    student = _permuted_rescaled(arch, teacher, np.array([2, 0, 5, 1, 4, 3]), c if arch.two_layer else torch.ones(d))
    scale = float(tsa.population_loss(arch, {k: 0 * w for k, w in teacher.items()}, teacher, output)[0])
    assert float(tsa.population_loss(arch, student, teacher, output)[0]) <= 1e-13 * scale
    name = "W1" if arch.two_layer else "W"
    nudged = {**student, name: student[name] + 1e-3 * torch.ones_like(student[name])}
    assert float(tsa.population_loss(arch, nudged, teacher, output)[0]) > 1e-9 * scale


def test_a_flipped_unit_and_its_linear_part_in_q_are_the_same_function():
    """ReLU(z) = ReLU(-z) + z: with a summed output, orth_resnet computes the same f after
    unit j's incoming weights change sign if 1^T Q takes up v_j a_j^T. Neither the
    permutation nor the rescaling of the aligned distance covers this; Q stays orthogonal only
    for special teachers (||1^T Q|| = sqrt(d) for every Q in O(d))."""
    arch, d, j = ts.ARCHS["orth_resnet"], 5, 2
    teacher = ts.init_weights(arch, d, [ts.seed_generator(3, "model")], "uniform", orth_init="haar")
    v = ts.output_weights(arch, teacher, "sum")[0, j, 0]  # unit j's output weight, W2 1
    student = {k: w.clone() for k, w in teacher.items()}
    student["W1"][0, :, j] *= -1
    student["Q"][0, 0, :] += v * teacher["W1"][0, :, j]  # the column sums of Q gain v a_j
    X = torch.randn(1, d, 1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ts.predict(arch, student, X, "sum"), ts.predict(arch, teacher, X, "sum"))
    assert float(tsa.population_loss(arch, student, teacher, "sum")[0]) < 1e-12
    assert tsa.aligned_distances(arch, student, teacher, "sum")[0] > 1.0
    assert float(tsa.population_loss(arch, student, teacher, "vector")[0]) > 0.01  # a vector output tells them apart


def _chart_point(arch, base, blocks, theta):
    """The weights at coordinates theta, as population_hessian documents them; Q's chart
    Q exp(S) is built here from itertools' pair order (row-major i < j)."""
    point = {}
    for name in arch.params:
        x = theta[blocks[name]]
        if name == "Q":
            d = base["Q"].shape[-1]
            S = torch.zeros(d, d, dtype=torch.float64)
            for (i, j), s in zip(itertools.combinations(range(d), 2), x):
                S[i, j], S[j, i] = s / math.sqrt(2), -s / math.sqrt(2)
            point[name] = base["Q"] @ torch.linalg.matrix_exp(S)
        else:
            point[name] = x.reshape(base[name].shape)
    return point


# torch.func.hessian through matrix_exp (Q's chart) uses a rule torch registers through the
# deprecated torch.jit.script (as test_landscape.py's jvp of nll_loss_backward does)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("arch_name,output", [("orth_resnet", "sum"), ("orth_resnet", "vector"),
                                              ("sum_modified", "sum"), ("vanilla", "sum")])
def test_population_hessian_matches_finite_differences(arch_name, output):
    """The gradient against central differences of population_loss, and v^T H v against
    second differences along random directions, at a student that is not a critical point."""
    arch, d = ts.ARCHS[arch_name], 4
    teacher = ts.init_weights(arch, d, [ts.seed_generator(s, "model") for s in (0, 1)], "uniform", orth_init="haar")
    student = ts.init_weights(arch, d, [ts.seed_generator(s, "data") for s in (0, 1)], "small", orth_init="haar")
    ph = tsa.population_hessian(arch, student, teacher, output)
    n = ph.gradient.shape[-1]
    g = torch.Generator().manual_seed(0)
    for s in range(2):
        base = {k: w[s:s + 1] for k, w in student.items()}
        tea = {k: w[s:s + 1] for k, w in teacher.items()}
        theta0 = torch.cat([torch.zeros(d * (d - 1) // 2, dtype=torch.float64) if k == "Q" else base[k].flatten()
                            for k in arch.params])

        def F(theta):
            return float(tsa.population_loss(arch, _chart_point(arch, base, ph.blocks, theta), tea, output)[0])

        h = 1e-6
        fd = torch.tensor([(F(theta0 + h * e) - F(theta0 - h * e)) / (2 * h) for e in torch.eye(n, dtype=torch.float64)],
                          dtype=torch.float64)
        assert float(fd.abs().max()) > 1e-2  # not a critical point
        torch.testing.assert_close(ph.gradient[s], fd, rtol=0, atol=1e-7 * float(fd.abs().max()))
        H = ph.hessian[s]
        for _ in range(3):
            v = torch.randn(n, generator=g, dtype=torch.float64)
            v /= v.norm()
            h = 1e-3
            second = (F(theta0 + h * v) - 2 * F(theta0) + F(theta0 - h * v)) / h**2
            assert abs(float(v @ H @ v) - second) < 1e-5 * float(H.abs().max()), (float(v @ H @ v), second)


@pytest.mark.parametrize("arch_name,output", [("orth_resnet", "sum"), ("orth_resnet", "vector"),
                                              ("resnet_block", "sum"), ("li_yuan", "sum")])
def test_population_hessian_at_the_teacher_is_flat_exactly_along_the_symmetries(arch_name, output):
    """At the teacher, permuted and rescaled (zero loss, every student unit exactly parallel
    to a teacher unit): gradient 0; the Hessian is 0 along the listed symmetries and
    positive definite on the rest, so the list is complete (no other flat direction)."""
    arch, d = ts.ARCHS[arch_name], 4
    teacher = ts.init_weights(arch, d, [ts.seed_generator(2, "model")], "uniform", orth_init="haar")
    c = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if arch.two_layer else torch.ones(d, dtype=torch.float64)
    student = _permuted_rescaled(arch, teacher, np.array([2, 0, 3, 1]), c)
    ph = tsa.population_hessian(arch, student, teacher, output)
    r = (d + (d * (d - 1) if output == "sum" else 0) if arch.two_layer else 0) + \
        ((d - 1) * (d - 2) // 2 if arch.skip == "orth" and output == "sum" else 0)
    assert ph.symmetries.shape[-1] == r
    torch.testing.assert_close(ph.symmetries.mT @ ph.symmetries, torch.eye(r, dtype=torch.float64)[None])
    full, reduced = ph.eigenvalues()
    top = float(full.max())
    assert float(ph.gradient.abs().max()) < 1e-12 * top
    assert float((ph.hessian @ ph.symmetries).norm()) < 1e-12 * top
    assert int((full.abs() < 1e-9 * top).sum()) == r
    assert float(reduced.min()) > 1e-5 * top



@pytest.mark.parametrize("arch_name,output", [("sum_modified", "sum"), ("orth_resnet", "vector")])
def test_balanced_rescales_units_without_changing_f(arch_name, output):
    arch, d = ts.ARCHS[arch_name], 4
    student = ts.init_weights(arch, d, [ts.seed_generator(s, "data") for s in (0, 1)], "small", orth_init="haar")
    b = tsa.balanced(arch, student, output)
    X = torch.randn(2, d, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ts.predict(arch, b, X, output), ts.predict(arch, student, X, output))
    na = torch.linalg.vector_norm(ts.effective_first_layer(arch, b), dim=-2)
    nv = torch.linalg.vector_norm(ts.output_weights(arch, b, output), dim=-1)
    torch.testing.assert_close(na, nv)
    assert float((na - torch.linalg.vector_norm(ts.effective_first_layer(arch, student), dim=-2)).abs().max()) > 0.1


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("arch_name,balance", [("sum_modified", False), ("orth_resnet", True)])
def test_newton_reaches_the_teacher_from_near_it(arch_name, balance):
    """Started 0.05 away from the teacher (permuted, rescaled), Newton across the symmetry
    orbits ends on the teacher's orbit: population loss 0 and aligned distance 0 (the
    teacher is the oracle), quadratically (few steps, from a gradient that was not small)."""
    arch, d = ts.ARCHS[arch_name], 4
    teacher = ts.init_weights(arch, d, [ts.seed_generator(3, "model")], "uniform", orth_init="haar")
    student = _permuted_rescaled(arch, teacher, np.array([1, 3, 0, 2]), torch.tensor([0.5, 2.0, 1.0, 1.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    n = tsa.population_hessian(arch, student, teacher, "sum").gradient.shape[-1]
    x = torch.randn(1, n, generator=g, dtype=torch.float64)
    start = tsa.population_chart(arch, student, 0.05 * x / x.norm())
    cp = tsa.newton_critical_point(arch, start, teacher, "sum", steps=8, balance=balance)
    norms = cp.gradient_norms[0]
    done = norms[~norms.isnan()]
    scale = float(tsa.population_loss(arch, {k: 0 * w for k, w in teacher.items()}, teacher, "sum")[0])
    assert float(done[0]) > 1e-3 * scale and float(done[-1]) < 1e-13 * scale and len(done) <= 7, done
    assert float(tsa.population_loss(arch, cp.params, teacher, "sum")[0]) < 1e-13 * scale
    assert tsa.aligned_distances(arch, cp.params, teacher, "sum")[0] < 1e-6
    if "Q" in cp.params:
        torch.testing.assert_close(cp.params["Q"][0] @ cp.params["Q"][0].mT, torch.eye(d, dtype=torch.float64))

def test_trust_region_step_minimises_the_model_on_the_ball():
    """The trust-region subproblem, min g^T y + y^T diag(lam) y / 2 over |y| <= delta, against
    scipy's SLSQP from 5 starts per row (the oracle): an interior Newton step, boundary
    steps with and without negative curvature, and the hard case (g = 0 along a negative
    lowest eigenvalue, where the step must still reach the boundary)."""
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(0)
    n = 5
    lam = torch.sort(torch.randn(6, n, generator=gen, dtype=torch.float64), dim=-1).values
    lam[0] = lam[0].abs() + 0.5  # positive definite, large ball: Newton's step
    lam[1] = lam[1].abs() + 0.5  # positive definite, small ball
    g = torch.randn(6, n, generator=gen, dtype=torch.float64)
    lam[4, 0], g[4, 0] = -1.0, 0.0  # hard case
    lam[5, 0], g[5, :2] = -0.3, torch.tensor([0.0, 1e-3])  # hard case with a small gradient elsewhere
    delta = torch.tensor([100.0, 0.1, 0.5, 2.0, 0.7, 0.4], dtype=torch.float64)
    y = tsa._trust_region_step(g, lam, delta)
    torch.testing.assert_close(y[0], -g[0] / lam[0])
    assert bool((y.norm(dim=-1) <= delta * (1 + 1e-12)).all())
    torch.testing.assert_close(y[1:].norm(dim=-1), delta[1:])  # every other row ends on the boundary
    rng = np.random.default_rng(0)

    def oracle(G, L, D):  # SLSQP's best from 5 starts
        def model(v):
            return float(G @ v + 0.5 * (L * v) @ v)

        ball = {"type": "ineq", "fun": lambda v: D * D - v @ v, "jac": lambda v: -2 * v}
        return model, min(minimize(model, x0, jac=lambda v: G + L * v, method="SLSQP", constraints=[ball],
                                   options={"ftol": 1e-14, "maxiter": 500}).fun
                          for x0 in rng.standard_normal((5, n)) * D / (2 * math.sqrt(n)))

    for s in range(6):
        model, best = oracle(g[s].numpy(), lam[s].numpy(), float(delta[s]))
        assert abs(model(y[s].numpy()) - best) <= 1e-9 * (abs(best) + 1e-12), (s, model(y[s].numpy()), best)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_trust_region_descent_leaves_a_saddle_that_newton_stops_on():
    """Plain Newton from a random student converges to a saddle (|gradient| at round-off, a
    negative eigenvalue); the trust-region descent started there leaves it along the
    negative curvature and ends, with every step downhill, at a local minimum (second-order
    conditions, from population_hessian): for this teacher the teacher itself, loss 0 and
    aligned distance 0 (the oracle)."""
    arch, d = ts.ARCHS["vanilla"], 3
    teacher = ts.init_weights(arch, d, [ts.seed_generator(24, "model")], "uniform")
    student = ts.init_weights(arch, d, [ts.seed_generator(24, "data")], "gaussian")
    scale = float(tsa.population_loss(arch, {"W": 0 * teacher["W"]}, teacher, "sum")[0])
    saddle = tsa.newton_critical_point(arch, student, teacher, "sum", steps=30)
    start = float(tsa.population_loss(arch, saddle.params, teacher, "sum")[0])
    assert float(saddle.hessian.gradient.norm()) < 1e-13 * scale and start > 1e-4 * scale
    assert float(saddle.hessian.eigenvalues()[1][0, 0]) < -1e-2 * scale
    cp = tsa.trust_region_descent(arch, saddle.params, teacher, "sum", steps=40)
    done = cp.gradient_norms[0][~cp.gradient_norms[0].isnan()]
    assert 2 < len(done) < 40  # it moved, and it stopped
    assert float(cp.hessian.gradient.norm()) < 1e-13 * scale
    assert float(cp.hessian.eigenvalues()[1][0, 0]) > 1e-4 * scale
    assert float(tsa.population_loss(arch, cp.params, teacher, "sum")[0]) < 1e-13 * scale
    assert tsa.aligned_distances(arch, cp.params, teacher, "sum")[0] < 1e-6


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_trust_region_descent_batches_seeds_and_balances_two_layer_units():
    """Two seeds of sum_modified (rescaling and W2 symmetries) from a small init, at once:
    each seed ends where it ends when descended alone, here on its teacher's orbit."""
    arch, d = ts.ARCHS["sum_modified"], 3
    teacher = ts.init_weights(arch, d, [ts.seed_generator(s, "model") for s in (0, 5)], "uniform")
    student = ts.init_weights(arch, d, [ts.seed_generator(s, "data") for s in (0, 5)], "small")
    both = tsa.trust_region_descent(arch, student, teacher, "sum", steps=60)
    scale = tsa.population_loss(arch, {k: 0 * w for k, w in teacher.items()}, teacher, "sum")
    assert bool((tsa.population_loss(arch, both.params, teacher, "sum") < 1e-13 * scale).all())
    assert float(np.abs(tsa.aligned_distances(arch, both.params, teacher, "sum")).max()) < 1e-6
    one = tsa.trust_region_descent(arch, {k: w[1:] for k, w in student.items()}, {k: w[1:] for k, w in teacher.items()},
                                   "sum", steps=60)
    for k in arch.params:
        torch.testing.assert_close(both.params[k][1:], one.params[k], rtol=0, atol=1e-12)


def test_closest_unit_angle():
    A = torch.eye(4, dtype=torch.float64)
    A[:, 1] = torch.tensor([math.cos(math.radians(30)), math.sin(math.radians(30)), 0, 0]) * 2.5
    A[:, 3] = torch.tensor([0, 0, -1.0, 0])  # 180 degrees from unit 2
    for name in ("vanilla", "li_yuan", "resnet_block"):
        arch = ts.ARCHS[name]
        W = A - torch.eye(4, dtype=torch.float64) if arch.identity_in else A
        teacher = {"W1": W[None], "W2": torch.ones(1, 4, 4)} if arch.two_layer else {"W": W[None]}
        assert float(tsa.closest_unit_angle(arch, teacher)[0]) == pytest.approx(30.0)


def test_teacher_unit_coverage_finds_the_unit_left_out():
    """Teacher units e_0..e_4 (resnet_block, W1* = I); student unit j < 4 is e_j turned by t_j
    towards e_{j+1}, and unit 4 is e_0 turned by 0.4 towards e_2, so no student unit lies near e_4:
    cos(e_k, student j) is cos t_k for j = k, sin t_{k-1} for j = k - 1, cos 0.4 and sin 0.4 for
    unit 4 and e_0, e_2, 0 otherwise. The student's units are then shuffled and rescaled by
    positive factors, which must not matter."""
    d, t = 5, torch.tensor([0.1, 0.7, 0.3, 0.5, 0.2], dtype=torch.float64)
    A = torch.zeros(d, d, dtype=torch.float64)
    for j in range(d - 1):
        A[j, j], A[j + 1, j] = math.cos(t[j]), math.sin(t[j])
    A[0, d - 1], A[2, d - 1] = math.cos(0.4), math.sin(0.4)
    expect = torch.tensor([max(math.cos(t[0]), math.cos(0.4)), max(math.cos(t[1]), math.sin(t[0])),
                           max(math.cos(t[2]), math.sin(t[1]), math.sin(0.4)),
                           max(math.cos(t[3]), math.sin(t[2])), math.sin(t[3])], dtype=torch.float64)
    owner = torch.tensor([0, 1, 2, 3, 3])  # which student unit gives each maximum (before shuffling)
    perm = torch.tensor([3, 0, 4, 1, 2])
    scale = torch.tensor([0.5, 2.0, 3.0, 0.1, 1.7], dtype=torch.float64)
    student = {"W1": (A[:, perm] * scale)[None], "W2": torch.ones(1, d, d, dtype=torch.float64)}
    teacher = {"W1": torch.eye(d, dtype=torch.float64)[None], "W2": torch.ones(1, d, d, dtype=torch.float64)}
    cos, j = tsa.teacher_unit_coverage("resnet_block", student, teacher)
    assert torch.allclose(cos[0], expect, rtol=1e-12, atol=1e-15), (cos, expect)
    assert torch.equal(perm[j[0][:d - 1]], owner[:d - 1]) and perm[j[0][d - 1]] == 3
    assert int(cos[0].argmin()) == d - 1  # the unit left out
    # sum_modified sees the same units through A = W1 + I
    cos2, _ = tsa.teacher_unit_coverage("sum_modified", {k: v - torch.eye(d) * (k == "W1") for k, v in student.items()},
                                        {"W1": torch.zeros(1, d, d, dtype=torch.float64), "W2": teacher["W2"]})
    assert torch.allclose(cos2, cos, rtol=1e-12, atol=1e-15)


def test_closest_angle_by_fit_is_the_exact_rank_test():
    """Do the seeds that fail have closer teacher units? Medians per group, and the exact
    two-sided Mann-Whitney p of a complete separation of 4 and 3 seeds: 2 / C(7, 3) = 2/35."""
    c = tsa.closest_angle_by_fit([30.0, 5.0, 31.0, 6.0, 33.0, 7.0, 32.0], [1, 0, 1, 0, 1, 0, 1])
    assert c["fit_median"] == 31.5 and c["not_fit_median"] == 6.0
    assert c["p_value"] == pytest.approx(2 / 35, rel=1e-9)
    assert tsa.closest_angle_by_fit([30.0, 5.0, 31.0], [1, 0, 1])["p_value"] is None  # fewer than 3 in a group
    assert tsa.closest_angle_by_fit([30.0, 31.0], [1, 1])["not_fit_median"] is None


def test_summary_lists_the_seeds_that_fit_without_being_recovered(tmp_path):
    T = 3
    traj = tst.Trajectory(
        arch="resnet_block", seeds=np.array([4, 5, 6]), steps=np.arange(T),
        train_loss=np.array([[1.0, 1e-3, 1e-9], [1.0, 1e-3, 1e-8], [1.0, 1e-3, 1e-3]]),
        test_loss=np.ones((3, T)), population_loss=np.array([[1.0, 1.0, 2e-9], [1.0, 1.0, 3e-8], [1.0, 1.0, 1e-3]]),
        distance=np.ones((3, T)), aligned_distance=np.array([[1.0, 1.0, 1e-4], [1.0, 1.0, 2.0], [1.0, 1.0, 2.0]]),
        label_variance=np.ones(3), teacher_norm=np.ones(3), teacher_aligned_norm=np.full(3, 4.0),
        teacher_closest_angle=np.array([30.0, 1.5, 20.0]))
    s = tsa.summarize(traj, fit_tol=1e-6, recover_tol=0.05)
    assert s["fits_seeds"] == 2 and s["recovered_up_to_symmetry_seeds"] == 1
    assert s["fits_not_recovered"] == [{"seed": 5, "relative_train_loss": 1e-8, "relative_population_loss": 3e-8,
                                         "relative_aligned_distance": 0.5, "teacher_closest_angle_deg": 1.5}]
    assert s["relative_population_loss_final"] == pytest.approx((2e-9 + 3e-8 + 1e-3) / 3)
    # the geometric mean and std over seeds (what the report table and the figures' bands give),
    # against scipy: the arithmetic mean of these losses (3.3e-4) is 300 times their geomean
    finals = np.array([1e-9, 1e-8, 1e-3])
    assert s["train_loss_final_geomean"] == pytest.approx(scipy.stats.gmean(finals), rel=1e-12)
    # the geometric sd with the sample sd of the logs (ddof=1, scipy.stats.gstd's): the figures' bands' too
    assert s["train_loss_final_gsd"] == pytest.approx(scipy.stats.gstd(finals), rel=1e-12)
    assert s["train_loss_final_std"] == pytest.approx(statistics.stdev(finals), rel=1e-12)  # the sample sd, ddof=1
    assert s["relative_population_loss_final_geomean"] == pytest.approx(scipy.stats.gmean([2e-9, 3e-8, 1e-3]),
                                                                         rel=1e-12)
    assert s["relative_aligned_distance_final_geomean"] == pytest.approx(scipy.stats.gmean([2.5e-5, 0.5, 0.5]),
                                                                          rel=1e-12)
    assert s["test_loss_final_geomean"] == 1.0 and s["test_loss_final_gsd"] == 1.0  # no spread: gsd 1
    rel, fits, rec = tsa.seed_outcomes(traj, fit_tol=1e-6, recover_tol=0.05)  # outcomes.png's three groups
    np.testing.assert_array_equal(rel, [1e-9, 1e-8, 1e-3])
    assert fits.tolist() == [True, True, False] and rec.tolist() == [True, False, False]
    assert app.plot_outcomes({"resnet_block": traj}, tmp_path, 1e-6, 0.05).is_file()
    # and the report names that seed with its teacher's angle
    assert s["closest_angle"] == {"fit_median": 15.75, "not_fit_median": 20.0, "p_value": None}
    notes = app.report({"resnet_block": s, "meta": {"steps": 2}}, ["resnet_block"], 3,
                       compose_cfg("archs=[resnet_block]"))["notes"]
    assert not any("Mann-Whitney" in n for n in notes)  # 2 and 1 seeds: no test
    tested = {**s, "closest_angle": tsa.closest_angle_by_fit([30.0, 5.0, 31.0, 6.0, 33.0, 7.0, 32.0],
                                                              [1, 0, 1, 0, 1, 0, 1])}
    said = app.report({"resnet_block": tested, "meta": {"steps": 2}}, ["resnet_block"], 7,
                      compose_cfg("archs=[resnet_block]"))["notes"]
    assert any("resnet_block 31.5° / 6.0° (p = 0.057)" in n for n in said), said
    assert any("resnet_block seed 5 (loss/Var(y) 1e-08, population 3e-08, aligned distance 0.5" in n
               and "1.5 degrees apart" in n for n in notes), notes


def test_summary_lists_the_seeds_recovered_that_do_not_fit_yet():
    """A seed within the recover threshold of its teacher but with a loss just above the fit
    threshold (1.29e-6 against 1e-6, as seen at the defaults) is counted recovered, not fit: the
    summary and the report's notes name it, so the table's counts read as one story."""
    T = 2
    traj = tst.Trajectory(
        arch="sum_modified", seeds=np.array([0, 1, 2]), steps=np.arange(T),
        train_loss=np.array([[1.0, 1e-9], [1.0, 1.29e-6], [1.0, np.nan]]),
        test_loss=np.ones((3, T)), population_loss=np.ones((3, T)), distance=np.ones((3, T)),
        aligned_distance=np.array([[1.0, 1e-4], [1.0, 4e-3], [1.0, 1e-3]]),
        label_variance=np.ones(3), teacher_norm=np.ones(3), teacher_aligned_norm=np.ones(3),
        teacher_closest_angle=np.array([30.0, 20.0, 10.0]))
    s = tsa.summarize(traj, fit_tol=1e-6, recover_tol=0.05)
    assert s["fits_seeds"] == 1 and s["recovered_up_to_symmetry_seeds"] == 2  # the diverged seed 2 counts for neither
    assert s["recovered_not_fit"] == [{"seed": 1, "relative_train_loss": 1.29e-6, "relative_aligned_distance": 4e-3}]
    # a diverged seed leaves no geometric mean (a nan would read as a number in the table)
    assert s["train_loss_final_geomean"] is None and s["train_loss_final_gsd"] is None
    assert s["aligned_distance_final_geomean"] == pytest.approx(scipy.stats.gmean([1e-4, 4e-3, 1e-3]), rel=1e-12)
    notes = app.report({"sum_modified": s, "meta": {"steps": 1}}, ["sum_modified"], 3,
                       compose_cfg("archs=[sum_modified]"))["notes"]
    assert any(n.startswith("recovered up to symmetry without fitting yet: sum_modified seed 1 (loss/Var(y) 1.3e-06")
               for n in notes), notes


def test_loss_figure_draws_every_seed_over_its_own_label_variance(tmp_path):
    """loss.png draws each seed's train, test and population loss / Var(y), on the scale of the
    table and of the fit threshold (raw MSE once, with Var(y) from 2 to 50 across seeds), so a
    seed's last point sits below the dashed threshold exactly when seed_outcomes says it fits;
    distance.png draws the distances over the zero student's, with the recovered threshold; a diverged
    seed's nan is drawn as a gap, not a crash."""
    T = 3
    traj = tst.Trajectory(
        arch="sum_modified", seeds=np.array([0, 1, 2]), steps=np.arange(T),
        train_loss=np.array([[10.0, 1e-3, 4e-7], [10.0, 1e-3, 1e-5], [10.0, 1.0, np.nan]]),
        test_loss=np.array([[12.0, 2e-3, 5e-7], [11.0, 1e-3, 2e-5], [10.0, 1.0, np.nan]]),
        population_loss=np.array([[11.0, 1.5e-3, 4.5e-7], [10.0, 1e-3, 1.5e-5], [10.0, 1.0, np.nan]]),
        distance=np.array([[3.0, 2.0, 1.0], [3.0, 2.5, 2.0], [3.0, 3.0, np.nan]]),
        aligned_distance=np.array([[3.0, 1.0, 1e-3], [3.0, 2.0, 1.5], [3.0, 3.0, np.nan]]),
        label_variance=np.array([2.0, 50.0, 4.0]), teacher_norm=np.ones(3), teacher_aligned_norm=np.full(3, 3.0),
        teacher_closest_angle=np.array([30.0, 20.0, 10.0]))
    drawn = app.plot({"sum_modified": traj}, tmp_path, 1e-6, 0.05)
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "distance.png").is_file()
    loss = drawn["loss.png"]["sum_modified"]
    assert list(loss) == ["train", "test", "population (exact)"]
    for label, raw in (("train", traj.train_loss), ("test", traj.test_loss), ("population (exact)", traj.population_loss)):
        np.testing.assert_allclose(loss[label], raw / traj.label_variance[:, None])
    rel, fits, _ = tsa.seed_outcomes(traj, fit_tol=1e-6, recover_tol=0.05)
    np.testing.assert_array_equal(loss["train"][:, -1], rel)
    # seed 1 fits (1e-5 / 50 = 2e-7) though its raw MSE 1e-5 lies above the threshold: raw, it would look stalled
    assert fits.tolist() == [True, True, False] and traj.train_loss[1, -1] > 1e-6
    _, masks = app.verdict_groups(traj, 1e-6, 0.05)  # the lines' colours: recovered, fits only, neither
    assert [m.tolist() for m in masks] == [[True, False, False], [False, True, False], [False, False, True]]
    # distance.png: relative to the zero student's distance, so a seed's aligned line ends below the dashed
    # recovered threshold exactly when seed_outcomes says it is recovered up to symmetry
    distance = drawn["distance.png"]["sum_modified"]
    np.testing.assert_allclose(distance["||W - W*||_F (summed)"], traj.distance / traj.teacher_norm[:, None])
    np.testing.assert_allclose(distance["aligned (perm. + rescaling)"],
                               traj.aligned_distance / traj.teacher_aligned_norm[:, None])
    _, _, near = tsa.seed_outcomes(traj, fit_tol=1e-6, recover_tol=0.05)
    assert (distance["aligned (perm. + rescaling)"][:, -1] <= 0.05).tolist() == near.tolist() == [True, False, False]
    assert app._spread(np.array([[1.0, 3.0, np.nan]]), np.array([[2.0, 1.0, 1.0]])) == pytest.approx(3.0)


# --------------------------------------------------------------------------- app


def test_app_runs_writes_its_files_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    """The Hydra app itself (in-process: ``hydra.run.dir`` and ``progress=false`` from argv)."""
    run = tmp_path / "run"
    argv = [MODULE, f"hydra.run.dir={run}", "progress=false", "d=3", "n_train=60", "n_test=30",
            "batch_size=10", "epochs=2", "log_every=4", "seeds=2", "output=vector", "optimizer=adam", "lr=0.01"]
    monkeypatch.setattr(sys, "argv", argv)
    app.main()
    for name in ("config.yaml", "trajectories.npz", "summary.json", "distance.png", "loss.png", "outcomes.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["report"]["figures"] == ["distance.png", "loss.png", "outcomes.png"]
    assert any("draw every seed as its own line" in m and "Var(y)" in m for m in summary["report"]["measures"])
    for a in ARCHS:
        s = summary[a]
        for key in ("train_loss_final", "test_loss_final", "distance_final", "aligned_distance_final",
                    "relative_population_loss_final"):
            assert isinstance(s[key], float)
        assert isinstance(s["fits_not_recovered"], list)
        assert isinstance(s["recovered"], bool) and isinstance(s["fits"], bool)
        assert s["thresholds"]["fit_tol"] == 1e-6 and s["thresholds"]["recover_tol"] == 0.05
        assert s["steps"] == 12 and s["seeds"] == 2
    with np.load(run / "trajectories.npz") as z:
        assert list(z["archs"]) == ARCHS
        assert z["orth_resnet.distance"].shape == (2, len(z["orth_resnet.steps"]))
        assert z["orth_resnet.population_loss"].shape == (2, len(z["orth_resnet.steps"]))
        assert z["orth_resnet.teacher_closest_angle"].shape == (2,)
        assert z["sum_modified.student.W2"].shape == (2, 3, 3)
    assert "aligned" in capsys.readouterr().out  # the results table
    before = (run / "summary.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        app.main()
    assert exit_.value.code == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before


def test_warm_start_from_an_earlier_run_through_the_app(tmp_path):
    """student.start: the second run starts where the first ended (same data, same teachers:
    its step-0 losses and distances are the first run's final ones); another teacher is refused
    with one line, before anything is written."""
    common = ["progress=false", "d=3", "n_train=40", "n_test=20", "batch_size=10", "log_every=4", "seeds=2",
              "archs=[vanilla,orth_resnet]", "optimizer=adam", "lr=0.02", "dtype=float64"]
    first = app.main.run(compose_cfg(*common, "steps=8"), tmp_path / "first")
    with np.load(tmp_path / "first" / "trajectories.npz") as z:
        before = {k: z[k] for k in z.files}
    cfg = compose_cfg(*common, "steps=4", "seed=1", "seeds=1", f"student.start={tmp_path / 'first'}")
    second = app.main.run(cfg, tmp_path / "second")
    with np.load(tmp_path / "second" / "trajectories.npz") as z:
        for a in ("vanilla", "orth_resnet"):
            for key in ("train_loss", "test_loss", "population_loss", "distance", "aligned_distance"):
                np.testing.assert_allclose(z[f"{a}.{key}"][0, 0], before[f"{a}.{key}"][1, -1], rtol=1e-12)
            assert z[f"{a}.train_loss"][0, -1] != z[f"{a}.train_loss"][0, 0]  # and it trained on
    assert second["meta"]["steps"] == 4 and first["meta"]["steps"] == 8
    setting = second["report"]["measures"][0]
    assert f"warm-started from the final weights of {tmp_path / 'first'}" in setting and "d = 3," in setting
    for override, message in (("teacher.scale=2", "another teacher"), ("seeds=3", "has no seed 2"),
                              ("archs=[li_yuan]", "holds no li_yuan run")):
        with pytest.raises(UserError) as err:
            app.main.run(compose_cfg(*common, "steps=4", f"student.start={tmp_path / 'first'}", override),
                         tmp_path / "third")
        assert message in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "third").exists()


def test_teacher_as_student_through_the_app(tmp_path):
    cfg = compose_cfg("progress=false", "d=3", "n_train=40", "n_test=20", "batch_size=10", "steps=5",
                      "log_every=5", "seeds=2", "archs=[li_yuan,orth_resnet]", "student.init=teacher")
    archs, train_cfg, seeds = app.build(cfg)
    trajs = tst.train(archs, train_cfg, seeds)
    for t in trajs.values():
        s = tsa.summarize(t, cfg.thresholds.fit, cfg.thresholds.recover)
        assert s["fits"] and s["recovered"] and s["recovered_up_to_symmetry"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("archs=[li_yuan,foo]", "unknown architecture 'foo'"),
        ("d=0", "d must be an integer >= 1"),
        ("batch_size=500", "larger than the training set"),
        ("lr=0", "lr must be > 0"),
        ("lr=-0.1", "lr must be > 0"),
        ("output=matrix", "unknown output"),
        ("teacher.init=normal", "unknown teacher init"),
        ("momentum=0", "needs momentum > 0"),
        ("upkeep_adaptive=true", "upkeep_adaptive=true needs optimizer=adam"),
        ("seeds=0", "seeds"),
        ("steps=0", "steps must be an integer >= 1"),
        ("student.start=no/such/run", "no such run dir or trajectories.npz"),
    ],
)
def test_bad_input_is_one_clear_line(override, message, tmp_path):
    extra = ["n_train=100"] if override.startswith("batch_size") else []
    cfg = compose_cfg(override, *extra)
    with pytest.raises(UserError) as err:
        app.main.run(cfg, tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "config.yaml").exists()  # nothing written


def test_report_names_the_optimiser_as_it_was_used():
    """The report's setting line names Adam's betas (its momentum key is unused), and its
    architecture line how orth_resnet's Q moved, so two runs that differ only in
    upkeep_adaptive read differently."""
    assert app._optimizer_text(compose_cfg("optimizer=adam")) == "adam lr 0.001 (betas 0.9, 0.999)"
    assert app._optimizer_text(compose_cfg("optimizer=sgd", "momentum=0")) == "sgd lr 0.001"
    assert app._optimizer_text(compose_cfg()) == "nesterov lr 0.001 momentum 0.9"
    rules = {ov: app._q_rule(compose_cfg(*ov)) for ov in
             [("optimizer=adam",), ("optimizer=adam", "upkeep_adaptive=true"), ("optimizer=sgd", "momentum=0"),
              ("orth_update=steepest",)]}
    assert rules["optimizer=adam",] == "the polar retraction along the heavy-ball momentum (0.9) of its gradient"
    assert rules["optimizer=adam", "upkeep_adaptive=true"] == ("the polar retraction along Adam's step in so(d) "
                                                             "(upkeep_adaptive)")
    assert rules["optimizer=sgd", "momentum=0"] == "the polar retraction along its gradient"
    assert rules["orth_update=steepest",].startswith("the spectral steepest step along the heavy-ball momentum (0.9)")


def test_bad_input_exits_non_zero_from_the_command_line(tmp_path, capsys):
    """What ``python -m ...experiments.teacher_student archs=[nope]`` runs: the module's
    ``main`` (its ``__main__`` guard: tests/test_apps.py; a fresh interpreter's stderr:
    tests/test_training.py)."""
    assert app.main([f"hydra.run.dir={tmp_path}", "progress=false", "archs=[nope]"]) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown architecture 'nope'"), stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("init", ["uniform", "gaussian", "small"])
def test_every_weight_init_takes_its_scale(init):
    """teacher.scale / student.scale act on every init that has a scale (uniform once ignored it)."""
    arch = ts.as_arch("modified_resnet")
    one, two = (ts.init_weights(arch, 4, [ts.seed_generator(3, "model")], init, scale)["W1"] for scale in (1.0, 2.0))
    assert torch.equal(two, 2 * one)
    if init == "uniform":
        assert 0 <= float(two.min()) and float(two.max()) < 2 and float(two.max()) > 1
    if init == "gaussian":  # Li & Yuan's small-norm teacher: the scale is the spectral norm
        assert float(torch.linalg.matrix_norm(two, ord=2).max()) == pytest.approx(2.0, rel=1e-12)
