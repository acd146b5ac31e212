"""Secure averaging with pairwise masks (SecAgg's masking, Bonawitz et al., CCS 2017): the model owner's side.

The alternative to syft's additive sharing (:mod:`fl_smpc.secure_aggregation`). Instead of every owner
sending every other owner a share as large as its model, each pair of owners agrees on a key once per
run, and each round every owner sends the model owner one vector: its encoded parameters plus and
minus the keystreams of its pair keys (:mod:`fl_smpc.pairwise_owner`). The masks cancel in the sum, so
the model owner, which never holds a key or a mask, learns the sum and nothing else, as with shares.
Both protocols encode in syft's int64 ring and decode the same way: sum, decode, divide.

If an owner cannot be reached before every masked vector of an attempt is in, the model owner
discards the attempt and redoes it among the remaining owners with a fresh nonce: masks only cancel
when both owners of a pair take part, and one round never yields two sums over different owner sets.
"""

import secrets
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import AggregationError, ConfigError, OwnerFailed, WorkerUnreachable
from .pairwise_owner import NON_FINITE, RING
from .secure_aggregation import scaled_flat_parameters, uncompressed_messages, unencodable

MIN_OWNERS = 2  # a "sum" of one owner would be its own model


@dataclass
class Session:
    """One run's key agreement among ``owners``, as the model owner knows it: an id and a round counter."""

    id: str
    owners: Tuple[str, ...]
    rounds: int = 0


class PairwiseSum(NamedTuple):
    total: torch.Tensor  # the decoded sum
    owners: Tuple[str, ...]  # whose vectors it sums (fewer than asked if some dropped out)


# worker handle -> its session: a run's workers are new objects (VirtualWorkers, network clients), so a
# new run agrees on new keys while the rounds of one run reuse them
_sessions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def command(worker, name: str, *args):
    """Call the method ``name(*args)`` of the owner ``worker`` through syft's ``WorkerCommandMessage``."""
    import syft as sy

    me = sy.local_worker
    return me.send_msg(me.create_worker_command_message(name, None, *args), location=worker)


def session_for(workers: Sequence) -> Session:
    """The run's session among ``workers``; on first use the owners agree on fresh keys, owner to owner."""
    ids = tuple(w.id for w in workers)
    known = {id(_sessions.get(w)) for w in workers}
    session = _sessions.get(workers[0])
    if len(known) == 1 and session is not None and set(ids) <= set(session.owners):
        return session
    session = Session(secrets.token_hex(16), ids)
    for worker in workers:
        command(worker, "pairwise_agree_keys", session.id, list(ids))
    for worker in workers:
        _sessions[worker] = session
    return session


def forget_session(workers: Sequence) -> None:
    """Agree on fresh keys at the next sum among ``workers`` (a restarted owner has lost its keys)."""
    for worker in workers:
        _sessions.pop(worker, None)


def decode(total: np.ndarray, precision: int) -> torch.Tensor:
    """The float32 values of an encoded sum, as syft's ``float_prec`` computes them (int64 -> float32, then
    / 10**p in float32; numpy gives the same bits without torch's thread pool)."""
    return torch.from_numpy(total.astype(np.float32) / np.float32(10**precision))


def tensor_id(ptr):
    """The id, on its owner, of the tensor a pointer (or syft wrapper around one) points to."""
    return getattr(ptr, "child", ptr).id_at_location


def refusal(worker: str, problem: str, n_owners: int, precision: int) -> AggregationError:
    """The error for an owner whose values cannot be encoded, worded as the additive path words it."""
    return unencodable(worker, problem != NON_FINITE, n_owners, precision)


class OwnersDropped(Exception):
    """Owners could not be reached during an attempt; ``cause`` is the first transport error."""

    def __init__(self, workers: Sequence[str], cause: WorkerUnreachable):
        super().__init__(", ".join(workers))
        self.workers, self.cause = tuple(workers), cause


