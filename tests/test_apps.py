"""Every app has one shape: a mistyped key, an unknown key or a wrong type fails when the
config is composed (one line on stderr naming the key, exit code 2, no run dir), and a
finished summary carries provenance and a report section."""

import json

import pytest

from orthogonal_skip_connections.cli import main as osc
from orthogonal_skip_connections.experiments import APPS
from orthogonal_skip_connections.rundir import check_report

# the tiny settings the app tests use
TINY = {
    "run_experiments": ["dataset=digits", "model.model_type=resnet20", "scheduler.epochs=1", "device=cpu"],
    "theorem": ["ms=[1,2,4]", "n_points=16", "n_pairs=16"],
    "teacher_student": ["d=3", "n_train=40", "n_test=20", "batch_size=10", "steps=4", "log_every=2", "seeds=2",
                        "archs=[li_yuan,orth_resnet]"],  # all six: tests/test_teacher_student.py
    "orth_residual_synthetic_data": ["epochs=1", "n_blocks=1", "n_samples=100", "region_grid=10",
                                     "schedule=step", "milestones=[1]", "gamma=0.5"],
    "orth_to_id": ["datasets=[blobs]", "dims=[2]", "n_blocks=[1,2]", "seeds=2", "epochs=1", "n_samples=100",
                   "log_points=2", "pca_grid=10"],
    "construction_validity": ["dims=[2]", "num_classes=[2]", "n_blocks=[1]", "seeds=2", "epochs=1",
                              "n_samples=100"],
    "loss_landscape": ["train.dir=null", "cache_dir=null", "train.model_type=resnet20", "train.seeds=1",
                       "train.variants=[identity,learnable_orth]", "train.n_train=64", "train.epochs=1",
                       "train.batch_size=32", "steps=3", "steps_1d=3", "n_eval=32", "hessian.iters=2",
                       "hessian.samples=2", "device=cpu"],
    "two_stage": ["model_type=resnet20", "n_train=64", "seeds=1", "stage1_epochs=1", "stage2_epochs=1",
                  "batch_size=32", "fit_images=32", "device=cpu"],
    "study": ["scale=smoke", "jobs=1", "parts=[classification]", "scales.smoke.classification.variants=[identity]",
              "scales.smoke.classification.seeds=1",
              "scales.smoke.classification.overrides=['scheduler.epochs=1','device=cpu']"],
}
BAD = [("bogus_key=1", "bogus_key"), ("optimizer.lrr=0.1", "optimizer"), ("seed=abc", "seed"),
       ("+bogus_key=1", "bogus_key")]


def test_every_app_has_tiny_settings():
    assert set(TINY) == set(APPS)


@pytest.mark.parametrize("app", sorted(APPS))
def test_one_run_dir_layout(app):
    """outputs/<app>/<date>_<time>_<what> for every app (sweeps under multirun/<app>/)."""
    import yaml

    from orthogonal_skip_connections.experiments._app import CONFIG_DIR

    hydra = yaml.safe_load(open(f"{CONFIG_DIR}/{app}.yaml"))["hydra"]
    assert hydra["run"]["dir"].startswith(f"outputs/{app}/${{now:%Y-%m-%d_%H-%M-%S}}")


@pytest.mark.parametrize("app", sorted(APPS))
def test_help_shows_every_option_with_its_meaning(app, capsys):
    from omegaconf import OmegaConf

    from orthogonal_skip_connections.experiments._app import compose

    assert osc([app, "--help"]) == 0
    text = capsys.readouterr().out
    cfg = OmegaConf.to_container(compose(app), resolve=False)
    cfg.pop("dataset", None)  # run_experiments' config group, listed with its choices
    assert "dataset=cifar100  (config group; one of: cifar10, cifar100, digits)" in text or app != "run_experiments"

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("scales", "maps"):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    for key in leaves(cfg):
        assert f"\n  {key} = " in text or f"\n  {key}:" in text, key
    if app == "run_experiments":
        for key in ("update_rule", "rank_fraction", "lr_scale", "upkeep_momentum", "special", "stem"):
            line = next(l for l in text.splitlines() if f".{key} = " in l)  # noqa: E741
            assert ";" in line, line  # a meaning after the type


