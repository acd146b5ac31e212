"""One base error for everything a user can get wrong or a run can meet, so the CLI needs one ``except``.

Each subclass also derives from the built-in error it refines (``ValueError``, ``ConnectionError``...),
so code written against those keeps working. ``bad_input`` tells the two kinds apart: the user's input
(a setting, a data file, a checkpoint to resume, certificates) cannot be used (the CLI exits 2), or a run
that started failed (exit 1).
"""

from typing import Optional

# What str.splitlines() breaks a line at: each is shown escaped in a one-line message.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPED = {ord(c): c.encode("unicode_escape").decode("ascii") for c in LINE_BREAKS}


def one_line(text: str) -> str:
    """``text`` on one line: every line break in it (a file name's, a hostile file's key...) written escaped."""
    return text.translate(_ESCAPED)


class FlSmpcError(Exception):
    """Base of every error fl-smpc reports to a user: the message alone says what is wrong, on one line.

    ``str(err)`` is always one line (see :func:`one_line`), whatever values the message quotes, unless
    the class sets ``multiline`` (a worker's log).
    """

    bad_input = False  # True: the user's input is at fault (the CLI exits 2); False: a run failed (exit 1)
    multiline = False

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.multiline else one_line(text)


class ConfigError(FlSmpcError, ValueError):
    """A setting is invalid (the message names the setting and the value)."""

    bad_input = True


class DataError(FlSmpcError, ValueError):
    """Data that cannot be used: wrong shape, non-finite values, a malformed file (named with its line)."""

    bad_input = True


class AggregationError(FlSmpcError, ValueError):
    """An owner's parameters cannot be securely averaged (non-finite or outside the encodable range)."""

    def __init__(self, message: str, worker: str):
        super().__init__(message)
        self.worker = worker


class CheckpointError(FlSmpcError, ValueError):
    """The checkpoint file is missing, unreadable, not an fl-smpc checkpoint, or cannot be written there."""

    bad_input = True
    history = None  # set when a run that already completed rounds fails to write one


class ModelFileError(FlSmpcError, ValueError):
    """A saved model (``--save-model``) that cannot be read or used: not one, malformed, or for other data."""

    bad_input = True


class CheckpointWriteError(CheckpointError):
    """A run could not write its checkpoint after a round (disk full...): the run failed, ``history`` holds it."""

    bad_input = False


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

    multiline = True


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
