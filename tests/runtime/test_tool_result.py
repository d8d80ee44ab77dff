"""A tool's answer carries its content once: whole in structuredContent, and in the text
block beside it as the same JSON with only long strings cut to their start and size."""

from __future__ import annotations

import base64
import json

from runtime.mcp_tasks import TEXT_PREVIEW_CHARS, TEXT_WHOLE_CHARS, tool_result


def test_a_small_answer_is_the_same_json_in_its_text() -> None:
    data = {"exit_code": 0, "stdout": "42\n", "files": [{"path": "a.txt", "content": "x" * TEXT_WHOLE_CHARS}]}
    result = tool_result(data)
    assert result.structured_content == data
    assert json.loads(result.content[0].text) == data  # type: ignore[union-attr]


def test_a_long_string_travels_once() -> None:
    content = "é" * (10 << 20)  # a 10 MiB-character file's content
    data = {"path": "/work/big.txt", "size": 2 * len(content), "content": content, "encoding": "utf-8"}
    result = tool_result(data)
    text = result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is data
    assert len(text) < 2 * TEXT_PREVIEW_CHARS
    shown = json.loads(text)
    assert shown["path"] == "/work/big.txt" and shown["size"] == data["size"]
    assert shown["content"].startswith("é" * TEXT_PREVIEW_CHARS)
    assert f"[{len(content)} characters in all: the whole is in structuredContent]" in shown["content"]


def test_attachments_become_image_and_resource_blocks_named_once_in_the_text() -> None:
    from mcp_types import BlobResourceContents, EmbeddedResource, ImageContent, TextResourceContents

    from skills.content import attachment

    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    items = [
        attachment("/work/outputs/chart.png", png),
        attachment("/work/outputs/a b.csv", b"x,y\n1,2\n"),
        attachment("/work/outputs/blob.bin", bytes(range(10))),
    ]
    data = {"exit_code": 0, "attachments": [a.model_dump() for a in items], "attachments_note": None}
    result = tool_result(data)
    text, image, csv, blob = result.content
    assert result.structured_content is data
    assert isinstance(image, ImageContent) and image.mime_type == "image/png"
    assert base64.b64decode(image.data) == png
    assert isinstance(csv, EmbeddedResource) and isinstance(csv.resource, TextResourceContents)
    assert csv.resource.uri == "file:///work/outputs/a%20b.csv" and csv.resource.text == "x,y\n1,2\n"
    assert isinstance(blob, EmbeddedResource) and isinstance(blob.resource, BlobResourceContents)
    assert base64.b64decode(blob.resource.blob) == bytes(range(10))
    shown = json.loads(text.text)  # type: ignore[union-attr]
    assert shown["attachments"][0]["content"] == "[image/png, 108 bytes: in this answer's content blocks]"
    assert image.data not in text.text  # type: ignore[union-attr]
