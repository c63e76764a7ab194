"""The layers hold: every module imports only from its own layer or lower ones, and only
the apps import Hydra or omegaconf (read from the source with ast, nothing imported)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "orthogonal_skip_connections"

# first path component under the package -> layer (see the package docstring)
LAYERS = {
    "runs": 0,  # errors, atomic files, progress, device: basics every layer may use
    "maths": 1,
    "skips": 2,
    "models": 2,
    "data": 2,
    "optim": 3,
    "train": 4,
    "diagnostics": 4,
    "analysis": 4,
    "landscape": 4,
    "rundir": 5,
    "report": 5,
    "plots": 5,
    "experiments": 6,
    "cli": 7,
    "__init__": 7,  # the package's public names gather from every layer
}
HYDRA = ("hydra", "omegaconf")


def room(module: str) -> str:
    """'orthogonal_skip_connections.train.small' -> 'train'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules():
    """(path, module name) of every source file; a package's __init__ is the package,
    except the top one, which is the room "__init__"."""
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        yield path, ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, function-level ones too."""
    package = module if path.name == "__init__.py" and "." in module else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x, y
                    out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                    continue
            else:
                target = node.module
            out.append((node.lineno, target))
    return out


def test_every_room_has_a_layer():
    rooms = {room(name) for _, name in modules()}
    assert rooms <= set(LAYERS), f"rooms without a layer (add them to LAYERS and the docs): {rooms - set(LAYERS)}"


def violations():
    found = []
    for path, name in modules():
        here = room(name)
        for line, target in imports(path, name):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            if target.split(".")[0] in HYDRA and here not in ("experiments", "cli"):
                found.append(f"{where} imports {target} (only experiments/ may)")
            if not target.startswith(PKG.name + "."):
                continue
            there = room(target)
            if here == there or there not in LAYERS or here not in LAYERS:
                continue
            if LAYERS[there] > LAYERS[here]:
                found.append(f"{where}: {here} (layer {LAYERS[here]}) imports {target} (layer {LAYERS[there]})")
    return found


def test_no_import_points_upward():
    assert violations() == []


def test_no_experiment_imports_another():
    found = []
    for path, name in modules():
        if room(name) != "experiments" or path.name.startswith("_"):
            continue
        for line, target in imports(path, name):
            parts = target.split(".")
            if len(parts) > 2 and parts[1] == "experiments" and not parts[2].startswith("_"):
                found.append(f"{path.name}:{line} imports {target}")
    assert found == []


@pytest.mark.parametrize("source,expected", [
    ("from ..optim import optimizer", "orthogonal_skip_connections.optim"),
    ("from . import orthogonal", "orthogonal_skip_connections.maths.orthogonal"),
])
def test_the_import_reader_resolves_relative_imports(tmp_path, source, expected):
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    module = "orthogonal_skip_connections.maths.x" if source.startswith("from . ") else "orthogonal_skip_connections.train.x"
    assert imports(path, module) == [(1, expected)]


# the app machinery's parts (experiments/_*.py); the value checks and the shared config
# parts are plain Python that a library user or a test can import without Hydra
HYDRA_FREE_APP_PARTS = ("_checks", "_parts", "_registry", "_leftovers", "_sweep_record", "_interrupt")
APP_PART_MAX_LINES = 300


def test_the_app_machinery_is_split_along_its_seams():
    found = []
    for path in sorted((PKG / "experiments").glob("_*.py")):
        n = len(path.read_text().splitlines())
        if n > APP_PART_MAX_LINES:
            found.append(f"{path.name}: {n} lines (> {APP_PART_MAX_LINES}: split it along a seam)")
        if path.stem not in HYDRA_FREE_APP_PARTS:
            continue
        for line, target in imports(path, f"{PKG.name}.experiments.{path.stem}"):
            parts = target.split(".")
            if parts[0] in HYDRA:
                found.append(f"{path.name}:{line} imports {target}")
            if parts[:2] == [PKG.name, "experiments"] and (len(parts) < 3 or parts[2] not in HYDRA_FREE_APP_PARTS):
                found.append(f"{path.name}:{line} imports {target} (which may import Hydra)")
    assert found == []


def test_every_public_name_resolves_in_a_fresh_interpreter():
    """``osc.<name>`` for each name of ``__all__``, in a process where nothing imported the
    modules before (here in pytest other tests have): ``osc.orthogonal`` once raised
    AttributeError, maths/ not importing its submodule."""
    import subprocess
    import sys

    code = ("import types, orthogonal_skip_connections as osc; "
            "assert all(getattr(osc, n) is not None for n in osc.__all__); "
            "assert isinstance(osc.orthogonal, types.ModuleType) and callable(osc.orthogonal.retract)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
