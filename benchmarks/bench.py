"""Benchmark: what secure aggregation costs, additive shares vs pairwise masks, per-tensor vs flattened
sharing, a round, memory over time.

    python benchmarks/bench.py [--quick] [--out DIR] [--threads N]
    python benchmarks/bench.py --profile      # where one secure sum's time goes

Prints one table per measurement and writes the same figures to DIR/bench.json and one CSV per
table. Times are medians over repeats after one warm-up; both wall-clock and process CPU seconds
are recorded (on a shared machine CPU time is the steadier of the two). No timing is asserted
anywhere: these numbers are for reading.
"""

import argparse
import contextlib
import copy
import csv
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from fl_smpc import secure_aggregation
from fl_smpc.config import SMS_DEFAULTS, SMS_FEATURES as DEFAULT_FEATURES, FLConfig
from fl_smpc.data import send_partitions, split_dataset, toy_dataset
from fl_smpc.federated import run_round, run_rounds
from fl_smpc.pairwise import pairwise_sum, session_for
from fl_smpc.reference import local_train
from fl_smpc.secure_aggregation import secure_average, secure_average_per_tensor, secure_sum
from fl_smpc.training import train_locally
from fl_smpc.workers import create_hook, virtual_workers

DEFAULTS = {
    "workers": (2, 3, 5, 10),
    "params": (10, 10**3, 10**5, 10**6),
    "repeats": 5,
    "big_repeats": 3,
    "layout_repeats": 20,
    "round_repeats": 7,
    "round_rows": None,
    "memory_rounds": 500,
    "memory_every": 50,
    "protocol_workers": (3, 10),
    "protocol_params": (10**4, 10**6),
    "protocol_repeats": 7,
    "network_params": (10**4, 10**6),
    "network_repeats": 3,
}
QUICK = {
    "workers": (2, 3),
    "params": (10, 10**3),
    "repeats": 2,
    "big_repeats": 2,
    "layout_repeats": 2,
    "round_repeats": 2,
    "round_rows": 60,
    "memory_rounds": 20,
    "memory_every": 5,
    "protocol_workers": (2, 3),
    "protocol_params": (10, 10**3),
    "protocol_repeats": 2,
    "network_params": (10,),
    "network_repeats": 1,
}
SMS_FEATURES = DEFAULT_FEATURES  # the SMS model (issue 3) is nn.Linear(4096, 1) on hashed features


def timed(fn: Callable, repeats: int, setup: Optional[Callable] = None) -> Dict[str, float]:
    """Median wall and CPU seconds of ``fn(*setup())`` over ``repeats`` runs after one warm-up."""
    wall, cpu = [], []
    for i in range(repeats + 1):
        args = setup() if setup is not None else ()
        w0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        if i:  # run 0 is the warm-up
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def bench_names(n: int) -> List[str]:
    return [f"bench{i}" for i in range(n)]


def plaintext_mean(ptrs: Sequence) -> torch.Tensor:
    """What aggregation costs without SMPC: fetch every owner's tensor and average."""
    return torch.stack([p.get() for p in ptrs]).mean(0)


@contextlib.contextmanager
def syft_default_compression():
    """The "before" of the compression change: secure sums with syft's LZ4 on every share message."""
    saved = secure_aggregation.uncompressed_messages
    secure_aggregation.uncompressed_messages = contextlib.nullcontext  # type: ignore[assignment]  # same call, no-op
    try:
        yield
    finally:
        secure_aggregation.uncompressed_messages = saved


