"""Time one SecAgg round (double masking, optional SecAgg+ neighbour graph) in one process, against its floor.

    nice .venv/bin/python benchmarks/secagg_timing.py [--repeat 3] [--sizes 3x1e6,10x1e6,50x1e5:5,100x1e5:5]
                                                     [--setup-owners 100] [--setup-k 4,8,16,32,99]

A size is ``NxP`` or ``NxP:k`` (k neighbours; none = all pairs). Every owner's and the model owner's work runs
in sequence in this process, through the same transport-free objects the network owner uses
(:mod:`fl_smpc.data_owner.secagg`, :mod:`fl_smpc.model_owner.unmasking`), with no transport -- the same
accounting as ``benchmarks/peers`` gives Flower's SecAgg+. Per round and size, medians over ``--repeat``:

* ``round``: all of it -- every owner's shares (key pair, two Shamir splits), pair keys, encoding, masking,
  consistency view and answer, then the model owner's sum, Shamir combines and mask removal;
* ``critical path``: the slowest owner's share of that plus the model owner's (owners work in parallel);
* ``floor``: what any masking protocol of this shape must do: each owner's encoding and its k + 1 AES-CTR
  keystreams (pair masks and self mask) with their adds, the model owner's N adds and N self-mask keystreams.

``--setup-*``: the per-owner key phase (its fresh key pair, two Shamir splits into k + 1 shares, receiving
its k neighbours' shares and deriving k pair keys) for N = ``--setup-owners`` owners and each k.
"""

import argparse
import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from fl_smpc.data_owner.secagg import SecAggOwner, SecAggSession, add_keystreams
from fl_smpc.model_owner.unmasking import unmask_sum
from fl_smpc.pairwise_owner import RING, encode

PRECISION = 3


def parse_size(text: str) -> Tuple[int, int, Optional[int]]:
    size, _, k = text.partition(":")
    n, p = size.split("x")
    return int(n), int(float(p)), (int(k) if k else None)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Stopwatch:
    """Wall-clock and CPU seconds of the code inside ``with``, added to ``totals`` (one per clock)."""

    def __init__(self, totals: Dict[str, float]):
        self.totals = totals

    def __enter__(self):
        self.starts = {name: clock() for name, clock in CLOCKS.items()}

    def __exit__(self, *_):
        for name, clock in CLOCKS.items():
            self.totals[name] = self.totals.get(name, 0.0) + clock() - self.starts[name]


def one_round(n: int, p: int, k: Optional[int], round_: int, values: List[np.ndarray]) -> Dict[str, float]:
    names = [f"owner{i:03d}" for i in range(n)]
    session = SecAggSession.create("bench", names, k, b"bench graph seed")
    owners = {name: SecAggOwner(name, session) for name in names}
    work: Dict[str, Dict[str, float]] = {name: {} for name in names}  # each owner's seconds

    def timed(name, fn, *args):
        with Stopwatch(work[name]):
            return fn(*args)

    outgoing = {name: timed(name, owners[name].outgoing_shares, round_) for name in names}
    for sender, messages in outgoing.items():
        for receiver, message in messages.items():
            timed(receiver, owners[receiver].receive_shares, sender, message)
    everyone = set(names)
    masked, keys = {}, {}
    for name, x in zip(names, values):
        encoded = timed(name, encode, x, PRECISION)
        masked[name] = timed(name, owners[name].masked_vector, round_, encoded, everyone)
        keys[name] = owners[name].public_key(round_)
    views = {name: timed(name, owners[name].consistency_view, round_, everyone, set()) for name in names}
    for sender, messages in views.items():
        for receiver, message in messages.items():
            timed(receiver, owners[receiver].receive_view, sender, message)
    answers = {name: timed(name, owners[name].unmask_answer, round_, everyone, set()) for name in names}
    model: Dict[str, float] = {}
    with Stopwatch(model):
        total = unmask_sum(session, round_, names, masked, keys, answers)
    expected = np.zeros(p, dtype=RING)
    for x in values:
        expected += encode(x, PRECISION)
    assert np.array_equal(total, expected), "the unmasked sum is not the exact sum"
    result = {}
    for clock in CLOCKS:
        result[f"round {clock}"] = sum(w[clock] for w in work.values()) + model[clock]
        result[f"critical path {clock}"] = max(w[clock] for w in work.values()) + model[clock]
        result[f"model owner {clock}"] = model[clock]
    return result


def floor(n: int, p: int, k: Optional[int], values: List[np.ndarray]) -> Dict[str, float]:
    streams = (n - 1 if k is None or k >= n - 1 else k) + 1
    seconds: Dict[str, float] = {}
    with Stopwatch(seconds):
        vectors = []
        for x in values:
            encoded = encode(x, PRECISION)
            vectors.append(add_keystreams(encoded, [(True, os.urandom(32)) for _ in range(streams)], 1))
        total = np.zeros(p, dtype=RING)
        for vector in vectors:
            np.add(total, vector, out=total)
        add_keystreams(total, [(False, os.urandom(32)) for _ in range(n)], 1)
    return {f"floor {clock}": value for clock, value in seconds.items()}


