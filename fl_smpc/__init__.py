"""fl-smpc: the PySyft 0.2.9 federated-learning-with-SMPC tutorial as a small, tested package.

Importing the package is cheap: torch and syft are imported by the modules that need them, and
the syft hook is only created when :func:`create_hook` (or a run) asks for it.
"""

from importlib import import_module

from .config import FLConfig, RunSpec
from .errors import FlSmpcError

__version__ = "0.1.0"

# name -> module: loaded on first attribute access (PEP 562), so `import fl_smpc` stays light.
_LAZY = {
    # the five tutorial steps
    "create_hook": "workers",
    "virtual_workers": "workers",
    "toy_dataset": "data",
    "split_dataset": "data",
    "send_partitions": "data",
    "check_dataset": "data",
    "train_locally": "training",
    "sum_squared_error": "training",
    "check_model": "training",
    "secure_average": "secure_aggregation",
    "secure_sum": "secure_aggregation",
    "pairwise_average": "pairwise",
    "pairwise_sum": "pairwise",
    "train_federated": "federated",
    "run_rounds": "federated",
    "run_round": "federated",
    "History": "federated",
    # owner-side training: in one process, or with fl-smpc worker processes over mutual TLS
    "train_in_process": "model_owner.connect",
    "train_with_owners": "model_owner.connect",
    "RoundResult": "federated",
    "global_loss": "federated",
    # the plain-PyTorch FedAvg reference, to check your own runs
    "plaintext_fedavg": "reference",
    "max_differences": "reference",
    "fedavg_rounds": "reference",
    # a saved model (--save-model): load it, classify messages with it
    "load_model": "model_file",
    "save_model": "model_file",
    # one run from a RunSpec, its outputs
    "run": "runner",
    "RunResult": "runner",
    "run_sms_experiment": "runner",
    "load_checkpoint": "history_io",
    "save_checkpoint": "history_io",
    "write_history_csv": "history_io",
    "format_history": "history_io",
    # syft's share masks from a cryptographic generator (create_hook installs it)
    "install_csprng_shares": "share_masks",
    "plot_history": "plots",
    "save_plot": "plots",
    # errors
    "RoundFailed": "errors",
    "AggregationError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "WorkerUnreachable": "errors",
}

__all__ = ["FLConfig", "RunSpec", "FlSmpcError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