def secure_aggregation_cost(hook, workers=(2, 3, 5, 10), params=(10, 10**3), repeats=5, big_repeats=3) -> List[dict]:
    """Secure average (fix_prec -> share -> sum -> reveal -> decode -> divide) vs plaintext mean, by N and P.

    ``secure_lz4_s`` is the same secure average with syft's default LZ4 compression of share messages.
    """
    rows = []
    for n in workers:
        with virtual_workers(bench_names(n), hook) as ws:
            for p in params:
                reps = big_repeats if p >= 10**6 else repeats
                ptrs = [torch.randn(p).send(w) for w in ws]  # type: ignore[attr-defined]  # syft's hook adds Tensor.send
                secure = timed(lambda ptrs=ptrs, n=n: secure_sum(ptrs, ws) / n, reps)
                with syft_default_compression():
                    lz4 = timed(lambda ptrs=ptrs, n=n: secure_sum(ptrs, ws) / n, reps)
                plain = timed(plaintext_mean, reps, setup=lambda ptrs=ptrs: ([q.copy() for q in ptrs],))
                rows.append(
                    {
                        "workers": n,
                        "params": p,
                        "secure_s": secure["wall_s"],
                        "plaintext_s": plain["wall_s"],
                        "ratio": secure["wall_s"] / plain["wall_s"],
                        "secure_lz4_s": lz4["wall_s"],
                        "secure_cpu_s": secure["cpu_s"],
                        "secure_lz4_cpu_s": lz4["cpu_s"],
                        "plaintext_cpu_s": plain["cpu_s"],
                    }
                )
                del ptrs
    return rows


class TrafficCounter:
    """Requests and bytes (request + reply, serialized) per link, counted by wrapping the workers' ``_send_msg``.

    Every syft message leaves through its sender's ``_send_msg(bytes, location)`` and its reply comes
    back as that call's result. In one process syft sends what an owner computes (e.g. its shares) from
    the local worker object, so a message is attributed to the owner whose request is being handled
    when it is sent (its ``_recv_msg`` is on this thread's stack), else to the worker object that sends it.
    A worker's messages to itself (syft's ``share`` sends each owner its own share too) cross no link
    and are not counted.
    """

    LINKS = ("owner->owner", "model owner->owner", "owner->model owner")

    def __init__(self, model_owner, owners: Sequence):
        self.model_owner, self.owners = model_owner, list(owners)
        self.counts = {link: [0, 0] for link in self.LINKS}
        self.threads = threading.local()  # .handling: owners whose requests this thread handles, innermost last

    def __enter__(self):
        for worker in [self.model_owner, *self.owners]:

            def send(message, location, _worker=worker, _send=worker._send_msg):
                handling = getattr(self.threads, "handling", None)
                sender = handling[-1] if handling else _worker
                reply = _send(message, location)
                if sender is location:
                    return reply
                if sender is self.model_owner:
                    count = self.counts["model owner->owner"]
                else:
                    count = self.counts["owner->model owner" if location is self.model_owner else "owner->owner"]
                count[0] += 1
                count[1] += len(message) + len(reply)
                return reply

            worker._send_msg = send
        for owner in self.owners:

            def receive(message, _owner=owner, _receive=owner._recv_msg):
                handling = self.threads.__dict__.setdefault("handling", [])
                handling.append(_owner)
                try:
                    return _receive(message)
                finally:
                    handling.pop()

            owner._recv_msg = receive
        return self

    def __exit__(self, *exc):
        for worker in [self.model_owner, *self.owners]:
            del worker._send_msg
        for owner in self.owners:
            del owner._recv_msg


def counted_traffic(hook, owners, fn) -> Dict[str, List[int]]:
    with TrafficCounter(hook.local_worker, owners) as counter:
        fn()
    return counter.counts


