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
