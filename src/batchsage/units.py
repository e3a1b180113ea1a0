"""Byte sizes as people write them (``2GiB``, ``800MiB``, ``1.5G``) and back.

Suffixes, case-insensitive, optional space between number and unit:

* ``KiB``, ``MiB``, ``GiB``, ``TiB`` — binary (1024-based).
* ``K``, ``M``, ``G``, ``T`` and ``k``/``m``/… — binary too, as in ``ulimit``, Docker and ``free -g``.
* ``KB``, ``MB``, ``GB``, ``TB`` — decimal (SI, 1000-based).
* ``B`` or no suffix — bytes.
"""

from __future__ import annotations

import math
import re

from batchsage.errors import ConfigError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("2GiB", "800MiB", "1.5G", "123456"); ConfigError on bad text or ≤ 0.

    >>> parse_size("1.5G")
    1610612736
    """
    if isinstance(text, bool):
        raise ConfigError(f"memory size must be a size such as 2GiB or 800MiB, got {text!r}")
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ConfigError(f"memory size must look like 2GiB, 800MiB, 1.5G or 123456, got {text!r}")
        value, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise ConfigError(
                f"unknown size unit {match.group(2)!r} in {text!r}: use B, KiB, MiB, GiB, TiB "
                "(or K, M, G, T; KB, MB, GB, TB for powers of 1000)"
            )
    size = value * _UNITS[unit]
    if not math.isfinite(size) or round(size) <= 0:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return round(size)


def format_bytes(size: int | float) -> str:
    """``1536`` → ``"1.50 KiB"``; binary units, three significant digits."""
    if not math.isfinite(size):
        return str(size)
    sign = "-" if size < 0 else ""
    size = abs(size)
    if size < 1024:
        return f"{sign}{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024 or unit == "PiB":
            digits = 2 if size < 10 else 1 if size < 100 else 0
            return f"{sign}{size:.{digits}f} {unit}"
    raise AssertionError("unreachable")
