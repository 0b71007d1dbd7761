"""The proxy benchmark's results file keeps every run, also when its columns change."""

from __future__ import annotations

import csv

import pipeline.bench.proxy as bench


def test_results_csv_keeps_old_rows_when_columns_change(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_csv({"K": 8, "by_k": {"2": 1.0}}, quick=False)
    bench.write_csv({"K": 16, "new_field": 3}, quick=False)
    with open(tmp_path / "proxy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["K"] for r in rows] == ["8", "16"]
    assert rows[0]["by_k"] == '{"2": 1.0}' and rows[0]["new_field"] == ""
    assert rows[1]["new_field"] == "3" and rows[1]["by_k"] == ""
    assert not list(tmp_path.glob("*.old.csv")) and not list(tmp_path.glob("*.tmp"))
