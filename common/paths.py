"""Where cloudskills keeps what a machine builds once and every data dir shares."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """``$XDG_CACHE_HOME/cloudskills`` (``~/.cache/cloudskills`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cloudskills"
