"""What a task row keeps of a call's arguments and result: what an operator needs, never
file contents or secret values.

A task's row records its op, timing, cost and error for good (the ledger says
what it was charged). Its arguments and result are kept as *details*: each
string bounded to a short preview with its size, and every value an op marks
secret (an environment variable's value, a connection string with a password)
replaced by a marker. Arguments are kept whole only when nothing had to be cut,
so a task queued when its server died can still run after a restart; one whose
arguments were cut is failed then, with a clear error, instead. The result of an
op that may run long is kept whole: an MCP task handle answers with it, after a
restart too, until the details' retention ends (``Scheduler.prune``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

# A string longer than this is cut to its first PREVIEW_CHARS, with its size.
KEEP_CHARS = 256
PREVIEW_CHARS = 96
SECRET = "[secret]"


@dataclass(frozen=True)
class Details:
    value: Any
    whole: bool  # nothing was cut or hidden


def preview(text: str) -> str:
    # An ASCII string's size is its length (isascii is a flag lookup): no copy of a 10 MiB file.
    size = len(text) if text.isascii() else len(text.encode())
    return f"{text[:PREVIEW_CHARS]}… [{size} bytes, not kept]"


def summarize(value: Any, secret: Collection[str] = ()) -> Details:
    """``value`` (JSON) with long strings cut and the values under ``secret`` keys hidden."""
    whole = True

    def walk(item: Any, hidden: bool) -> Any:
        nonlocal whole
        if hidden and item not in (None, "", {}):
            whole = False
            if isinstance(item, dict):  # e.g. env: its names are kept, its values never
                return {key: SECRET for key in item}
            return SECRET
        if isinstance(item, str):
            if len(item) > KEEP_CHARS:
                whole = False
                return preview(item)
            return item
        if isinstance(item, dict):
            return {key: walk(inner, key in secret) for key, inner in item.items()}
        if isinstance(item, list):
            return [walk(inner, False) for inner in item]
        return item

    return Details(walk(value, False), whole)
