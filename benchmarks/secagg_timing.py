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


def one_round(n: int, p: int, k: Optional[int], round_: int, values: List[np.ndarray]) -> Dict[str, float]:
    names = [f"owner{i:03d}" for i in range(n)]
    session = SecAggSession.create("bench", names, k, b"bench graph seed")
    owners = {name: SecAggOwner(name, session) for name in names}
    work = dict.fromkeys(names, 0.0)  # each owner's seconds

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        work[name] += time.perf_counter() - start
        return result

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
    start = time.perf_counter()
    total = unmask_sum(session, round_, names, masked, keys, answers)
    model = time.perf_counter() - start
    expected = np.zeros(p, dtype=RING)
    for x in values:
        expected += encode(x, PRECISION)
    assert np.array_equal(total, expected), "the unmasked sum is not the exact sum"
    return {"round": sum(work.values()) + model, "critical path": max(work.values()) + model, "model owner": model}


def floor(n: int, p: int, k: Optional[int], values: List[np.ndarray]) -> float:
    streams = (n - 1 if k is None or k >= n - 1 else k) + 1
    start = time.perf_counter()
    vectors = []
    for x in values:
        encoded = encode(x, PRECISION)
        vectors.append(add_keystreams(encoded, [(True, os.urandom(32)) for _ in range(streams)], 1))
    total = np.zeros(p, dtype=RING)
    for vector in vectors:
        np.add(total, vector, out=total)
    add_keystreams(total, [(False, os.urandom(32)) for _ in range(n)], 1)
    return time.perf_counter() - start


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="3x1e6,10x1e6,50x1e5:5,100x1e5:5")
    parser.add_argument("--setup-owners", type=int, default=100)
    parser.add_argument("--setup-k", default="4,8,16,32,99")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    rng = np.random.default_rng(0)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    results: Dict[Tuple[int, int, Optional[int]], Dict[str, List[float]]] = {s: {} for s in sizes}
    one_round(3, 1000, None, 1, [rng.standard_normal(1000).astype(np.float32) for _ in range(3)])  # warm-up
    for repeat in range(args.repeat):  # interleaved: load from other processes hits every size alike
        for n, p, k in sizes:
            values = [rng.standard_normal(p).astype(np.float32) for _ in range(n)]
            timing = one_round(n, p, k, repeat + 1, values)
            timing["floor"] = floor(n, p, k, values)
            for name, seconds in timing.items():
                results[(n, p, k)].setdefault(name, []).append(seconds)
    print("\n| N, P, k | round | critical path | model owner | floor | round / floor |")
    print("|---|---|---|---|---|---|")
    for (n, p, k), samples in results.items():
        med = {name: statistics.median(v) for name, v in samples.items()}
        print(
            f"| {n}, 10^{int(round(np.log10(p)))}, {k if k and k < n - 1 else 'all'} | {med['round']:.3f} s "
            f"| {med['critical path']:.3f} s | {med['model owner']:.3f} s | {med['floor']:.3f} s "
            f"| {med['round'] / med['floor']:.2f} |"
        )
    if args.setup_k:
        print(f"\nper-owner key phase, N = {args.setup_owners}:\n\n| k | shares held | seconds |\n|---|---|---|")
        for k_text in args.setup_k.split(","):
            k = int(k_text)
            seconds = setup_cost(args.setup_owners, k, args.repeat)
            print(
                f"| {min(k, args.setup_owners - 1)} | {min(k, args.setup_owners - 1) + 1} | {seconds * 1000:.1f} ms |"
            )


if __name__ == "__main__":
    main()
