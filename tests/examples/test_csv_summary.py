"""The csv_summary example flow: its summary logic called directly (`.fn`, no Prefect), and
one real run against the shared Prefect server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client

from examples.csv_summary import csv_summary, summarize_column

SAMPLE = Path(__file__).parents[2] / "examples" / "sales.csv"


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding=encoding, newline="")
    return path


def summarize(path: Path, **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = csv_summary.fn(path, **kw)
    return result


def test_the_sample_file() -> None:
    result = summarize(SAMPLE)
    assert result["rows"] == 8
    assert result["columns"] == ["date", "region", "product", "units", "unit_price"]
    assert result["summary"]["region"] == {"count": 8, "distinct": 4, "top": "North"}
    assert result["summary"]["units"] == {"count": 7, "min": 3, "max": 20, "mean": 67 / 7}
    assert json.loads(json.dumps(result)) == result


def test_numbers_and_text() -> None:
    assert summarize_column(["3", " 1 ", "", "2.5", "-1e1"]) == {
        "count": 4,
        "min": -10.0,
        "max": 3,
        "mean": -3.5 / 4,
    }
    assert summarize_column(["b", "a", "b", "", "1"]) == {"count": 4, "distinct": 3, "top": "b"}


def test_a_tie_goes_to_the_value_seen_first() -> None:
    assert summarize_column(["y", "x", "x", "y"])["top"] == "y"


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "9" * 400])
def test_values_json_cannot_hold_make_a_text_column(text: str) -> None:
    assert summarize_column(["1", text]) == {"count": 2, "distinct": 2, "top": "1"}


def test_an_empty_column() -> None:
    assert summarize_column(["", " "]) == {"count": 0, "distinct": 0, "top": None}


def test_a_byte_order_mark_another_delimiter_and_ragged_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "name;score\r\nann;3\r\n\r\nbob\r\ncy;5;\r\n", encoding="utf-8-sig")
    result = summarize(path, delimiter=";")
    assert result["columns"] == ["name", "score"]
    assert result["rows"] == 3
    assert result["summary"]["score"] == {"count": 2, "min": 3, "max": 5, "mean": 4.0}


def test_a_quoted_value_with_the_delimiter_and_a_newline(tmp_path: Path) -> None:
    path = write(tmp_path, 'city,note\n"Paris, FR","two\nlines"\n')
    result = summarize(path)
    assert result["rows"] == 1
    assert result["summary"]["city"]["top"] == "Paris, FR"
    assert result["summary"]["note"]["top"] == "two\nlines"


def test_columns_chooses_and_orders_the_summary() -> None:
    result = summarize(SAMPLE, columns=["unit_price", "region", "unit_price"])
    assert list(result["summary"]) == ["unit_price", "region"]
    assert result["columns"] == ["date", "region", "product", "units", "unit_price"]


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        (
            "a,b\n1,2\n",
            {"columns": ["a", "c"]},
            "columns: no column 'c' in data.csv, whose header has 'a', 'b'",
        ),
        ("a,b\n1,2\n", {"delimiter": ", "}, "delimiter: must be one character, got ', '"),
        ("", {}, "data.csv: empty file, with no header row"),
        ("a,b\n1,2,3\n", {}, "data.csv: line 2 has values past the 2 columns of the header"),
        ("a,b,a\n1,2,3\n", {}, "data.csv: the header names 'a' more than once"),
    ],
)
def test_errors_name_the_problem(
    tmp_path: Path, text: str, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        summarize(write(tmp_path, text), **kw)
    assert str(caught.value) == message


def test_a_real_flow_run(prefect_api: str, tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE.read_text())
    state = csv_summary(path=str(path), columns=["units"], return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["rows"] == 8 and list(result["summary"]) == ["units"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == str(path)
    assert run.parameters == {"path": str(path), "delimiter": ",", "columns": ["units"]}
