"""Every Python code block in README.md and docs/*.md runs: a broken example fails CI.

The blocks of one file run in order in one namespace, as a reader pasting them into a notebook
would, in a temporary working directory. A block that cannot run here says so on its first line
(``# not run in tests: <why>``, e.g. it needs a GPU); such blocks are still compiled.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "# not run in tests:"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


class ExampleFailed(AssertionError):
    """A documented example raised."""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of every ```python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


def run_examples(path: Path) -> int:
    """Run ``path``'s Python blocks in order in one namespace; returns how many ran."""
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    ran = 0
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        compiled = compile(code, f"{path.name}:{line}", "exec")
        if code.lstrip().startswith(SKIP_MARK):
            continue
        try:
            exec(compiled, namespace)
        except Exception as exc:
            raise ExampleFailed(f"{path.name}, block at line {line}: {type(exc).__name__}: {exc}") from exc
        ran += 1
    return ran


WITH_EXAMPLES = [path for path in DOCUMENTS if python_blocks(path.read_text(encoding="utf-8"))]


def test_the_readme_has_python_examples() -> None:
    assert ROOT / "README.md" in WITH_EXAMPLES


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda path: path.name)
def test_documented_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_examples(path)


def test_a_broken_example_fails_with_its_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.md"
    broken.write_text("# Title\n\n```python\nx = 1\n```\n\ntext\n\n```python\nimport batchsage\n"
                      "batchsage.no_such_function()\n```\n", encoding="utf-8")
    with pytest.raises(ExampleFailed, match=r"broken\.md, block at line 10: AttributeError"):
        run_examples(broken)


def test_a_skipped_block_is_still_compiled(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"```python\n{SKIP_MARK} needs a GPU\nx = (\n```\n", encoding="utf-8")
    with pytest.raises(SyntaxError):
        run_examples(page)
