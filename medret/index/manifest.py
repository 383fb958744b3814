"""A built index's ``manifest.json``: written last, so a folder with a readable one is a finished build."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def read_manifest(index_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of ``index_dir`` as a dict; None when it is missing, unreadable or not a JSON object."""
    p = Path(index_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None
