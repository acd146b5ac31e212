"""A data owner's side of pairwise masking (the masks of SecAgg, Bonawitz et al., CCS 2017).

The model owner triggers every step with syft's ``WorkerCommandMessage``, which calls a method of the
receiving worker by name. :class:`PairwiseOwner` holds those methods; the in-process owner
(:class:`fl_smpc.workers.OwnerWorker`) and the websocket owner (``DataOwnerServer``) both inherit it,
so one code path serves both transports. Keys and masks never leave the owner:

* **Keys, once per run** (a *session*): every owner makes a fresh X25519 key pair and *pulls* each
  peer's public key over its own connection to that peer -- the one it was introduced to or started
  with, never one the model owner names -- so the model owner cannot substitute a key. HKDF-SHA256
  turns each pair's X25519 secret into a 256-bit AES key known to those two owners only.
* **A masked vector, once per round and attempt**: the owner encodes its vector in the int64 ring
  (float64, round half away from zero), adds the AES-CTR keystream of every pair key whose peer's id
  sorts after its own and subtracts the others'. In the sum over the attempt's participants each
  keystream appears once with + and once with -, so the model owner learns the encoded sum only.
  The nonce is (round, attempt); the owner refuses any nonce not above its last one, so no keystream
  is ever used twice, and a redo of a round must leave some owner out (owners only drop out).
"""

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AggregationError
from .secure_aggregation import encodable_limit

KEY_BYTES = 32  # AES-256
RING = np.dtype("<i8")  # syft's fixed-precision ring: int64, arithmetic wraps modulo 2**64
KDF_LABEL = b"fl-smpc pairwise mask key v1"
NONCE_LIMIT = 2**32  # round and attempt each fill 4 bytes of the counter block
CHUNK = 1 << 16  # elements masked at a time: the chunk and its keystreams stay in the CPU cache

# what an owner answers instead of a masked vector when its values cannot be encoded
NON_FINITE, TOO_LARGE = "non-finite", "too-large"


