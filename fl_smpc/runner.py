"""One run from a :class:`~fl_smpc.config.RunSpec`: resume, pick the data set and transport, checkpoint.

The CLI, the notebook, the demo and the tests all call :func:`run`; it returns a :class:`RunResult`
and never prints. Seeding and building the model happen in one place,
:func:`fl_smpc.federated.initial_model`, whichever transport or data set is used.
"""

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Tuple

from .config import SMS_FEATURES, FLConfig, RunSpec
from .errors import CheckpointError
from .federated import History
from .history_io import checkpoint_writer, load_checkpoint


@dataclass
class RunResult:
    """What a run produced: the history, and for the SMS data set its description and the baselines."""

    spec: RunSpec
    history: History
    dataset: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The ``--json`` document: the history's keys, plus the SMS run's data set and baselines."""
        doc = self.history.to_dict()
        if self.spec.dataset == "sms":
            doc.update(
                dataset=self.dataset,
                loss=self.spec.loss,
                partition=self.spec.partition,
                features=self.spec.features,
                federated_seconds=self.seconds,
                baseline=self.baseline,
            )
        return doc


def resumed_spec(spec: RunSpec) -> Tuple[RunSpec, Optional[History]]:
    """The spec with the checkpoint's config (it wins over the flags) and the loaded history, if resuming."""
    if not spec.resume:
        return spec, None
    history = load_checkpoint(spec.resume)
    if spec.addresses is not None and tuple(spec.addresses) != history.config.workers:
        raise CheckpointError(
            f"{spec.resume}: the checkpoint's workers are {list(history.config.workers)}, "
            f"the addresses name {list(spec.addresses)}"
        )
    if spec.dataset == "toy" and history.initial_model.get("weight") is not None:
        shape = tuple(history.initial_model["weight"].shape)
        if len(shape) != 2 or shape[0] != 1:
            raise CheckpointError(
                f"{spec.resume}: initial_model.weight has shape {shape}; the toy run's model is "
                "nn.Linear(features, 1), whose weight has shape (1, features)"
            )
    done, asked = len(history.rounds), history.config.rounds
    rounds = asked if spec.resume_rounds is None else spec.resume_rounds
    if rounds < asked:
        raise CheckpointError(
            f"{spec.resume}: the checkpoint's run has {asked} rounds; a resumed run can be extended "
            f"(--rounds {asked} or more), not shortened to {rounds}"
        )
    if done == rounds:
        raise CheckpointError(
            f"{spec.resume}: the run is finished ({done} of {asked} rounds); to continue it, "
            f"give --rounds N with N > {done}"
        )
    history.config = replace(history.config, rounds=rounds)
    return replace(spec, config=history.config), history


def check_checkpoint_path(path: str) -> None:
    """CheckpointError (bad input) before any round unless a checkpoint can be written at ``path``."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: cannot write a checkpoint there: it is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{path}: cannot write a checkpoint there: no such directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"{path}: cannot write a checkpoint there: the directory is not writable")


def run(spec: RunSpec = RunSpec(), on_round: Optional[Callable] = None) -> RunResult:
    """Run ``spec``; ``on_round(result, history)`` is called after each completed round (after the checkpoint).

    Raises :class:`~fl_smpc.errors.FlSmpcError` subclasses with a one-line message: ``bad_input`` ones
    (a setting, the data file, the checkpoint, the certificates) before any round; a failed round raises
    :class:`~fl_smpc.errors.RoundFailed` carrying the completed rounds.
    """
    if spec.checkpoint:
        check_checkpoint_path(spec.checkpoint)
    spec, history = resumed_spec(spec)
    spec = replace(spec, config=spec.config.with_seed().with_dp_noise())
    callbacks = [checkpoint_writer(spec.checkpoint)] if spec.checkpoint else []
    callbacks += [on_round] if on_round else []

    def after_round(result, history):  # the checkpoint first, then the caller's callback
        for callback in callbacks:
            callback(result, history)

    if spec.dataset == "sms":
        from .sms.experiment import run_sms

        sms_history, dataset, baseline, seconds = run_sms(spec, on_round=after_round)
        return RunResult(spec, sms_history, dataset, baseline, seconds)
    if spec.transport == "websocket":
        from .model_owner.connect import train_with_owners

        assert spec.addresses is not None  # RunSpec checks that the websocket transport has addresses
        return RunResult(
            spec,
            train_with_owners(
                spec.config,
                spec.addresses,
                spec.task,
                history=history,
                on_round=after_round,
                timeout=spec.timeout,
                certs=spec.certs,
                party=spec.model_party,
            ),
        )
    from .federated import train_federated

    return RunResult(spec, train_federated(spec.config, history=history, on_round=after_round))


def run_sms_experiment(
    config: FLConfig,
    data_file: Optional[str] = None,
    n_features: int = SMS_FEATURES,
    scheme: str = "iid",
    loss: str = "bce",
    on_round: Optional[Callable] = None,
) -> RunResult:
    """The SMS run from Python (the notebook's call): :func:`run` with ``dataset="sms"``."""
    spec = RunSpec(config=config, dataset="sms", data_file=data_file, features=n_features, partition=scheme, loss=loss)
    return run(spec, on_round=on_round)