def protocol_comparison(hook, workers=(3, 10), params=(10**4, 10**6), repeats=7, big_repeats=3) -> List[dict]:
    """Additive shares (``secure_sum``) vs pairwise masks (``pairwise_sum``) vs the plaintext floor.

    The floor is ``torch.stack(xs).mean(0)`` on local tensors: no syft, no messages. Repeats are
    interleaved (additive, pairwise, plaintext, additive, ...) so that load on a shared machine hits all
    three alike. Traffic is counted in separate calls, per secure sum (one round), after key agreement;
    ``setup_*`` is the pairwise key agreement, once per run.
    """
    rows = []
    for n in workers:
        with virtual_workers(bench_names(n), hook) as ws:
            setup = counted_traffic(hook, ws, lambda: session_for(ws))
            for p in params:
                xs = [torch.randn(p) for _ in ws]
                ptrs = [x.send(w) for x, w in zip(xs, ws)]  # type: ignore[attr-defined]  # syft's hook adds Tensor.send
                variants: Dict[str, Callable[..., Any]] = {
                    "additive": lambda ptrs=ptrs, n=n: secure_sum(ptrs, ws) / n,
                    "pairwise": lambda ptrs=ptrs, n=n: pairwise_sum(ptrs, ws).total / n,
                    "plaintext": lambda xs=xs: torch.stack(xs).mean(0),
                }
                times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in variants}
                for i in range((big_repeats if p >= 10**6 else repeats) + 1):
                    for name, fn in variants.items():
                        w0, c0 = time.perf_counter(), time.process_time()
                        fn()
                        if i:  # run 0 is the warm-up
                            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
                wall = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
                cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
                for name in ("additive", "pairwise"):
                    traffic = counted_traffic(hook, ws, variants[name])
                    rows.append(
                        {
                            "workers": n,
                            "params": p,
                            "protocol": name,
                            "seconds": wall[name],
                            "cpu_s": cpu[name],
                            "plaintext_s": wall["plaintext"],
                            "vs_plaintext": wall[name] / wall["plaintext"],
                            "vs_additive": wall[name] / wall["additive"],
                            "owner_owner_msgs": traffic["owner->owner"][0],
                            "owner_owner_bytes": traffic["owner->owner"][1],
                            "model_owner_msgs": traffic["model owner->owner"][0] + traffic["owner->model owner"][0],
                            "model_owner_bytes": traffic["model owner->owner"][1] + traffic["owner->model owner"][1],
                            "setup_owner_owner_msgs": setup["owner->owner"][0] if name == "pairwise" else 0,
                            "setup_owner_owner_bytes": setup["owner->owner"][1] if name == "pairwise" else 0,
                        }
                    )
    return rows


def network_protocol_cost(hook, params=(10**4, 10**6), repeats=3) -> List[dict]:
    """Over mutual TLS, 3 ``fl-smpc worker`` processes on loopback, owner-side training: one round (each owner
    trains, the secure sum of the contributions, then the secure evaluation of the new model) of the toy task,
    of the SMS task (each owner's own messages, 4,096 hashed features) and of a wide model of P parameters
    (benchmarks/wide_task.py), for each protocol. Medians after one warm-up round."""
    import tempfile

    from fl_smpc.config import OwnerBounds
    from fl_smpc.data_owner.task import load_task
    from fl_smpc.model_owner.connect import owner_links, start_model
    from fl_smpc.model_owner.rounds import Federation, owner_round
    from fl_smpc.network.csvdata import split_to_csv
    from fl_smpc.network.launcher import local_workers
    from fl_smpc.network.tls import create_federation

    names = ("bob", "alice", "jane")
    wide = str(Path(__file__).resolve().parent / "wide_task.py")
    cases = [("toy round", "toy", 4, None)] + [("wide model round", wide, p, p) for p in params]
    if max(params) > 10:  # the full benchmark only: the SMS corpus and its features take a while
        cases.insert(1, ("SMS round", "sms", SMS_FEATURES + 1, None))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fl-smpc-bench-") as tmp:
        certs = os.path.join(tmp, "certs")
        create_federation(certs, ["model", *names], days=1)
        for what, task, size, width in cases:
            paths = sms_owner_files(tmp, names) if task == "sms" else split_to_csv(os.path.join(tmp, "toy"), names)
            os.environ["FL_SMPC_BENCH_PARAMS"] = str(width or 10)
            message = str(max(OwnerBounds().max_message, 40 * size))
            with local_workers(
                paths, timeout=60.0, certs=certs, worker_args=("--task", task, "--max-message", message)
            ) as addresses, owner_links(addresses, certs, timeout=120.0) as links:
                for protocol in ("additive", "pairwise"):
                    config = FLConfig(
                        workers=names,
                        seed=0,
                        aggregation=protocol,
                        training="owner",
                        lr={"sms": 100.0, "toy": 0.1}.get(task, 1e-6),  # a wide model diverges at the toy's lr
                        local_steps=20 if task == "sms" else 5,
                    )
                    federation = Federation(dict(links), load_task(task))
                    federation.start()
                    model = start_model(config, federation, None, None)
                    times = []
                    for i in range(repeats + 1):  # round 0 is the warm-up (and the pairwise key agreement)
                        start = time.perf_counter()
                        owner_round(model, federation, config, i + 1, federation.task.reduction, lambda m: {})
                        if i:
                            times.append(time.perf_counter() - start)
                    rows.append(
                        {
                            "transport": "mutual TLS, 3 worker processes",
                            "what": what,
                            "params": federation.parameters,
                            "protocol": protocol,
                            "seconds": statistics.median(times),
                        }
                    )
    return rows


