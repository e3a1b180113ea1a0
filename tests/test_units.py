"""Byte sizes: parsing what people write, formatting for tables."""

from __future__ import annotations

import pytest

from batchsage.errors import ConfigError
from batchsage.units import format_bytes, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 * 1024**3),
        ("800MiB", 800 * 1024**2),
        ("1.5G", 1536 * 1024**2),
        ("123456", 123456),
        ("64 kib", 64 * 1024),
        ("3GB", 3_000_000_000),
        ("10MB", 10_000_000),
        ("512B", 512),
        ("1t", 1024**4),
        (" 2 GiB ", 2 * 1024**3),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_common_spellings(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "2 gigs", "GiB", "-1GiB", "0", "0MiB", "1.2.3M", "2GiB!"])
def test_parse_size_rejects_bad_text_and_non_positive_sizes(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(text)
    assert repr(text) in str(caught.value) or "positive" in str(caught.value)


def test_parse_size_rejects_booleans_and_unknown_units() -> None:
    with pytest.raises(ConfigError):
        parse_size(True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown size unit 'PB'"):
        parse_size("1PB")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (800 * 1024**2, "800 MiB"),
        (2 * 1024**3, "2.00 GiB"),
        (int(21.5 * 1024**3), "21.5 GiB"),
        (-3 * 1024**2, "-3.00 MiB"),
    ],
)
def test_format_bytes(size: int, expected: str) -> None:
    assert format_bytes(size) == expected


def test_format_then_parse_round_trips_within_the_printed_precision() -> None:
    for size in (5_000, 123_456_789, 7 * 1024**3 + 12345):
        text = format_bytes(size).replace(" ", "")
        assert parse_size(text) == pytest.approx(size, rel=0.01)
