"""File content on the wire: text as it is, anything else as base64."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from scheduler.errors import InvalidInput

Encoding = Literal["utf-8", "base64"]


def decode(content: str, encoding: Encoding, path: str) -> bytes:
    if encoding == "utf-8":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"the content for {path!r} is not valid base64: fix it or use encoding 'utf-8'.") from exc


def encode(data: bytes, wanted: Encoding | None) -> tuple[str, Encoding]:
    if wanted != "base64":
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            if wanted == "utf-8":
                raise InvalidInput("the file is not UTF-8 text: read it with encoding 'base64'.") from None
    return base64.b64encode(data).decode(), "base64"
