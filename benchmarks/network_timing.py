"""Time a 5-round run over websockets (3 local worker processes) against the in-process run.

    .venv/bin/python benchmarks/network_timing.py [--repeat 3]

Prints wall-clock seconds (min and median over the repeats) for: worker start-up, a websocket run
(connect, find data by tag, 5 rounds), the in-process VirtualWorker run, and how long the model
owner takes to report a worker killed between rounds 2 and 3. Timings are noisy on a shared machine.
"""
import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

from fl_smpc import FLConfig
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.federated import RoundFailed, train_federated
from fl_smpc.network.launcher import local_workers
from fl_smpc.network.client import train_network


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per transport (default: %(default)s)")
    args = p.parse_args(argv)
    config = FLConfig(seed=0)
    rows = {"in-process (VirtualWorker)": [], "websocket (3 processes)": [], "worker start-up (3 processes)": [],
            "kill detected (worker killed after round 2)": []}
    train_federated(config)  # warm-up: hook, imports
    for _ in range(args.repeat):
        rows["in-process (VirtualWorker)"].append(timed(lambda: train_federated(config))[0])
    with tempfile.TemporaryDirectory() as tmp:
        paths = split_to_csv(tmp, config.workers)
        for _ in range(args.repeat):
            start = time.perf_counter()
            with local_workers(paths, timeout=5) as addresses:
                rows["worker start-up (3 processes)"].append(time.perf_counter() - start)
                rows["websocket (3 processes)"].append(timed(lambda: train_network(config, addresses))[0])
                victim = addresses.processes["jane"]
                killed_at = []

                def kill(result, _history):
                    if result.round == 2:
                        os.killpg(victim.pid, signal.SIGKILL)
                        victim.wait()
                        killed_at.append(time.perf_counter())

                try:
                    train_network(config, addresses, on_round=kill)
                except RoundFailed as err:
                    rows["kill detected (worker killed after round 2)"].append(time.perf_counter() - killed_at[0])
                    assert err.worker == "jane", err
    print(f"5 rounds, 3 owners, toy data, {args.repeat} repeats; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs (shared)")
    print(f"{'what':46} {'min s':>7} {'median s':>9}")
    for name, values in rows.items():
        print(f"{name:46} {min(values):7.2f} {statistics.median(values):9.2f}")


if __name__ == "__main__":
    main()
