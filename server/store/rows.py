"""How a row of `experiments` is stored: list and dict fields as JSON text on the way in,
decoded on the way out (a value that is not valid JSON is returned as the text it is)."""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

JSON_COLUMNS = ("metrics", "flags", "hashes", "paper_ids", "code", "change_edits", "code_authors")


def encode_value(value: Any) -> Any:
    """A column's value as SQLite stores it: dicts, lists and tuples as JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of the row with its JSON columns decoded."""
    row = dict(row)
    for column in JSON_COLUMNS:
        if isinstance(row.get(column), str):
            with suppress(json.JSONDecodeError):
                row[column] = json.loads(row[column])
    return row
