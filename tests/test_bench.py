"""Smoke test of ``python -m fl_smpc.bench --quick``: it runs and writes its tables (no timing asserted)."""
import csv
import json

import pytest

from fl_smpc import bench


def test_quick_benchmark_writes_every_table(tmp_path, capsys):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for title, _ in bench.TABLES.values():
        assert title in printed
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["quick"] is True
    grid = {(r["workers"], r["params"]) for r in results["secure_aggregation"]}
    assert grid == {(n, p) for n in bench.QUICK["workers"] for p in bench.QUICK["params"]}
    assert [r["tensors"] for r in results["sharing_layout"]] == [6, 2]
    assert all(r["secure_s"] > 0 and r["ratio"] > 0 for r in results["secure_aggregation"])
    memory = results["memory"]
    assert [m["round"] for m in memory] == [1, 5, 10, 15, 20]
    assert {m["objects_bench_bob"] for m in memory} == {2}  # data and target only
    assert results["summary"]["object-store sizes constant"] is True
    for key in bench.TABLES:
        with open(tmp_path / f"{key}.csv") as f:
            assert len(list(csv.DictReader(f))) == len(results[key])


def test_bad_thread_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])
    assert "--threads: must be a positive integer" in capsys.readouterr().err


def test_profile_groups_add_up(hook):
    rows = bench.profile_secure_sum(hook, n_workers=2, params=1000, repeats=1)
    assert [r["cause"] for r in rows][:len(bench.PROFILE_GROUPS)] == [g for g, _ in bench.PROFILE_GROUPS]
    assert abs(sum(r["percent"] for r in rows) - 100) < 1e-6
    assert all(r["messages"] == "uncompressed" for r in rows)
