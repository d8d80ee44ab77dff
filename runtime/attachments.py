"""Files a result carries (``skills.content.Attachment``), as MCP content beside it.

An image becomes image content a client shows or hands to its model; any
other file an embedded resource (``file://`` URI, text or blob). The text block
of the answer names each one instead of repeating its bytes; the structured
result keeps them whole, as it keeps every other field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mcp_types import BlobResourceContents, EmbeddedResource, ImageContent, TextResourceContents

from skills.content import ATTACHMENTS, IMAGE_TYPES

Block = ImageContent | EmbeddedResource


def attachments_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    found = data.get(ATTACHMENTS)
    return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []


def attachment_blocks(data: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for item in attachments_of(data):
        kind, content = str(item.get("mime_type")), str(item.get("content"))
        if kind in IMAGE_TYPES and item.get("encoding") == "base64":
            blocks.append(ImageContent(type="image", data=content, mime_type=kind))
            continue
        uri = "file://" + quote(str(item.get("path")))
        resource: TextResourceContents | BlobResourceContents = (
            TextResourceContents(uri=uri, mime_type=kind, text=content)
            if item.get("encoding") == "utf-8"
            else BlobResourceContents(uri=uri, mime_type=kind, blob=content)
        )
        blocks.append(EmbeddedResource(type="resource", resource=resource))
    return blocks


def named_only(data: dict[str, Any]) -> dict[str, Any]:
    """The result with each attachment's content replaced by a note of where it is."""
    if not attachments_of(data):
        return data
    shown = [
        {**item, "content": f"[{item.get('mime_type')}, {item.get('size')} bytes: in this answer's content blocks]"}
        for item in attachments_of(data)
    ]
    return {**data, ATTACHMENTS: shown}
