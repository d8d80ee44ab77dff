"""CSV as ``db_export`` writes it and ``db_import`` reads it: RFC 4180 (comma, double quotes,
CRLF), one header row naming the columns.

A NULL is an empty field with no quotes and an empty string is ``""``, as PostgreSQL's
``COPY ... CSV`` has them, so a NULL survives an export and an import. Python's ``csv``
module cannot tell those two apart when reading, hence this small reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidInput

Field = str | None

# One field and what ends it. A quoted field is unrolled ([^"]* then ""[^"]*...) so a long
# field never backtracks.
FIELD = re.compile(rb'(?:"([^"]*(?:""[^"]*)*)"|([^,"\r\n]*))(,|\r\n|\n|\r|\Z)')
# A whole record with no quote in it (most are): split at commas, with no field-by-field scan.
PLAIN_RECORD = re.compile(rb'([^"\r\n]*)(?:\r\n|\n|\r|\Z)')
NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def cell(value: Any) -> str:
    """One value (as ``engines.base.jsonable`` made it) as a CSV field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    if text == "" or NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """The header and the rows as CSV, UTF-8."""
    lines = [",".join(cell(c) for c in columns)]
    lines.extend(",".join(cell(v) for v in row) for row in rows)
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[Field]]


def bad_row(row: int, line: int, why: str) -> InvalidInput:
    what = "the header row" if row == 0 else f"row {row} (line {line} of the file)"
    return InvalidInput(f"{what} is not valid CSV: {why}. Fix the file and import it again; nothing was imported.")


def parse(data: bytes) -> Table:
    """A CSV file's header and rows; ``None`` for an unquoted empty field (a NULL)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not UTF-8 text (at byte {exc.start}): save it as UTF-8 and import it again."
        ) from exc
    records: list[list[Field]] = []
    record: list[Field] = []
    pos, line, end = 0, 1, len(data)
    while pos < end:
        if not record and (plain_record := PLAIN_RECORD.match(data, pos)) and plain_record.end() > pos:
            records.append([text or None for text in plain_record.group(1).decode().split(",")])
            line += 1
            pos = plain_record.end()
            continue
        match = FIELD.match(data, pos)
        if match is None or match.end() == pos:
            why = "a quote inside an unquoted field, text after a closing quote, or a quote never closed"
            raise bad_row(len(records), line, why + ' (quote the whole field and double each quote in it: "a ""b""")')
        quoted, plain, ending = match.groups()
        record.append(quoted.replace(b'""', b'"').decode() if quoted is not None else (plain.decode() or None))
        line += match.group(0).count(b"\n") + match.group(0).count(b"\r") - match.group(0).count(b"\r\n")
        pos = match.end()
        if ending != b",":
            records.append(record)
            record = []
    if record:  # the file ends in a comma: one more field, empty
        records.append([*record, None])
    if not records:
        raise InvalidInput("the file is empty: it needs a header row naming the table's columns, then the rows.")
    header, rows = records[0], records[1:]
    return Table(header=[h or "" for h in header], rows=rows)


def check_shape(table: Table) -> None:
    """Every row has as many fields as the header."""
    width = len(table.header)
    for number, row in enumerate(table.rows, start=1):
        if len(row) != width:
            raise InvalidInput(
                f"row {number} has {len(row)} fields and the header {width}: every row needs one field per "
                "column of the header (an empty field is NULL). Fix the file and import it again; nothing was "
                "imported."
            )
