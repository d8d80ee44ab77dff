"""The CSV that db_export writes and db_import reads (skills/db/csvfile.py): RFC 4180, a NULL as
an unquoted empty field, and errors that name the row and line."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidInput
from skills.db import csvfile


def test_render_quotes_only_what_needs_it_and_tells_null_from_empty() -> None:
    rows: list[list[Any]] = [[1, None, ""], ['say "hi"', "a,b", "two\nlines"], [True, 1.5, {"k": [1]}]]
    assert csvfile.render(["id", "x", "y"], rows) == (
        b'id,x,y\r\n1,,""\r\n"say ""hi""","a,b","two\nlines"\r\ntrue,1.5,"{""k"": [1]}"\r\n'
    )


def test_parse_reads_back_what_render_wrote() -> None:
    rows: list[list[str | None]] = [["1", None, ""], ['say "hi"', "a,b", "two\r\nlines"], ["é", " x ", None]]
    table = csvfile.parse(csvfile.render(["id", "x", "y"], rows))
    assert table.header == ["id", "x", "y"] and table.rows == rows


def test_parse_takes_lf_a_bom_a_last_line_with_no_newline_and_a_trailing_comma() -> None:
    table = csvfile.parse(b'\xef\xbb\xbfa,b\n1,2\n"3",')
    assert table.header == ["a", "b"] and table.rows == [["1", "2"], ["3", None]]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'a\n"open', "row 1 (line 2 of the file)"),
        (b'a\nx"y', "row 1 (line 2 of the file)"),
        (b'a\n"x"y', "row 1 (line 2 of the file)"),
        (b'a\n"multi\nline"\n"x"y', "row 2 (line 4 of the file)"),
        (b'"a"b\n1', "the header row"),
    ],
)
def test_bad_quoting_names_the_row_and_its_line(data: bytes, where: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid CSV") as raised:
        csvfile.parse(data)
    assert raised.value.message.startswith(where) and "nothing was imported" in raised.value.message


def test_empty_files_other_encodings_and_ragged_rows_are_refused_saying_what_to_do() -> None:
    with pytest.raises(InvalidInput, match="needs a header row"):
        csvfile.parse(b"")
    with pytest.raises(InvalidInput, match=r"not UTF-8 text \(at byte 3\): save it as UTF-8"):
        csvfile.parse(b"a\nx\xff")
    with pytest.raises(InvalidInput, match="row 2 has 1 fields and the header 2"):
        csvfile.check_shape(csvfile.parse(b"a,b\n1,2\n3\n"))
