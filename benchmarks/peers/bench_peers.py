"""Time CrypTen and Flower's SecAgg+ on one secure-averaging workload: N owners, P float32 values each, sum / N.

Runs in its own Python 3.11 venv (flwr 1.42 requires >= 3.11; see README.md beside this file), so it imports
nothing of fl_smpc.

- CrypTen: N processes (CrypTen's own multiprocess launcher, gloo on loopback). Each owner encrypts its vector,
  the N ciphertexts are summed, divided by N and decrypted. Timed on every rank from a barrier to the plaintext;
  the slowest rank counts. Each launch does one untimed warm-up pass first.
- Flower SecAgg+: flwr's own client mod (`secaggplus_mod`) for every owner, driven in one process through all four
  stages (setup, share keys, collect masked vectors, unmask), and the server side of flwr's `SecAggPlusWorkflow`
  (routing, summing masked vectors, Shamir reconstruction, unmasking, dequantisation) written with flwr's own
  primitives. Every owner masks against every other owner (num_shares = N); weight 1 each, so the result is the mean.
- Plaintext: `torch.stack(xs).mean(0)`.

Repeats are interleaved (every size and system once per round, the system order rotating) and medians reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib import metadata

import numpy as np
import torch

DEFAULT_SIZES = ("3x10000", "3x1000000", "10x10000", "10x1000000")
SYSTEMS = ("crypten", "flower", "plaintext")
CRYPTEN_TOLERANCE = 1e-3  # 16 fractional bits, one probabilistic truncation for the division
FLOWER_TOLERANCE = 1e-4  # stochastic rounding to 2**22 levels over [-8, 8]: one step is 3.8e-6
FLOWER_CLIPPING_RANGE = 8.0
FLOWER_QUANTIZATION_RANGE = 2**22
FLOWER_MODULUS_RANGE = 2**32


def owner_vectors(n: int, p: int, seed: int) -> list[torch.Tensor]:
    """The N owners' float32 vectors; every process derives the same ones from the seed."""
    generator = torch.Generator().manual_seed(seed)  # type: ignore[attr-defined]  # torch 1.4's stubs lack it
    return [torch.randn(p, generator=generator, dtype=torch.float32) for _ in range(n)]


def plaintext_mean(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(xs).mean(0)


# ---------------------------------------------------------------- CrypTen


def import_crypten():
    """Import CrypTen 0.4.1 beside a current torch.

    CrypTen's ONNX converter imports `torch.onnx._internal.registration`, which newer torch moved under
    `torchscript_exporter`; alias it so the package imports. The averaging path never touches ONNX.
    """
    try:
        import torch.onnx._internal.registration  # type: ignore[import-not-found]  # noqa: F401  # newer torch only
    except ImportError:
        from torch.onnx._internal.torchscript_exporter import registration  # type: ignore[import-not-found]

        sys.modules["torch.onnx._internal.registration"] = registration
    import crypten

    return crypten


def _crypten_owner(n: int, p: int, seed: int, threads: int) -> tuple[float, float, float]:
    """One owner's side, run in each of CrypTen's N processes; returns (wall s, CPU s, max abs error vs plaintext)."""
    import crypten
    import crypten.communicator as comm

    torch.set_num_threads(threads)
    rank = comm.get().get_rank()
    xs = owner_vectors(n, p, seed)
    expected = plaintext_mean(xs)
    mine = xs[rank]
    placeholder = torch.zeros(p)  # CrypTen wants a same-shaped tensor from parties that are not the source

    def secure_mean() -> torch.Tensor:
        encrypted = [crypten.cryptensor(mine if owner == rank else placeholder, src=owner) for owner in range(n)]
        total = encrypted[0]
        for other in encrypted[1:]:
            total = total + other
        return total.div(n).get_plain_text()

    secure_mean()  # warm-up: first collectives set up gloo buffers
    comm.get().barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = secure_mean()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu_seconds, float((result - expected).abs().max())


def time_crypten(n: int, p: int, seed: int, threads: int) -> tuple[float, float, float]:
    """Wall seconds of the slowest rank, CPU seconds summed over the ranks, worst error."""
    crypten = import_crypten()
    launch = crypten.mpc.run_multiprocess(world_size=n)(_crypten_owner)
    per_rank = launch(n, p, seed, threads)
    if per_rank is None or len(per_rank) != n:
        raise SystemExit(f"CrypTen N={n} P={p}: a party failed (its log is above)")
    return max(r[0] for r in per_rank), sum(r[1] for r in per_rank), max(r[2] for r in per_rank)


# ---------------------------------------------------------------- Flower SecAgg+


class FlowerOwner:
    """One owner: flwr's client mod with its own Context, answering the server's four stage messages."""

    def __init__(self, node_id: int, vector: np.ndarray) -> None:
        from flwr.app import Context, RecordDict

        self.node_id = node_id
        self.vector = vector
        self.context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})

    def _train(self, msg, ctxt):
        """What the ClientApp behind the mod returns: the owner's vector, weight 1."""
        from flwr.app import Message
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.compat.common.recorddict_compat import fitres_to_recorddict

        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([self.vector]), 1, {})
        return Message(fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    def handle(self, config: dict) -> dict:
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict
        from flwr.client.mod import secaggplus_mod
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(config)})
        msg = Message(content, dst_node_id=self.node_id, message_type=MessageType.TRAIN, group_id="1")
        reply = secaggplus_mod(msg, self.context, self._train)
        return dict(reply.content.config_records[RECORD_KEY_CONFIGS])


