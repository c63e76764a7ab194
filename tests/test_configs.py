"""Every app's config composes into its typed dataclass, the YAML declares exactly the
dataclass's keys, and every declared key is read by the code."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from orthogonal_skip_connections.experiments import APPS, load_app
from orthogonal_skip_connections.experiments._app import CONFIG_DIR

PKG = Path(CONFIG_DIR).parent
# the shared entry and config parts every app reads its config through
SHARED_READERS = sorted(p.relative_to(PKG).as_posix() for p in (PKG / "experiments").glob("_*.py"))


def fields(schema, prefix=()):
    """Dotted field paths of a dataclass schema (a Dict[str, X] field is one leaf)."""
    for f in dataclasses.fields(schema):
        tp = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from fields(tp, prefix + (f.name,))
        else:
            yield prefix + (f.name,)


def leaves(d, prefix=()):
    for k, v in d.items():
        if k in ("defaults", "hydra"):
            continue
        if isinstance(v, dict) and k not in ("maps", "scales"):  # mappings name -> spec: one leaf each
            yield from leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


@pytest.mark.parametrize("app", sorted(APPS))
def test_config_composes_and_every_key_is_read(app):
    main = load_app(app)
    cfg = main.config()
    assert isinstance(cfg, main.schema)
    declared = set(fields(main.schema))
    path = Path(CONFIG_DIR) / f"{APPS[app][0]}.yaml"
    in_yaml = set(leaves(yaml.safe_load(path.read_text())))
    if app == "run_experiments":  # its dataset group files set keys too
        for f in (Path(CONFIG_DIR) / "dataset").glob("*.yaml"):
            in_yaml |= set(leaves(yaml.safe_load(f.read_text())))
    assert in_yaml == declared, f"{app}: YAML and schema differ: {sorted(in_yaml ^ declared)}"
    source = (PKG / "experiments" / f"{APPS[app][0]}.py").read_text()
    source += "".join((PKG / name).read_text() for name in SHARED_READERS)
    unread = sorted(".".join(p) for p in declared
                    if not re.search(rf"\.{re.escape(p[-1])}\b|['\"]{re.escape(p[-1])}['\"]", source))
    assert unread == [], f"{app}: keys declared but never read: {unread}"
