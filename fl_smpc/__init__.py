"""fl-smpc: the PySyft 0.2.9 federated-learning-with-SMPC tutorial as a small, tested package.

Importing the package is cheap: torch and syft are imported by the modules that need them, and
the syft hook is only created when :func:`create_hook` (or a run) asks for it.
"""
from importlib import import_module

from .config import FLConfig

__version__ = "0.1.0"

# name -> module: loaded on first attribute access (PEP 562), so `import fl_smpc` stays light.
_LAZY = {
    "create_hook": "workers", "create_workers": "workers", "remove_workers": "workers",
    "virtual_workers": "workers", "introduce": "workers", "forget_transient_ids": "workers",
    "toy_dataset": "data", "split_dataset": "data", "send_partitions": "data", "check_dataset": "data",
    "train_locally": "training", "sum_squared_error": "training",
    "secure_average": "secure_aggregation", "secure_sum": "secure_aggregation",
    "AggregationError": "secure_aggregation", "uncompressed_messages": "secure_aggregation",
    "install_csprng_shares": "share_masks", "run_benchmark": "bench",
    "train_federated": "federated", "run_round": "federated", "History": "federated",
    "RoundResult": "federated", "RoundFailed": "federated",
    "plot_history": "plots", "save_plot": "plots",
    "history_rows": "history_csv", "write_history_csv": "history_csv",
    "train_network": "network", "network_workers": "network", "create_data_owner": "network",
    "DataOwnerServer": "network", "NetworkClient": "network", "WorkerUnreachable": "network",
    "read_csv": "csvdata", "write_csv": "csvdata", "split_to_csv": "csvdata", "DataFileError": "csvdata",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "CheckpointError": "checkpoint",
    "local_workers": "launcher",
    "load_packaged_corpus": "sms", "load_data_file": "sms", "Messages": "sms", "featurize": "sms",
    "run_sms_experiment": "experiment", "SmsResult": "experiment",
}

__all__ = ["FLConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
