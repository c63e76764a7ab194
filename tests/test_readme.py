"""The README's library example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## The library in"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 6
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "orth_error" in printed and "identity_distance" in printed


def test_readme_links_stay_inside_the_repository():
    text = README.read_text()
    assert "../" not in text, "the README must not point outside the repository"


def _config_keys() -> dict[str, set[str]]:
    """Every app's config keys, dotted (``model.skip_kind``), and its config groups (``dataset``)."""
    import yaml

    from orthogonal_skip_connections.experiments._app import CONFIG_DIR

    def flat(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from flat(v, prefix + k + ".")

    keys = {}
    for path in Path(CONFIG_DIR).glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        groups = {next(iter(d)) for d in cfg.get("defaults", []) if isinstance(d, dict)}
        keys[path.stem] = set(flat({k: v for k, v in cfg.items() if k not in ("defaults", "hydra")})) | groups
    return keys


def _override_keys(tokens) -> list[str]:
    """The keys of the ``key=value`` overrides among ``tokens`` (Hydra's own and Python
    keyword arguments such as ``use_reentrant=False`` left out)."""
    out = []
    for token in tokens:
        m = re.fullmatch(r"'?[+~]?([A-Za-z_][\w.]*)=(.*)", token)
        if m and not m.group(1).startswith("hydra") and not re.match(r'"|True$|False$|None$', m.group(2)):
            out.append(m.group(1))
    return out


def test_readme_commands_name_real_apps_keys_and_files():
    """Drift the README cannot show by itself: every ``osc <app>`` (and ``python -m
    ...experiments.<app>``) it names exists; every override on such a command line is a key
    of that app's config; every override quoted in the text is a key of some app; every file
    it names is in the repository."""
    from orthogonal_skip_connections.experiments import APPS

    text = README.read_text()
    keys = _config_keys()
    named = set(re.findall(r"\bosc (\w+)", text)) | set(re.findall(r"experiments\.(\w+)", text))
    unknown = named - set(APPS) - {"report", "list"}
    assert not unknown, f"README names apps that do not exist: {unknown}"
    assert {"study", "run_experiments", "teacher_student"} <= named  # the parse still finds them

    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [line.split("#")[0] for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    checked = 0
    for line in commands:
        m = re.search(r"\bosc (\w+)(.*)|experiments\.(\w+)(.*)", line)
        if not m or (m.group(1) or m.group(3)) not in APPS:
            continue
        app, rest = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        for key in _override_keys(rest.split()):
            assert key in keys[app], f"README: `{key}=` is not a key of {app}'s config ({line.strip()})"
            checked += 1
    assert checked >= 10

    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    every = set().union(*keys.values())
    for span in re.findall(r"`([^`\n]+)`", prose):
        if "(" in span or "<" in span:  # Python calls, placeholders such as overrides.<app>
            continue
        for key in _override_keys(span.split()):
            assert key in every, f"README: `{span}` names no key of any app's config"

    root = README.parent
    places = [root, root / "src" / "orthogonal_skip_connections", root / "notes", root / "benchmarks"]
    outputs = {"config.yaml", "summary.json", "report.md", "report.html", "results.csv", "comparisons.csv",
               "metrics.jsonl", "checkpoint.pt"}
    for name in set(re.findall(r"[\w./-]+\.(?:py|md|sh|toml)\b", prose)) - outputs:
        assert any((place / name).is_file() for place in places), f"README names {name}, which is not in the repo"
