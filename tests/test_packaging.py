"""The package installs next to a user's own PyTorch: torch is a range in the package, pinned only
in this repository's constraints file (which every install here passes)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _torch_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")


def test_the_package_accepts_a_range_of_torch_versions() -> None:
    requirement = _torch_requirement()
    assert not any(spec.operator in ("==", "===") for spec in requirement.specifier)
    for version in ("2.4.0", "2.13.0", "2.14.1", "3.0.0"):
        assert requirement.specifier.contains(Version(version))


def test_the_repository_pins_torch_in_its_constraints_file() -> None:
    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert "torch==2.13.0" in pins
    assert _torch_requirement().specifier.contains(Version("2.13.0"))
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
