"""run_experiments' command line as tests/test_distributed.py starts it under torchrun, with
two test-only hooks set by environment variables (the library has none):

- ``OSC_TEST_RANK_WEIGHTS=DIR``: after training, every rank saves its model's state_dict
  to ``DIR/rank<r>.pt`` (so the test can compare the ranks' weights);
- ``OSC_TEST_DIE_AT_FORWARD=N``: rank 0 dies (``os._exit``) at its N-th training forward,
  and torchrun then ends the other rank: a killed run;
- ``OSC_TEST_INTERRUPT_AT_FORWARD=N``: every rank raises KeyboardInterrupt at its N-th training
  forward, as Ctrl-C in a terminal reaches every process of torchrun's group.
"""

import os
import sys

import torch

from orthogonal_skip_connections.experiments import run_experiments
from orthogonal_skip_connections.train import classifier, distributed

weights_dir = os.environ.get("OSC_TEST_RANK_WEIGHTS")
if weights_dir:
    real_train = run_experiments.train_classifier

    def train_and_save(model, *args, **kwargs):
        out = real_train(model, *args, **kwargs)
        torch.save(model.state_dict(), os.path.join(weights_dir, f"rank{distributed.rank()}.pt"))
        return out

    run_experiments.train_classifier = train_and_save

die_at = int(os.environ.get("OSC_TEST_DIE_AT_FORWARD", "0"))
stop_at = int(os.environ.get("OSC_TEST_INTERRUPT_AT_FORWARD", "0"))
if die_at or stop_at:
    real_forward, calls = classifier._forward, [0]

    def dying_forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == die_at and distributed.rank() == 0:
            os._exit(3)
        if calls[0] == stop_at:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    classifier._forward = dying_forward

if __name__ == "__main__":
    sys.exit(run_experiments.main(sys.argv[1:]))
