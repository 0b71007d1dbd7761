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


def test_a_row_without_some_columns_moves_none(tmp_path, monkeypatch):
    """A run that lacks some keys (no mergekit installed) keeps the file's column order; a new key goes last."""
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_csv({"K": 8, "mergekit_s": 2.5, "eval_s": 1.0}, quick=False)
    bench.write_csv({"K": 8, "eval_s": 0.9}, quick=False)
    bench.write_csv({"K": 8, "eval_s": 0.8, "added": 1}, quick=False)
    with open(tmp_path / "proxy.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames
    assert header == ["date", "K", "mergekit_s", "eval_s", "added"]
    assert [(r["mergekit_s"], r["eval_s"], r["added"]) for r in rows] == [("2.5", "1.0", ""), ("", "0.9", ""), ("", "0.8", "1")]


def test_every_benchmark_appends_a_row_per_run_with_csv(tmp_path, capsys):
    """``--csv PATH`` (merge, xent, launch) keeps earlier runs: emit appends, and the JSON stays the last line."""
    from pipeline.bench import emit

    path = tmp_path / "merge.csv"
    emit({"K": 8, "fused_gbps": 40.5}, csv_path=path, table=False)
    emit({"K": 8, "fused_gbps": 38.9}, csv_path=path, table=False)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["fused_gbps"] for r in rows] == ["40.5", "38.9"] and all(r["date"] for r in rows)
    assert capsys.readouterr().out.splitlines()[-1] == '{"K": 8, "fused_gbps": 38.9}'