def sms_owner_files(tmp: str, names: Sequence[str]) -> Dict[str, str]:
    """Each owner's SMS messages as its own ``label,text`` CSV file (the sms task's format)."""
    from fl_smpc.sms.corpus import load_packaged_corpus
    from fl_smpc.sms.experiment import prepare_data

    paths = {}
    for name, owner in zip(names, prepare_data(load_packaged_corpus(), len(names)).owners):
        paths[name] = os.path.join(tmp, f"{name}-sms.csv")
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["label", "text"], *zip(owner.labels, owner.texts)])
    return paths


def mlp_13_32_24_1() -> nn.Module:
    """PySyft Part 10's model: 6 parameter tensors, 1,265 parameters."""
    return nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 1))


def sharing_layout_cost(hook, repeats=10, n_workers=3) -> List[dict]:
    """One ``share`` per parameter tensor (the seed) vs one per owner (flattened), same remote models."""
    rows = []
    models = {
        "MLP 13-32-24-1": mlp_13_32_24_1,
        f"Linear({SMS_FEATURES},1) SMS-sized": lambda: nn.Linear(SMS_FEATURES, 1),
    }
    with virtual_workers(bench_names(n_workers), hook) as ws:
        for name, make in models.items():
            remote = [make().send(w) for w in ws]  # type: ignore[operator]  # syft's hook adds Module.send
            per_tensor = timed(lambda remote=remote: secure_average_per_tensor(remote, ws), repeats)
            flat = timed(lambda remote=remote: secure_average(remote, ws), repeats)
            rows.append(
                {
                    "model": name,
                    "tensors": len(list(make().parameters())),
                    "params": sum(t.numel() for t in make().parameters()),
                    "workers": n_workers,
                    "per_tensor_s": per_tensor["wall_s"],
                    "flattened_s": flat["wall_s"],
                    "speedup": per_tensor["wall_s"] / flat["wall_s"],
                    "per_tensor_cpu_s": per_tensor["cpu_s"],
                    "flattened_cpu_s": flat["cpu_s"],
                    "speedup_cpu": per_tensor["cpu_s"] / flat["cpu_s"],
                }
            )
            del remote
    return rows


def sms_parts(n_owners: int, max_rows: Optional[int] = None):
    """The SMS corpus as the SMS runs prepare it: each owner's messages as hashed features and labels."""
    from fl_smpc.sms.corpus import featurize, labels_tensor, load_packaged_corpus
    from fl_smpc.sms.experiment import prepare_data

    owners = prepare_data(load_packaged_corpus(), n_owners).owners
    if max_rows is not None:
        owners = [o.subset(range(min(max_rows, len(o)))) for o in owners]
    return [(featurize(o.texts, SMS_FEATURES), labels_tensor(o)) for o in owners]


def pytorch_fedavg_round(model: nn.Module, parts, config: FLConfig) -> None:
    """The same round without syft: local copies trained in turn, parameters averaged in memory."""
    vectors = []
    for x, y in parts:
        local = copy.deepcopy(model)
        local_train(local, x, y, config.lr, config.local_steps)  # the reference's local SGD
        vectors.append(parameters_to_vector(local.parameters()).detach())
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.stack(vectors).mean(0), model.parameters())


