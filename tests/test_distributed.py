"""Data-parallel training under torchrun (gloo, 2 CPU processes, resnet20 on 40 CIFAR-10
format images): the ranks end with identical weights, retracted skips included; rank 0
alone writes one set of result files; a killed-then-resumed run matches an uninterrupted
one bit for bit. (CIFAR files the tests write rather than digits: each worker process then
skips scikit-learn's import, ~1.3 s of CPU per process; 5 steps per epoch, as digits' 1437
images in batches of 256 gave.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orthogonal_skip_connections.train import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
N_TRAIN, BATCH = 40, 8  # the global batch: 4 images per rank
STEPS_PER_EPOCH = N_TRAIN // BATCH
OVERRIDES = ["dataset=cifar10", "data.download=false", "model.model_type=resnet20", "device=cpu", "progress=false",
             f"batch_size={BATCH}", "scheduler.epochs=2", "model.skip_kind=learnable_orth", "model.method=steepest",
             "model.init=haar", "optimizer.nesterov=true"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10 files of N_TRAIN training and 16 test images (random), outside every run's cwd."""
    from helpers import write_fake_cifar

    root = tmp_path_factory.mktemp("ddp_data")
    write_fake_cifar(root, "cifar10", n_train=N_TRAIN, n_test=16)
    return root


def torchrun(cwd: Path, data_root: Path, *overrides: str, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **env,
               "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           *OVERRIDES, f"data.root={data_root}", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cifar_root):
    """One uninterrupted 2-process run; each rank's final weights saved beside it."""
    cwd = tmp_path_factory.mktemp("ddp_full")
    (cwd / "weights").mkdir()
    out = torchrun(cwd, cifar_root, "hydra.run.dir=run", OSC_TEST_RANK_WEIGHTS=str(cwd / "weights"))
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


def test_ranks_hold_identical_weights_and_rank0_writes_one_result_set(full_run):
    w0 = torch.load(full_run / "weights" / "rank0.pt", weights_only=True)
    w1 = torch.load(full_run / "weights" / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    skips = [k for k in w0 if ".skip." in k]
    assert len(skips) == 9  # the retracted orthogonal skip of every block
    for key in w0:  # every parameter and buffer (BatchNorm statistics included)
        assert torch.equal(w0[key], w1[key]), key
    skip0 = w0[skips[0]]
    assert torch.linalg.matrix_norm(skip0.T @ skip0 - torch.eye(len(skip0))) < 1e-4  # still orthogonal
    # exactly one set of result files, in the one run dir, and nothing else in the cwd
    assert sorted(p.name for p in full_run.iterdir()) == ["run", "weights"]
    run = full_run / "run"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", ".lock", "checkpoint.pt", "config.yaml", "metrics.jsonl",
                                                      "run.json", "summary.json"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["steps"] == 2 * STEPS_PER_EPOCH  # batch_size is the global batch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["train", "eval", "train", "eval"]  # logged once, not per rank
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], w0[k]) for k in w0)


