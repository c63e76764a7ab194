"""Honest results under faults (issue 10), driven through ``osc`` in-process.

- A table of bad inputs over every app: each is exit code 2, exactly one line on stderr
  that names the key or file, no traceback, no new file or directory anywhere under the
  test's root, and the finished (and unfinished) run dirs there byte-identical.
- Divergence, per app with a training loop: ``status: diverged``, exit code 1, the step,
  the last finite loss and the skipped steps in summary.json (the rule of
  ``train/divergence.py``).
- A resume with a changed config is refused; one with only ignorable keys changed goes on
  and cleans the .tmp files a killed write left.
- Two writers: the second is refused while the first holds the run dir.
- A crafted CIFAR pickle is refused and its payload never runs.
- A sweep goes on after a failed and a diverged job, records both, and exits non-zero;
  the report lists them.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers import write_fake_cifar

from orthogonal_skip_connections.cli import main as osc
from orthogonal_skip_connections.experiments import load_app

TINY = {
    "run_experiments": ["dataset=digits", "model.model_type=resnet20", "scheduler.epochs=1", "device=cpu"],
    "theorem": ["ms=[1,2,4]", "n_points=16", "n_pairs=16"],
    "teacher_student": ["d=3", "n_train=40", "n_test=20", "batch_size=10", "steps=4", "log_every=2", "seeds=2"],
    "orth_residual_synthetic_data": ["epochs=1", "n_blocks=1", "n_samples=100", "region_grid=10"],
    "orth_to_id": ["datasets=[blobs]", "dims=[2]", "n_blocks=[1,2]", "seeds=2", "epochs=1", "n_samples=100",
                   "log_points=2", "pca_grid=10"],
    "construction_validity": ["dims=[2]", "num_classes=[2]", "n_blocks=[1]", "seeds=2", "epochs=1",
                              "n_samples=100"],
    "study": ["scale=smoke", "jobs=1", "parts=[classification]", "scales.smoke.classification.variants=[identity]",
              "scales.smoke.classification.seeds=1"],
    "two_stage": ["model_type=resnet20", "n_train=64", "seeds=1", "stage1_epochs=1", "stage2_epochs=1",
                  "batch_size=32", "fit_images=32", "device=cpu"],
    "loss_landscape": ["train.dir=null", "cache_dir=null", "train.model_type=resnet20", "train.seeds=1",
                       "train.n_train=64", "train.epochs=1", "train.batch_size=32", "device=cpu"],
}
FINISHED = ("run_experiments", "theorem", "teacher_student")


def run(argv, capsys):
    code = osc([str(a) for a in argv])
    out = capsys.readouterr()
    run.out = out.out  # stdout, for the few tests that read it
    return code, [line for line in out.err.splitlines() if line.strip()], out.err


def snapshot(root: Path) -> dict:
    """Every path under root, with a hash of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Finished run dirs of three apps, an unfinished one, a file, CIFAR dirs (empty, and
    one with a crafted pickle), and odd run dirs for ``osc report``."""
    root = tmp_path_factory.mktemp("faults")
    assert osc(["run_experiments", *TINY["run_experiments"], f"hydra.run.dir={root / 'done' / 'run_experiments'}",
                "progress=false"]) == 0
    # the copies below are read for their json files only: without the 2 MB checkpoint, each case's two
    # snapshots hash 5 MB rather than 21 MB (the two dirs a run_experiments case may touch keep theirs)
    no_checkpoint = shutil.ignore_patterns("checkpoint.pt")
    for app in FINISHED[1:]:  # a finished dir is one with a summary.json (tests/test_apps.py runs each app)
        shutil.copytree(root / "done" / "run_experiments", root / "done" / app, ignore=no_checkpoint)
    unfinished = root / "unfinished"
    shutil.copytree(root / "done" / "run_experiments", unfinished)
    (unfinished / "summary.json").unlink()
    # resumes refused: a summary.json that cannot be read, no config.yaml to check against, a checkpoint
    # that is not one (its refusal comes after config.yaml was rewritten: the snapshot sees it put back)
    resume = root / "resume"
    shutil.copytree(root / "done" / "run_experiments", resume / "corrupt_summary", ignore=no_checkpoint)
    (resume / "corrupt_summary" / "summary.json").write_text('{"status": "compl')
    for name, data in (("no_config", b"PK"), ("bad_checkpoint", b"garbage\n")):
        shutil.copytree(unfinished, resume / name, ignore=no_checkpoint)
        (resume / name / "checkpoint.pt").write_bytes(data)
    (resume / "no_config" / "config.yaml").unlink()
    shutil.copytree(unfinished, resume / "empty_config", ignore=no_checkpoint)
    (resume / "empty_config" / "config.yaml").write_text("")
    # checkpoints torch reads but this run cannot take: another model's weights, not a dict
    import torch

    for name, obj in (("other_model", {"model": {"bogus.weight": torch.zeros(1)}}), ("list_checkpoint", [1, 2])):
        shutil.copytree(unfinished, resume / name, ignore=no_checkpoint)
        torch.save(obj, resume / name / "checkpoint.pt")
    shutil.copytree(unfinished, resume / "bad_config", ignore=no_checkpoint)
    (resume / "bad_config" / "config.yaml").write_text("model: [unclosed\n")
    torch.save({}, resume / "bad_config" / "checkpoint.pt")
    shutil.copytree(unfinished, resume / "binary_config", ignore=no_checkpoint)
    (resume / "binary_config" / "config.yaml").write_bytes(b"\xff\xfe\x00")
    garbled = root / "ll_runs" / "digits_resnet20" / "zero" / "seed0"  # loss_landscape's first default run
    garbled.mkdir(parents=True)
    (garbled / "config.yaml").write_text("model: [unclosed\n")
    cut = root / "ll_runs_cut" / "digits_resnet20" / "zero" / "seed0"
    cut.mkdir(parents=True)
    (cut / "summary.json").write_text('{"status": "compl')
    # loss_landscape's first default run under train.dir, with the config it wants: a killed run whose
    # checkpoint cannot be read (resumed), and a completed one whose checkpoint does not fit (analysed)
    from orthogonal_skip_connections.experiments.loss_landscape import run_config, variant_spec

    ll_cfg = load_app("loss_landscape").config(TINY["loss_landscape"])
    for name, checkpoint in (("ll_runs_bad_checkpoint", b"garbage\n"), ("ll_runs_list_checkpoint", [1, 2])):
        seed0 = root / name / "digits_resnet20" / "zero" / "seed0"
        seed0.mkdir(parents=True)
        (seed0 / "config.yaml").write_text(yaml.safe_dump(run_config(ll_cfg, variant_spec(ll_cfg, "zero"), 0),
                                                          sort_keys=False))
        if isinstance(checkpoint, bytes):
            (seed0 / "checkpoint.pt").write_bytes(checkpoint)
        else:
            torch.save(checkpoint, seed0 / "checkpoint.pt")
            (seed0 / "summary.json").write_text('{"status": "completed"}')
    # the same inside loss_landscape's own run dir (train.dir=null), as a killed run left it (.hydra/, .lock)
    for name, source in (("ll_own", garbled), ("ll_own_cut", cut)):
        shutil.copytree(source, root / name / "runs" / "digits_resnet20" / "zero" / "seed0")
        (root / name / ".hydra").mkdir()
        (root / name / ".hydra" / "overrides.yaml").write_text("- train.dir=null\n")
        (root / name / ".lock").touch()
    # two_stage runs stopped after a seed (parts.json): one cut short, one not of this run (seed 5 of seeds=1)
    from orthogonal_skip_connections.runs import to_jsonable

    ts_config = yaml.safe_dump(to_jsonable(load_app("two_stage").config(TINY["two_stage"])), sort_keys=False)
    for name, parts in (("cut", '{"seeds": {"0": [{"vari'), ("foreign", '{"seeds": {"5": []}}')):
        (root / "ts_parts" / name).mkdir(parents=True)
        (root / "ts_parts" / name / "config.yaml").write_text(ts_config)
        (root / "ts_parts" / name / "parts.json").write_text(parts)
        (root / "ts_parts" / name / ".lock").touch()  # a run's lock file stays (rundir's rule)
    (root / "a_file").write_text("not a dir\n")
    ll_cut = root / "ll_corrupt_summary"  # a trained run given in runs=, its summary.json cut short
    shutil.copytree(root / "done" / "run_experiments", ll_cut)
    (ll_cut / "summary.json").write_text('{"status": "compl')
    (root / "ts_cut").mkdir()  # a teacher_student run's trajectories.npz cut short (a disk filled up)
    import numpy as np

    np.savez(root / "ts_cut" / "trajectories.npz", **{"sum_modified.seeds": np.arange(8), "x": np.zeros(4096)})
    (root / "ts_cut" / "trajectories.npz").write_bytes((root / "ts_cut" / "trajectories.npz").read_bytes()[:3000])
    (root / "user_dir").mkdir()  # a dir of the user's own (no .hydra/): a run refused in it leaves it as it was
    (root / "user_dir" / "notes.txt").write_text("mine\n")
    (root / "user_dir" / ".lock").touch()  # the lock stays by rundir's rule (a lock file is never unlinked)
    (root / "cifar_empty").mkdir()
    write_cifar(root / "cifar_evil", evil=root / "PWNED")
    write_cifar(root / "cifar_small")  # 40 training images
    odd = root / "odd"
    done = {f: json.loads((root / "done" / "run_experiments" / f).read_text()) for f in ("summary.json", "run.json")}
    for name, summary, meta in [
        ("corrupt", "{not json", None), ("list", "[1, 2]", None),
        ("labels", None, {"app": "run_experiments", "labels": {"task": "digits/resnet20"}}),
        ("acc", json.dumps({**done["summary.json"], "test_acc": None}), None),
        ("seed", None, {**done["run.json"], "labels": {**done["run.json"]["labels"], "seed": "a"}}),
    ]:
        d = odd / name / "run"
        shutil.copytree(root / "done" / "run_experiments", d, ignore=no_checkpoint)
        if summary is not None:
            (d / "summary.json").write_text(summary)
        if meta is not None:
            (d / "run.json").write_text(json.dumps(meta))
    damaged = odd / "metrics" / "run"  # a line before the last that is not JSON: damaged, not cut short
    shutil.copytree(root / "done" / "run_experiments", damaged, ignore=no_checkpoint)
    (damaged / "metrics.jsonl").write_text("{not json\n" + (damaged / "metrics.jsonl").read_text())
    binary = odd / "binary" / "run"  # bytes that are not text (a disk's garbage)
    shutil.copytree(root / "done" / "run_experiments", binary, ignore=no_checkpoint)
    (binary / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    orphan = odd / "no_run_json" / "run"  # copied without the run.json a run dir is known by
    shutil.copytree(root / "done" / "run_experiments", orphan, ignore=no_checkpoint)
    (orphan / "run.json").unlink()
    return root


class Payload:
    """Unpickling this runs ``open(path, "w")``: the crafted CIFAR file's payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_cifar(base: Path, evil: Path | None = None) -> None:
    """Fake CIFAR-10 files (40 training images); ``evil``: the first training file's labels
    are a :class:`Payload` that would create that file."""
    write_fake_cifar(base, "cifar10", n_train=40, n_test=8, payload=None if evil is None else Payload(evil))


