"""Reading a user's JSON-lines file row by row, with errors that name the file, the row and the fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError


def jsonl_rows(path: Path, label: str, row_shape: str) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed row) for every non-blank line of ``path``.

    ``label`` names the file's role in messages ("Question file", "Corpus file"); ``row_shape`` says what
    one line must be ("JSON object", ...). Bytes are decoded per line so a bad byte names its row.
    """
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{label} {path}, row {line_number}: not UTF-8 text; save the file as "
                                "UTF-8.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{label} {path}, row {line_number}: not valid JSON ({error.msg}); each line "
                                f"must be one {row_shape}.") from None
            yield line_number, row