def test_killed_and_resumed_ddp_run_matches_uninterrupted(full_run, cifar_root, tmp_path):
    died = torchrun(tmp_path, cifar_root, "hydra.run.dir=run", OSC_TEST_DIE_AT_FORWARD=str(STEPS_PER_EPOCH + 3))
    assert died.returncode != 0
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    resumed = torchrun(tmp_path, cifar_root, "hydra.run.dir=run", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(full_run / "run" / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    timing = {"train_time_s", "seconds_per_epoch", "provenance", "report"}
    full = json.loads((full_run / "run" / "summary.json").read_text())
    again = json.loads((run / "summary.json").read_text())
    assert {k: v for k, v in full.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}
    lines = lambda p: [{k: v for k, v in json.loads(s).items() if k != "epoch_time_s"}  # noqa: E731
                       for s in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(full_run / "run") == lines(run)


def test_a_ctrl_c_under_torchrun_is_one_line_from_rank_0_naming_the_run_dir(cifar_root, tmp_path):
    """Ctrl-C reaches every rank: each printed its own stop line (and a run in a default dir was
    never named). Rank 0 now speaks for all, with the run dir to resume from."""
    stopped = torchrun(tmp_path, cifar_root, "hydra.run.dir=run", OSC_TEST_INTERRUPT_AT_FORWARD=str(STEPS_PER_EPOCH + 2))
    assert stopped.returncode != 0
    lines = [line for line in stopped.stderr.splitlines() if line.startswith(("interrupted", "terminated"))]
    assert lines == ["interrupted; to continue what it saved: the same torchrun command with resume=true "
                     f"hydra.run.dir={tmp_path / 'run'}"], stopped.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_loader_shards_are_the_single_process_batches():
    from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator, load_image_data

    data = load_image_data("digits")
    cpu = torch.device("cpu")
    whole = list(TensorLoader(data, 64, True, cpu).epoch(epoch_generator(0, 1)))
    shards = [list(TensorLoader(data, 64, True, cpu, rank=r, world=4).epoch(epoch_generator(0, 1)))
              for r in range(4)]
    assert all(len(s) == len(whole) for s in shards)
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
    with pytest.raises(ValueError, match="split evenly"):
        TensorLoader(data, 66, True, cpu, rank=0, world=4)


def test_mixup_shards_keep_the_single_process_batches(monkeypatch):
    """With mixup each rank drew a permutation of its own share from the epoch generator, which
    one process draws for the whole batch: from the second batch on every crop and flip differed
    from the single-process run's. Now every rank draws the global permutation and mixes within
    its share: the loader's batches stay the single process's, and one process mixes as before."""
    from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator, load_image_data
    from orthogonal_skip_connections.train import classifier, distributed

    data = load_image_data("digits")
    cpu, cfg = torch.device("cpu"), classifier.TrainConfig(mixup_alpha=0.4)

    def epoch(rank, world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        gen, seen, mixed = epoch_generator(0, 1), [], []
        for x, y in TensorLoader(data, 64, True, cpu, rank=rank, world=world).epoch(gen):
            seen.append(x)
            classifier._forward(lambda inp: mixed.append(inp) or inp.flatten(1)[:, :10], x, y, cfg, gen, cpu)
            if len(seen) == 3:
                return seen, mixed

    whole, whole_mixed = epoch(0, 1)
    shards = [epoch(r, 2) for r in (0, 1)]
    for b in range(3):
        assert torch.equal(torch.cat([s[0][b] for s in shards]), whole[b])  # the same images, crops and flips
    # the first batch's draws replayed: lam, then a permutation of the whole batch; one process mixes by
    # it (as before), each rank by the order it gives the rank's own samples
    for r, world, mixed in ((0, 1, whole_mixed), (0, 2, shards[0][1]), (1, 2, shards[1][1])):
        gen = epoch_generator(0, 1)
        x, _ = next(TensorLoader(data, 64, True, cpu, rank=r, world=world).epoch(gen))
        lam = classifier._beta(cfg.mixup_alpha, gen)
        perm = torch.randperm(64, generator=gen)
        first = r * len(x)
        local = perm[(perm >= first) & (perm < first + len(x))] - first
        assert sorted(local.tolist()) == list(range(len(x)))
        assert torch.equal(mixed[0], lam * x + (1 - lam) * x[local])


def test_a_batch_larger_than_the_data_is_cut_to_a_multiple_of_the_processes():
    """103 images, batch 128 over 2 processes: 128 splits, so the batch is cut to 102 (51 each),
    the single process's batches of 102; it was cut to 103 and refused as "batch_size 103 does
    not split evenly", a batch the user never asked for."""
    import dataclasses

    from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator, load_image_data

    digits = load_image_data("digits")
    data = dataclasses.replace(digits, x_train=digits.x_train[:103], y_train=digits.y_train[:103])
    cpu = torch.device("cpu")
    whole = list(TensorLoader(data, 102, True, cpu).epoch(epoch_generator(0, 1)))
    shards = [list(TensorLoader(data, 128, True, cpu, rank=r, world=2).epoch(epoch_generator(0, 1))) for r in (0, 1)]
    assert len(whole) == 1 and [len(s) for s in shards] == [1, 1] and len(shards[0][0][1]) == 51
    assert torch.equal(torch.cat([s[0][0] for s in shards]), whole[0][0])
    with pytest.raises(ValueError, match="batch_size 127 does not split evenly over 2 processes"):
        TensorLoader(data, 127, True, cpu, rank=0, world=2)
    one = dataclasses.replace(digits, x_train=digits.x_train[:1], y_train=digits.y_train[:1])
    with pytest.raises(ValueError, match="a training set of 1 cannot be shared by 2 processes"):
        TensorLoader(one, 128, True, cpu, rank=0, world=2)


def test_without_a_process_group_everything_is_rank_0_of_1():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0] and distributed.any_true(False) is False


def test_apps_that_cannot_run_under_torchrun_say_so(monkeypatch, capsys):
    from orthogonal_skip_connections.experiments import theorem

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert theorem.main([]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err


def test_two_job_multirun_with_the_basic_launcher_makes_two_run_dirs_that_osc_report_reads(tmp_path, capsys):
    import csv

    from orthogonal_skip_connections.cli import main as osc_main
    from orthogonal_skip_connections.experiments import run_experiments

    sweep = tmp_path / "sweep"
    code = run_experiments.main(["-m", "seed=0,1", "dataset=digits", "model.model_type=resnet20", "device=cpu",
                                 "progress=false", "scheduler.epochs=1", "batch_size=256",
                                 "model.skip_kind=learnable_orth", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]  # hydra.sweep.subdir: the job number
    # the sweep's last line says where its jobs' run dirs are, not the last job's alone
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"sweep: 2 jobs; run dirs under {sweep.resolve()} (osc report {sweep.resolve()} tables them)"
    for seed, run in enumerate(runs):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == seed
    assert osc_main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    assert {r["variant"] for r in rows} == {"learnable_orth/steepest"} and all(r["status"] == "completed" for r in rows)


def test_refused_torchrun_run_leaves_no_run_dir(tmp_path, monkeypatch, capsys):
    """Rank 0's path under torchrun (the process group stubbed out): missing data is one
    line, and the run dir its own pre-Hydra check made is removed like any refused run's."""
    from orthogonal_skip_connections.experiments import run_experiments

    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "init_from_env", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: obj)
    run = tmp_path / "outputs" / "run"
    code = run_experiments.main(["dataset=cifar10", "data.download=false", f"data.root={tmp_path / 'none'}",
                                 "model.model_type=resnet20", "device=cpu", "progress=false", f"hydra.run.dir={run}"])
    assert code == 2
    assert "data.download=false" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_a_run_time_refusal_on_another_rank_says_whose_it_is(tmp_path, monkeypatch, capsys):
    """Missing data met at run time by rank 1 of 2 (the process group stubbed out): one line
    that names the rank, exit 2, nothing written by it."""
    from orthogonal_skip_connections.experiments import run_experiments

    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "init_from_env", lambda *a, **k: None)
    run = tmp_path / "outputs" / "run"
    # what rank 0 would broadcast: the run dir it checked, no error, the outermost dir it makes
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: (str(run), None, str(run.parent)))
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    code = run_experiments.main(["dataset=cifar10", "data.download=false", f"data.root={tmp_path / 'none'}",
                                 "model.model_type=resnet20", "device=cpu", "progress=false", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: rank 1 of 2: ") and "data.download=false" in err and err.count("\n") == 1
    # the dir this rank's Hydra made (rank 0 removes its own) is gone, up to rank 0's outermost new dir
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_refusal_under_torchrun_is_said_once_by_rank_0(rank, tmp_path, monkeypatch, capsys):
    """Every rank checks the same overrides and meets the same mistake: rank 0 prints the one
    line, the other ranks exit 2 without a copy of it."""
    from orthogonal_skip_connections.experiments import run_experiments

    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "init_from_env", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: obj)
    monkeypatch.setenv("RANK", rank)
    code = run_experiments.main(["optimizer.lr=abc", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "run").exists()
    if rank == "0":
        assert err.startswith("error: ") and "optimizer.lr" in err and err.count("\n") == 1
    else:
        assert err == ""


def test_remove_empty_takes_empty_dirs_up_to_top_and_nothing_else(tmp_path):
    from orthogonal_skip_connections.runs import remove_empty

    top = tmp_path / "a"
    (top / "b" / "run").mkdir(parents=True)
    (top / "keep.txt").write_text("x")
    remove_empty(top / "b" / "run", top)
    assert not (top / "b").exists() and (top / "keep.txt").exists()  # stopped at the first non-empty dir
    (tmp_path / "other" / "run").mkdir(parents=True)
    remove_empty(tmp_path / "other" / "run", top)  # not under top: left alone
    assert (tmp_path / "other" / "run").exists()
    (top / "c").mkdir()
    (top / "c" / "f").write_text("y")
    remove_empty(top / "c", top)  # not empty: left alone
    assert (top / "c" / "f").exists()