M = "ROOT"  # placeholder: the fixture's root dir
# (id, argv, words the one line must contain)
CASES = [
    # run_experiments: keys, values, types
    ("re-unknown-key", ["run_experiments", "bogus_key=1"], ["bogus_key"]),
    ("re-unknown-plus", ["run_experiments", "+bogus=1"], ["bogus"]),
    ("re-unknown-nested", ["run_experiments", "optimizer.lrr=0.1"], ["optimizer.lrr"]),
    ("re-dataset-bogus", ["run_experiments", "dataset=bogus"], ["bogus", "digits"]),
    ("re-lr-abc", ["run_experiments", "optimizer.lr=abc"], ["optimizer.lr"]),
    ("re-lr-negative", ["run_experiments", "optimizer.lr=-1"], ["lr"]),
    ("re-lr-nan", ["run_experiments", "optimizer.lr=nan"], ["lr"]),
    ("re-resume-no", ["run_experiments", "resume=no"], ["resume", "true or false"]),
    ("re-download-no", ["run_experiments", "data.download=no"], ["data.download", "true or false"]),
    ("re-progress-maybe", ["run_experiments", "progress=maybe"], ["progress"]),
    ("re-channels-last-1", ["run_experiments", "channels_last=1"], ["channels_last", "true or false"]),
    ("re-augment-off", ["run_experiments", "data.augment=off"], ["data.augment", "true or false"]),
    ("re-batch-too-big", ["run_experiments", "batch_size=5000"], ["batch_size", "1437"]),
    ("re-batch-zero", ["run_experiments", "batch_size=0"], ["batch_size"]),
    ("re-epochs-float", ["run_experiments", "scheduler.epochs=1.5"], ["scheduler.epochs"]),
    ("re-epochs-zero", ["run_experiments", "scheduler.epochs=0"], ["scheduler.epochs"]),
    ("re-seed-negative", ["run_experiments", "seed=-1"], ["seed"]),
    ("re-seed-abc", ["run_experiments", "seed=abc"], ["seed"]),
    ("re-seed-dict", ["run_experiments", "seed={a:1}"], ["seed must be an integer", "{'a': 1}"]),  # was got '{'
    ("oi-dims-one-value", ["orth_to_id", "dims=3"], ["dims must be a list of integers", "dims=[a,b,...]"]),
    # a seed past NumPy's 2**32 - 1 (torch's past 2**63): a traceback from the first library seeded, at run time
    ("re-seed-past-torch", ["run_experiments", "seed=9223372036854775808"], ["seed", "4294967295"]),
    ("sy-seed-past-numpy", ["orth_residual_synthetic_data", "seed=4294967296"], ["seed", "4294967295"]),
    ("cv-last-seed-past-numpy", ["construction_validity", "seed=4294967295"], ["seed", "4294967294"]),  # seeds=2
    ("ts2-stage-seed-past-numpy", ["two_stage", "seed=2147483648"], ["seed", "2147483647"]),  # stage 2: 2 s + 1
    ("ll-direction-seed-past-numpy", ["loss_landscape", "direction_seed=4294967296"], ["direction_seed"]),
    ("re-skip-kind", ["run_experiments", "model.skip_kind=bogus"], ["bogus"]),
    ("re-method", ["run_experiments", "model.skip_kind=learnable_orth", "model.method=adam"], ["adam"]),
    ("re-model-type", ["run_experiments", "model.model_type=resnet7"], ["model.model_type"]),
    ("re-wandb-mode", ["run_experiments", "wandb.mode=sometimes"], ["wandb.mode"]),
    ("re-device", ["run_experiments", "device=tpu"], ["device"]),
    ("re-amp", ["run_experiments", "amp=fp8"], ["amp"]),
    ("re-label-smoothing", ["run_experiments", "label_smoothing=1.5"], ["label_smoothing"]),
    ("re-mixup", ["run_experiments", "mixup_alpha=-1"], ["mixup_alpha"]),
    ("re-eval-every", ["run_experiments", "eval_every=0"], ["eval_every"]),
    ("re-num-threads", ["run_experiments", "num_threads=0"], ["num_threads"]),
    ("re-num-threads-huge", ["run_experiments", "num_threads=1000000"], ["num_threads", "CPUs"]),  # was a segfault
    ("ts-num-threads-huge", ["teacher_student", "num_threads=1000000"], ["num_threads", "CPUs"]),
    ("re-grammar-bracket", ["run_experiments", "model.skip_kind=["], ["model.skip_kind"]),
    ("re-section-as-value", ["run_experiments", "optimizer=adam"], ["optimizer is a group of settings", "optimizer.<key>",
                                                                  "name, lr"]),
    ("re-grammar-paren", ["run_experiments", "optimizer.lr=(0.1"], ["optimizer.lr"]),
    # run_experiments: run dirs
    ("re-dir-is-file", ["run_experiments", f"hydra.run.dir={M}/a_file"], ["a_file", "hydra.run.dir"]),
    ("re-dir-under-file", ["run_experiments", f"hydra.run.dir={M}/a_file/run"], ["a_file", "hydra.run.dir"]),
    # a run inside a finished run's dir: osc report of that dir read the outer run alone
    ("re-dir-inside-finished-run", ["theorem", f"hydra.run.dir={M}/done/theorem/inner"],
     ["inside the finished run dir", "done/theorem", "hydra.run.dir"]),
    ("re-dir-unwritable", ["run_experiments", "hydra.run.dir=/proc/osc_run"], ["/proc/osc_run"]),
    # a blank dir is Hydra's current dir: the run's files landed in the working dir (the repo root, say)
    ("re-dir-blank", ["run_experiments", "hydra.run.dir=''"], ["hydra.run.dir", "a path"]),
    ("re-dir-tilde", ["run_experiments", "hydra.run.dir='~/osc_run'"], ["hydra.run.dir=~/osc_run", "oc.env:HOME"]),
    ("re-sweep-dir-blank", ["run_experiments", "-m", "seed=0,1", "hydra.sweep.dir=' '"], ["hydra.sweep.dir", "a path"]),
    # the dir as Hydra parses it (quotes removed, ${...} resolved), not the text after '=': a lock file
    # once landed in ./'ROOT/a_file'/ and a failed run left ROOT/fresh/identity behind
    ("re-dir-is-file-quoted", ["run_experiments", f"hydra.run.dir='{M}/a_file'"], ["a_file", "hydra.run.dir"]),
    ("re-sweep-dir-file-quoted", ["run_experiments", "-m", "seed=0,1", f"hydra.sweep.dir='{M}/a_file'"],
     ["a_file", "hydra.sweep.dir"]),
    ("re-dir-interpolated-data-missing", ["run_experiments", "dataset=cifar10", f"data.root={M}/cifar_empty",
                                          "data.download=false", f"hydra.run.dir={M}/fresh/${{model.skip_kind}}"],
     ["cifar10", "cifar_empty"]),
    ("re-dir-finished", ["run_experiments", f"hydra.run.dir={M}/done/run_experiments"],
     ["done/run_experiments", "finished"]),
    ("re-dir-unfinished", ["run_experiments", f"hydra.run.dir={M}/unfinished"], ["unfinished", "resume=true"]),
    ("re-resume-finished-other-lr", ["run_experiments", "resume=true", "optimizer.lr=0.05",
                                     f"hydra.run.dir={M}/done/run_experiments"], ["optimizer.lr"]),
    ("re-resume-lr", ["run_experiments", "resume=true", "optimizer.lr=0.05", f"hydra.run.dir={M}/unfinished"],
     ["optimizer.lr", "config.yaml"]),
    ("re-resume-epochs", ["run_experiments", "resume=true", "scheduler.epochs=3", f"hydra.run.dir={M}/unfinished"],
     ["scheduler.epochs"]),
    ("re-resume-schedule", ["run_experiments", "resume=true", "scheduler.name=step",
                            f"hydra.run.dir={M}/unfinished"], ["scheduler.name"]),
    ("re-resume-skip-kind", ["run_experiments", "resume=true", "model.skip_kind=zero",
                             f"hydra.run.dir={M}/unfinished"], ["model.skip_kind"]),
    ("re-resume-corrupt-summary", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/corrupt_summary"],
     ["corrupt_summary/summary.json", "JSONDecodeError", "move it away"]),
    ("re-resume-no-config", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/no_config"],
     ["no config.yaml"]),
    ("re-resume-bad-checkpoint", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/bad_checkpoint"],
     ["bad_checkpoint/checkpoint.pt", "UnpicklingError", "move it away", "choose another hydra.run.dir"]),
    ("re-resume-checkpoint-other-model", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/other_model"],
     ["other_model/checkpoint.pt", "does not fit", "bogus.weight", "move it away",
      "choose another hydra.run.dir"]),
    ("re-resume-checkpoint-not-a-dict", ["run_experiments", "resume=true",
                                         f"hydra.run.dir={M}/resume/list_checkpoint"],
     ["list_checkpoint/checkpoint.pt", "does not fit", "move it away"]),
    ("ll-runs-checkpoint-not-a-dict", ["loss_landscape", f"runs=[{M}/resume/list_checkpoint]"],
     ["list_checkpoint/checkpoint.pt", "does not fit", "out of runs="]),
    # the checkpoint of a run named by runs= is fixed by changing runs=, not hydra.run.dir (it said so)
    ("ll-runs-bad-checkpoint", ["loss_landscape", f"runs=[{M}/resume/bad_checkpoint]"],
     ["bad_checkpoint/checkpoint.pt", "UnpicklingError", "out of runs="]),
    # a default run's, by choosing another train.dir: resumed, and analysed
    ("ll-train-dir-bad-checkpoint", ["loss_landscape", "train.variants=[zero]",
                                     f"train.dir={M}/ll_runs_bad_checkpoint"],
     ["ll_runs_bad_checkpoint/digits_resnet20/zero/seed0/checkpoint.pt", "UnpicklingError",
      "choose another train.dir"]),
    ("ll-train-dir-checkpoint-not-a-dict", ["loss_landscape", "train.variants=[zero]",
                                            f"train.dir={M}/ll_runs_list_checkpoint"],
     ["ll_runs_list_checkpoint/digits_resnet20/zero/seed0/checkpoint.pt", "does not fit",
      "choose another train.dir"]),
    # refused inside Hydra, which had made .hydra/ there: its files were removed, the empty dir left behind
    ("ll-refused-in-a-users-dir", ["loss_landscape", f"runs=[{M}/resume/list_checkpoint]", f"hydra.run.dir={M}/user_dir"],
     ["list_checkpoint/checkpoint.pt", "does not fit"]),
    ("ll-runs-config-unparsable", ["loss_landscape", f"runs=[{M}/resume/bad_config]"],
     ["bad_config/config.yaml", "ParserError"]),
    ("re-resume-empty-config", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/empty_config"],
     ["empty_config/config.yaml", "holds nothing"]),  # was 'differs ... in , amp, batch_size, ...' (every key)
    ("st-resume-other-apps-dir", ["study", "resume=true", f"hydra.run.dir={M}/unfinished"],  # was 'differs in amp, ...'
     ["unfinished holds a run_experiments run, not a study one"]),
    ("re-resume-config-not-text", ["run_experiments", "resume=true", f"hydra.run.dir={M}/resume/binary_config"],
     ["binary_config/config.yaml", "UnicodeDecodeError"]),  # was a traceback out of osc itself
    ("re-cifar-missing", ["run_experiments", "dataset=cifar10", f"data.root={M}/cifar_empty", "data.download=false"],
     ["cifar10", "cifar_empty"]),
    ("re-cifar-crafted", ["run_experiments", "dataset=cifar10", f"data.root={M}/cifar_evil", "data.download=false"],
     ["data_batch_1", "refused"]),
    ("re-warmup-inf", ["run_experiments", "scheduler.warmup_epochs=inf"], ["scheduler.warmup_epochs", "finite"]),
    ("re-weight-decay-inf", ["run_experiments", "optimizer.weight_decay=inf"], ["optimizer.weight_decay", "finite"]),
    ("re-upkeep-adaptive-sgd", ["run_experiments", "optimizer.upkeep_adaptive=true"],
     ["optimizer.upkeep_adaptive", "adam or adamw", "'sgd'"]),
    # conflicting options: nesterov was dropped unsaid (config.yaml still saying nesterov: true)
    ("re-nesterov-no-momentum", ["run_experiments", "optimizer.nesterov=true", "optimizer.momentum=0"],
     ["optimizer.nesterov", "momentum > 0"]),
    ("re-nesterov-adamw", ["run_experiments", "optimizer.nesterov=true", "optimizer.name=adamw"],
     ["optimizer.nesterov", "'adamw'"]),
    ("re-mixup-inf", ["run_experiments", "mixup_alpha=inf"], ["mixup_alpha", "finite"]),
    ("re-residual-eps-inf", ["run_experiments", "model.residual_eps=inf"], ["model.residual_eps"]),
    ("re-lr-scale-inf", ["run_experiments", "model.skip_kind=learnable_orth", "model.lr_scale=inf"], ["lr_scale"]),
    ("re-lr-scale-parametrized", ["run_experiments", "model.skip_kind=learnable_orth", "model.method=cayley",
                                  "model.lr_scale=10"], ["lr_scale=10", "cayley", "retracted"]),
    ("re-vit-patch", ["run_experiments", "model.model_type=vit_tiny", "model.patch_size=3"],
     ["patch_size 3", "8x8"]),
    ("re-stem-blank", ["run_experiments", "model.stem=''"], ["model.stem", "cifar, imagenet"]),
    ("re-data-root-blank", ["run_experiments", "data.root=' '"], ["data.root", "a path or null"]),
    ("re-batch-above-cifar-files", ["run_experiments", "dataset=cifar10", f"data.root={M}/cifar_small",
                                    "data.download=false", "batch_size=41"], ["batch_size", "40 images of cifar10"]),
    ("re-vit-too-wide", ["run_experiments", "model.model_type=vit_tiny", "model.width=999999", "model.heads=3"],
     ["width 999999", "memory"]),
    ("re-vit-too-deep", ["run_experiments", "model.model_type=vit_tiny", "model.depth=100000000"],
     ["depth 100000000", "memory"]),
    ("re-sweep-bogus", ["run_experiments", "-m", "model.skip_kind=bogus,identity", f"hydra.sweep.dir={M}/sweep"],
     ["bogus"]),
    ("re-sweep-dir-file", ["run_experiments", "-m", "seed=0,1", f"hydra.sweep.dir={M}/a_file"], ["a_file"]),
    # joblib's own refusal came from inside the launcher (a traceback) after multirun.yaml was written
    ("re-joblib-no-workers", ["run_experiments", "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0",
                              f"hydra.sweep.dir={M}/joblib0"], ["hydra.launcher.n_jobs=0", "-1 for one per CPU"]),
    ("re-joblib-workers-not-a-number", ["run_experiments", "-m", "seed=0,1", "hydra/launcher=joblib",
                                        "hydra.launcher.n_jobs=abc", f"hydra.sweep.dir={M}/joblib_abc"],
     ["hydra.launcher.n_jobs", "abc"]),
    # two jobs in one run dir: the second rewrote the first's .hydra/ files before its claim was refused
    ("th-sweep-shared-subdir", ["theorem", "-m", "seed=1,2", f"hydra.sweep.dir={M}/shared", "hydra.sweep.subdir=same"],
     ["jobs 0 and 1", "shared/same", "hydra.sweep.subdir", "${hydra.job.num}"]),
    # a config group given no option's name: Hydra's 'Config group override must be a string or a list' named
    # no group; a list merged its configs (the last winning), or left the dataset unset, as ~dataset does
    ("re-dataset-null", ["run_experiments", "dataset=null"], ["dataset=null", "allowed: cifar10, cifar100, digits"]),
    ("re-dataset-empty-list", ["run_experiments", "dataset=[]"], ["not a list", "allowed: cifar10, cifar100, digits"]),
    ("re-dataset-removed", ["run_experiments", "~dataset"], ["~dataset", "allowed: cifar10, cifar100, digits"]),
    ("re-sweep-dataset-null", ["run_experiments", "-m", "dataset=digits,null", f"hydra.sweep.dir={M}/sweep"],
     ["dataset=null", "allowed: cifar10, cifar100, digits"]),
    ("re-launcher-number", ["run_experiments", "hydra/launcher=1"], ["hydra/launcher=1", "basic"]),
    # theorem
    ("th-dim", ["theorem", "dim=1"], ["dim"]),
    ("th-ms", ["theorem", "ms=[0]"], ["ms"]),
    ("th-c-scale", ["theorem", "c_scale=0"], ["c_scale"]),
    ("th-seed", ["theorem", "seed=-1"], ["seed"]),
    ("th-resume", ["theorem", "resume=true"], ["resume"]),
    ("th-eps", ["theorem", "maps.dh0_far.eps=5"], ["maps.dh0_far.eps"]),
    ("th-progress-no", ["theorem", "progress=no"], ["progress"]),
    ("th-n-pairs", ["theorem", "n_pairs=1"], ["n_pairs"]),
    ("th-dir-finished", ["theorem", f"hydra.run.dir={M}/done/theorem"], ["done/theorem", "finished"]),
    ("th-interpolation", ["theorem", "seed=${oops}"], ["seed", "oops"]),
    ("th-hydra-key", ["theorem", "hydra.bogus=1"], ["hydra.bogus"]),
    ("th-hydra-launcher", ["theorem", "hydra/launcher=bogus"], ["unknown hydra/launcher 'bogus'", "basic"]),
    ("th-hydra-launcher-null", ["theorem", "hydra/launcher=null"], ["hydra/launcher=null", "basic"]),
    ("th-dataset-null", ["theorem", "dataset=null"], ["unknown key 'dataset'", "n_points"]),  # run_experiments' group
    ("th-sweep-without-m", ["theorem", "seed=1,2"], ["seed=1,2"]),
    # teacher_student
    ("ts-batch-zero", ["teacher_student", "batch_size=0"], ["batch_size"]),
    ("ts-batch-too-big", ["teacher_student", "batch_size=100"], ["batch_size", "n_train"]),
    ("ts-archs", ["teacher_student", "archs=[bogus]"], ["bogus"]),
    ("ts-lr-zero", ["teacher_student", "lr=0"], ["lr"]),
    ("ts-seeds", ["teacher_student", "seeds=0"], ["seeds"]),
    ("ts-seed", ["teacher_student", "seed=-1"], ["seed"]),
    ("ts-dtype", ["teacher_student", "dtype=float16"], ["dtype"]),
    ("ts-steps-float", ["teacher_student", "steps=1.5"], ["steps"]),
    ("ts-epochs-abc", ["teacher_student", "epochs=abc"], ["epochs"]),
    ("ts-nesterov", ["teacher_student", "optimizer=nesterov", "momentum=0"], ["nesterov"]),
    ("ts-threshold", ["teacher_student", "thresholds.fit=0"], ["thresholds.fit"]),
    ("ts-start-not-npz", ["teacher_student", f"student.start={M}/a_file"], ["student.start", "not an .npz file"]),
    ("ts-start-cut-npz", ["teacher_student", f"student.start={M}/ts_cut"], ["student.start", "cannot read the weights"]),
    ("ll-runs-corrupt-summary", ["loss_landscape", f"runs=[{M}/ll_corrupt_summary]"],
     ["ll_corrupt_summary/summary.json", "JSONDecodeError", "out of runs="]),
    ("re-data-root-file", ["run_experiments", "dataset=cifar10", f"data.root={M}/a_file"], ["data.root", "a_file"]),
    ("ts-start-other-app", ["teacher_student", f"student.start={M}/done/run_experiments"],
     ["student.start", "that dir holds no trajectories.npz (a run_experiments run, not a teacher_student one)"]),
    ("ts-dir-finished", ["teacher_student", f"hydra.run.dir={M}/done/teacher_student"], ["finished"]),
    # the small-model apps
    ("sy-dataset", ["orth_residual_synthetic_data", "dataset_type=spiral"], ["dataset_type"]),
    ("sy-skip-kinds", ["orth_residual_synthetic_data", "skip_kinds=[bogus]"], ["skip_kinds"]),
    ("sy-epochs-float", ["orth_residual_synthetic_data", "epochs=1.5"], ["epochs"]),
    ("sy-seed", ["orth_residual_synthetic_data", "seed=-1"], ["seed"]),
    ("sy-lr-abc", ["orth_residual_synthetic_data", "lr=abc"], ["lr"]),
    ("sy-special-no", ["orth_residual_synthetic_data", "skip.special=no"], ["skip.special", "true or false"]),
    ("oi-dims", ["orth_to_id", "dims=[1]"], ["dims"]),
    ("oi-seed", ["orth_to_id", "seed=-1"], ["seed"]),
    ("oi-datasets", ["orth_to_id", "datasets=[bogus]"], ["datasets"]),
    ("oi-skip-kind", ["orth_to_id", "skip.kind=bogus"], ["skip.kind='bogus' is not a skip kind"]),
    ("oi-slope-fraction-inf", ["orth_to_id", "slope_fraction=inf"], ["slope_fraction", "finite"]),
    ("sy-noise-nan", ["orth_residual_synthetic_data", "noise=nan"], ["noise", "finite"]),
    ("sy-lr-scale-inf", ["orth_residual_synthetic_data", "skip.lr_scale=inf"], ["lr_scale", "finite"]),
    ("sy-upkeep-adaptive-sgd", ["orth_residual_synthetic_data", "optimizer=sgd", "upkeep_adaptive=true"],
     ["upkeep_adaptive", "adam or adamw"]),
    ("sy-lr-scale-parametrized", ["orth_residual_synthetic_data", "skip.method=exp", "skip.lr_scale=0.5"],
     ["lr_scale=0.5", "exp"]),
    ("sy-hidden-mult-inf", ["orth_residual_synthetic_data", "hidden_mult=inf"], ["hidden_mult", "finite"]),
    ("oi-separation-nan", ["orth_to_id", "blobs.separation=nan"], ["blobs", "separation"]),
    ("oi-noise-inf", ["orth_to_id", "blobs.noise=inf"], ["blobs", "noise"]),
    ("oi-hidden-mult-inf", ["orth_to_id", "hidden_mult=inf"], ["hidden_mult"]),
    ("cv-noise-nan", ["construction_validity", "noise=nan"], ["noise", "finite"]),
    ("cv-separation-inf", ["construction_validity", "separation=inf"], ["separation", "finite"]),
    ("cv-lr-scale-inf", ["construction_validity", "skip.lr_scale=inf"], ["lr_scale"]),
    ("cv-fit-on", ["construction_validity", "fit_on=bogus"], ["fit_on"]),
    ("cv-seed", ["construction_validity", "seed=-1"], ["seed"]),
    ("cv-blocks", ["construction_validity", "n_blocks=[0]"], ["n_blocks"]),
    ("th-dim-huge", ["theorem", "dim=1000000000"], ["dim=1000000000", "memory"]),
    ("ts-d-huge", ["teacher_student", "d=1000000000"], ["d=1000000000", "memory"]),
    ("ts-seeds-huge", ["teacher_student", "seeds=1000000000"], ["seeds=1000000000", "memory"]),
    ("sy-blocks-huge", ["orth_residual_synthetic_data", "n_blocks=1000000000"], ["n_blocks=1000000000", "memory"]),
    ("sy-region-grid-huge", ["orth_residual_synthetic_data", "region_grid=1000000"], ["region_grid", "memory"]),
    ("oi-dims-huge", ["orth_to_id", "dims=[1000000000]"], ["dims up to 1000000000", "memory"]),
    ("oi-seeds-huge", ["orth_to_id", "seeds=1000000000"], ["seeds=1000000000", "memory"]),
    ("cv-blocks-huge", ["construction_validity", "n_blocks=[1000000000]"], ["n_blocks up to 1000000000", "memory"]),
    ("cv-classes-huge", ["construction_validity", "num_classes=[1000000000]"], ["num_classes up to", "memory"]),
    ("ts2-batch-above-n-train", ["two_stage", "batch_size=65"], ["batch_size", "64 images of digits"]),
    ("ts2-resume-parts-cut", ["two_stage", "resume=true", f"hydra.run.dir={M}/ts_parts/cut"],
     ["cannot read", "parts.json (JSONDecodeError)", "move it away to run every part again"]),
    ("ts2-resume-parts-foreign", ["two_stage", "resume=true", f"hydra.run.dir={M}/ts_parts/foreign"],
     ["parts.json: seed 5's record is not the four rows of a seed of this run", "train every seed again"]),
    ("ts2-parts-without-resume", ["two_stage", f"hydra.run.dir={M}/ts_parts/foreign"],
     ["already holds an unfinished run (parts.json; resume=true continues it)"]),
    # what cannot be resumed from is not offered to resume=true, which would refuse it
    ("ts2-cut-parts-without-resume", ["two_stage", f"hydra.run.dir={M}/ts_parts/cut"],
     ["(parts.json, not whole (a write cut short): resume=true refuses it; move it away to run anew)"]),
    ("re-bad-checkpoint-without-resume", ["run_experiments", f"hydra.run.dir={M}/resume/bad_checkpoint"],
     ["(checkpoint.pt, not whole (a write cut short): resume=true refuses it; move it away to run anew)"]),
    ("ll-batch-above-n-train", ["loss_landscape", "train.batch_size=65"], ["train.batch_size", "64 images"]),
    ("ll-cache-dir-file", ["loss_landscape", f"cache_dir={M}/a_file"], ["cache_dir", "a_file is a file"]),
    ("ll-cache-dir-cannot-be-made", ["loss_landscape", "cache_dir=/proc/osc_cache"], ["cache_dir", "/proc/osc_cache"]),
    ("ll-train-dir-cannot-be-made", ["loss_landscape", "train.dir=/proc/osc_runs"], ["train.dir", "/proc/osc_runs"]),
    ("ll-train-dir-config-unparsable", ["loss_landscape", f"train.dir={M}/ll_runs"],
     ["ll_runs/digits_resnet20/zero/seed0/config.yaml", "ParserError"]),
    ("ll-train-dir-summary-unparsable", ["loss_landscape", f"train.dir={M}/ll_runs_cut"],
     ["ll_runs_cut/digits_resnet20/zero/seed0/summary.json", "JSONDecodeError"]),
    # the default runs inside this run dir (train.dir=null): the key to change is hydra.run.dir (it said train.dir)
    ("ll-own-dir-config-unparsable", ["loss_landscape", f"hydra.run.dir={M}/ll_own"],
     ["ll_own/runs/digits_resnet20/zero/seed0/config.yaml", "choose another hydra.run.dir"]),
    ("ll-own-dir-summary-unparsable", ["loss_landscape", f"hydra.run.dir={M}/ll_own_cut"],
     ["ll_own_cut/runs/digits_resnet20/zero/seed0/summary.json", "choose another hydra.run.dir"]),
    ("ll-cache-dir-blank", ["loss_landscape", "cache_dir=''"], ["cache_dir", "a path or null"]),
    # study
    ("st-scale", ["study", "scale=huge"], ["scale"]),
    ("st-jobs", ["study", "jobs=0"], ["jobs"]),
    ("st-variants-empty", ["study", "scales.smoke.classification.variants=[]"],  # was 'no run dirs found under'
     ["scales.smoke.classification.variants", "non-empty"]),
    ("st-parts", ["study", "parts=[bogus]"], ["parts"]),
    ("st-resume-maybe", ["study", "resume=maybe"], ["resume"]),
    ("st-old-comment-example", ["study", "overrides.run_experiments=[optimizer.lr=0.05]"],
     ["overrides.run_experiments"]),
    ("st-bad-app-override", ["study", 'overrides.run_experiments=["optimizer.lr=abc"]'], ["optimizer.lr"]),
    ("st-override-lr", ["study", 'overrides.run_experiments=["optimizer.lr=-1"]'],
     ["part classification", "optimizer.lr"]),
    ("st-override-stem", ["study", "overrides.run_experiments=[\"model.stem=''\"]"], ["model.stem"]),
    ("st-override-part-not-run", ["study", 'overrides.two_stage=["bogus_key=1"]'],
     ["part two_stage (not in parts", "bogus_key"]),
    ("st-override-batch", ["study", 'overrides.loss_landscape=["train.batch_size=100000"]'],
     ["part landscape", "train.batch_size", "1437"]),
    # osc report and osc itself
    ("rp-corrupt", ["report", f"{M}/odd/corrupt"],
     ["odd/corrupt/run/summary.json", "move", "odd/corrupt/run out of the dirs given to osc report"]),
    ("rp-no-run-json", ["report", f"{M}/odd/no_run_json"],
     ["no run dirs found under", "odd/no_run_json/run holds a summary.json but no run.json"]),
    ("rp-list", ["report", f"{M}/odd/list"], ["odd/list/run/summary.json", "list"]),
    ("rp-odd-labels", ["report", f"{M}/odd/labels"], ["odd/labels/run/run.json"]),
    ("rp-completed-without-accuracy", ["report", f"{M}/odd/acc"], ["odd/acc/run/summary.json", "test_acc"]),
    ("rp-seed-not-a-number", ["report", f"{M}/odd/seed"], ["odd/seed/run/run.json", "labels.seed"]),
    ("rp-metrics-damaged", ["report", f"{M}/odd/metrics"], ["odd/metrics/run/metrics.jsonl, line 1", "damaged"]),
    ("rp-metrics-not-text", ["report", f"{M}/odd/binary"], ["odd/binary/run/metrics.jsonl", "UnicodeDecodeError"]),
    ("rp-out-file", ["report", f"{M}/done", "--out", f"{M}/a_file"], ["a_file"]),
    ("rp-out-under-file", ["report", f"{M}/done", "--out", f"{M}/a_file/report"], ["--out", "a_file is a file"]),
    ("rp-out-cannot-be-made", ["report", f"{M}/done", "--out", "/proc/osc_report"], ["--out", "/proc/osc_report"]),
    ("rp-missing", ["report", f"{M}/nowhere"], ["nowhere"]),
    ("rp-file", ["report", f"{M}/a_file"], ["a_file is a file; give run dirs"]),  # was of the default --out under it
    ("rp-empty", ["report", f"{M}/cifar_empty"], ["cifar_empty"]),
    ("rp-no-dirs", ["report"], ["dirs", "usage: osc report DIR"]),  # was argparse's two lines
    ("rp-unknown-option", ["report", "--bogus", f"{M}/done"], ["--bogus", "usage: osc report DIR"]),
    ("osc-unknown-app", ["bogus_app"], ["bogus_app"]),
    # options argparse refuses: its usage text and the message (10 lines for an app, 2 for report)
    ("re-unknown-option", ["run_experiments", "--bogus"], ["--bogus", "--help"]),
    ("re-cfg-bad-value", ["run_experiments", "--cfg", "job", "optimizer.lr=abc"], ["optimizer.lr", "a number"]),
    ("th-info-unknown-key", ["theorem", "--info", "defaults", "bogus=1"], ["unknown key 'bogus'"]),
    ("rp-unknown-option-last", ["report", f"{M}/done", "--bogus"], ["osc report", "--bogus"]),
]


