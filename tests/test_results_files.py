"""Committed benchmark results hold paths relative to the repository, never this machine's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r'"(/(?:root|home|tmp|work|Users)/[^"]*)"')


def test_result_files_hold_no_absolute_paths() -> None:
    offenders = {}
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*")):
        if path.suffix in (".json", ".md") and path.is_file():
            found = MACHINE_PATH.findall(path.read_text(encoding="utf-8"))
            if found:
                offenders[str(path.relative_to(ROOT))] = found[:3]
    assert not offenders, offenders