def test_help_keeps_comments_and_values_written_over_several_lines(capsys):
    """A YAML comment continued on the next lines and a list wrapped over several lines
    reach --help whole (the residual modes' list once stopped before `rotation`)."""
    from orthogonal_skip_connections.experiments._help import yaml_options

    header, options = yaml_options("# head\na: [1, 2,\n    3]   # one\n  # two\nb: 0  # b\n# note\nc: 1\n")
    assert header == ["head"]
    assert options == [("a", "[1, 2, 3]", "one two"), ("b", "0", "b"), (None, "", "note"), ("c", "1", "")]
    assert osc(["run_experiments", "--help"]) == 0
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if "model.residual_mode = " in l)  # noqa: E741
    assert "rotation" in line
    assert "vit_tiny" in next(l for l in text.splitlines() if "model.model_type = " in l)  # noqa: E741
    assert osc(["study", "--help"]) == 0
    for line in capsys.readouterr().out.splitlines():
        if " = [" in line:
            assert line.count("[") == line.count("]"), line


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_app_module_runs_as_a_program(app):
    """``python -m orthogonal_skip_connections.experiments.<module>`` (the original project's
    commands) ends in ``if __name__ == "__main__": sys.exit(main())``, so the exit codes the
    in-process tests read from ``main(argv)`` are the program's (read from the source with
    ast; one module run as a program in a fresh interpreter: tests/test_training.py)."""
    import ast
    from pathlib import Path

    from orthogonal_skip_connections.experiments import _registry

    source = Path(_registry.__file__).with_name(f"{APPS[app][0]}.py").read_text()
    last = ast.parse(source).body[-1]
    assert ast.unparse(last) == "if __name__ == '__main__':\n    sys.exit(main())", ast.unparse(last)
    assert any(isinstance(node, ast.Import) and any(a.name == "sys" for a in node.names)
               for node in ast.parse(source).body)


def test_osc_list_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from orthogonal_skip_connections.cli import main; main(['list']); "
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "teacher_student" in out.stdout


