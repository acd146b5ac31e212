"""Smoke test of ``python benchmarks/bench.py --quick``: it runs and writes its tables (no timing asserted)."""
import csv
import json

import pytest

import bench


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
    protocols = {(r["workers"], r["params"], r["protocol"]): r for r in results["protocols"]}
    assert set(protocols) == {(n, p, k) for n in bench.QUICK["protocol_workers"] for p in bench.QUICK["protocol_params"]
                              for k in ("additive", "pairwise")}
    for (n, p, protocol), r in protocols.items():  # the counted traffic is each protocol's
        if protocol == "pairwise":
            assert (r["owner_owner_msgs"], r["model_owner_msgs"], r["setup_owner_owner_msgs"]) == (0, n, n * (n - 1))
        else:
            assert r["owner_owner_msgs"] == n * (n - 1) and r["owner_owner_bytes"] > n * (n - 1) * 8 * p
    assert {(r["what"], r["protocol"]) for r in results["protocols_network"]} == {
        (what, k) for k in ("additive", "pairwise") for what in ("toy round", "wide model round")}
    assert all(r["seconds"] > 0 for r in results["protocols_network"])
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


def test_profile_finds_the_named_causes(hook):
    """The profile's patterns still match syft's and torch's functions: masks, messages and arithmetic take
    time, and with syft's default compression so does LZ4."""
    by_cause = {r["cause"]: r for r in bench.profile_secure_sum(hook, n_workers=2, params=10000, repeats=1)}
    for cause in ("mask generation (torch random_)", "message bytes: msgpack, compression header",
                  "int64 arithmetic (encode, shares, sums, decode)"):
        assert by_cause[cause]["ms_per_sum"] > 0, cause
    lz4 = {r["cause"]: r for r in bench.profile_secure_sum(hook, n_workers=2, params=10000, repeats=1, lz4=True)}
    assert lz4["LZ4 compress/decompress"]["ms_per_sum"] > 0
