"""Time a 5-round run over websockets (3 local worker processes), with mutual TLS and without, against the
in-process run.

    .venv/bin/python benchmarks/network_timing.py [--repeat 3]

Prints wall-clock seconds (min and median over the repeats) for: worker start-up, a websocket run
(connect, 5 rounds of owner-side training) over TLS and over plain ws:// (--insecure), one small request's
round trip on an open connection, the in-process run of the same owner code, and how long the model
owner takes to report a worker killed between rounds 2 and 3.
TLS and plain runs alternate (and swap order every repeat), so a busy moment on a shared machine
hits both; the TLS/plain ratio is also given per pair. Wall-clock timings are noisy on a shared
machine, so each websocket run also reports its CPU seconds (model owner + the 3 workers), which
other jobs on the machine disturb much less.
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import psutil

from fl_smpc import FLConfig
from fl_smpc.errors import RoundFailed
from fl_smpc.federated import train_federated
from fl_smpc.model_owner.connect import owner_links, train_with_owners
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.network.launcher import local_workers
from fl_smpc.network.tls import create_federation
from fl_smpc.network.wire import Message

MODES = ("plain ws:// (--insecure)", "mutual TLS (--certs)")
ROUND_TRIPS = 300  # small requests timed one after another on one open connection


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_seconds(pids) -> float:
    """User + system CPU seconds so far of this process and the given ones."""
    total = time.process_time()
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def time_mode(rows, config, paths, certs, mode, kill: bool):
    """Start 3 workers, time one run; with ``kill``, time how long a worker killed after round 2 takes to be named."""
    start = time.perf_counter()
    with local_workers(paths, timeout=5, certs=certs) as addresses:
        rows[f"worker start-up, {mode}"].append(time.perf_counter() - start)
        pids = [proc.pid for proc in addresses.processes.values()]
        cpu = cpu_seconds(pids)
        run = timed(lambda: train_with_owners(config, addresses, certs=certs))
        rows[f"websocket run, {mode}"].append(run[0])
        rows[f"websocket run CPU s, {mode}"].append(cpu_seconds(pids) - cpu)
        with owner_links({"bob": addresses["bob"]}, certs=certs) as links:
            hello = Message("hello", {"session": "timing"})
            seconds, _ = timed(lambda: [links["bob"].request(hello) for _ in range(ROUND_TRIPS)])
        rows[f"one request round trip (ms), {mode}"].append(1000 * seconds / ROUND_TRIPS)
        if not kill:
            return
        victim, killed_at = addresses.processes["jane"], []

        def kill_jane(result, _history):
            if result.round == 2:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                killed_at.append(time.perf_counter())

        try:
            train_with_owners(config, addresses, on_round=kill_jane, certs=certs)
        except RoundFailed as err:
            rows["kill detected (worker killed after round 2, TLS)"].append(time.perf_counter() - killed_at[0])
            assert err.worker == "jane", err


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per transport (default: %(default)s)")
    args = p.parse_args(argv)
    config = FLConfig(seed=0, training="owner")
    rows: Dict[str, List[float]] = {"in-process (the same owner code)": []}
    for mode in MODES:
        rows[f"websocket run, {mode}"], rows[f"websocket run CPU s, {mode}"] = [], []
        rows[f"worker start-up, {mode}"], rows[f"one request round trip (ms), {mode}"] = [], []
    rows["kill detected (worker killed after round 2, TLS)"] = []
    train_federated(config)  # warm-up: hook, imports
    for _ in range(args.repeat):
        rows["in-process (the same owner code)"].append(timed(lambda: train_federated(config))[0])
    with tempfile.TemporaryDirectory() as tmp:
        paths = split_to_csv(os.path.join(tmp, "data"), config.workers)
        certs = os.path.join(tmp, "certs")
        create_federation(certs, ["model", *config.workers], days=1)
        for i in range(args.repeat):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for mode in order:
                time_mode(rows, config, paths, certs if mode == MODES[1] else None, mode, kill=mode == MODES[1])
    ratios = {
        what: [t / p for t, p in zip(rows[f"{what}, {MODES[1]}"], rows[f"{what}, {MODES[0]}"])]
        for what in ("websocket run", "websocket run CPU s", "one request round trip (ms)")
    }
    print(
        f"5 rounds, 3 owners, toy data, {args.repeat} repeats; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs (shared)"
    )
    print(f"{'what':52} {'min':>7} {'median':>9}")
    for name, values in rows.items():
        print(f"{name:52} {min(values):7.2f} {statistics.median(values):9.2f}")
    for what, values in ratios.items():
        name = f"TLS / plain, {what}, per pair"
        print(f"{name:52} {min(values):7.2f} {statistics.median(values):9.2f}")


if __name__ == "__main__":
    main()
