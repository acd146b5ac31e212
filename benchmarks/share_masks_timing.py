"""Time share-mask generation and secure_sum with our masks against syft 0.2.9's original generator.

    .venv/bin/python benchmarks/share_masks_timing.py [--repeat 7] [--params 1000000] [--owners 3 10]

Prints medians (and minima) in milliseconds, all variants interleaved in one process so that load
from other processes hits them alike:

* local steps alone: 10**6 int64 masks from AES-256-CTR (fl_smpc.share_masks), os.urandom, torch random_;
  generate_shares for 3 owners (ours, syft's); the round-to-nearest step (rounded_for_encoding);
* secure_sum over VirtualWorkers (3 and 10 owners, 10**6 parameters each) with our masks or syft's,
  and with the round-to-nearest step (rounded_for_encoding) or without it (syft's truncation).
"""

import argparse
import os
import statistics
import time
from typing import Dict, List

import numpy as np
import torch
from syft.frameworks.torch.tensors.interpreters.additive_shared import AdditiveSharingTensor

from fl_smpc import secure_aggregation, share_masks
from fl_smpc.secure_aggregation import secure_sum
from fl_smpc.workers import create_hook, virtual_workers


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def local_steps(n: int):
    def aes_ctr():
        return share_masks.Keystream().words(n, torch.int64)

    def os_urandom():
        return torch.from_numpy(np.frombuffer(bytearray(os.urandom(8 * n)), np.int64))

    def torch_random():
        return torch.LongTensor(n).random_(-(2**63), 2**63 - 1)  # type: ignore[call-arg]  # torch 1.4's stubs

    ring = AdditiveSharingTensor()
    secret = torch.randint(-(10**6), 10**6, (n,))
    values = torch.randn(n)
    return {
        "masks: AES-256-CTR (ours)": aes_ctr,
        "masks: os.urandom": os_urandom,
        "masks: torch random_ (syft's)": torch_random,
        "generate_shares x3 (ours)": lambda: share_masks.generate_shares(ring, secret, 3, torch.int64),
        # set when fl_smpc installs its generate_shares, before any timing
        "generate_shares x3 (syft's)": lambda: share_masks.SYFT_GENERATE_SHARES(ring, secret, 3, torch.int64),  # type: ignore[misc]
        "rounded_for_encoding": lambda: secure_aggregation.rounded_for_encoding(values, 3),
    }


def secure_sum_variants(workers, params: int):
    values = [torch.randn(params) for _ in workers]
    ours, syfts = share_masks.generate_shares, share_masks.SYFT_GENERATE_SHARES
    rounded = secure_aggregation.rounded_for_encoding

    def variant(generate, encode):
        def run():
            pointers = [v.send(w) for v, w in zip(values, workers)]  # type: ignore[attr-defined]  # syft's hook
            AdditiveSharingTensor.generate_shares, secure_aggregation.rounded_for_encoding = generate, encode
            try:
                start = time.perf_counter()
                secure_sum(pointers, workers)
                return 1000 * (time.perf_counter() - start)
            finally:
                AdditiveSharingTensor.generate_shares, secure_aggregation.rounded_for_encoding = ours, rounded

        return run

    truncated = lambda ptr, precision_fractional: ptr  # noqa: E731 -- syft's own encoding
    return {
        "our masks, rounded": variant(ours, rounded),
        "syft masks, rounded": variant(syfts, rounded),
        "our masks, truncated": variant(ours, truncated),
        "syft masks, truncated": variant(syfts, truncated),
    }


def report(title: str, rows) -> None:
    print(title)
    for name, times in rows.items():
        print(f"  {name:30s} median {statistics.median(times):8.1f} ms   min {min(times):8.1f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--params", type=int, default=10**6, help="values per owner (default: %(default)s)")
    p.add_argument("--owners", type=int, nargs="*", default=[3, 10], help="owner counts (default: 3 10)")
    args = p.parse_args(argv)
    hook = create_hook()

    generators = local_steps(args.params)
    rows: Dict[str, List[float]] = {name: [] for name in generators}
    for _ in range(max(args.repeat, 15)):
        for name, fn in generators.items():
            rows[name].append(timed_ms(fn))
    report(f"local steps alone: {args.params} values", rows)

    for owners in args.owners:
        with virtual_workers([f"bench{i}" for i in range(owners)], hook) as workers:
            variants = secure_sum_variants(workers, args.params)
            for run in variants.values():  # warm-up
                run()
            rows = {name: [] for name in variants}
            for _ in range(args.repeat):
                for name, run in variants.items():
                    rows[name].append(run())
        report(f"secure_sum: {owners} owners x {args.params} parameters (VirtualWorkers)", rows)


if __name__ == "__main__":
    main()