def masked_sum(tensor_ptrs: Sequence, workers: Sequence, session: Session, attempt: int, precision: int) -> np.ndarray:
    """One attempt: every participant's masked vector, summed in the int64 ring (the masks cancel).

    The owners are asked at the same time, one thread each, as separate machines would work: masking
    runs in OpenSSL and numpy, which release the GIL, and over the network each owner has its own socket.
    """
    owners = [w.id for w in workers]
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [
            pool.submit(
                command,
                worker,
                "pairwise_masked_vector",
                tensor_id(ptr),
                session.id,
                session.rounds,
                attempt,
                owners,
                precision,
            )
            for worker, ptr in zip(workers, tensor_ptrs)
        ]
    failures = [(worker.id, err) for worker, f in zip(workers, futures) for err in [f.exception()] if err is not None]
    dropped = [(worker, err) for worker, err in failures if isinstance(err, WorkerUnreachable)]
    if dropped:
        raise OwnersDropped([worker for worker, _ in dropped], dropped[0][1])
    if failures:
        raise failures[0][1]
    vectors = []
    for worker, future in zip(workers, futures):
        status, payload = future.result()
        if status != "masked":
            raise refusal(worker.id, payload, len(owners), precision)
        vectors.append(np.frombuffer(payload, dtype=RING))
        if vectors[-1].size != vectors[0].size:
            raise AggregationError(
                f"worker {worker.id!r} sent {vectors[-1].size} values, {workers[0].id!r} {vectors[0].size}", worker.id
            )
    total = np.add(vectors[0], vectors[1])  # wraps modulo 2**64, as syft's shares do
    for vector in vectors[2:]:
        np.add(total, vector, out=total)
    return total


def pairwise_sum(
    tensor_ptrs: Sequence, workers: Sequence, precision_fractional: int = 3, min_owners: int = MIN_OWNERS
) -> PairwiseSum:
    """Sum one remote float tensor per owner; the model owner only ever sees masked vectors and the sum.

    An owner that cannot be reached drops out: the round is redone among the others with a fresh nonce,
    as long as ``min_owners`` remain (else its :class:`WorkerUnreachable` is raised). An owner whose
    values cannot be encoded raises :class:`AggregationError` naming it.
    """
    if len(tensor_ptrs) != len(workers):
        raise ConfigError(f"{len(tensor_ptrs)} tensors for {len(workers)} workers")
    if min_owners < MIN_OWNERS:
        raise ConfigError(f"min_owners must be at least {MIN_OWNERS}: the sum of one owner is its model")
    session = session_for(workers)
    session.rounds += 1
    present, attempt = list(zip(workers, tensor_ptrs)), 0
    with uncompressed_messages():
        while True:
            try:
                total = masked_sum(
                    [p for _, p in present], [w for w, _ in present], session, attempt, precision_fractional
                )
                break
            except OwnersDropped as dropped:  # the other replies are discarded: their masks do not cancel
                present = [(w, p) for w, p in present if w.id not in dropped.workers]
                if len(present) < min_owners:
                    raise dropped.cause from None
                attempt += 1
    return PairwiseSum(decode(total, precision_fractional), tuple(w.id for w, _ in present))


def pairwise_average(
    remote_models: Sequence, workers: Sequence, precision_fractional: int = 3, weights: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """Weighted FedAvg of the owners' remote models as one flat vector (``parameters_to_vector`` order);
    the drop-in for :func:`fl_smpc.secure_aggregation.secure_average`, with the same errors.

    Each owner scales its parameters by its weight on itself before masking. An owner that cannot be
    reached raises :class:`~fl_smpc.errors.OwnerFailed` (no sum over this set exists then: its masks do
    not cancel), and the round loop redoes the average among the others with a fresh nonce.
    """
    flat, weights = scaled_flat_parameters(remote_models, workers, weights)  # encodability is checked on the owner
    try:
        result = pairwise_sum(flat, workers, precision_fractional, min_owners=len(workers))
    except WorkerUnreachable as err:
        raise OwnerFailed(err.worker, "masking", err) from err
    return result.total / sum(weights)
