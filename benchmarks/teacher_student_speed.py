"""Time per training step of the teacher-student study: a per-sample Python loop like
the blog's code against the vectorised trainer at S = 1 and S = 32 seeds, measured side
by side in one run, plus the projected time of the full blog setting (100,000 samples,
100 epochs, batch 200, d = 10) for all six architectures and 8 seeds.

    python benchmarks/teacher_student_speed.py [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from _bench import header, positive

from orthogonal_skip_connections.models.teacher_student import ARCHS
from orthogonal_skip_connections.train import teacher_student as ts


def blog_loop_step_time(d: int, batch: int, steps: int) -> float:
    """Seconds per step of SGD on modified_resnet with a Python loop over the samples of
    each batch (autograd, one sample at a time, as the blog's code did)."""
    g = torch.Generator().manual_seed(0)
    W1s, W2s = torch.rand(d, d, generator=g), torch.rand(d, d, generator=g)
    W1 = (torch.randn(d, d, generator=g) / d**0.5).requires_grad_()
    W2 = (torch.randn(d, d, generator=g) / d**0.5).requires_grad_()
    I = torch.eye(d)
    opt = torch.optim.SGD([W1, W2], lr=1e-4)
    xs = torch.randn(steps, batch, d, generator=g)

    def f(W1, W2, x):  # W2^T ReLU((W1 + I)^T x) + x, summed
        return (W2.T @ torch.relu((W1 + I).T @ x) + x).sum()

    times = []
    for t in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = 0.0
        for x in xs[t]:
            with torch.no_grad():
                y = f(W1s, W2s, x)
            loss = loss + (f(W1, W2, x) - y) ** 2
        (loss / batch).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed step, as for the vectorised trainer


def vectorised_step_time(archs, seeds: int, d: int, batch: int, steps: int, n_train: int) -> float:
    """Seconds per step of ``ts.train`` (all ``archs`` and seeds at once): the time of the
    training loop of a ``steps + 1``-step run minus that of a 1-step run (both end with
    one metric log). Only the loop is timed, through the progress bar it iterates, so
    the set-up (100,000 samples per seed, teachers, labels), whose time varies by more
    than a few hundred steps take, stays out of the difference."""
    loop_times = []

    def timed(iterable, **kwargs):
        start = time.perf_counter()
        yield from iterable
        loop_times.append(time.perf_counter() - start)

    def run(n: int) -> float:
        cfg = ts.TeacherStudentConfig(d=d, n_train=n_train, n_test=1000, batch_size=batch, steps=n, log_every=n)
        ts.train(archs, cfg, range(seeds))
        return loop_times.pop()

    bar, ts.progress_bar = ts.progress_bar, timed
    try:
        run(1)  # warm-up
        # best of three of each: on a shared machine the minimum is the least disturbed
        t1 = min(run(1) for _ in range(3))
        diff = min(run(steps + 1) for _ in range(3)) - t1
        if diff <= 0:  # the noise exceeds the steps' time: no ratio can be printed
            raise SystemExit(f"{len(archs)} arch(s) x {seeds} seed(s): {steps + 1} steps took no longer than 1 "
                             f"step (timing noise); raise --steps")
        return diff / steps
    finally:
        ts.progress_bar = bar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive, default=300, help="steps timed for the vectorised trainer")
    parser.add_argument("--blog-steps", type=positive, default=5, help="steps timed for the per-sample loop")
    parser.add_argument("--threads", type=positive, default=1)
    args = parser.parse_args()
    if args.steps < 1 or args.blog_steps < 1 or args.threads < 1:
        parser.error("--steps, --blog-steps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    d, B, N = 10, 200, 100_000
    blog = blog_loop_step_time(d, B, args.blog_steps)
    one = vectorised_step_time(["modified_resnet"], 1, d, B, args.steps, N)
    many = vectorised_step_time(["modified_resnet"], 32, d, B, args.steps, N)
    all6 = vectorised_step_time(list(ARCHS), 8, d, B, args.steps, N)
    full_steps = 100 * (N // B)
    print(header("teacher-student training step, per-sample loop vs vectorised", torch.device("cpu")))
    print(f"d={d}, batch={B}, threads={args.threads}; seconds per step (modified_resnet):")
    print(f"  blog-style per-sample loop, 1 seed : {blog * 1e3:9.2f} ms   (1.00x)")
    print(f"  vectorised, S=1                    : {one * 1e3:9.3f} ms   ({blog / one:7.1f}x faster)")
    print(f"  vectorised, S=32                   : {many * 1e3:9.3f} ms   ({32 * blog / many:7.1f}x faster per seed-step)")
    print(f"  vectorised, six archs, S=8         : {all6 * 1e3:9.3f} ms per step of all 48 runs")
    print(f"full blog setting ({full_steps} steps), six archs x 8 seeds: projected {full_steps * all6:.0f} s "
          f"(target < 120 s); the blog-style loop would take {full_steps * blog * 48 / 3600:.1f} h")


if __name__ == "__main__":
    main()
