"""Reproduce the SMS results table of docs/sms.md (timings vary with the machine's load).

    .venv/bin/python benchmarks/sms_results.py [--seeds 0 1 2]

Runs the default ``--dataset sms`` settings for IID and skewed owners, prints one markdown row per
run and model, then the exactness check: the secure average of the owners' 4,097 trained
parameters against their plaintext mean (fetched here for the check only).
"""

import argparse
import time

import torch

from fl_smpc.config import FLConfig
from fl_smpc.data import send_partitions
from fl_smpc.runner import run_sms_experiment
from fl_smpc.secure_aggregation import secure_average
from fl_smpc.sms.corpus import SMS_DEFAULTS, deduplicate, featurize, labels_tensor, load_packaged_corpus
from fl_smpc.sms.experiment import LOSSES, prepare_data
from fl_smpc.training import train_locally
from fl_smpc.workers import create_hook, virtual_workers

KEYS = ("accuracy", "precision", "recall", "f1")


def row(partition, model, metrics, seconds):
    return f"| {partition} | {model} | " + " | ".join(f"{metrics[k]:.4f}" for k in KEYS) + f" | {seconds:.1f} |"


def results_table(seeds):
    config = FLConfig(
        rounds=SMS_DEFAULTS["rounds"], local_steps=SMS_DEFAULTS["local_steps"], lr=SMS_DEFAULTS["lr"]["bce"]
    )
    yield "| partition | model | accuracy | precision | recall | F1 | time (s) |"
    yield "|---|---|---|---|---|---|---|"
    for scheme in ("iid", "skewed"):
        for seed in seeds:
            started = time.perf_counter()
            result = run_sms_experiment(FLConfig(**{**config.__dict__, "seed": seed}), scheme=scheme)
            total = time.perf_counter() - started
            central, ham = result.baseline["centralized"], result.baseline["always_ham"]
            yield row(
                scheme,
                f"federated secure, {config.rounds} rounds, seed {seed}",
                result.history.rounds[-1].metrics,
                result.seconds,
            )
            yield row(
                scheme, f"centralized plaintext, {central['steps']} steps, seed {seed}", central, central["seconds"]
            )
            yield row(scheme, "always ham", ham, 0.0)
            whole = f"whole experiment (load, featurise, both trainings), seed {seed}"
            yield f"| {scheme} | {whole} | | | | | {total:.1f} |"


def exactness(seed=0):
    """Largest |secure average - plaintext mean| over the 4,097 parameters after one round of local training."""
    owners = prepare_data(deduplicate(load_packaged_corpus())[0], 3, "iid").owners
    parts = [(featurize(o.texts), labels_tensor(o)) for o in owners]
    torch.manual_seed(seed)
    model = torch.nn.Linear(parts[0][0].shape[1], 1)
    with virtual_workers(["bob", "alice", "jane"], create_hook()) as workers:
        remote_data = send_partitions(parts, workers)
        remote_models = [model.copy().send(w) for w in workers]  # type: ignore[operator]  # syft's Module.copy
        for m, (x, y) in zip(remote_models, remote_data):
            train_locally(m, x, y, SMS_DEFAULTS["lr"]["bce"], SMS_DEFAULTS["local_steps"], LOSSES["bce"][0])
        average = secure_average(remote_models, workers, precision_fractional=3)
        plain = torch.stack([torch.nn.utils.parameters_to_vector(m.get().parameters()) for m in remote_models])
    return average.numel(), plain.abs().max().item(), (average - plain.mean(0)).abs().max().item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (default: 0 1 2)")
    args = parser.parse_args()
    for line in results_table(args.seeds):
        print(line, flush=True)
    n, largest, error = exactness()
    print(
        f"\nsecure average of {n} parameters (|max| {largest:.2f}): max |error| vs plaintext mean {error:.6f} "
        f"(one quantum = 0.001)"
    )
