"""File content on the wire: text as it is, anything else as base64."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

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
