"""JSON documents on disk: written atomically, NaN and infinity as null (JSON has neither)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_json(path: Path | None, document: dict[str, Any]) -> None:
    """Write ``document`` atomically (temp file + rename), so an interrupt never leaves half a file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
    tmp.write_text(text + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN and inf become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
