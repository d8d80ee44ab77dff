"""File content on the wire: text as it is, anything else as base64; files a result carries as MCP content."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from common.errors import InvalidInput

Encoding = Literal["utf-8", "base64"]


def decode(content: str, encoding: Encoding, path: str) -> bytes:
    if encoding == "utf-8":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"the content for {path!r} is not valid base64: fix it or use encoding 'utf-8'.") from exc


# JSON spells each of these control characters as six bytes ("\u0000"): as text,
# a file of them would cost six times its size on the way out, as base64 4/3.
CONTROL = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])


def clean_text(data: bytes) -> str | None:
    """The data as text when it is UTF-8 with no control characters but tab and line ends, else None."""
    # No control byte (one C pass over the bytes, ten times a regex's speed); in UTF-8
    # these bytes never occur inside another character.
    if len(data.translate(None, CONTROL)) != len(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode(data: bytes, wanted: Encoding | None) -> tuple[str, Encoding]:
    """Clean text as it is, anything else as base64, which JSON never escapes."""
    if wanted != "base64":
        text = clean_text(data)
        if text is not None:
            return text, "utf-8"
        if wanted == "utf-8":
            raise InvalidInput(
                "the file is not plain UTF-8 text (it has invalid UTF-8, NUL or other control bytes): "
                "read it with encoding 'base64'."
            )
    return base64.b64encode(data).decode(), "base64"


# -- files that come back beside a result as MCP content -----------------------------

# The output field the call path renders as content blocks (runtime/attachments.py).
ATTACHMENTS = "attachments"
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/svg+xml"})
EXTRA_TYPES = {".csv": "text/csv", ".md": "text/markdown", ".svg": "image/svg+xml", ".json": "application/json"}


class Attachment(BaseModel):
    """A file that comes back with a result: an image (PNG, JPEG, SVG) goes to the client as
    MCP image content, any other file as an embedded resource, beside the structured result."""

    path: str = Field(description="Where the code left it, e.g. '/work/outputs/chart.png'.")
    mime_type: str = Field(description="Its media type, from its name, e.g. 'image/png', 'text/csv'.")
    size: int = Field(description="Its size in bytes.")
    encoding: Encoding = Field(description="'base64' for images and binary files, 'utf-8' for text.")
    content: str


def mime_type(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    return EXTRA_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def attachment(path: str, data: bytes) -> Attachment:
    kind = mime_type(path)
    content, encoding = encode(data, "base64" if kind in IMAGE_TYPES else None)
    return Attachment(path=path, mime_type=kind, size=len(data), encoding=encoding, content=content)