def test_the_table_is_large():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} >= set(TINY) | {"report"}


@pytest.mark.parametrize("case,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(root, case, argv, words, capsys, monkeypatch):
    monkeypatch.chdir(root)  # what lands in the working dir is written too
    app = argv[0]
    argv = [a.replace(M, str(root)) for a in argv]
    if app in TINY:
        argv = [app, *TINY[app], *argv[1:], "progress=false"]
        if not any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in argv):
            argv.append(f"hydra.run.dir={root / 'fresh' / case}")
    before = snapshot(root)
    code, lines, err = run(argv, capsys)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.replace(M, str(root)) in lines[0], (word, lines[0])
    assert snapshot(root) == before  # nothing new (PWNED included), run dirs byte-identical


@pytest.mark.parametrize("setting,package", [("tensorboard=true", "tensorboard"), ("wandb.mode=offline", "wandb")])
def test_a_missing_sink_package_is_one_line_and_no_run_dir(setting, package, tmp_path, capsys, monkeypatch):
    """Without the optional package the refusal used to come after config.yaml and run.json
    were written, leaving a run dir that a rerun calls unfinished; now the config check
    refuses first, whether the package is installed here or not."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    before = snapshot(tmp_path)
    for where in ([f"hydra.run.dir={tmp_path / 'run'}"], []):  # an explicit dir, and the default outputs/
        code, lines, err = run(["run_experiments", *TINY["run_experiments"], setting, *where, "progress=false"], capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        assert setting in lines[0] and f"pip install {package}" in lines[0]
        assert snapshot(tmp_path) == before


def test_the_study_yaml_comment_example_parses():
    from orthogonal_skip_connections.experiments._app import CONFIG_DIR

    comment = next(line for line in (Path(CONFIG_DIR) / "study.yaml").read_text().splitlines()
                   if "e.g." in line and "overrides." in line)
    example = comment.split("e.g.", 1)[1].strip().strip("'")
    cfg = load_app("study").config([example])
    assert cfg.overrides.run_experiments == ["optimizer.lr=0.05"]


# --------------------------------------------------------------------------- divergence

DIVERGE = {
    "run_experiments": ["optimizer.lr=1e6", "scheduler.epochs=2"],
    "orth_residual_synthetic_data": ["lr=1e6", "epochs=4"],
    "orth_to_id": ["lr=1e6", "epochs=4", "n_blocks=[2]"],
    "construction_validity": ["lr=1e6", "epochs=4"],
    "teacher_student": ["lr=1e6"],
}


@pytest.mark.parametrize("app", sorted(DIVERGE))
def test_divergence_is_called_divergence(app, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, lines, err = run([app, *TINY[app], *DIVERGE[app], f"hydra.run.dir={run_dir}", "progress=false"], capsys)
    assert code == 1, err
    assert len(lines) == 1 and "diverged" in lines[0] and "Traceback" not in err, err
    s = json.loads((run_dir / "summary.json").read_text())
    d = s["divergence"]
    assert s["status"] == "diverged" and s["app"] == app
    assert d["step"] >= 1 and d["skipped_steps"] == s["skipped_steps"] >= 0 and d["rule"] and d["reason"]
    # the last finite loss is a number no later than the divergence (None: no step was finite)
    assert d["last_finite_loss"] is None or (d["last_finite_step"] <= d["step"] and d["last_finite_loss"] >= 0)
    assert {"git_commit", "command", "wall_time_s"} <= set(s["provenance"])
    assert "diverged" in s["report"]["verdict"]
    # a diverged run is not reused without resume=true
    code, lines, _ = run([app, *TINY[app], f"hydra.run.dir={run_dir}", "progress=false"], capsys)
    assert code == 2 and "diverged" in lines[0]


def test_classifier_divergence_counts_skipped_steps(tmp_path, capsys):
    """The issue's case (lr 1e6): skipped steps are counted and the run ends diverged
    with its last finite loss, where it used to end 'completed' at 10% accuracy."""
    run_dir = tmp_path / "run"
    code, _, err = run(["run_experiments", *TINY["run_experiments"], "optimizer.lr=1e6", "scheduler.epochs=3",
                        "scheduler.warmup_epochs=0", f"hydra.run.dir={run_dir}", "progress=false"], capsys)
    assert code == 1, err
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "diverged" and s["divergence"]["last_finite_loss"] is not None
    assert s["divergence"]["last_finite_step"] < s["divergence"]["step"] or "exceeds" in s["divergence"]["reason"]


def test_sane_runs_never_trip_the_rule(tmp_path, capsys):
    from orthogonal_skip_connections.train.divergence import DivergenceGuard, Diverged

    g = DivergenceGuard(trivial_loss=np.log(10))
    for step in range(1, 30):  # isolated non-finite steps are skipped, not fatal
        g.step(step, float("nan") if step % 3 == 0 else 2.3, finite=step % 3 != 0)
    g.check(29, {"train loss": 2.0, "test loss": [2.1, 2.2]})
    assert g.skipped_steps == 9 and g.last_finite_loss == 2.3 and g.last_finite_step == 29
    with pytest.raises(Diverged, match="exceeds"):
        g.check(30, {"test loss": 1e4})
    with pytest.raises(Diverged, match="in a row"):
        for step in range(31, 41):
            g.step(step, float("inf"), finite=False)


def test_a_retraction_on_overflowed_numbers_is_divergence():
    """Rule 3: finite gradients times a huge learning rate overflow a retracted matrix; the
    SVD's error on it (a traceback from every loop before) is raised as Diverged. (steepest
    normalises its step and stays finite; qr and newton_schulz return NaN, which the next
    step's loss shows: rule 1.)"""
    import torch

    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.train.divergence import DivergenceGuard, Diverged

    skip = osc.make_skip("learnable_orth", 4, method="svd")
    opt = osc.optimizer(skip, torch.optim.SGD, lr=1e38)
    skip.weight.grad = torch.full((4, 4), 1e30).triu()  # finite, as the loops require; not symmetric (tangent at I)
    with pytest.raises(Diverged, match=r"a retraction failed on non-finite numbers .* \(step 7;"):
        DivergenceGuard(trivial_loss=1.0).optimizer_step(opt, 7)