def test_osc_version_names_the_package_and_what_it_runs_on():
    import subprocess
    import sys
    from pathlib import Path
    from importlib.metadata import version

    import orthogonal_skip_connections

    # tomllib is Python 3.11+; on 3.10 (the floor) its backport, where installed
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert orthogonal_skip_connections.__version__ == pyproject["project"]["version"]
    code = ("import sys; from orthogonal_skip_connections.cli import main; sys.exit(main(['--version']) or "
            "('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"osc {pyproject['project']['version']} (Python ")
    assert f"torch {version('torch')}" in out.stdout and "hydra-core " in out.stdout


@pytest.mark.parametrize("app", sorted(APPS))
@pytest.mark.parametrize("override,key", BAD)
def test_mistakes_are_one_line_exit_2_and_no_run_dir(app, override, key, tmp_path, capsys):
    if app == "study" and override == "seed=abc":
        override, key = "jobs=abc", "jobs"  # study has no seed
    if app == "run_experiments" and override == "optimizer.lrr=0.1":
        key = "optimizer.lrr"
    run_dir = tmp_path / "run"
    assert osc([app, override, f"hydra.run.dir={run_dir}", "progress=false"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("override,expected", [
    ("dataset=cifar1", "error: unknown dataset 'cifar1'; allowed: cifar10, cifar100, digits"),
    ("model.skip_kind=identity,zero", "a list is written key=[a,b], a sweep over a,b needs -m"),
    ("hydra/launcher=jobib", "error: unknown hydra/launcher 'jobib'; allowed: basic, joblib"),
])
def test_group_typo_and_sweep_without_m_are_one_plain_line(override, expected, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert osc(["run_experiments", "dataset=digits", override, f"hydra.run.dir={run_dir}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not run_dir.exists()


def test_slurm_launcher_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun on it
    sweep = tmp_path / "sweep"
    assert osc(["run_experiments", "-m", "dataset=digits", "seed=0,1", "hydra/launcher=submitit_slurm",
                f"hydra.sweep.dir={sweep}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no `srun` here" in lines[0], lines
    assert not sweep.exists()


def test_slurm_launcher_not_installed_names_the_extra(tmp_path, capsys, monkeypatch):
    """On a Slurm login node (srun on the PATH) without hydra-submitit-launcher: Hydra's
    'Could not find' became 'unknown hydra/launcher', which says nothing of how to get it."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        pytest.skip("hydra-submitit-launcher is installed here")
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", str(srun.parent))
    sweep = tmp_path / "sweep"
    assert osc(["run_experiments", "-m", "dataset=digits", "seed=0,1", "hydra/launcher=submitit_slurm",
                f"hydra.sweep.dir={sweep}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown hydra/launcher 'submitit_slurm'" in lines[0], lines
    assert 'pip install -e ".[slurm]"' in lines[0]
    assert not sweep.exists()


def test_cfg_after_overrides_shows_the_config_and_two_modes_are_one_line(tmp_path, capsys, monkeypatch):
    """``osc <app> seed=3 --cfg job`` (Hydra's usual order) prints the composed config: the
    job name the command line adds to the overrides must not land after the flag, where
    Hydra's argparse refuses it. Two of Hydra's modes at once are one line, not a traceback."""
    import yaml

    monkeypatch.chdir(tmp_path)
    assert osc(["run_experiments", "dataset=digits", "seed=3", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seed"] == 3 and cfg["dataset"]["name"] == "digits"
    assert osc(["run_experiments", "-m", "seed=0,1", "--cfg", "job"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--cfg and --multirun" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("app", sorted(APPS))
def test_summary_has_provenance_and_report(app, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert osc([app, *TINY[app], f"hydra.run.dir={run_dir}", "progress=false"]) == 0, capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    prov = summary["provenance"]
    assert {"package_version", "git_commit", "torch_version", "python_version", "device", "wall_time_s",
            "command"} <= set(prov)
    assert prov["wall_time_s"] > 0 and prov["command"].startswith(f"osc {app}")
    report = check_report(summary["report"])
    assert report["verdict"] and report["tables"] and all(t["rows"] for t in report["tables"])
    assert report["question"].strip().endswith("?")
    for table in report["tables"]:  # columns labelled in words, not raw keys
        for col in table["columns"]:
            assert col["label"] and ("_" not in col["key"] or col["label"] != col["key"]), col
    if app not in ("study", "run_experiments"):  # the theory sections define what they measure
        assert report.get("measures"), app
    if app == "run_experiments":  # (TINY: one epoch)
        assert " after 1 epoch (best " in report["verdict"], report["verdict"]
    # the terminal: a result line and the run dir, last; no empty <app>.log
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith(f"{app}: ") and out[-1] == f"run dir: {run_dir.resolve()}", out[-3:]
    assert not list(run_dir.glob("*.log"))
    for name in report["figures"]:
        assert (run_dir / name).is_file(), name
    assert set(report.get("captions", {})) == set(report["figures"])  # every figure says what it shows
    if report["figures"]:  # and the report prints that above it
        from orthogonal_skip_connections.report import build_report

        md = build_report([run_dir], tmp_path / "report")["report"].read_text()
        name = report["figures"][0]
        assert f"*{name}*: {report['captions'][name]}" in md
    # a finished run is never overwritten
    assert osc([app, *TINY[app], f"hydra.run.dir={run_dir}", "progress=false"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_a_sweeps_sections_are_named_by_what_differs(tmp_path, capsys):
    """osc report over a teacher_student sweep headed its sections "0: ..." and "1: ...": now
    each job's section (and its In short line) names the overrides in which it differs."""
    sweep = tmp_path / "sweep"
    assert osc(["teacher_student", *TINY["teacher_student"], "-m", "lr=0.001,0.002", f"hydra.sweep.dir={sweep}"]) == 0
    assert osc(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ") and line != "## In short"]
    assert [h.split(":", 1)[0] for h in headings] == ["## 0 (lr=0.001)", "## 1 (lr=0.002)"], headings
    assert "- **0 (lr=0.001)**: " in md and "- **1 (lr=0.002)**: " in md


def test_a_caption_names_a_figure_of_the_report():
    report = {"title": "t", "question": "q?", "tables": [], "verdict": "v", "figures": ["a.png"]}
    assert check_report({**report, "captions": {"a.png": "what a shows"}})
    for bad in ({"b.png": "a figure it does not have"}, {"a.png": ""}, ["a.png"]):
        with pytest.raises(ValueError, match="captions"):
            check_report({**report, "captions": bad})


def test_sigterm_is_one_line_and_exit_143(tmp_path, capsys, monkeypatch):
    """SIGTERM (kill, Slurm's time limit) unwinds as Ctrl-C does, so that a joblib launcher's
    workers are shut down and the run dir released; the previous handler is put back."""
    import os
    import signal
    import time

    from orthogonal_skip_connections.experiments import load_app

    app = load_app("run_experiments")

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises here, at once
        raise AssertionError("SIGTERM did not stop the run")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(app, "run", killed)
    assert osc(["run_experiments", "dataset=digits", f"hydra.run.dir={tmp_path / 'run'}"]) == 143
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["terminated; to continue what it saved: osc run_experiments dataset=digits resume=true "
                     f"hydra.run.dir={tmp_path / 'run'}"], lines
    assert signal.getsignal(signal.SIGTERM) is before


def test_progress_bars_hold_no_process_semaphore(monkeypatch):
    """tqdm's default lock is a multiprocessing semaphore, leaked (with a warning from the
    resource tracker) by every launcher worker killed mid-run: the bars use a thread lock."""
    import multiprocessing.synchronize

    from tqdm.auto import tqdm

    from orthogonal_skip_connections.runs import progress_bar

    made = []
    init = multiprocessing.synchronize.SemLock.__init__
    monkeypatch.setattr(multiprocessing.synchronize.SemLock, "__init__",
                        lambda self, *a, **k: (made.append(1), init(self, *a, **k))[1])
    for cls in tqdm.__mro__:  # as in a fresh worker: no lock made yet
        if "_lock" in vars(cls):
            monkeypatch.delattr(cls, "_lock")
    assert list(progress_bar(range(3), enabled=False)) == [0, 1, 2]
    with progress_bar(total=2, enabled=True) as bar:
        bar.update(2)
    assert made == []


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from orthogonal_skip_connections.experiments import load_app

    app = load_app("run_experiments")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "run", interrupted)
    assert osc(["run_experiments", "dataset=digits", f"hydra.run.dir={tmp_path / 'run'}"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["interrupted; to continue what it saved: osc run_experiments dataset=digits resume=true "
                     f"hydra.run.dir={tmp_path / 'run'}"], lines
    # with save_checkpoint=none one run saves nothing to resume from, and the line does not promise it
    assert osc(["run_experiments", "dataset=digits", "save_checkpoint=none",
                f"hydra.run.dir={tmp_path / 'run2'}"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["interrupted"], lines
    # a sweep resumes by its sweep dir
    assert osc(["run_experiments", "-m", "dataset=digits", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1] == ("interrupted; to continue what it saved: osc run_experiments -m dataset=digits seed=0,1 "
                         f"resume=true hydra.sweep.dir={tmp_path / 'sweep'}"), lines
    # stopped before Hydra made the run dir: an explicit one may hold what an earlier call saved;
    # the default one is this call's own, not made yet: nothing saved, no dir to name
    monkeypatch.setattr(app, "run", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.setattr("hydra._internal.hydra.Hydra.run", interrupted)
    assert osc(["run_experiments", "dataset=digits", f"hydra.run.dir={tmp_path / 'run3'}"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["interrupted; to continue what it saved: osc run_experiments dataset=digits resume=true "
                     f"hydra.run.dir={tmp_path / 'run3'}"], lines
    monkeypatch.chdir(tmp_path)
    assert osc(["run_experiments", "dataset=digits"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["interrupted"], lines
    assert not (tmp_path / "outputs").exists()


def test_ctrl_c_while_the_app_is_imported_is_one_line(monkeypatch, capsys):
    """Ctrl-C during `import torch` (seconds after `osc <app>` starts), before the app's own
    handling of a stop: it printed the traceback of wherever in torch it landed."""
    from orthogonal_skip_connections import cli

    def importing(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_app", importing)
    assert cli.main(["run_experiments", "dataset=digits"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