def flower_secaggplus_mean(xs: list[np.ndarray], threshold: int) -> np.ndarray:
    """Run SecAgg+ among len(xs) in-process owners (all neighbours of all, no dropouts); return the mean."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.task_identity import TaskIdentity

    # Who sends the instruction messages: set by the SuperLink runtime in a real deployment.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    n = len(xs)
    owners = {node_id: FlowerOwner(node_id, x) for node_id, x in enumerate(xs, start=1)}

    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: n,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: FLOWER_CLIPPING_RANGE,
        Key.TARGET_RANGE: FLOWER_QUANTIZATION_RANGE,
        Key.MOD_RANGE: FLOWER_MODULUS_RANGE,
        Key.MAX_WEIGHT: 1.0,
    }
    public_keys = {}
    for nid, owner in owners.items():
        reply = owner.handle(dict(setup))
        public_keys[nid] = [reply[Key.PUBLIC_KEY_1], reply[Key.PUBLIC_KEY_2]]

    forward_srcs: dict[int, list[int]] = {nid: [] for nid in owners}
    forward_ciphertexts: dict[int, list[bytes]] = {nid: [] for nid in owners}
    for nid, owner in owners.items():
        reply = owner.handle({Key.STAGE: Stage.SHARE_KEYS, **{str(k): v for k, v in public_keys.items()}})
        for dst, ciphertext in zip(reply[Key.DESTINATION_LIST], reply[Key.CIPHERTEXT_LIST], strict=True):  # type: ignore[call-overload]  # 3.10+
            forward_srcs[dst].append(nid)
            forward_ciphertexts[dst].append(ciphertext)

    masked = None
    for nid, owner in owners.items():
        reply = owner.handle(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: forward_ciphertexts[nid],
                Key.SOURCE_LIST: forward_srcs[nid],
            }
        )
        vector = [bytes_to_ndarray(b) for b in reply[Key.MASKED_PARAMETERS]]
        masked = vector if masked is None else parameters_addition(masked, vector)
    masked = parameters_mod(masked, FLOWER_MODULUS_RANGE)

    shares: dict[int, list[bytes]] = {nid: [] for nid in owners}
    active = list(owners)
    for owner in owners.values():
        reply = owner.handle({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: []})
        for owner_nid, share in zip(reply[Key.NODE_ID_LIST], reply[Key.SHARE_LIST], strict=True):  # type: ignore[call-overload]  # 3.10+
            shares[owner_nid].append(share)

    for share_list in shares.values():
        seed = combine_shares(share_list)
        private_mask = pseudo_rand_gen(seed, FLOWER_MODULUS_RANGE, get_parameters_shape(masked))
        masked = parameters_subtraction(masked, private_mask)
    total_weight, summed = factor_extract(parameters_mod(masked, FLOWER_MODULUS_RANGE))
    (mean,) = dequantize(summed, FLOWER_CLIPPING_RANGE, FLOWER_QUANTIZATION_RANGE)
    mean += -(n - 1) * FLOWER_CLIPPING_RANGE
    mean *= FLOWER_QUANTIZATION_RANGE / total_weight
    return mean


def time_flower(n: int, p: int, seed: int) -> tuple[float, float, float]:
    xs = owner_vectors(n, p, seed)
    expected = plaintext_mean(xs).numpy()
    arrays = [x.numpy() for x in xs]
    threshold = n // 2 + 1
    start, cpu_start = time.perf_counter(), time.process_time()
    result = flower_secaggplus_mean(arrays, threshold)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu_seconds, float(np.abs(result - expected).max())


def time_plaintext(n: int, p: int, seed: int) -> tuple[float, float, float]:
    xs = owner_vectors(n, p, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    plaintext_mean(xs)
    return time.perf_counter() - start, time.process_time() - cpu_start, 0.0


# ---------------------------------------------------------------- driver


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            n_text, p_text = item.lower().split("x")
            n, p = int(n_text), int(float(p_text))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not NxP (e.g. 3x1e4)") from None
        if n < 3 or p < 1:
            raise SystemExit(f"--sizes: {item!r} needs N >= 3 (flwr's SecAgg+ wants more than 2 shares) and P >= 1")
        sizes.append((n, p))
    return sizes


def run(sizes, repeats: int, seed: int, crypten_threads: int, systems=SYSTEMS, on_round=None):
    """Interleaved repeats; returns {(n, p, system): [(wall s, CPU s), ...]} and the worst error per system.

    A result off the plaintext mean by more than the system's tolerance stops the run: a fast wrong answer
    is not a timing.
    """
    timers = {
        "crypten": lambda n, p: time_crypten(n, p, seed, crypten_threads),
        "flower": lambda n, p: time_flower(n, p, seed),
        "plaintext": lambda n, p: time_plaintext(n, p, seed),
    }
    tolerances = {"crypten": CRYPTEN_TOLERANCE, "flower": FLOWER_TOLERANCE, "plaintext": 0.0}
    times: dict = {}
    worst: dict = dict.fromkeys(systems, 0.0)
    if "flower" in systems:
        time_flower(3, 10, seed)  # warm-up: flwr's lazy imports and key-generation setup
    for round_index in range(repeats):
        order = systems[round_index % len(systems) :] + systems[: round_index % len(systems)]
        for n, p in sizes:
            for system in order:
                seconds, cpu_seconds, error = timers[system](n, p)
                if error > tolerances[system]:
                    raise SystemExit(f"{system} N={n} P={p}: max abs error {error:.3g} > {tolerances[system]}")
                worst[system] = max(worst[system], error)
                times.setdefault((n, p, system), []).append((seconds, cpu_seconds))
        if on_round is not None:
            on_round(round_index + 1)
    return times, worst


def format_table(sizes, times, systems=SYSTEMS, column: int = 0) -> str:
    """Markdown table of medians: column 0 is wall-clock seconds, 1 is CPU seconds."""
    header = "| N, P | " + " | ".join(system_label(s) for s in systems) + " |"
    lines = [header, "|" + "---|" * (len(systems) + 1)]
    for n, p in sizes:
        cells = [f"{statistics.median(t[column] for t in times[(n, p, s)]):.4f} s" for s in systems]
        lines.append(f"| {n}, {size_label(p)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def size_label(p: int) -> str:
    exponent = len(str(p)) - 1
    return f"10^{exponent}" if p == 10**exponent else str(p)


def system_label(system: str) -> str:
    return {"crypten": "CrypTen", "flower": "Flower SecAgg+", "plaintext": "plaintext"}[system]


def environment() -> str:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("crypten", "flwr", "torch", "numpy"))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs ({platform.machine()}); "
        f"load average {load}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated NxP, e.g. 3x1e4,10x1e6")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crypten-threads", type=int, default=1, help="torch threads in each CrypTen process")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.crypten_threads < 1:
        parser.error("--crypten-threads must be >= 1")
    sizes = parse_sizes(args.sizes)
    systems = tuple(s for s in SYSTEMS if s in args.systems.split(","))
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown or not systems:
        named = ", ".join(sorted(unknown)) or "(none given)"
        parser.error(f"--systems: unknown {named}; choose from {', '.join(SYSTEMS)}")
    print(environment())

    def on_round(done: int) -> None:
        print(f"round {done}/{args.repeats} done", file=sys.stderr, flush=True)

    times, worst = run(sizes, args.repeats, args.seed, args.crypten_threads, systems, on_round)
    print(
        f"median of {args.repeats} interleaved repeats; max abs error vs plaintext: "
        + ", ".join(f"{system_label(s)} {worst[s]:.2g}" for s in systems)
    )
    print("wall-clock seconds:")
    print(format_table(sizes, times, systems))
    print("CPU seconds (CrypTen: summed over its N processes; steadier than wall-clock on a shared machine):")
    print(format_table(sizes, times, systems, column=1))
    print(f"after the run: load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