def raw_public_key(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pair_key(private_key: X25519PrivateKey, peer_public: bytes, session: str, me: str, peer: str) -> bytes:
    """The 256-bit AES key two owners share: HKDF of their X25519 secret, bound to the session and the pair."""
    first, second = sorted((me, peer))
    info = b"\0".join([KDF_LABEL, session.encode(), first.encode(), second.encode()])
    secret = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def nonce(round_: int, attempt: int) -> bytes:
    """AES-CTR's initial counter block: round (4 bytes), attempt (4 bytes), block counter (8 bytes, from 0).

    The 64-bit counter part never reaches the round and attempt bytes (2**64 blocks), so the keystreams
    of different rounds and attempts under one key never overlap.
    """
    if not (0 <= round_ < NONCE_LIMIT and 0 <= attempt < NONCE_LIMIT):
        raise ValueError(f"round {round_} and attempt {attempt} must be in [0, 2**32)")
    return struct.pack(">IIQ", round_, attempt, 0)


def encodable(values: np.ndarray, n_owners: int, precision: int) -> Optional[str]:
    """None if every value is finite and the sum of ``n_owners`` encodings fits the ring, else why not.

    The same bound as :func:`fl_smpc.secure_aggregation.check_encodable`, so both protocols refuse alike,
    compared in float64 (``float()`` of a float32 is exact); ``max`` and ``min`` propagate NaN, which
    fails both comparisons.
    """
    limit = encodable_limit(n_owners, precision)
    if values.size == 0 or (float(values.max()) < limit and float(values.min()) > -limit):
        return None
    return TOO_LARGE if np.isfinite(values).all() else NON_FINITE


def encode(values: np.ndarray, precision: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``round(x * 10**p)`` in the int64 ring, half away from zero, computed in float64; values must be encodable.

    Exact: ``10**p`` is a float64 (p <= 22), its product with a float32 value fits 53 bits, and the
    fraction left after truncating toward zero is exact; truncating twice the fraction gives the -1, 0
    or +1 to add. Only truncating conversions (SIMD, unlike numpy's ``trunc``/``modf``/``rint``).
    Written into ``out`` if given.
    """
    scaled = values.astype(np.float64)  # a copy: the caller's values are left as they were
    scaled *= 10.0**precision
    whole = np.empty(values.shape, dtype=RING) if out is None else out
    np.copyto(whole, scaled, casting="unsafe")  # toward zero
    scaled -= whole  # the fraction, in (-1, 1)
    scaled *= 2
    whole += scaled.astype(RING)
    return whole


def masked_encoding(
    values: np.ndarray, precision: int, keys: Dict[str, bytes], me: str, round_: int, attempt: int
) -> np.ndarray:
    """:func:`encode` ``values``, then add (peer after ``me``) or subtract (peer before) each pair's keystream.

    The keystream is AES-CTR encryption of zeros under the pair key, counter block :func:`nonce`; both
    owners of a pair produce the same one. Arithmetic wraps modulo 2**64. The work goes chunk by chunk with one
    running encryptor per peer -- the same keystream as one long call -- so a chunk, its encoding and
    its keystreams stay in the CPU cache.
    """
    start = nonce(round_, attempt)
    encryptors = [
        (peer > me, Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()) for peer, key in sorted(keys.items())
    ]
    masked = np.empty(values.size, dtype=RING)
    zeros = memoryview(bytes(min(CHUNK, values.size) * RING.itemsize))
    buffer = bytearray(len(zeros) + 15)  # update_into wants room for one block more than it writes
    for begin in range(0, values.size, CHUNK):
        part = masked[begin : begin + CHUNK]
        encode(values[begin : begin + CHUNK], precision, out=part)
        stream = np.frombuffer(buffer, dtype=RING, count=part.size)
        for add, encryptor in encryptors:
            encryptor.update_into(zeros[: part.size * RING.itemsize], buffer)
            (np.add if add else np.subtract)(part, stream, out=part)
    return masked


@dataclass
class OwnerSession:
    """One run's keys on one owner; forgotten when the next session starts."""

    id: str
    owners: Tuple[str, ...]
    private_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    pair_keys: Dict[str, bytes] = field(default_factory=dict)  # peer id -> AES key
    last_nonce: Tuple[int, int] = (0, -1)  # (round, attempt) of the last masked vector given out
    last_owners: Tuple[str, ...] = ()  # that attempt's participants


class PairwiseOwner:
    """Owner-side methods of pairwise masking, mixed into a syft worker (``self`` is a ``BaseWorker``).

    The model owner calls them by name (:func:`fl_smpc.pairwise.command`); only
    :meth:`pairwise_public_key` is also called by peers.
    """

    _pairwise: Optional[OwnerSession] = None

    if TYPE_CHECKING:  # what the syft worker this is mixed into provides (syft ships no type hints)
        id: str
        hook: Any
        _known_workers: Dict[str, Any]

        def get_obj(self, obj_id: Any) -> Any: ...

        def send_msg(self, message: Any, location: Any) -> Any: ...

        @staticmethod
        def create_worker_command_message(command_name: str, return_ids: Any, *args: Any, **kwargs: Any) -> Any: ...

    def _refuse(self, problem: str):
        return AggregationError(f"worker {self.id!r} refuses: {problem}", self.id)

    def _pairwise_session(self, session: str, owners: Sequence[str]) -> OwnerSession:
        """The session named ``session``; a new id starts a new session with fresh keys."""
        owners = tuple(owners)
        if len(set(owners)) != len(owners) or self.id not in owners or len(owners) < 2:
            raise self._refuse(f"session owners {list(owners)} must be unique, at least 2, and include it")
        current = self._pairwise
        if current is None or current.id != session:
            current = self._pairwise = OwnerSession(session, owners)
        elif current.owners != owners:
            raise self._refuse(f"session {session} is among {list(current.owners)}, not {list(owners)}")
        return current

    def pairwise_public_key(self, session: str, owners: Sequence[str]) -> bytes:
        """This owner's X25519 public key for ``session`` (its key pair is made on first request)."""
        return raw_public_key(self._pairwise_session(session, owners).private_key)

    def pairwise_agree_keys(self, session: str, owners: Sequence[str]) -> int:
        """Fetch every peer's public key over this owner's own connection to it; derive the pair keys.

        Returns how many pair keys the session now holds (one per peer).
        """
        peers = {}
        for peer in owners:
            connection = self._known_workers.get(peer)
            if peer != self.id and (connection is None or connection is self or connection is self.hook.local_worker):
                raise self._refuse(f"it has no connection to a peer owner {peer!r}")  # "me" is the model owner
            peers[peer] = connection
        state = self._pairwise_session(session, owners)
        for peer in state.owners:
            if peer == self.id or peer in state.pair_keys:
                continue
            request = self.create_worker_command_message("pairwise_public_key", None, session, list(state.owners))
            public = self.send_msg(request, location=peers[peer])
            state.pair_keys[peer] = pair_key(state.private_key, public, session, self.id, peer)
        return len(state.pair_keys)

    def pairwise_masked_vector(
        self, tensor_id, session: str, round_: int, attempt: int, owners: Sequence[str], precision: int
    ) -> Tuple[str, object]:
        """``("masked", little-endian int64 bytes)``: the tensor ``tensor_id`` encoded and masked for this
        attempt's ``owners`` -- a memoryview of the array, which syft's msgpack sends as bytes without a copy.

        ``("refused", NON_FINITE | TOO_LARGE)`` if its values cannot be encoded for that many owners.
        The nonce is used up either way.
        """
        state = self._pairwise
        owners = tuple(owners)
        if state is None or state.id != session:
            raise self._refuse(f"unknown session {session}: keys must be agreed first")
        if self.id not in owners or len(set(owners)) != len(owners) or len(owners) < 2:
            raise self._refuse(f"participants {list(owners)} must be unique, at least 2, and include it")
        missing = [o for o in owners if o != self.id and o not in state.pair_keys]
        if missing:
            raise self._refuse(f"it has no key shared with {missing}")
        if (round_, attempt) <= state.last_nonce:
            raise self._refuse(
                f"round {round_} attempt {attempt} is not after round {state.last_nonce[0]} "
                f"attempt {state.last_nonce[1]}: a keystream is never used twice"
            )
        if round_ == state.last_nonce[0] and not set(owners) < set(state.last_owners):
            raise self._refuse(f"a redo of round {round_} must be among fewer of {list(state.last_owners)}")
        nonce(round_, attempt)  # range check before the state changes
        state.last_nonce, state.last_owners = (round_, attempt), owners

        values = self.get_obj(tensor_id)
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            raise self._refuse(f"object {tensor_id} is not a floating-point tensor")
        values = values.detach().reshape(-1).numpy()  # numpy from here: single-threaded, no torch thread pool
        problem = encodable(values, len(owners), precision)
        if problem:
            return "refused", problem
        keys = {peer: state.pair_keys[peer] for peer in owners if peer != self.id}
        return "masked", memoryview(masked_encoding(values, precision, keys, self.id, round_, attempt)).cast("B")