def test_a_one_step_run_whose_step_blew_up_the_weights_is_divergence(tmp_path, capsys):
    """The epochs' losses are those before each step: the final weights are judged too (a
    traceback in the block diagnostics before, from an SVD of non-finite Jacobians)."""
    run_dir = tmp_path / "run"
    code, lines, err = run(["orth_residual_synthetic_data", *TINY["orth_residual_synthetic_data"], "lr=1e37",
                            "skip_kinds=[learnable_orth]", f"hydra.run.dir={run_dir}", "progress=false"], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "final training loss (seed 0) became nan" in lines[0]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


# --------------------------------------------------------------------------- resume, writers, sweeps


def test_resume_ignores_only_the_documented_keys_and_cleans_tmp_files(root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(root / "unfinished", run_dir)
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    config = (run_dir / "config.yaml").read_bytes()
    code, lines, err = run(["run_experiments", *TINY["run_experiments"], "resume=true", "num_threads=2",
                            f"hydra.run.dir={run_dir}", "progress=true"], capsys)
    assert code == 0, err
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    saved, now = yaml.safe_load(config), yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {k: v for k, v in saved.items() if k not in ("resume", "num_threads", "progress")} == \
        {k: v for k, v in now.items() if k not in ("resume", "num_threads", "progress")}


def test_a_metrics_line_cut_short_is_left_out_on_resume_and_in_the_report(root, tmp_path, capsys):
    """A run killed mid-append leaves metrics.jsonl's last line cut short (and a report may
    read a line still being written): resume=true was a JSONDecodeError traceback, and osc
    report refused the run as 'not an evaluation record of this version'."""
    run_dir = tmp_path / "run"
    shutil.copytree(root / "unfinished", run_dir)
    metrics = run_dir / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text + text.splitlines()[-1][:25])  # the next record, cut mid-line
    code, _, err = run(["run_experiments", *TINY["run_experiments"], "resume=true", f"hydra.run.dir={run_dir}",
                        "progress=false"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert metrics.read_text() == text  # the cut line gone, every whole record kept
    metrics.write_text(text + '{"type": "eval", "ep')
    code, _, err = run(["report", run_dir, "--out", tmp_path / "report"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert "1 classifier runs" in run.out


def test_a_stopped_study_says_it_resumes(tmp_path, capsys, monkeypatch):
    """A study's save_checkpoint=none (its default) is its classification runs': a resumed
    study keeps every run that completed. Its stop line said only 'terminated', as though
    nothing were kept."""
    import shlex

    app = load_app("study")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "run", interrupted)
    code, lines, err = run(["study", *TINY["study"], f"hydra.run.dir={tmp_path / 'study'}"], capsys)
    assert code == 130 and lines == ["interrupted; to continue what it saved: osc study " + shlex.join(TINY["study"])
                                     + f" resume=true hydra.run.dir={tmp_path / 'study'}"], err


@pytest.mark.parametrize("where", ["default", "a dir with a space and a quote"])
def test_a_stopped_runs_line_is_the_command_that_continues_it(where, tmp_path, capsys, monkeypatch):
    """A stop's line said "resume=true and the same hydra.run.dir", but a run in the default dir
    (outputs/<app>/<time>_...) was given no dir: only a look into outputs/ found it. The line
    is now the command, with the dir Hydra made; run as the shell splits it, it continues the run
    from its checkpoint (the second epoch alone is trained)."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from orthogonal_skip_connections.experiments._interrupt import hydra_quoted
    from orthogonal_skip_connections.train import classifier

    monkeypatch.chdir(tmp_path)
    argv = ["run_experiments", "dataset=digits", "model.model_type=resnet20", "scheduler.epochs=2", "device=cpu",
            "progress=false"]
    if where != "default":
        odd = tmp_path / "it's a run"
        argv.append(f"hydra.run.dir={hydra_quoted(str(odd))}")
    real_forward, calls = classifier._forward, {"n": 0}
    steps = 1437 // 128

    def dying_forward(*args, **kwargs):  # stopped in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == steps + 3:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(classifier, "_forward", dying_forward)
    code, lines, err = run(argv, capsys)
    assert code == 130 and len(lines) == 1 and lines[0].startswith("interrupted; to continue what it saved: "), err
    command = shlex.split(lines[0].split("what it saved: ", 1)[1])
    run_dir = Path(OverridesParser.create().parse_overrides(command[-1:])[0].value())  # as Hydra reads it
    assert command[:2] == ["osc", "run_experiments"] and command[-2] == "resume=true"
    if where == "default":
        assert run_dir.parent == tmp_path / "outputs" / "run_experiments"
    else:
        assert run_dir == odd
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    epoch1 = (run_dir / "metrics.jsonl").read_text()
    calls["n"] = -10 ** 6
    code, _, err = run(command[1:], capsys)
    assert code == 0, err
    assert calls["n"] == -10 ** 6 + steps  # resumed: the second epoch's steps only
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / "metrics.jsonl").read_text().startswith(epoch1)
    assert [p.relative_to(tmp_path) for p in tmp_path.glob("outputs/*/*")] == \
        ([run_dir.relative_to(tmp_path)] if where == "default" else [])  # no other run dir made


def test_a_run_killed_before_its_first_checkpoint_reads_interrupted_not_failed(root, tmp_path, capsys):
    """A run dir without summary.json whose lock is free: the run stopped. osc report called it
    "failed" unless a checkpoint was there, though a failure writes a summary (or a study job's
    error.txt); killed before any checkpoint, it was interrupted, and can only be rerun."""
    import csv

    runs = tmp_path / "runs"
    shutil.copytree(root / "unfinished", runs / "resumable")  # killed after a checkpoint
    shutil.copytree(root / "unfinished", runs / "killed", ignore=shutil.ignore_patterns("checkpoint.pt"))
    shutil.copytree(runs / "killed", runs / "crashed")  # a study's job that raised: its traceback kept
    (runs / "crashed" / "error.txt").write_text("Traceback (most recent call last):\n")
    # its checkpoint cut short (a copy, a full disk): the report said resume=true continues it, which refused it
    shutil.copytree(root / "unfinished", runs / "damaged")
    whole = (runs / "damaged" / "checkpoint.pt").read_bytes()
    (runs / "damaged" / "checkpoint.pt").write_bytes(whole[:len(whole) // 2])
    code, _, err = run(["report", runs, "--out", tmp_path / "report"], capsys)
    assert code == 0 and "Traceback" not in err, err
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        status = {Path(r["run_dir"]).name: r["status"] for r in csv.DictReader(f)}
    assert status == {"resumable": "incomplete", "killed": "interrupted", "crashed": "failed", "damaged": "damaged"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "4 did not complete" in md and "seed 0: interrupted" in md
    assert "1 damaged: stopped, and its checkpoint.pt is not a whole checkpoint (a write cut short, another file): " \
           "resume=true refuses it: move its checkpoint.pt away to rerun it." in md
    code, lines, _ = run(["run_experiments", *TINY["run_experiments"], "resume=true",
                          f"hydra.run.dir={runs / 'damaged'}"], capsys)
    assert code == 2 and "not a whole checkpoint" in lines[-1]  # what the report said
    assert "1 interrupted: stopped before it saved a checkpoint" in md and "cannot be resumed, only rerun." in md
    assert "1 incomplete: stopped after it saved a checkpoint: resume=true with the same hydra.run.dir" in md


def test_a_single_runs_crash_reads_failed_and_its_stop_interrupted(tmp_path, capsys, monkeypatch):
    """A single run that raised (a library error) before its first checkpoint left no summary and
    no error.txt: osc report called it interrupted ("killed ... only rerun"), its traceback gone
    with the terminal. It keeps the record a study's crashed job keeps (error.txt) and reads
    failed; a Ctrl-C still reads interrupted, and a refusal writes no error.txt."""
    import csv

    from orthogonal_skip_connections.experiments import run_experiments
    from orthogonal_skip_connections.runs import UserError

    def raising(err):
        def train_classifier(*args, **kwargs):
            raise err
        return train_classifier

    runs = tmp_path / "runs"
    for name, err, want in (("crashed", RuntimeError("a library bug"), 1), ("stopped", KeyboardInterrupt(), 130),
                            ("refused", UserError("a refusal at run time"), 2)):
        monkeypatch.setattr(run_experiments, "train_classifier", raising(err))
        code, _, out = run(["run_experiments", *TINY["run_experiments"], f"hydra.run.dir={runs / name}",
                            "progress=false"], capsys)
        assert code == want, (name, out)
    assert "RuntimeError: a library bug" in (runs / "crashed" / "error.txt").read_text()
    assert not (runs / "stopped" / "error.txt").exists()
    assert not (runs / "refused").exists()  # the dir this call made, removed: the refusal wrote nothing
    code, _, err = run(["report", runs, "--out", tmp_path / "report"], capsys)
    assert code == 0 and "Traceback" not in err, err
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        status = {Path(r["run_dir"]).name: r["status"] for r in csv.DictReader(f)}
    assert status == {"crashed": "failed", "stopped": "interrupted"}


def test_a_crashed_runs_rerun_that_is_killed_reads_interrupted_and_a_refused_one_keeps_the_crash(tmp_path, capsys,
                                                                                                   monkeypatch):
    """A crashed run's error.txt stayed when the run was started again in its dir: a rerun then
    killed (which writes nothing) read "failed" with the old traceback, though it did not crash.
    A rerun that starts removes it; one refused (at its claim, or once started) leaves the dir as
    it was, error.txt included, and the run still reads failed."""
    import csv

    from orthogonal_skip_connections.experiments import run_experiments
    from orthogonal_skip_connections.runs import UserError

    def raising(err):
        def train_classifier(*args, **kwargs):
            raise err
        return train_classifier

    def status(run_dir):
        code, _, err = run(["report", run_dir, "--out", tmp_path / "report"], capsys)
        assert code == 0 and "Traceback" not in err, err
        with open(tmp_path / "report" / "results.csv", newline="") as f:
            return [r["status"] for r in csv.DictReader(f)]

    run_dir = tmp_path / "run"
    argv = ["run_experiments", *TINY["run_experiments"], f"hydra.run.dir={run_dir}", "progress=false"]
    monkeypatch.setattr(run_experiments, "train_classifier", raising(RuntimeError("a library bug")))
    assert run(argv, capsys)[0] == 1
    assert "RuntimeError: a library bug" in (run_dir / "error.txt").read_text()
    crashed = snapshot(run_dir)
    # refused at its claim (a resume with another config), and once started (a check at run time)
    code, lines, _ = run([*argv, "resume=true", "optimizer.lr=0.05"], capsys)
    assert code == 2 and len(lines) == 1 and "optimizer.lr" in lines[0], lines
    monkeypatch.setattr(run_experiments, "train_classifier", raising(UserError("a refusal at run time")))
    code, lines, _ = run(argv, capsys)
    assert code == 2 and lines == ["error: a refusal at run time"], lines
    assert snapshot(run_dir) == crashed  # error.txt included
    assert status(run_dir) == ["failed"]
    monkeypatch.setattr(run_experiments, "train_classifier", raising(KeyboardInterrupt()))  # killed: writes nothing
    assert run(argv, capsys)[0] == 130
    assert not (run_dir / "error.txt").exists()
    assert status(run_dir) == ["interrupted"]


def test_a_failed_sweep_jobs_rerun_that_is_killed_reads_interrupted(tmp_path, capsys, monkeypatch):
    """A sweep's job that crashed records a summary.json with status failed (and error.txt): the
    same sweep run again with resume=true trains it again, and when that is killed before a
    checkpoint, the old failed summary.json stayed and osc report still read the job failed."""
    import csv

    from orthogonal_skip_connections.experiments import run_experiments

    def raising(err):
        def train_classifier(*args, **kwargs):
            raise err
        return train_classifier

    sweep = tmp_path / "sweep"
    argv = ["run_experiments", "-m", *TINY["run_experiments"], "seed=0", f"hydra.sweep.dir={sweep}", "progress=false"]
    monkeypatch.setattr(run_experiments, "train_classifier", raising(RuntimeError("a library bug")))
    assert run(argv, capsys)[0] == 1
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "failed"
    monkeypatch.setattr(run_experiments, "train_classifier", raising(KeyboardInterrupt()))
    assert run([*argv, "resume=true"], capsys)[0] == 130
    code, _, err = run(["report", sweep, "--out", tmp_path / "report"], capsys)
    assert code == 0 and "Traceback" not in err, err
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["interrupted"]


def test_a_diverged_runs_resume_refused_once_started_keeps_its_summary(tmp_path, capsys, monkeypatch):
    """A resume of a run whose summary.json says diverged removes that summary once it starts
    (the new attempt, if killed, is not the old divergence); refused at run time, it leaves the
    dir as it was, its summary.json included."""
    from orthogonal_skip_connections.experiments import run_experiments
    from orthogonal_skip_connections.runs import UserError

    run_dir = tmp_path / "run"
    argv = ["run_experiments", *TINY["run_experiments"], "optimizer.lr=1e30", f"hydra.run.dir={run_dir}",
            "progress=false"]
    assert run(argv, capsys)[0] == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    before = snapshot(run_dir)

    def refusing(*args, **kwargs):
        assert not (run_dir / "summary.json").exists()  # started: the old divergence is not this attempt's
        raise UserError("a refusal at run time")

    monkeypatch.setattr(run_experiments, "train_classifier", refusing)
    code, lines, _ = run([*argv, "resume=true"], capsys)
    assert code == 2 and lines == ["error: a refusal at run time"], lines
    assert snapshot(run_dir) == before


def _stopped_lines(md: str) -> list[str]:
    """The report's sentences on runs stopped without a summary (their count, status and advice)."""
    import re

    return re.findall(r"\d+ (?:incomplete|interrupted): .*?\.(?= |$)", md, re.M)


def test_a_stopped_sweep_job_resumes_with_its_sweep_and_the_report_says_so(tmp_path, capsys):
    """osc report told of every run stopped without a summary 'resume=true with the same
    hydra.run.dir continues it', a sweep's job too, whose dir no hydra.run.dir chose. The same
    sweep run again with resume=true and the same hydra.sweep.dir continues a job that saved a
    checkpoint (its training time is the checkpoint's: resumed, not trained again), trains one
    that saved none, and keeps the finished job as it was."""
    sweep = tmp_path / "sweep"
    argv = ["run_experiments", "-m", *TINY["run_experiments"], "seed=0,1,2", f"hydra.sweep.dir={sweep}",
            "progress=false"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    finished = (sweep / "0" / "summary.json").read_bytes()
    saved = json.loads((sweep / "1" / "summary.json").read_text())
    (sweep / "1" / "summary.json").unlink()  # killed after its checkpoint
    for name in ("summary.json", "checkpoint.pt"):  # killed before one
        (sweep / "2" / name).unlink()
    code, _, err = run(["report", sweep, "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    assert _stopped_lines((tmp_path / "report" / "report.md").read_text()) == [
        "1 incomplete: stopped after it saved a checkpoint: running the same sweep again with resume=true and the "
        "same hydra.sweep.dir continues it.",
        "1 interrupted: stopped before it saved a checkpoint (killed, or stopped by Ctrl-C or SIGTERM): it cannot be "
        "resumed; running the same sweep again with resume=true and the same hydra.sweep.dir trains it again."]
    code, _, err = run([*argv, "resume=true"], capsys)
    assert code == 0, err
    assert (sweep / "0" / "summary.json").read_bytes() == finished
    resumed, again = (json.loads((sweep / job / "summary.json").read_text()) for job in "12")
    assert resumed["status"] == again["status"] == "completed"
    assert resumed["train_time_s"] == saved["train_time_s"] and resumed["test_acc"] == saved["test_acc"]


def _sweep_advice(job: Path) -> str:
    return (f"move {job} out of its sweep's dir (or delete it) and run the same sweep again with resume=true and the "
            "same hydra.sweep.dir, which makes that job anew")


def test_a_sweep_jobs_damaged_checkpoint_says_what_makes_the_job_anew(tmp_path, capsys):
    """A sweep's job resumed from a checkpoint it cannot read said 'move it away to start this run
    over, or choose another hydra.sweep.dir': the sweep run again without resume=true was then
    refused, that job for the failed summary.json it recorded, every other for its finished run.
    It says what works, which the test does: move the job's dir away and run the same sweep again
    with resume=true; the job trains anew and the finished one is kept."""
    sweep = tmp_path / "sweep"
    argv = ["run_experiments", "-m", *TINY["run_experiments"], "seed=0,1", f"hydra.sweep.dir={sweep}", "progress=false"]
    assert run(argv, capsys)[0] == 0
    finished = (sweep / "0" / "summary.json").read_bytes()
    job = sweep / "1"
    (job / "summary.json").unlink()  # killed after its checkpoint, which is then damaged
    (job / "checkpoint.pt").write_bytes(b"garbage\n")
    code, lines, err = run([*argv, "resume=true"], capsys)
    assert code == 2 and "Traceback" not in err, err
    line = next(x for x in lines if x.startswith("error: job 1"))
    assert f"cannot read checkpoint {job / 'checkpoint.pt'}" in line and line.endswith(_sweep_advice(job)), line
    assert json.loads((job / "summary.json").read_text())["status"] == "failed"  # what refused the old advice
    shutil.move(job, tmp_path / "moved")
    code, _, err = run([*argv, "resume=true"], capsys)
    assert code == 0, err
    assert (sweep / "0" / "summary.json").read_bytes() == finished
    again = json.loads((job / "summary.json").read_text())
    assert again["status"] == "completed" and again["epochs"] == 1
    assert [r["epoch"] for r in map(json.loads, (job / "metrics.jsonl").read_text().splitlines())
            if r.get("type") == "eval"] == [1]  # trained from its first epoch, not resumed


def test_a_sweep_jobs_unusable_default_run_in_loss_landscape_says_run_the_sweep_anew(tmp_path, capsys):
    """loss_landscape (which cannot resume) in a sweep keeps its default runs in each job's dir: one
    it could not read said 'move the run away or choose another hydra.sweep.dir', though the job's
    failed summary.json refuses that job in the same sweep dir, whatever was moved."""
    sweep = tmp_path / "sweep"
    garbled = sweep / "0" / "runs" / "digits_resnet20" / "zero" / "seed0"
    garbled.mkdir(parents=True)
    (garbled / "config.yaml").write_text("model: [unclosed\n")
    code, lines, err = run(["loss_landscape", "-m", *TINY["loss_landscape"], "train.variants=[zero]",
                            "direction_seed=0", f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 2 and "Traceback" not in err, err
    line = next(x for x in lines if x.startswith("error: job 0"))
    assert f"cannot read {garbled / 'config.yaml'}" in line and "move the run away" not in line, line
    assert line.endswith("run the same sweep again with another hydra.sweep.dir (loss_landscape cannot resume: the "
                         f"failed summary.json in {sweep / '0'} refuses that job in this one)"), line
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "failed"


def test_a_stopped_study_job_resumes_with_its_study_and_the_report_says_so(tmp_path, capsys):
    """A study's job stopped without a summary: the report told the study's user to resume it with
    resume=true and the same hydra.run.dir, as though it were a run of theirs; the same osc study
    run again with resume=true (and its hydra.run.dir) continues it, or trains it again."""
    study = tmp_path / "study"
    argv = ["study", *TINY["study"], "scales.smoke.classification.seeds=2", "save_checkpoint=last",
            "scales.smoke.classification.overrides=['scheduler.epochs=1','device=cpu']", f"hydra.run.dir={study}",
            "progress=false"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    jobs = study / "classification" / "digits_resnet20" / "identity"
    saved = json.loads((jobs / "seed0" / "summary.json").read_text())
    (jobs / "seed0" / "summary.json").unlink()
    for name in ("summary.json", "checkpoint.pt"):
        (jobs / "seed1" / name).unlink()
    code, _, err = run(["report", study, "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    assert _stopped_lines((tmp_path / "report" / "report.md").read_text()) == [
        "1 incomplete: stopped after it saved a checkpoint: running the same osc study again with resume=true and "
        "the same hydra.run.dir continues it.",
        "1 interrupted: stopped before it saved a checkpoint (killed, or stopped by Ctrl-C or SIGTERM): it cannot be "
        "resumed; running the same osc study again with resume=true and the same hydra.run.dir trains it again."]
    code, _, err = run([*argv, "resume=true"], capsys)
    assert code == 0, err
    resumed, again = (json.loads((jobs / seed / "summary.json").read_text()) for seed in ("seed0", "seed1"))
    assert resumed["status"] == again["status"] == "completed"
    assert resumed["train_time_s"] == saved["train_time_s"]


def test_the_stopped_runs_note_gives_each_run_its_own_advice(tmp_path):
    """A report over one run, a sweep's jobs and a study's jobs, each stopped after a checkpoint:
    one sentence, each advice with the runs it is for."""
    from orthogonal_skip_connections.report.classification import RunRecord, stopped_note

    import torch

    def stopped(path, hydra_mode=None):
        path.mkdir(parents=True)
        torch.save({}, path / "checkpoint.pt")
        if hydra_mode is not None:
            (path / ".hydra").mkdir()
            (path / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {hydra_mode}\n")
        return RunRecord(path, {}, None)

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "run.json").write_text('{"app": "study", "labels": {}}')
    runs = [stopped(tmp_path / "one", "RUN"), stopped(tmp_path / "sweep" / "0", "MULTIRUN"),
            stopped(tmp_path / "sweep" / "1", "MULTIRUN"),
            stopped(tmp_path / "study" / "classification" / "seed0", "MULTIRUN")]
    assert [r.started_by for r in runs] == ["run", "sweep", "sweep", "study"]
    assert stopped_note(runs) == (
        " 4 incomplete: stopped after it saved a checkpoint: resume=true with the same hydra.run.dir continues it "
        "(1 single run); running the same sweep again with resume=true and the same hydra.sweep.dir continues it "
        "(2 sweep jobs); running the same osc study again with resume=true and the same hydra.run.dir continues it "
        "(1 study job).")
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")  # a sweep that kept no .hydra/ (output_subdir=null)
    assert stopped(tmp_path / "sweep" / "2").started_by == "sweep"
    assert stopped(tmp_path / "plain").started_by == "run"


STUDY_WITH_LANDSCAPE = [
    "study", "scale=smoke", "jobs=1", "parts=[classification,landscape]", "save_checkpoint=last",
    "scales.smoke.classification.variants=[zero,identity]", "scales.smoke.classification.seeds=1",
    "scales.smoke.classification.overrides=['scheduler.epochs=1','device=cpu']",
    "overrides.loss_landscape=['n_eval=32','hessian.iters=2','hessian.samples=2','steps=3','steps_1d=3']",
    "progress=false", "resume=true"]


@pytest.fixture(scope="module")
def landscape_study(tmp_path_factory):
    """A finished study of two classification runs (zero and identity, seed 0, checkpoints kept)
    and loss_landscape over both."""
    study = tmp_path_factory.mktemp("landscape_study") / "study"
    assert osc([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"]) == 0
    return study


def _damaged_study(landscape_study, tmp_path, damage) -> tuple[Path, Path]:
    """A copy of the study with ``damage(identity's seed 0 run dir)`` done to it."""
    study = tmp_path / "study"
    shutil.copytree(landscape_study, study)
    run_dir = study / "classification" / "digits_resnet20" / "identity" / "seed0"
    damage(run_dir)
    return study, run_dir


def _study_advice(study: Path, run_dir: Path) -> str:
    return (f"move {run_dir} out of {study} (or delete it) and run the same osc study again with resume=true and "
            f"hydra.run.dir={study}, which makes that run anew")


def _follow(study, run_dir, capsys):
    """Do what the advice says: the study then completes, its run made anew."""
    shutil.rmtree(run_dir)
    code, _, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_study_runs_damaged_checkpoint_in_the_landscape_stage_says_what_the_study_can_do(landscape_study, tmp_path,
                                                                                          capsys):
    """loss_landscape inside a study reads the runs the study chose for its runs=: a checkpoint it
    could not read told the study's user to 'leave its run dir out of runs=', which they never wrote."""
    def damage(run_dir):
        (run_dir / "checkpoint.pt").write_bytes(b"garbage\n")
        (run_dir.parents[3] / "loss_landscape" / "summary.json").unlink()  # so that the study runs it again

    study, run_dir = _damaged_study(landscape_study, tmp_path, damage)
    code, lines, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot read checkpoint {run_dir / 'checkpoint.pt'}" in lines[0] and "runs=" not in lines[0], lines[0]
    assert lines[0].endswith(_study_advice(study, run_dir)), lines[0]
    _follow(study, run_dir, capsys)
    assert str(run_dir) in [r["run_dir"] for r in json.loads((study / "loss_landscape" / "summary.json").read_text())
                            ["runs"]]


def test_a_study_jobs_damaged_checkpoint_on_resume_says_what_the_study_can_do(landscape_study, tmp_path, capsys):
    """A study's job resumed from a checkpoint it cannot read failed saying 'move it away to start
    this run over, or choose another hydra.run.dir', which the study's user did not choose for it."""
    def damage(run_dir):
        (run_dir / "summary.json").unlink()  # killed after its checkpoint, which is then damaged
        (run_dir / "checkpoint.pt").write_bytes(b"garbage\n")

    study, run_dir = _damaged_study(landscape_study, tmp_path, damage)
    code, _, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 0, err  # the study goes on; the job failed, its reason in study.json and error.txt
    reason = json.loads((study / "study.json").read_text())["status"]["classification"]["digits/resnet20 identity seed 0"]
    assert reason.startswith("failed: ") and "cannot read checkpoint" in reason and "hydra.run.dir, " not in reason
    assert reason.endswith(_study_advice(study, run_dir)), reason
    assert _study_advice(study, run_dir) in (run_dir / "error.txt").read_text()
    _follow(study, run_dir, capsys)


def test_a_study_jobs_damaged_summary_says_what_the_study_can_do(landscape_study, tmp_path, capsys):
    """A study's job whose summary.json cannot be read: the study's job crashed reading it (a
    JSONDecodeError, no advice), and the study's report then refused the dir with none either."""
    study, run_dir = _damaged_study(landscape_study, tmp_path,
                                    lambda run_dir: (run_dir / "summary.json").write_text('{"status": "compl'))
    code, lines, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot read {run_dir / 'summary.json'}" in lines[0] and lines[0].endswith(_study_advice(study, run_dir))
    assert _study_advice(study, run_dir) in (run_dir / "error.txt").read_text()  # the job's own refusal
    _follow(study, run_dir, capsys)


def test_a_study_runs_unreadable_config_in_the_landscape_stage_says_what_the_study_can_do(landscape_study, tmp_path,
                                                                                         capsys):
    """A completed run of the study whose config.yaml loss_landscape cannot read as a classifier
    run's config (the run is kept as completed, so only loss_landscape reads it): its line said
    so and nothing about what to do."""
    def damage(run_dir):
        (run_dir / "config.yaml").write_text("model: [unclosed\n")
        (run_dir.parents[3] / "loss_landscape" / "summary.json").unlink()  # so that the study runs it again

    study, run_dir = _damaged_study(landscape_study, tmp_path, damage)
    code, lines, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot read {run_dir / 'config.yaml'} as a classifier run's config" in lines[0], lines[0]
    assert lines[0].endswith(_study_advice(study, run_dir)), lines[0]
    _follow(study, run_dir, capsys)


def test_a_study_apps_malformed_report_section_says_what_the_study_can_do(landscape_study, tmp_path, capsys):
    """The report a study builds refused another app's run dir whose summary.json holds a malformed
    report section, saying nothing about what to do; and outside a study, nothing either."""
    def damage(run_dir):
        summary = run_dir.parents[3] / "loss_landscape" / "summary.json"
        saved = json.loads(summary.read_text())
        summary.write_text(json.dumps({**saved, "report": {**saved["report"], "verdict": ""}}))

    study, _ = _damaged_study(landscape_study, tmp_path, damage)
    landscape = study / "loss_landscape"
    code, lines, err = run(["report", landscape, "--out", tmp_path / "report"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].endswith("malformed report section (a report's verdict is a sentence; got ''); move its run dir "
                             "out of the dirs given to osc report"), lines[0]
    code, lines, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{landscape / 'summary.json'}: malformed report section" in lines[0], lines[0]
    assert lines[0].endswith(_study_advice(study, landscape)), lines[0]
    shutil.rmtree(landscape)  # what the advice says: the study makes it anew
    code, _, err = run([*STUDY_WITH_LANDSCAPE, f"hydra.run.dir={study}"], capsys)
    assert code == 0, err
    assert json.loads((landscape / "summary.json").read_text())["report"]["verdict"]


@pytest.mark.parametrize("app", ["run_experiments", "theorem"])
def test_a_run_into_a_dir_that_holds_runs_is_refused(app, root, capsys):
    """hydra.run.dir naming a sweep dir (or the workspace root) trained a run there, and osc
    report, which reads a run dir as one run, no longer saw the sweep's jobs: a dir that holds
    run dirs is refused before anything is written; a run's own dir is not (its runs)."""
    from orthogonal_skip_connections.report.classification import find_runs

    done = root / "done"  # finished run dirs, as a sweep's dir holds its jobs'
    found = len(find_runs([done])[0])
    assert found == len(FINISHED)
    for target in (done, root):
        before = snapshot(root)
        code, lines, _ = run([app, *TINY[app], f"hydra.run.dir={target}", "progress=false"], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {target} holds run dirs (") and "choose another hydra.run.dir" in lines[0]
        assert snapshot(root) == before
    assert len(find_runs([done])[0]) == found


def test_resume_into_a_dir_with_nothing_saved_says_it_starts_from_the_beginning(tmp_path, capsys):
    """resume=true with a hydra.run.dir that holds nothing (a typo, a first Slurm start) started a
    fresh run without a word; a dir that holds a completed run says so, as before."""
    args = ["run_experiments", *TINY["run_experiments"], "resume=true", f"hydra.run.dir={tmp_path / 'typo'}",
            "progress=false"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert f"{tmp_path / 'typo'} holds nothing saved yet; resume=true starts the run from the beginning" in run.out
    code, _, err = run(args, capsys)
    assert code == 0 and "is already completed; nothing to resume" in run.out and "nothing saved yet" not in run.out
    # a run stopped before its first checkpoint left its start's files, but nothing to resume from: said too
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "typo", stopped, ignore=shutil.ignore_patterns("checkpoint.pt", "summary.json", ".lock"))
    code, _, err = run([*args[:-2], f"hydra.run.dir={stopped}", "progress=false"], capsys)
    assert code == 0 and f"{stopped} holds nothing saved yet" in run.out, err


def test_an_unfinished_run_of_another_app_is_not_said_to_resume(root, tmp_path, capsys):
    """teacher_student (which cannot resume) refused a dir holding run_experiments' checkpoint
    saying "resume=true continues it"; run_experiments' own refusal still says so."""
    target = tmp_path / "unfinished"
    shutil.copytree(root / "unfinished", target)
    code, lines, _ = run(["teacher_student", *TINY["teacher_student"], f"hydra.run.dir={target}"], capsys)
    assert code == 2 and lines == [f"error: {target} already holds an unfinished run (checkpoint.pt); choose another "
                                   "hydra.run.dir"], lines
    code, lines, _ = run(["run_experiments", *TINY["run_experiments"], f"hydra.run.dir={target}"], capsys)
    assert code == 2 and "(checkpoint.pt; resume=true continues it)" in lines[0], lines


def test_a_second_writer_is_refused(tmp_path, capsys):
    from orthogonal_skip_connections.report.classification import RunRecord
    from orthogonal_skip_connections.rundir import RunDir, in_use

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from orthogonal_skip_connections.rundir import RunDir
        RunDir.claim({str(run_dir)!r})
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        code, lines, err = run(["run_experiments", *TINY["run_experiments"], f"hydra.run.dir={run_dir}",
                                "progress=false"], capsys)
        assert code == 2 and len(lines) == 1 and "in use by another run" in lines[0] and str(run_dir) in lines[0]
        assert snapshot(tmp_path) == before
        # osc report calls a run dir without a summary "running" while its lock is held, not failed
        assert in_use(run_dir) and RunRecord(run_dir, {}, None).status == "running"
        assert snapshot(tmp_path) == before  # asking took nothing and wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with the process that held it; killed before any checkpoint, the run was interrupted
    assert not in_use(run_dir) and RunRecord(run_dir, {}, None).status == "interrupted"
    rd = RunDir.claim(run_dir)
    assert in_use(run_dir)  # held by this process
    rd.release()
    assert not in_use(run_dir)
    # a report asking at the moment a run claims the dir does not refuse the run: its shared
    # lock lasts a moment (held here for 20 ms), and the claim tries again
    import fcntl
    import os
    import threading

    fd = os.open(run_dir / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.02, os.close, [fd]).start()
    RunDir.claim(run_dir).release()


def test_crafted_cifar_pickle_never_runs(tmp_path):
    from orthogonal_skip_connections.data.vision import load_image_data
    from orthogonal_skip_connections.runs import UserError

    write_cifar(tmp_path / "data", evil=tmp_path / "PWNED")
    with pytest.raises(UserError, match=r"data_batch_1.*refused to load (_?io|builtins)\.open") as err:
        load_image_data("cifar10", tmp_path / "data", download=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()
    # the same files without the payload load
    shutil.rmtree(tmp_path / "data")
    write_cifar(tmp_path / "data")
    assert load_image_data("cifar10", tmp_path / "data", download=False).x_train.shape == (40, 3, 32, 32)


def test_a_failed_cifar_download_leaves_nothing_it_made(tmp_path, monkeypatch):
    """A download that breaks off (offline, here faked) is one line, and takes back the dirs and
    the partial archive it made; a data.root that was there, and an archive in it, stay."""
    import urllib.error

    import torchvision

    from orthogonal_skip_connections.data.vision import load_image_data
    from orthogonal_skip_connections.runs import UserError

    class OfflineCIFAR10:  # what torchvision leaves when the network fails half-way
        filename = torchvision.datasets.CIFAR10.filename

        def __init__(self, root, train=True, download=False):
            Path(root).mkdir(parents=True, exist_ok=True)
            (Path(root) / self.filename).write_bytes(b"half an archive")
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    new_root = tmp_path / "new" / "data"
    with pytest.raises(UserError, match=r"downloading it failed \(URLError") as err:
        load_image_data("cifar10", new_root, download=True)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither new/ nor new/data/
    mine = tmp_path / "mine"  # the user's own dir: kept, emptied of the partial archive only
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="downloading it failed"):
        load_image_data("cifar10", mine, download=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (mine / "notes.txt").unlink()
    with pytest.raises(UserError, match="downloading it failed"):
        load_image_data("cifar10", mine, download=True)
    assert mine.is_dir()  # empty, but it was there before
    assert str(err.value).endswith(f"into {new_root}, or set data.root=... / $OSC_DATA_ROOT")
    # two_stage's and loss_landscape's sweeps: no data.root of theirs to name, only the variable
    from orthogonal_skip_connections.data.vision import fetch_each

    with pytest.raises(UserError, match=r"^sweep: job 0 and every other job on cifar10: .*downloading it failed.*"
                                        r", or set \$OSC_DATA_ROOT$"):
        fetch_each([("sweep: job 0", "cifar10", new_root, True)], what="job", keys=(None, None))
    # and their single runs (the message came from the loader, which named run_experiments' data.root)
    monkeypatch.setenv("OSC_DATA_ROOT", str(new_root))
    for argv in (["two_stage", "dataset_name=cifar10"], ["loss_landscape", "train.dataset=cifar10",
                                                         f"train.dir={tmp_path / 'runs'}"]):
        with pytest.raises(UserError, match=r"downloading it failed.*, or set \$OSC_DATA_ROOT$"):
            load_app(argv[0]).run(load_app(argv[0]).config(argv[1:] + ["progress=false"]), tmp_path / "run")
        assert not (tmp_path / "runs").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_a_sweep_goes_on_after_a_failed_and_a_diverged_job(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_fake_cifar(tmp_path / "small")  # 40 training images: fewer than a batch, found only by the run
    # -m between the overrides: Hydra's argparse alone would refuse it (a run of positionals)
    code, lines, err = run(["run_experiments", *TINY["run_experiments"], "dataset=cifar10,digits", "-m",
                            f"data.root={tmp_path / 'small'}", "data.download=false", "optimizer.lr=1e30,0.1",
                            "model.model_type=resnet20", "scheduler.epochs=1", f"hydra.sweep.dir={sweep}",
                            "progress=false"], capsys)
    assert code == 2, err  # the worst of the jobs: two failed (cifar10's files too small), one diverged
    assert "Traceback" not in err and len(lines) == 3, err
    assert run.out.strip().endswith(f"sweep: 4 jobs, 2 failed, 1 diverged; run dirs under {sweep.resolve()} "
                                 f"(osc report {sweep.resolve()} tables them)"), run.out
    status = {}
    for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
        s = json.loads((d / "summary.json").read_text())
        cfg = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        key = " ".join(o for o in cfg if o.startswith(("dataset", "optimizer.lr")))
        status[key.replace("1e+30", "1e30")] = s["status"]
        if s["status"] == "failed":
            assert "40" in s["reason"] and "batch_size" in s["reason"], s["reason"]
    assert status == {"dataset=cifar10 optimizer.lr=1e30": "failed", "dataset=cifar10 optimizer.lr=0.1": "failed",
                      "dataset=digits optimizer.lr=1e30": "diverged", "dataset=digits optimizer.lr=0.1": "completed"}
    # the report lists every job with its status
    assert osc(["report", str(sweep)]) == 0
    csv = (sweep / "report" / "results.csv").read_text()
    assert csv.count("failed") == 2 and csv.count("diverged") == 1 and csv.count("completed") == 1


@pytest.mark.parametrize("held,overrides,words", [
    ("done/run_experiments", [], ["already holds a finished run", "choose another hydra.sweep.dir"]),
    ("unfinished", ["resume=true", "optimizer.lr=0.05"], ["optimizer.lr", "start a fresh hydra.sweep.dir"]),
    # a checkpoint the job cannot resume from, found once the job runs (it said hydra.run.dir too, then
    # 'move it away ... or choose another hydra.sweep.dir', which left the job's failed summary.json)
    ("resume/bad_checkpoint", ["resume=true"], ["checkpoint.pt", "UnpicklingError", "resume=true and the same "
                                                "hydra.sweep.dir, which makes that job anew"]),
    ("resume/other_model", ["resume=true"], ["checkpoint.pt", "does not fit", "resume=true and the same "
                                             "hydra.sweep.dir, which makes that job anew"]),
])
def test_a_sweep_job_refused_its_run_dir_names_hydra_sweep_dir(root, tmp_path, held, overrides, words, capsys):
    """A sweep into a dir that holds its jobs' runs already: each job's refusal told the user to
    choose another hydra.run.dir, a key the sweep did not set (its jobs' dirs are under
    hydra.sweep.dir); so did a job's refusal of a checkpoint it cannot resume from."""
    sweep = tmp_path / "sweep"
    shutil.copytree(root / held, sweep / "0")
    kept = {p: (sweep / "0" / p).read_bytes() for p in ("checkpoint.pt", "summary.json") if (sweep / "0" / p).exists()}
    code, lines, err = run(["run_experiments", *TINY["run_experiments"], *overrides, "-m", "seed=0",
                            f"hydra.sweep.dir={sweep}", "progress=false"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: job 0 ({sweep / '0'}): ") and "hydra.run.dir" not in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert {p: (sweep / "0" / p).read_bytes() for p in kept} == kept  # the job's results untouched


def _sweep(sweep, capsys, *overrides):
    return run(["theorem", "-m", *TINY["theorem"], *overrides, f"hydra.sweep.dir={sweep}", "progress=false"], capsys)


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_re_sweep_whose_every_job_is_refused_leaves_the_sweep_dir_as_it_was(tmp_path, launcher, capsys):
    """A second sweep into a dir whose job 0 holds a finished run: job 0 is refused, and nothing
    the first sweep saved changes. Hydra had rewritten D/0/.hydra/ (config.yaml saying seed=5
    next to a seed=1 summary.json) and D/multirun.yaml before the job was refused. The joblib
    launcher runs the job in a worker process, which puts back its own dir; its second sweep
    here finds the first one's worker still there, started with that call's environment (its
    record of jobs was read there: the refused job was not counted, exit code 0)."""
    sweep = tmp_path / "sweep"
    assert _sweep(sweep, capsys, "seed=1", f"hydra/launcher={launcher}")[0] == 0
    before = snapshot(sweep)
    code, lines, err = _sweep(sweep, capsys, "seed=5", f"hydra/launcher={launcher}")
    assert code == 2 and "Traceback" not in err, err
    if launcher == "basic":  # (a worker process's stderr is not captured here)
        assert len(lines) == 1 and lines[0].startswith(f"error: job 0 ({sweep / '0'}): "), err
        assert "already holds a finished run" in lines[0]
    assert snapshot(sweep) == before


def test_a_re_sweep_keeps_the_refused_job_as_it_was_and_records_the_job_that_ran(tmp_path, capsys):
    """Job 0 refused (D/0 holds seed=1's finished run), job 1 runs: D/0 is byte-identical,
    D/1 holds seed=6's finished run, and D/multirun.yaml describes the sweep that ran (seed=5,6)."""
    sweep = tmp_path / "sweep"
    assert _sweep(sweep, capsys, "seed=1")[0] == 0
    job0 = snapshot(sweep / "0")
    code, lines, err = _sweep(sweep, capsys, "seed=5,6")
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert run.out.strip().endswith(f"sweep: 2 jobs, 1 failed; run dirs under {sweep.resolve()} "
                                 f"(osc report {sweep.resolve()} tables them)"), run.out
    assert snapshot(sweep / "0") == job0
    assert json.loads((sweep / "1" / "summary.json").read_text())["report"]["verdict"]
    assert yaml.safe_load((sweep / "1" / "config.yaml").read_text())["seed"] == 6
    assert yaml.safe_load((sweep / "1" / ".hydra" / "config.yaml").read_text())["seed"] == 6
    assert "seed=5,6" in yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]


@pytest.mark.parametrize("sweep", [False, True])
def test_a_run_refused_a_dir_another_run_holds_leaves_that_run_its_dir(tmp_path, capsys, monkeypatch, sweep):
    """Two calls whose run dir Hydra names inside the run (the default dir of two runs started the
    same second; two sweeps into one dir): the second was refused in use, then removed the dir as
    one it had made, holding nothing but a start's files (the first run's .lock, config.yaml and
    run.json), and the first run went on unlocked. Now the refused call touches nothing there."""
    monkeypatch.chdir(tmp_path)
    live = tmp_path / ("sweep" if sweep else "run") / ("0" if sweep else "")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from orthogonal_skip_connections.rundir import RunDir
        rd = RunDir.claim(Path({str(live)!r}))
        (rd.path / "config.yaml").write_text("seed: 0\\n")  # a run starting: only its start's files yet
        (rd.path / "run.json").write_text('{{"app": "theorem", "labels": {{}}}}')
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        where = [f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m"] if sweep else \
            ["hydra.run.dir=${hydra:runtime.cwd}/run"]  # (resolved only inside Hydra, as the default dir)
        if sweep:  # both sweeps started together: this one saw no job dir before the other made it
            from orthogonal_skip_connections.experiments import _command_line

            def before_the_other(sweep_dir, job_dirs):
                record = sweep_before(sweep_dir, job_dirs)
                return record[0], [(d, False, {}, d) for d, *_ in record[1]]

            sweep_before = _command_line.sweep_before
            monkeypatch.setattr(_command_line, "sweep_before", before_the_other)
        code, lines, err = run(["theorem", *TINY["theorem"], *where, "progress=false"], capsys)
        assert code == 2 and "Traceback" not in err and any("in use by another run" in line for line in lines), err
        if not sweep:  # a dir the user did not name: why two runs met in it
            assert lines[-1].endswith("is the same for two calls started in the same second)"), lines
        assert (live / ".lock").is_file() and (live / "config.yaml").read_text() == "seed: 0\n"
        assert json.loads((live / "run.json").read_text())["app"] == "theorem"
        from orthogonal_skip_connections.rundir import in_use

        assert in_use(live)  # still the first run's, locked
    finally:
        holder.kill()
        holder.wait()


def test_a_sweep_whose_every_job_is_refused_removes_the_dirs_it_made(tmp_path, capsys, monkeypatch):
    """Every claim refused in a sweep dir this call made (a stand-in: each job's lock held
    elsewhere; a new dir is not refused in practice but for jobs sharing one): no sweep dir,
    no job dir, no multirun.yaml."""
    from orthogonal_skip_connections import rundir
    from orthogonal_skip_connections.runs import UserError

    def held(path, key="hydra.run.dir"):
        raise UserError(f"{path} is in use by another run (its .lock is held); wait for it to end or choose "
                        f"another {key}")

    monkeypatch.setattr(rundir, "_lock", held)
    sweep = tmp_path / "new" / "sweep"
    code, lines, err = _sweep(sweep, capsys, "seed=1,2")
    assert code == 2 and len(lines) == 2 and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_a_refusal_from_inside_a_sweep_job_is_not_its_own(tmp_path, capsys, monkeypatch):
    """A claim refused inside a job's run (another dir: a study's run) fails the job, which
    records it; the job's own dir is not put back as if the job had been refused it."""
    from orthogonal_skip_connections.rundir import Refused

    def refused_inside(cfg, rd):
        rd.start(cfg)
        raise Refused("another dir is refused", tmp_path / "elsewhere")

    monkeypatch.setattr(load_app("theorem"), "fn", refused_inside)
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)  # a job dir that holds no run: claimed, then failed
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    code, lines, err = _sweep(sweep, capsys, "seed=5")
    assert code == 2 and len(lines) == 1 and "another dir is refused" in lines[0], err
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "failed"
    assert yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())["seed"] == 5


def test_a_study_whose_runs_all_fail_says_why(tmp_path, capsys, fake_cifar):
    """Every run fails reading its data (a CIFAR batch file damaged: the files are there, so
    the study's check that each dataset is present lets the runs start)."""
    study, data = tmp_path / "study", tmp_path / "data"
    fake_cifar(data, "cifar10", n_train=10, n_test=10)
    (data / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    overrides = f'overrides.run_experiments=["dataset=cifar10","data.download=false","data.root={data}"]'
    code, lines, err = run(["study", *TINY["study"], overrides, f"hydra.run.dir={study}", "progress=false"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "all 1 classification runs failed" in lines[0] and "data_batch_3 as a CIFAR batch file" in lines[0]
    assert list(study.rglob("error.txt"))  # the details stay where the line says



# What the library would refuse only once the app runs is refused by the app's Config.check,
# before Hydra makes a run dir (and before any data are loaded or made).
CHECKED_BEFORE_HYDRA = [
    ("run_experiments", ["dataset=digits", "model.model_type=vit_tiny", "model.patch_size=3"], "not a multiple"),
    ("run_experiments", ["dataset=digits", "model.model_type=vit_tiny", "model.width=100", "model.heads=3"],
     "not a multiple of heads"),
    ("construction_validity", ["n_samples=0"], "too small"),
    ("construction_validity", ["dataset_type=blobs", "noise=0"], "blobs need noise > 0"),
    ("orth_residual_synthetic_data", ["test_fraction=1.5"], "test_fraction"),
    ("orth_residual_synthetic_data", ["activation=bogus"], "unknown activation"),
    ("orth_to_id", ["blobs.clusters_per_class=0"], "clusters_per_class"),
    ("orth_to_id", ["device=tpu"], "unknown device"),
    ("construction_validity", ["device=''"], "unknown device"),
    ("orth_residual_synthetic_data", ["device=cuda:x"], "unknown device"),
    ("run_experiments", ["dataset=digits", "device=cuda:99"],  # named as given (it said device=cuda)
     r"device=cuda:99 was asked for but (no CUDA GPU is available|this machine has \d+ CUDA GPU)"),
    # blank values, batches above the training set, absurd sizes, a study's parts
    ("run_experiments", ["dataset=digits", "model.stem=' '"], "model.stem"),
    ("run_experiments", ["dataset=digits", "batch_size=1438"], "1437 images of digits"),
    ("run_experiments", ["dataset=digits", "model.model_type=vit_small", "model.depth=100000000"], "memory"),
    ("two_stage", ["n_train=100", "batch_size=101"], "100 images of digits"),
    ("loss_landscape", ["train.n_train=100", "train.batch_size=101"], "100 images of digits"),
    ("loss_landscape", ["train.dir=''"], "train.dir"),
    ("orth_to_id", ["dims=[1000000000]"], "memory"),
    ("construction_validity", ["n_blocks=[1000000000]"], "memory"),
    ("orth_residual_synthetic_data", ["n_blocks=1000000000"], "memory"),
    ("theorem", ["ms=[1000000000]"], "memory"),
    ("teacher_student", ["d=1000000000"], "memory"),
    # sizes and values past what the run can hold or tell apart (an audit's tracebacks and silent nonsense)
    ("run_experiments", ["dataset=digits", "device=meta"], "unknown device 'meta'"),
    ("loss_landscape", ["runs=[/a/b,/a/./b]"], "runs must be a list of different run dirs"),
    ("loss_landscape", ["train.variants=[identity,identity]"], "without repeats"),
    ("loss_landscape", ["t_range=[-.inf,1]"], "t_range"),
    ("loss_landscape", ["radius=1e300"], "radius"),
    ("loss_landscape", ["steps=1000001"], "memory"),
    ("theorem", ["maps.dh0_far.angle=1e20"], "maps.dh0_far.angle"),
    ("construction_validity", ["noise=1e300"], "noise"),
    ("orth_residual_synthetic_data", ["grid_lines=100000"], "grid_lines"),
    ("two_stage", ["n_train=100000"], "n_train"),
    ("teacher_student", ["n_test=1"], "n_test must be an integer >= 2"),
    ("study", ["parts=[synthetic]", 'overrides.run_experiments=["optimizer.lr=-1"]'],
     r"part classification \(not in parts, checked all the same\), digits/resnet20 identity: optimizer.lr"),
]


def test_a_list_of_datasets_is_refused_not_merged():
    """dataset=[digits,cifar100] made Hydra merge both configs, the last winning: a cifar100 run
    the user did not ask for (a sweep over both is -m dataset=digits,cifar100)."""
    from orthogonal_skip_connections.runs import UserError

    with pytest.raises(UserError, match=r"not a list .*-m dataset=a,b\); allowed: cifar10, cifar100, digits"):
        load_app("run_experiments").config(["dataset=[digits,cifar100]"])


@pytest.mark.parametrize("app,overrides,words", CHECKED_BEFORE_HYDRA)
def test_library_refusals_are_found_by_the_config_check(app, overrides, words):
    from orthogonal_skip_connections.runs import UserError

    with pytest.raises(UserError, match=words):
        load_app(app).config(overrides)


def test_a_refusal_at_run_time_leaves_no_dirs_in_the_default_place(tmp_path, monkeypatch, capsys):
    """A refusal found only when the app runs (data missing) removes the run dir Hydra made
    in its default place and the empty dirs above it that this call made; dirs that were
    there before stay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    argv = ["run_experiments", "dataset=cifar10", f"data.root={tmp_path / 'empty'}", "data.download=false",
            "progress=false"]
    code, lines, err = run(argv, capsys)
    assert code == 2 and len(lines) == 1 and "cifar10 not found" in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no outputs/run_experiments/
    (tmp_path / "outputs" / "run_experiments" / "older").mkdir(parents=True)
    code, lines, err = run(argv, capsys)
    assert code == 2, err
    assert [p.name for p in (tmp_path / "outputs" / "run_experiments").iterdir()] == ["older"]
    code, lines, err = run(["run_experiments", *TINY["run_experiments"], "model.model_type=vit_tiny",
                            "model.patch_size=3", "progress=false"], capsys)  # refused before Hydra runs
    assert code == 2 and "patch_size 3" in lines[0], err
    assert [p.name for p in (tmp_path / "outputs" / "run_experiments").iterdir()] == ["older"]


def test_undo_never_removes_a_dir_that_holds_results(tmp_path):
    from orthogonal_skip_connections.experiments._command_line import CommandLine

    run_dir = tmp_path / "outputs" / "app" / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"weights")
    call = CommandLine(load_app("theorem"))
    call.default_top = (tmp_path / "outputs").absolute()
    call.undo(run_dir, fresh=True)
    assert (run_dir / "checkpoint.pt").read_bytes() == b"weights"
    (run_dir / "checkpoint.pt").unlink()  # only Hydra's files left: the run dir and the dirs above it go
    call.undo(run_dir, fresh=True)
    assert list(tmp_path.iterdir()) == []


def test_the_image_shapes_the_check_uses_are_what_the_loaders_return(tmp_path):
    from orthogonal_skip_connections.data.vision import IMAGE_SHAPES, load_image_data

    write_cifar(tmp_path)
    for name, root in (("digits", None), ("cifar10", tmp_path)):
        data = load_image_data(name, root, download=False)
        assert tuple(data.x_train.shape[1:]) == tuple(data.x_test.shape[1:]) == IMAGE_SHAPES[name]


def test_loss_landscapes_path_keys_take_a_tilde_as_home():
    """cache_dir='~/cache' made a dir named '~' under the working dir (Hydra expands nothing);
    data.root already took '~' as home."""
    cfg = load_app("loss_landscape").config(["cache_dir='~/osc_cache'", "train.dir='~/osc_runs'"])
    assert (cfg.cache_dir, cfg.train.dir) == (str(Path.home() / "osc_cache"), str(Path.home() / "osc_runs"))


def test_overrides_on_both_sides_of_an_option_with_a_value(capsys):
    """`osc run_experiments dataset=digits --cfg job seed=3` was Hydra's usage text ('unrecognized
    arguments: seed=3'): only -m and -r were moved before the overrides, not --cfg with its value."""
    assert osc(["run_experiments", "dataset=digits", "--cfg", "job", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 3" in out and "name: digits" in out


@pytest.mark.parametrize("app", ["run_experiments", "teacher_student"])
def test_hydra_help_with_an_apps_overrides_is_hydras_help(app, capsys):
    """Every app's --help points to --hydra-help, which with any of the app's overrides on the line
    was Hydra's traceback ("Could not override 'dataset'. No match in the defaults list")."""
    assert osc([app, *TINY[app], "--hydra-help", "hydra/launcher=basic"]) == 0
    out = capsys.readouterr()
    assert "Hydra (" in out.out and "== Flags ==" in out.out and "Traceback" not in out.err + out.out


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab /'\"\\,=:[]{}() é+._-0~@#%&*?!|<>;`\t$", min_size=1, max_size=12))
@example("/runs/${now:%H}/a").via("a dir holding Hydra's own interpolation, escaped by the user")
@example("a\\${b}'c\\\\${").via("backslashes before ${, beside a quote")
def test_a_quoted_override_value_is_read_back_by_hydras_parser(value):
    """hydra_quoted, which the stop line's command and torchrun's ranks use for a run dir, against
    Hydra's own override parser and OmegaConf, which resolves hydra.run.dir (the oracles): the
    value comes back as it was (a ``${`` in it not interpolated)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from orthogonal_skip_connections.experiments._interrupt import hydra_quoted

    if value != value.strip():  # Hydra strips an unquoted value; a quoted one keeps its blanks
        value = value.strip() or "a"
    parsed = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_quoted(value)}"])[0]
    assert OmegaConf.create({"dir": parsed.value()}).dir == value


def test_a_sweeps_record_is_in_its_sweep_dir_which_hydra_is_given(tmp_path, capsys, monkeypatch):
    """A sweep's jobs told its process their run dirs and exit codes through a file in this
    machine's /tmp, which a Slurm job on a compute node does not see: the sweep's last line and
    exit code were lost there. The record is now a dir in the sweep dir, a file per writing
    process; the default sweep dir (multirun/<app>/${now:...}) is resolved once, before Hydra
    runs, and given to Hydra, so the dir that holds the record and that a stop's line names is
    the one Hydra makes."""
    import os

    from hydra.core.hydra_config import HydraConfig

    from orthogonal_skip_connections.experiments._sweep_record import CODES_ENV
    from orthogonal_skip_connections.runs import UserError

    monkeypatch.chdir(tmp_path)
    app = load_app("run_experiments")
    seen = []

    def job(cfg, run_dir, **kwargs):
        seen.append((Path(os.environ[CODES_ENV]), Path(HydraConfig.get().sweep.dir).absolute()))
        raise KeyboardInterrupt if cfg.seed == 2 else UserError("a refusal at run time")

    monkeypatch.setattr(app, "run", job)
    code, lines, err = run(["run_experiments", "-m", "dataset=digits", "seed=0,1"], capsys)
    (sweep,) = tmp_path.glob("multirun/run_experiments/*")
    assert code == 2 and len(lines) == 2, err
    assert run.out.splitlines()[-1] == f"sweep: 2 jobs, 2 failed; run dirs under {sweep} (osc report {sweep} tables them)"
    assert [s for _, s in seen] == [sweep, sweep]
    assert seen[0][0] == seen[1][0] and seen[0][0].parent == sweep and seen[0][0].name.startswith(".osc-sweep-")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]  # the record removed
    # stopped: its line names the sweep dir Hydra made
    code, lines, err = run(["run_experiments", "-m", "dataset=digits", "seed=2,3", "hydra.sweep.dir=multirun/${now:%f}"],
                           capsys)
    assert code == 130, err
    assert lines[-1] == ("interrupted; to continue what it saved: osc run_experiments -m dataset=digits seed=2,3 "
                         f"resume=true hydra.sweep.dir={seen[-1][1]}"), lines  # absolute: it was the relative dir, quoted


def test_a_killed_sweeps_record_is_removed_by_the_next_call_into_its_dir(tmp_path):
    """SIGKILL leaves a sweep no time to remove its record dir (.osc-sweep-*), which stayed in the
    sweep dir for good; the next sweep into that dir removes the records of this host's dead
    calls, and keeps those of live ones and of other hosts."""
    import socket

    from orthogonal_skip_connections.experiments import _sweep_record as record

    sweep = tmp_path / "sweep"
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid whose process has ended
    left = {name: sweep / f".osc-sweep-{name}" for name in (f"{host}-{dead}-0123abcd", f"{host}-{os.getpid()}-4567",
                                                             "otherhost-1-89ab")}
    for d in left.values():
        (d / "before.json").parent.mkdir(parents=True)
        (d / "before.json").write_text("[]")
    new = record.new_record(sweep)
    assert new.parent == sweep and new.name.startswith(f".osc-sweep-{host}-{os.getpid()}-") and not new.exists()
    assert sorted(p.name for p in sweep.iterdir()) == sorted(d.name for d in list(left.values())[1:])


def test_each_process_of_a_sweep_writes_a_record_file_of_its_own(tmp_path, monkeypatch):
    """Sweep jobs on several machines append to one record: appends from several NFS clients to
    one file can overwrite each other, so each process has its own file, and the sweep's process
    reads them all, each job's dir once."""
    from orthogonal_skip_connections.experiments import _sweep_record as record

    where = tmp_path / "sweep" / ".osc-sweep-test"
    monkeypatch.setenv(record.CODES_ENV, str(where))
    assert record.read_codes() == [] and record.read_job_dirs() == []  # no job wrote yet
    record.write_job_dir(tmp_path / "sweep" / "0")
    record.job_failed(1, "error: job 0: a library error")
    subprocess.run([sys.executable, "-c", "from orthogonal_skip_connections.experiments import _sweep_record as r; "
                    "r.write_job_dir('sweep/1'); r.job_failed(2, 'error: job 1: refused')"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-c", "from orthogonal_skip_connections.experiments import _sweep_record as r; "
                    "r.write_job_dir('sweep/1')"], cwd=tmp_path, check=True)  # the same job, requeued by Slurm
    assert len(list(where.iterdir())) == 3
    assert sorted(record.read_codes()) == [1, 2]
    assert sorted(record.read_errors()) == ["error: job 0: a library error", "error: job 1: refused"]
    assert sorted(record.read_job_dirs()) == [str(tmp_path / "sweep" / "0"), str(tmp_path / "sweep" / "1")]
    record.remove_record(where)
    assert not where.exists() and (tmp_path / "sweep").is_dir()


def test_a_re_sweeps_snapshot_is_read_from_its_record_not_pickled_into_every_job(tmp_path, monkeypatch):
    """A launcher pickles the task, and with it the command line's state, once per job; the
    snapshot of what a re-sweep's job dirs held (every job's Hydra files) went with it: 300 jobs,
    4 MB each time. It is kept in the sweep's record instead, and a refused job reads back the
    same snapshot."""
    import pickle

    from orthogonal_skip_connections.experiments._command_line import CommandLine
    from orthogonal_skip_connections.experiments._sweep_record import CODES_ENV, load_before, remove_record

    sweep = tmp_path / "sweep"
    for job in range(3):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "config.yaml").write_text(f"the saved config of job {job}\n")
        (sweep / str(job) / "summary.json").write_bytes(bytes(range(256)))
    call = CommandLine(load_app("run_experiments"))
    call.record = tmp_path / "unused"
    monkeypatch.setenv(CODES_ENV, str(call.record))
    call.precheck(["-m", "dataset=digits", "seed=0,1,2", f"hydra.sweep.dir={sweep}"])
    try:
        assert call.record.parent == sweep and call.sweep[1][2][2][sweep / "2" / ".hydra" / "config.yaml"]
        assert b"the saved config of job" not in pickle.dumps(call)
        assert load_before() == call.sweep  # paths, flags and every file's bytes
    finally:
        for rd in call.claims:
            rd.release()
        remove_record(call.record)


def test_a_sweep_stopped_before_hydra_wrote_leaves_no_sweep_dir(tmp_path, capsys, monkeypatch):
    """The sweep's record and snapshot are made in its sweep dir before Hydra runs: a stop before
    Hydra wrote there leaves no dir behind (and an existing sweep dir as it was)."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hydra._internal.hydra.Hydra.multirun", stopped)
    for sweep in (tmp_path / "new" / "sweep", tmp_path / "old"):
        if sweep.name == "old":
            (sweep / "0").mkdir(parents=True)
        code, _, err = run(["run_experiments", "-m", "dataset=digits", "seed=0,1", f"hydra.sweep.dir={sweep}"], capsys)
        assert code == 130, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["old", "old/0"]


def test_a_sweep_started_with_resume_true_continues_a_requeued_job(tmp_path, capsys, monkeypatch):
    """Slurm requeues a preempted job, and submitit runs it again with the same arguments: a
    sweep started with resume=true (the README's Slurm example) continues that job from its
    checkpoint, where one without it refused its own run dir; a job that completed stays as it was."""
    from orthogonal_skip_connections.train import classifier

    argv = ["run_experiments", "-m", "dataset=digits", "model.model_type=resnet20", "scheduler.epochs=2", "device=cpu",
            "progress=false", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "resume=true"]
    real_forward, calls = classifier._forward, {"n": 0}
    steps = 1437 // 128

    def preempted(*args, **kwargs):  # job 1 stops in its second epoch
        calls["n"] += 1
        if calls["n"] == 2 * steps + steps + 3:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(classifier, "_forward", preempted)
    assert run(argv, capsys)[0] == 130
    done = (tmp_path / "sweep" / "0" / "summary.json").read_bytes()
    assert (tmp_path / "sweep" / "1" / "checkpoint.pt").exists()
    calls["n"] = -10 ** 6
    code, _, err = run(argv, capsys)  # the requeue: the same arguments
    assert code == 0, err
    assert calls["n"] == -10 ** 6 + steps  # job 1's second epoch, nothing else
    assert (tmp_path / "sweep" / "0" / "summary.json").read_bytes() == done
    assert json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())["status"] == "completed"


def test_a_sweeps_dataset_missing_offline_refuses_the_sweep_before_any_job(tmp_path, capsys):
    """Every job of a sweep on a CIFAR missing offline failed on its own (a failed summary per
    job dir), and a joblib launcher's workers downloaded one archive into one root at once: the
    sweep now finds each dataset once, before Hydra runs, and refuses in one line."""
    sweep, empty = tmp_path / "sweep", tmp_path / "no_data"
    code, lines, err = run(["run_experiments", "-m", "seed=0,1", "dataset=digits,cifar10", "data.download=false",
                            f"data.root={empty}", f"hydra.sweep.dir={sweep}"], capsys)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: sweep: job 1 and every other job on cifar10: cifar10 not found under"), lines
    assert lines[0].endswith("and data.download=false; pass data.download=true to fetch it, or put the python-version "
                             f"files in {empty / 'cifar-10-batches-py'} (or set data.root=... / $OSC_DATA_ROOT)"), lines
    assert not sweep.exists() and not empty.exists()


def test_a_sweep_fetches_each_dataset_once_per_root(tmp_path, monkeypatch):
    """run_experiments' sweep preparation: one fetch per (dataset, root, download) however many
    jobs read it, each job's own data settings passed on."""
    from orthogonal_skip_connections.data import vision
    from orthogonal_skip_connections.experiments import run_experiments

    calls = []
    monkeypatch.setattr(vision, "fetch", lambda *key, keys: calls.append(key))
    cfgs = [run_experiments.main.config([f"dataset={name}", f"seed={seed}", f"data.root={tmp_path / root}"])
            for name in ("cifar10", "cifar100") for seed in range(3) for root in ("a", "a", "b")]
    run_experiments.fetch_datasets(cfgs)
    assert calls == [("cifar10", str(tmp_path / "a"), True), ("cifar10", str(tmp_path / "b"), True),
                     ("cifar100", str(tmp_path / "a"), True), ("cifar100", str(tmp_path / "b"), True)]


def test_a_two_stage_sweep_fetches_each_dataset_once(monkeypatch):
    """two_stage reads the default data root (it has no data.root): its sweep fetches from there."""
    from orthogonal_skip_connections.data import vision
    from orthogonal_skip_connections.experiments import two_stage

    calls = []
    monkeypatch.setattr(vision, "fetch", lambda *key, keys: calls.append(key))
    two_stage.main.prepare([two_stage.main.config([f"dataset_name={name}", f"seeds={k}"])
                            for name in ("cifar100", "digits") for k in (1, 2)])
    assert calls == [("cifar100", None, True), ("digits", None, True)]



def test_a_loss_landscape_sweep_fetches_the_dataset_of_its_default_runs_once(tmp_path, monkeypatch):
    """loss_landscape trains its default runs when missing: its sweep fetches their dataset first;
    jobs given their own runs (or not to train) fetch nothing."""
    from orthogonal_skip_connections.data import vision
    from orthogonal_skip_connections.experiments import loss_landscape

    calls = []
    monkeypatch.setattr(vision, "fetch", lambda *key, keys: calls.append(key))
    cfgs = [loss_landscape.main.config(["train.dataset=cifar10", f"steps={k}"]) for k in (5, 7)]
    cfgs += [loss_landscape.main.config(["train.dataset=cifar100", "train_missing=false"]),
             loss_landscape.main.config(["train.dataset=cifar100", f"runs=[{tmp_path}]"])]
    loss_landscape.main.prepare(cfgs)
    assert calls == [("cifar10", None, True)]


def test_the_resume_command_replaces_the_calls_own_resume_and_dir():
    from orthogonal_skip_connections.experiments._interrupt import resume_command

    argv = ["-m", "seed=0,1", "resume=false", "++hydra.sweep.dir=old", "~resume", "model.skip_kind=identity"]
    assert resume_command("run_experiments", argv, "hydra.sweep.dir", Path("/runs/a b")) == \
        "osc run_experiments -m seed=0,1 model.skip_kind=identity resume=true 'hydra.sweep.dir=\"/runs/a b\"'"
    assert resume_command("run_experiments", None, "hydra.run.dir", Path("/runs/x")) == \
        "the same torchrun command with resume=true hydra.run.dir=/runs/x"
    assert resume_command("a", [], "hydra.sweep.dir", Path("mr3")) == \
        f"osc a resume=true hydra.sweep.dir={Path.cwd() / 'mr3'}"  # was 'hydra.sweep.dir="mr3"', from this dir only


def test_a_submitit_sweep_prints_its_failed_jobs_lines(tmp_path, capsys):
    """Under submitit a job's stderr is a file under .submitit/: the sweep said "2 jobs, 2 failed"
    and no more (a refused job, which writes no summary, left its reason only there). The sweep's
    process prints each failed job's line from the record, kept in the sweep dir. (Needs the
    slurm extra; submitit_local runs the jobs as local processes.)"""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    argv = ["run_experiments", "-m", *TINY["run_experiments"], "progress=false", "seed=0,1",
            "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert run(argv, capsys)[0] == 0
    code, lines, err = run(argv, capsys)  # again: both jobs refused their finished run dirs
    assert code == 2
    assert sorted(line.split(": ", 2)[:2] for line in lines) == [["error", f"job 0 ({tmp_path / 'sweep' / '0'})"],
                                                          ["error", f"job 1 ({tmp_path / 'sweep' / '1'})"]], err
    assert all("already holds a finished run" in line for line in lines)
    assert run.out.splitlines()[-1].startswith("sweep: 2 jobs, 2 failed;")
    assert not list((tmp_path / "sweep").glob(".osc-sweep-*"))


def test_a_stopped_submitit_sweep_says_its_jobs_go_on():
    """A stop of the process that submitted a sweep to Slurm (submitit) leaves the jobs running, their
    run dirs locked: the line said to resume at once, which those locks would refuse."""
    from orthogonal_skip_connections.experiments._interrupt import Terminated, stopped

    line, code = stopped(KeyboardInterrupt(), True, sweep=True, resume="osc a -m resume=true hydra.sweep.dir=s",
                         submitted=True)
    assert (line, code) == ("interrupted; the jobs it submitted go on running (on Slurm, scancel stops them); once they "
                            "end, to continue what they saved: osc a -m resume=true hydra.sweep.dir=s", 130)
    assert stopped(Terminated(), False, sweep=True, submitted=True) == (
        "terminated; the jobs it submitted go on running (on Slurm, scancel stops them)", 143)


def test_a_sweep_dir_is_given_to_hydra_only_when_it_is_known_before_hydra_runs(tmp_path, capsys, monkeypatch):
    """hydra.sweep.dir is resolved before Hydra runs, and given to Hydra, only where nothing in it
    but ${now:...} needs Hydra's own config: a swept key in it is resolved by Hydra from the sweep's
    config, which the first job's overrides need not match. Such a sweep keeps its record in a
    temporary dir, as before."""
    import os

    from orthogonal_skip_connections.experiments._hydra_dirs import known_now
    from orthogonal_skip_connections.experiments._sweep_record import CODES_ENV

    assert known_now(Path("multirun/05"), "multirun/${now:%H}") and known_now(Path("/a b"), "'/a b'")
    assert not known_now(Path("multirun/identity"), "multirun/${model.skip_kind}")
    assert not known_now(None, "multirun/${now:%H}")
    monkeypatch.chdir(tmp_path)
    app = load_app("run_experiments")
    seen = []
    monkeypatch.setattr(app, "run", lambda cfg, run_dir, **kw: seen.append(Path(os.environ[CODES_ENV])) or {
        "report": {"verdict": "ran"}})
    code, _, err = run(["run_experiments", "-m", "dataset=digits", "seed=0", "hydra.sweep.dir=sw/${model.skip_kind}"],
                       capsys)
    assert code == 0, err
    assert (tmp_path / "sw" / "identity" / "0").is_dir() and not seen[0].is_relative_to(tmp_path) and not seen[0].exists()


@pytest.mark.parametrize("err", ["ENOSYS", "ENOLCK"])
def test_a_run_dir_on_a_file_system_without_locks_runs_unlocked_with_a_warning(err, tmp_path, capsys, monkeypatch):
    """flock on Lustre mounted without -o flock fails with ENOSYS (NFS without lockd: ENOLCK):
    every run there failed with an OSError traceback. It now runs unlocked, after one line saying
    that a second writer would not be refused; osc report reads such a dir as not running."""
    import errno
    import fcntl
    import os

    from orthogonal_skip_connections.rundir import RunDir, in_use

    def no_locks(fd, op):
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    rd = RunDir.claim(tmp_path / "run")
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: cannot lock {tmp_path / 'run' / '.lock'}") and "will not be refused" in warning
    rd.release()
    assert not in_use(tmp_path / "run")  # (another process cannot tell a run holds it)
    code, _, out = run(["run_experiments", *TINY["run_experiments"], "progress=false", f"hydra.run.dir={tmp_path / 'r2'}"],
                       capsys)
    assert code == 0 and "Traceback" not in out, out
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["status"] == "completed"
