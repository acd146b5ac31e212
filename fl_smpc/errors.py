"""One base error for everything a user can get wrong or a run can meet, so the CLI needs one ``except``.

Each subclass also derives from the built-in error it refines (``ValueError``, ``ConnectionError``...),
so code written against those keeps working.
"""

from typing import Optional


class FlSmpcError(Exception):
    """Base of every error fl-smpc reports to a user: the message alone says what is wrong."""


class ConfigError(FlSmpcError, ValueError):
    """A setting is invalid (the message names the setting and the value)."""


class DataError(FlSmpcError, ValueError):
    """Data that cannot be used: wrong shape, non-finite values, a malformed file (named with its line)."""


class AggregationError(FlSmpcError, ValueError):
    """An owner's parameters cannot be securely averaged (non-finite or outside the encodable range)."""

    def __init__(self, message: str, worker: str):
        super().__init__(message)
        self.worker = worker


class CheckpointError(FlSmpcError, ValueError):
    """The checkpoint file is missing, unreadable, not an fl-smpc checkpoint, or cannot be written."""

    history = None  # set when a run that already completed rounds fails to write one


class ModelFileError(FlSmpcError, ValueError):
    """A saved model (``--save-model``) that cannot be read or used: not one, malformed, or for other data."""


class TLSConfigError(ConfigError):
    """Certificates or TLS settings that cannot be used: a missing file, a wrong party, plain ws:// off loopback."""


class WorkerUnreachable(FlSmpcError, ConnectionError):
    """A worker could not be reached or stopped answering; ``worker`` is its id."""

    def __init__(self, worker: str, message: str):
        super().__init__(f"worker {worker!r}: {message}")
        self.worker = worker


class WorkerSetupError(FlSmpcError, ValueError):
    """A worker does not match what the model owner expects (id, data, feature count)."""


class WorkerStartError(FlSmpcError, RuntimeError):
    """A local worker process exited or did not become ready in time; the message holds its log."""


class RoundFailed(FlSmpcError, RuntimeError):
    """A round could not complete. The global model keeps the last completed round's parameters.

    ``round`` is the failed round (from 1), ``worker`` the owner at fault when known, and ``history``
    holds the rounds that did complete.
    """

    def __init__(self, round: int, cause: Exception, history, worker: Optional[str] = None):
        super().__init__(f"round {round} failed: {cause}")
        self.round, self.worker, self.history = round, worker, history


class OwnerFailed(FlSmpcError, RuntimeError):
    """One owner failed before the reveal began (training, checking, or sharing): the round can go on without it.

    ``worker`` is the owner at fault, ``stage`` where it failed ("training", "check", "sharing").
    """

    def __init__(self, worker: str, stage: str, cause: Exception):
        super().__init__(f"worker {worker!r} failed during {stage}: {cause}")
        self.worker, self.stage, self.cause = worker, stage, cause
