"""Every app's config composes, and every key it declares is read by the code."""

import re
from pathlib import Path

import pytest
import yaml

from orthogonal_skip_connections.cli import APPS
from orthogonal_skip_connections.runs import CONFIG_DIR, compose_config

PKG = Path(CONFIG_DIR).parent
# library modules that read an app's config on its behalf
SHARED_READERS = ["experiments/_common.py", "runs.py"]


def leaves(d, prefix=()):
    for k, v in d.items():
        if k in ("defaults", "hydra"):
            continue
        if isinstance(v, dict):
            yield from leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


@pytest.mark.parametrize("app", sorted(APPS))
def test_config_composes_and_every_key_is_read(app):
    cfg = compose_config(app)
    assert cfg is not None
    path = Path(CONFIG_DIR) / f"{APPS[app][0]}.yaml"
    declared = list(leaves(yaml.safe_load(path.read_text())))
    if app == "run_experiments":  # its dataset group files set keys too
        for f in (Path(CONFIG_DIR) / "dataset").glob("*.yaml"):
            declared += list(leaves(yaml.safe_load(f.read_text())))
    source = (PKG / "experiments" / f"{APPS[app][0]}.py").read_text()
    source += "".join((PKG / name).read_text() for name in SHARED_READERS)
    unread = sorted({".".join(p) for p in declared if not re.search(rf"\b{re.escape(p[-1])}\b", source)})
    assert unread == [], f"{app}: keys declared but never read: {unread}"
