"""A benchmark task for ``fl-smpc worker --task benchmarks/wide_task.py``: the toy data through a model of
``FL_SMPC_BENCH_PARAMS`` parameters (a wide first layer), to time owner-side rounds of a given model size."""

import os

from torch import nn

from fl_smpc.training import sum_squared_error

reduction = "sum"
binary_labels = True
loss_fn = sum_squared_error


def build_model(features: int) -> nn.Module:
    width = max(1, int(os.environ.get("FL_SMPC_BENCH_PARAMS", "10")) // (features + 2))
    return nn.Sequential(nn.Linear(features, width), nn.Linear(width, 1))
