"""Bench reports: readable tables, and JSON that says which machine produced the figures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from moderator.bench.report import Column, Report, environment, format_table, format_value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (True, "yes"),
        (12345.678, "12346"),
        (123.4, "123"),
        (12.345, "12.3"),
        (1.2345, "1.23"),
        (0.012345, "0.0123"),
        (0.0, "0"),
        (float("nan"), "-"),
        (42, "42"),
        ("cpu", "cpu"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_format_table_aligns_text_left_and_numbers_right() -> None:
    table = format_table(["system", "img/s"], [["ours", "1234"], ["naive", "5.1"]])
    assert table.splitlines() == [
        "system  img/s",
        "------  -----",
        "ours     1234",
        "naive     5.1",
    ]


def test_environment_names_the_machine_and_the_run() -> None:
    env = environment([1.0, 2.0, 3.0])
    assert env["device"]  # a GPU name, or "cpu"
    assert env["cpu_count"] >= 1
    assert env["cpu_model"]
    assert env["load_average_start"] == [1.0, 2.0, 3.0]
    assert len(env["load_average_end"]) == 3
    assert env["versions"]["numpy"]
    assert env["versions"]["moderator"]
    assert env["date"].startswith("20")
    assert env["command"]


def _report() -> Report:
    report = Report("demo", [Column("batch", "batch"), Column("img_s", "img/s")])
    report.rows = [{"batch": 1, "img_s": 512.25}, {"batch": 32, "img_s": None}]
    report.results = {"ratio": 1.5, "peer": "eager", "ratios": {"eager": {"1": 1.5}}}
    report.notes.append("a note")
    return report


def test_emit_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    out = io.StringIO()
    path = _report().emit(as_json=False, out=tmp_path / "r.json", stream=out)
    text = out.getvalue()
    assert "batch  img/s" in text
    assert "512" in text
    assert "ratio: 1.50" in text
    assert "ratios" not in text  # nested results stay in the JSON
    assert "note: a note" in text
    assert "load avg" in text
    data = json.loads(path.read_text())
    assert data["bench"] == "demo"
    assert data["ratio"] == 1.5
    assert data["rows"][0] == {"batch": 1, "img_s": 512.25}
    assert {"device", "cpu_model", "cpu_count", "versions", "date", "command"} <= set(
        data["environment"]
    )


def test_emit_json_prints_exactly_one_object(tmp_path: Path) -> None:
    out = io.StringIO()
    _report().emit(as_json=True, out=tmp_path / "r.json", stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["peer"] == "eager"