def round_cost(hook, repeats=5, max_rows=None, n_workers=3) -> List[dict]:
    """One round of the SMS model: local training, then secure or plaintext averaging of the same models.

    The SMS corpus split as the SMS runs split it (~1,200 messages per owner); 5 local steps of the
    sum-of-squares loss at the SMS runs' learning rate for it.
    """

    config = FLConfig(
        workers=tuple(bench_names(n_workers)), rounds=1, local_steps=5, lr=SMS_DEFAULTS["lr"]["sse"], seed=0
    )
    parts = sms_parts(n_workers, max_rows)
    torch.manual_seed(0)
    model = nn.Linear(SMS_FEATURES, 1)
    train, secure, plain = [], [], []
    with virtual_workers(config.workers, hook) as ws:
        remote_data = send_partitions(parts, ws)
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            remote = [model.copy().send(w) for w in ws]  # type: ignore[operator]  # syft's hook adds Module.copy
            for m, (x, y) in zip(remote, remote_data):
                train_locally(m, x, y, config.lr, config.local_steps)
            t1 = time.perf_counter()
            secure_average(remote, ws)
            t2 = time.perf_counter()
            torch.stack([parameters_to_vector(m.get().parameters()) for m in remote]).mean(0)
            t3 = time.perf_counter()
            if i:  # run 0 is the warm-up
                train.append(t1 - t0)
                secure.append(t2 - t1)
                plain.append(t3 - t2)
            del remote
        full = timed(lambda: run_round(model, ws, remote_data, config), repeats)
    fedavg = timed(lambda: pytorch_fedavg_round(model, parts, config), repeats)
    t, s, p = (statistics.median(v) for v in (train, secure, plain))
    base = {
        "model": f"Linear({SMS_FEATURES},1)",
        "workers": n_workers,
        "rows_per_owner": len(parts[0][1]),
        "local_steps": config.local_steps,
    }
    return [
        {**base, "variant": "send + local training (syft)", "round_s": t, "vs_plaintext": t / (t + p)},
        {**base, "variant": "secure averaging only", "round_s": s, "vs_plaintext": s / (t + p)},
        {**base, "variant": "plaintext averaging only", "round_s": p, "vs_plaintext": p / (t + p)},
        {**base, "variant": "round, secure averaging", "round_s": t + s, "vs_plaintext": (t + s) / (t + p)},
        {**base, "variant": "round, plaintext averaging", "round_s": t + p, "vs_plaintext": 1.0},
        {
            **base,
            "variant": "run_round (secure, end to end)",
            "round_s": full["wall_s"],
            "vs_plaintext": full["wall_s"] / (t + p),
        },
        {
            **base,
            "variant": "pure PyTorch FedAvg (no syft)",
            "round_s": fedavg["wall_s"],
            "vs_plaintext": fedavg["wall_s"] / (t + p),
        },
    ]


def memory_over_rounds(hook, rounds=500, every=50) -> List[dict]:
    """The toy tutorial for ``rounds`` rounds: object-store sizes and process RSS every ``every`` rounds."""
    import syft as sy

    config = FLConfig(workers=("bench_bob", "bench_alice", "bench_jane"), rounds=rounds, seed=0)
    torch.manual_seed(config.seed)
    data, target = toy_dataset()
    model = nn.Linear(data.shape[1], 1)
    samples = []
    process = psutil.Process()
    with virtual_workers(config.workers, hook) as ws:
        remote_data = send_partitions(split_dataset(data, target, len(ws)), ws)

        def sample(result, history):
            if result.round == 1 or result.round % every == 0:
                samples.append(
                    {
                        "round": result.round,
                        "rss_mb": process.memory_info().rss / 2**20,
                        "local_objects": len(sy.local_worker._objects),
                        **{f"objects_{w.id}": len(w._objects) for w in ws},
                        "syft_ids": len(sy.ID_PROVIDER.generated),
                        "global_loss": result.global_loss,
                    }
                )

        run_rounds(model, ws, remote_data, config, on_round=sample)
    return samples


# cProfile entries grouped by cause: (group, substrings of "file:function"); the first match wins.
PROFILE_GROUPS = [
    ("mask generation (torch random_)", ["random_"]),
    ("LZ4 compress/decompress", ["lz4"]),
    ("message bytes: msgpack, compression header", ["msgpack/__init__", "compression.py", "_msgpack_binary"]),
    ("torch.save/torch.load of tensors", ["_write_file", "_set_from_file", "torch/serialization", "serde/torch/serde"]),
    ("int64 arithmetic (encode, shares, sums, decode)", ["_TensorBase", "rsub"]),
]


