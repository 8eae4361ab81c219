"""The *csv_summary* flow: what is in a CSV file, column by column.

An example of a flow of your own run by dropflow: a plain sync Prefect flow with typed
parameters, which knows nothing of dropflow. It reads the file with the standard `csv` module
and returns a JSON-serialisable summary, small whatever the file's size.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow

__all__ = ["csv_summary", "summarize_column"]

logger = logging.getLogger(__name__)


def _number(text: str) -> int | float | None:
    """The number `text` spells, or None; NaN and infinities are not numbers here (JSON has
    none), nor is an integer too large for a float."""
    for parse in (int, float):
        try:
            number = parse(text)
            if math.isfinite(number):
                return number
        except (ValueError, OverflowError):
            pass
    return None


def summarize_column(values: list[str]) -> dict[str, Any]:
    """Summarize one column's values (surrounding whitespace ignored, empty values skipped).

    Returns:
        `count` (non-empty values), then `min`, `max` and `mean` when every non-empty value is
        a number, else `distinct` (how many different values) and `top` (the most common;
        the first seen of a tie, None for an empty column).
    """
    texts = [text for text in (value.strip() for value in values) if text]
    numbers = [_number(text) for text in texts]
    if texts and all(number is not None for number in numbers):
        present = [number for number in numbers if number is not None]
        return {
            "count": len(texts),
            "min": min(present),
            "max": max(present),
            "mean": statistics.fmean(present),
        }
    counts = Counter(texts)
    top = counts.most_common(1)[0][0] if counts else None
    return {"count": len(texts), "distinct": len(counts), "top": top}


def _read(path: Path, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows (blank lines skipped, every row as long as the header)."""
    # utf-8-sig: spreadsheet programs put a byte-order mark before the header.
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path.name}: empty file, with no header row")
        rows = []
        for row in reader:
            if not row:
                continue
            # Spreadsheets often end rows with empty cells past the header: harmless.
            if any(value.strip() for value in row[len(header) :]):
                raise ValueError(
                    f"{path.name}: line {reader.line_num} has values past the "
                    f"{len(header)} columns of the header"
                )
            rows.append((row + [""] * len(header))[: len(header)])
    duplicates = sorted(name for name, n in Counter(header).items() if n > 1)
    if duplicates:
        raise ValueError(f"{path.name}: the header names {duplicates[0]!r} more than once")
    return header, rows


@flow(name="csv_summary", flow_run_name="{path}", persist_result=False)
def csv_summary(
    path: Path, delimiter: str = ",", columns: list[str] | None = None
) -> dict[str, Any]:
    """Summarize a CSV file whose first row is a header.

    Args:
        path: The CSV file, UTF-8 (a byte-order mark is fine).
        delimiter: The one character between values.
        columns: The header names to summarize, in this order; all of them when None.

    Returns:
        `{"rows": 3, "columns": [every header name], "summary": {name: summary}}`, with one
        `summarize_column` summary per column asked for.

    Raises:
        ValueError: a delimiter that is not one character, a column not in the header, or a
            file that is not a CSV table with a header (the message names the file).
    """
    if len(delimiter) != 1:
        raise ValueError(f"delimiter: must be one character, got {delimiter!r}")
    path = Path(path)
    header, rows = _read(path, delimiter)
    chosen = header if columns is None else columns
    for name in chosen:
        if name not in header:
            raise ValueError(
                f"columns: no column {name!r} in {path.name}, whose header has "
                + ", ".join(repr(known) for known in header)
            )
    positions = {name: header.index(name) for name in chosen}
    summary = {name: summarize_column([row[i] for row in rows]) for name, i in positions.items()}
    logger.debug("csv_summary %s: %d rows, %d columns", path, len(rows), len(summary))
    return {"rows": len(rows), "columns": header, "summary": summary}