def setup_cost(n: int, k: Optional[int], repeat: int) -> float:
    """Median seconds of one owner's key phase (its own shares, its neighbours' shares, its pair keys)."""
    names = [f"owner{i:03d}" for i in range(n)]
    session = SecAggSession.create("bench", names, k, b"bench graph seed")
    times = []
    for round_ in range(1, repeat + 1):
        owners = {name: SecAggOwner(name, session) for name in [names[0], *sorted(session.neighbours[names[0]])]}
        me = owners[names[0]]
        incoming = {peer: owners[peer].outgoing_shares(round_)[names[0]] for peer in owners if peer != names[0]}
        start = time.perf_counter()
        me.outgoing_shares(round_)
        for peer, message in incoming.items():
            me.receive_shares(peer, message)
        me.masked_vector(round_, np.zeros(1, dtype=RING), set(owners))  # pair keys are derived here (P = 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graph_failures(
    n: int, k: Optional[int], t: Optional[int], delta: float, gamma: float, trials: int, seed: int = 0
) -> Tuple[float, float]:
    """Monte Carlo over random owner sets (a simulation, not key material: numpy's generator): how often a round
    in which a fraction ``delta`` of the owners drop after the shares cannot be unmasked (some owner has fewer
    than t answering holders, or the survivors are disconnected, or they are not a majority), and how often a
    fraction ``gamma`` of colluding owners leaves some owner with c_j >= 2t - n_j colluding holders (the
    threshold barrier alone no longer holds for it; the consistency step still does while c < 2 * majority - N)."""
    names = [f"owner{i:03d}" for i in range(n)]
    session = SecAggSession.create("graph", names, k, b"bench graph seed", t)
    rng = np.random.default_rng(seed)
    lost, broken = 0, 0
    t = session.threshold
    for _ in range(trials):
        dropped = set(rng.choice(names, size=int(round(delta * n)), replace=False))
        survivors = set(names) - dropped
        holders_ok = all(len(set(session.holders(o)) & survivors) >= t for o in names)
        if not (holders_ok and session.connected(survivors) and 2 * len(survivors) > n):
            lost += 1
        colluders = set(rng.choice(names, size=int(round(gamma * n)), replace=False))
        holders = {o: session.holders(o) for o in names}
        if any(len(set(h) & colluders) >= 2 * t - len(h) for o, h in holders.items() if o not in colluders):
            broken += 1
    return lost / trials, broken / trials


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="3x1e6,10x1e6,50x1e5:5,100x1e5:5")
    parser.add_argument("--setup-owners", type=int, default=100)
    parser.add_argument("--setup-k", default="4,8,16,32,99")
    parser.add_argument("--graph-owners", type=int, default=100)
    parser.add_argument("--graph-k", default="4,6,8,12,16,24")
    parser.add_argument("--graph-trials", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    rng = np.random.default_rng(0)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    results: Dict[Tuple[int, int, Optional[int]], Dict[str, List[float]]] = {s: {} for s in sizes}
    one_round(3, 1000, None, 1, [rng.standard_normal(1000).astype(np.float32) for _ in range(3)])  # warm-up
    for repeat in range(args.repeat):  # interleaved: load from other processes hits every size alike
        for n, p, k in sizes:
            values = [rng.standard_normal(p).astype(np.float32) for _ in range(n)]
            timing = {**one_round(n, p, k, repeat + 1, values), **floor(n, p, k, values)}
            for name, seconds in timing.items():
                results[(n, p, k)].setdefault(name, []).append(seconds)
    for clock in CLOCKS if sizes else ():
        print(f"\n{clock} seconds, medians of {args.repeat}:\n")
        print("| N, P, k | round | critical path | model owner | floor | round / floor |")
        print("|---|---|---|---|---|---|")
        for (n, p, k), samples in results.items():
            med = {name: statistics.median(v) for name, v in samples.items()}
            print(
                f"| {n}, 10^{int(round(np.log10(p)))}, {k if k and k < n - 1 else 'all'} "
                f"| {med['round ' + clock]:.3f} s | {med['critical path ' + clock]:.3f} s "
                f"| {med['model owner ' + clock]:.3f} s | {med['floor ' + clock]:.3f} s "
                f"| {med['round ' + clock] / med['floor ' + clock]:.2f} |"
            )
    if args.setup_k:
        print(f"\nper-owner key phase, N = {args.setup_owners}:\n\n| k | shares held | seconds |\n|---|---|---|")
        for k_text in args.setup_k.split(","):
            k = int(k_text)
            seconds = setup_cost(args.setup_owners, k, args.repeat)
            print(
                f"| {min(k, args.setup_owners - 1)} | {min(k, args.setup_owners - 1) + 1} | {seconds * 1000:.1f} ms |"
            )

    if args.graph_k:
        n = args.graph_owners
        print(f"\nneighbour graphs, N = {n}, {args.graph_trials} random draws each (dropouts after the shares: a")
        print("round lost; colluders: some honest owner's threshold barrier broken):\n")
        print(
            "| k | t | 5 % drop | 10 % drop | 20 % drop | 5 % collude | 10 % collude |\n|---|---|---|---|---|---|---|"
        )
        for k_text in args.graph_k.split(","):
            k = int(k_text)
            least = SecAggSession.create("graph", [f"o{i}" for i in range(n)], k, b"x").threshold
            for t in sorted({least, max(least, (2 * (k + 1)) // 3 + 1)}):  # a majority of holders; over 2/3
                rates = [graph_failures(n, k, t, d, 0.0, args.graph_trials)[0] for d in (0.05, 0.1, 0.2)]
                rates += [graph_failures(n, k, t, 0.0, g, args.graph_trials)[1] for g in (0.05, 0.1)]
                print(f"| {k} | {t} | " + " | ".join(f"{r:.3f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