def profile_secure_sum(hook, n_workers=3, params=10**6, repeats=3, lz4=False) -> List[dict]:
    """Where a secure sum's time goes, by cause (cProfile self time, so the groups add up)."""
    import cProfile
    import pstats

    context = syft_default_compression() if lz4 else contextlib.nullcontext()
    with virtual_workers(bench_names(n_workers), hook) as ws, context:
        ptrs = [torch.randn(params).send(w) for w in ws]  # type: ignore[attr-defined]  # syft's hook adds Tensor.send
        secure_sum(ptrs, ws)  # warm-up
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [secure_sum(ptrs, ws) for _ in range(repeats)])
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # set by Stats.load_stats, not in typeshed
    rest = "syft/Python overhead (the rest)"
    seconds = {group: 0.0 for group, _ in PROFILE_GROUPS + [(rest, [])]}
    for (path, _line, name), (_cc, _nc, self_time, _cum, _callers) in stats.items():
        key = f"{path}:{name}"
        group = next((g for g, pats in PROFILE_GROUPS if any(p in key for p in pats)), rest)
        seconds[group] += self_time
    total = sum(seconds.values())
    return [
        {
            "messages": "LZ4 (syft default)" if lz4 else "uncompressed",
            "cause": g,
            "ms_per_sum": 1000 * t / repeats,
            "percent": 100 * t / total,
        }
        for g, t in seconds.items()
    ]


def machine() -> dict:
    """What the numbers were measured on."""
    import syft as sy

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,  # type: ignore[attr-defined]  # not in torch 1.4's stubs
        "syft": sy.version.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_benchmark(quick: bool = False) -> dict:
    """Every measurement; returns ``{"machine": ..., "<table>": [rows]}``."""
    s = QUICK if quick else DEFAULTS
    hook = create_hook()
    started = time.perf_counter()
    results: Dict[str, Any] = {"machine": machine(), "quick": quick}
    # memory first: the later sections' large buffers would otherwise dominate the RSS figures
    results["memory"] = memory_over_rounds(hook, s["memory_rounds"], s["memory_every"])
    results["secure_aggregation"] = secure_aggregation_cost(
        hook, s["workers"], s["params"], s["repeats"], s["big_repeats"]
    )
    results["protocols"] = protocol_comparison(
        hook, s["protocol_workers"], s["protocol_params"], s["protocol_repeats"], s["big_repeats"]
    )
    results["protocols_network"] = network_protocol_cost(hook, s["network_params"], s["network_repeats"])
    results["sharing_layout"] = sharing_layout_cost(hook, s["layout_repeats"])
    results["round_cost"] = round_cost(hook, s["round_repeats"], s["round_rows"])
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["summary"] = summary(results)
    results["seconds"] = time.perf_counter() - started
    return results


def summary(results: dict) -> dict:
    """The key figures: secure/plaintext at the largest P, layout speed-ups, round overhead, RSS growth."""
    out = {}
    grid = results["secure_aggregation"]
    top = max(r["params"] for r in grid)
    for r in grid:
        if r["params"] == top:
            out[f"secure_s N={r['workers']} P={top}"] = r["secure_s"]
            out[f"secure/plaintext N={r['workers']} P={top}"] = r["ratio"]
    protocols = results["protocols"]
    top = max(r["params"] for r in protocols)
    for r in protocols:
        if r["params"] == top:
            out[f"{r['protocol']} s N={r['workers']} P={top}"] = r["seconds"]
        if r["protocol"] == "pairwise" and r["workers"] == max(x["workers"] for x in protocols):
            out[f"pairwise owner->owner bytes per round N={r['workers']} P={r['params']}"] = r["owner_owner_bytes"]
    for r in results["sharing_layout"]:
        out[f"flattened speed-up, {r['model']}"] = r["speedup"]
    rounds = {r["variant"]: r["round_s"] for r in results["round_cost"]}
    plain = rounds["round, plaintext averaging"]
    out["secure averaging adds to a round (vs plaintext averaging)"] = rounds["round, secure averaging"] / plain - 1
    out["pure PyTorch FedAvg round / plaintext syft round"] = rounds["pure PyTorch FedAvg (no syft)"] / plain
    memory = {m["round"]: m for m in results["memory"]}
    first = min(r for r in memory if r > 1) if len(memory) > 1 else 1
    last = max(memory)
    out[f"RSS MB at round {first}"] = memory[first]["rss_mb"]
    out[f"RSS MB at round {last}"] = memory[last]["rss_mb"]
    out[f"RSS growth round {first} -> {last}"] = memory[last]["rss_mb"] / memory[first]["rss_mb"] - 1
    stores = {tuple(v for k, v in m.items() if "objects" in k) for m in results["memory"]}
    out["object-store sizes constant"] = len(stores) == 1
    return out


