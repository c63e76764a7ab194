"""The benchmark scripts' shared options (benchmarks/_bench.py): bad input is argparse's one
error line or one SystemExit line, and --quick's smoke values give way to options given."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _bench  # noqa: E402


def _parser():
    p = argparse.ArgumentParser(prog="bench", exit_on_error=True)
    p.add_argument("--models", type=_bench.names(["resnet20", "resnet18"], "model"), default="resnet20,resnet18")
    p.add_argument("--batch", type=_bench.positive, default=512)
    p.add_argument("--quick", action="store_true")
    return p


def test_quick_sets_defaults_that_options_given_still_override():
    quick = dict(models="resnet20", batch=16)
    assert vars(_bench.parse_args(_parser(), [], quick)) == {"models": ["resnet20", "resnet18"], "batch": 512,
                                                              "quick": False}
    assert vars(_bench.parse_args(_parser(), ["--quick"], quick)) == {"models": ["resnet20"], "batch": 16,
                                                                       "quick": True}
    args = _bench.parse_args(_parser(), ["--quick", "--models", "resnet18", "--batch", "64"], quick)
    assert (args.models, args.batch) == (["resnet18"], 64)


@pytest.mark.parametrize("argv, message", [(["--models", "resnet20,resnet99"], "unknown model 'resnet99'"),
                                           (["--batch", "-3"], "must be an integer >= 1")])
def test_unknown_names_and_bad_counts_are_one_argparse_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _bench.parse_args(_parser(), argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name, message", [("gpu", "is not a device"), ("cuda:7", "cuda:7")])
def test_a_device_torch_or_this_machine_lacks_is_one_line(name, message):
    import torch

    if name.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(SystemExit, match=message):
        _bench.resolve_device(name)
    assert _bench.resolve_device("cpu") == torch.device("cpu")