TABLES = {
    "secure_aggregation": (
        "Secure aggregation cost (seconds, median; secure_lz4 = with syft's default LZ4, i.e. before)",
        ["workers", "params", "secure_s", "plaintext_s", "ratio", "secure_lz4_s", "secure_cpu_s", "secure_lz4_cpu_s"],
    ),
    "protocols": (
        "Additive shares vs pairwise masks, one secure sum in process (seconds, median of interleaved "
        "repeats; plaintext = torch.stack(xs).mean(0); msgs = requests, bytes = requests + replies, "
        "per round; setup = pairwise key agreement, once per run)",
        [
            "workers",
            "params",
            "protocol",
            "seconds",
            "plaintext_s",
            "vs_plaintext",
            "vs_additive",
            "owner_owner_msgs",
            "owner_owner_bytes",
            "model_owner_msgs",
            "model_owner_bytes",
            "setup_owner_owner_msgs",
            "setup_owner_owner_bytes",
        ],
    ),
    "protocols_network": (
        "Owner-side training over mutual TLS: one round, additive shares vs pairwise masks (seconds, median)",
        ["transport", "what", "params", "protocol", "seconds"],
    ),
    "sharing_layout": (
        "Per-tensor vs flattened sharing (seconds per secure average, median)",
        ["model", "tensors", "params", "workers", "per_tensor_s", "flattened_s", "speedup", "speedup_cpu"],
    ),
    "round_cost": (
        "Round cost, SMS model (seconds, median; vs_plaintext = / plaintext round)",
        ["variant", "round_s", "vs_plaintext"],
    ),
    "memory": ("Memory over the toy run", None),
}


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(rows: List[dict], columns: Optional[List[str]] = None) -> str:
    """A plain aligned text table (also valid Markdown)."""
    columns = columns or list(rows[0])
    cells = [columns] + [[format_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_results(results: dict) -> str:
    m = results["machine"]
    parts = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['ram_gb']} GB RAM, {m['platform']}; "
        f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), syft {m['syft']}; "
        f"load average {m['load_average']} at start, {m['load_average_end']} at end"
    ]
    for key, (title, columns) in TABLES.items():
        parts.append(f"{title}\n{format_table(results[key], columns)}")
    key_rows = [{"figure": k, "value": v} for k, v in results["summary"].items()]
    parts.append(f"Key figures\n{format_table(key_rows)}")
    parts.append(f"Total benchmark time: {results['seconds']:.0f} s")
    return "\n\n".join(parts)


def write_results(results: dict, out: Path) -> List[Path]:
    """``bench.json`` with everything, and one CSV per table."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json"]
    paths[0].write_text(json.dumps(results, indent=2))
    for key in TABLES:
        path = out / f"{key}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(results[key][0]))
            writer.writeheader()
            writer.writerows(results[key])
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few repeats: checks that the benchmark runs "
        "(default: off; the full run takes ~2 min on 2 cores)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/bench"),
        help="directory for bench.json and the CSV files (default: results/bench)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark, profile one secure sum (3 owners, 10**6 parameters) with "
        "and without LZ4 and print where the time goes (default: off)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice, one per core)"
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            build_parser().error(f"--threads: must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.profile:
        hook = create_hook()
        rows = profile_secure_sum(hook) + profile_secure_sum(hook, lz4=True)
        print(f"cProfile of one secure sum, 3 owners, 10**6 parameters\n{format_table(rows)}")
        return 0
    results = run_benchmark(args.quick)
    print(format_results(results))
    for path in write_results(results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
