"""SecAgg's double masking on a data owner (Bonawitz et al., CCS 2017), with SecAgg+'s neighbour graphs
(Bell et al., CCS 2020): a transport-free state machine, plain values and bytes in and out, no I/O.

One :class:`SecAggOwner` per owner per session. A session (:class:`SecAggSession`) is public: its id, its
owners, the neighbour graph (all pairs, or a Harary graph of degree k under a permutation drawn from a public
seed) and the Shamir threshold t. Each owner rebuilds the graph from the public values and refuses a session
whose threshold is unsafe, so the model owner cannot weaken either.

Every round, owner i:

1. :meth:`~SecAggOwner.outgoing_shares`: draws two fresh 16-byte seeds with ``os.urandom`` -- ``b_i``, its
   self-mask seed, and ``s_i``, from which HKDF derives its X25519 mask key pair for the round -- and
   Shamir-splits both (pycryptodome, GF(2^128)) into one share per holder: its neighbours and itself.
   One message per neighbour: the round's public key and that neighbour's two shares, sent owner to owner
   over their mutually authenticated TLS link (the model owner never carries a share or a key).
2. :meth:`~SecAggOwner.receive_shares` from each neighbour; its pair key with neighbour j is
   HKDF(X25519(s_i, pk_j)) bound to the session, the round and the pair (:func:`round_pair_key`).
3. :meth:`~SecAggOwner.masked_vector`: ``y_i = x_i + PRG(b_i) + sum_j (+/-) PRG(k_ij)`` in the int64 ring,
   every PRG an AES-CTR keystream (+ if j's id sorts after i's, as in :mod:`fl_smpc.pairwise_owner`).
   Once per round; round numbers strictly increase.
4. On the model owner's announcement (survivors S: vectors in the sum; dropped D; responders R within S):
   :meth:`~SecAggOwner.consistency_view` -> its view, a digest of the round's story (participants, S, D), for
   every other responder, over the owner-to-owner links; :meth:`~SecAggOwner.receive_view` from each of them.
5. :meth:`~SecAggOwner.unmask_answer`, once per round, only if every responder's view equals its own: for each
   participant j among its neighbours and itself, the share of ``b_j`` if j is in S, of ``s_j`` if j is in D.

Why per-round keys, not one X25519 key per session: once ``s_j`` is revealed (j dropped in some round),
every pair mask j ever used under that key is known, and j's vector from any earlier round where ``b_j``
was revealed (a round it survived) would be ``y_j - PRG(b_j) - pair masks``. Fresh key pairs each round make
a revealed ``s_j`` worth one round only, and "never both kinds for one owner" a per-round rule. The cost is
one key pair, k exchanges and two Shamir splits per owner per round; the shares message can be sent as soon
as the round is announced, while the owner trains.

Why 16-byte seeds: pycryptodome shares 16-byte secrets. ``b_i`` is the seed itself (HKDF gives the AES key);
``s_i`` is a seed from which HKDF derives the X25519 private key: one share per secret, and 128 bits of
entropy, X25519's own security level.

Why a lie about dropouts yields nothing. An honest owner answers once per round and gives, for each owner j,
one kind of share, by the story it was told: who took part, whose vectors are in the sum (S), who dropped (D).
Two barriers, each enough on its own (the tests switch each one off, and then both):

* the threshold: shares of ``s_j`` come only from j's holders told "j dropped" (never from j: it refuses when
  told it dropped), shares of ``b_j`` from holders told "j survived" (j included). The two groups are disjoint,
  so t of each needs ``2t - 1 <= deg(j)``: the session requires ``t > n_j / 2`` with ``n_j = deg(j) + 1``
  holders (:func:`min_threshold`), and an owner refuses a session below it;
* the consistency step: an owner answers only when every responder of its request has sent it, over their own
  link, a view equal to its own, no view from anyone differs from it, and the responders are a majority of the
  session's owners. Two stories would need two disjoint majorities: at most one story per round is answered.
  Bonawitz's ConsistencyCheck has the users sign the survivor set because there the server relays every
  message; here the views travel over the owners' own mutually authenticated TLS links, so the model owner can
  withhold a view but not forge or alter one, and no signature is needed.

Two more rules keep a single consistent story from isolating one owner:

* an owner masks only if at least t of its share holders (itself included) take part: a model owner that told
  j a small participant set and everyone else a large one must declare j's partners dropped to strip its pair
  masks, and then too few of j's holders are left to give ``b_j``;
* a responder answers only if the survivors' subgraph of the neighbour graph is connected: an owner whose
  partners were all declared dropped would otherwise be a "sum" of one.

Against c owners colluding with the model owner (they can answer both ways and send different views), the
bounds become ``t > (n_j + c_j) / 2`` for the c_j colluders among j's holders, ``c_j < t``, and responders
more than ``(N + c) / 2``. The threshold is a session parameter (Bonawitz et al. use t > 2n/3 against up to
n/3 colluders); the responders' bound is fixed at a majority today.
"""

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FlSmpcError
from ..pairwise_owner import CHUNK, RING, nonce, pair_key, raw_public_key

SEED_BYTES = 16  # what pycryptodome's Shamir shares
SELF_MASK, MASK_KEY = "b", "s"  # the two kinds of share: of b_j (j's vector is in the sum), of s_j (j dropped)
SELF_MASK_LABEL = b"fl-smpc secagg self mask v1"
MASK_KEY_LABEL = b"fl-smpc secagg x25519 key v1"
GRAPH_LABEL = b"fl-smpc secagg graph v1"
VIEW_LABEL = "fl-smpc secagg view v1"

# wire layouts (big-endian, fixed size; nothing is unpickled)
SHARES_MAGIC, VIEW_MAGIC = b"SAk1", b"SAv1"
SHARES_FORMAT = struct.Struct(">4s16sQ32sH16s16s")  # magic, session tag, round, public key, index, b share, s share
VIEW_FORMAT = struct.Struct(">4s16sQ32s")  # magic, session tag, round, view digest
SHARE_FORMAT = struct.Struct(">H16s")  # one revealed share: its Shamir index, its 16 bytes
MAX_PENDING_ROUNDS = 2  # rounds ahead of this owner's for which a neighbour's shares are kept

# the checks an owner makes; tests switch one off (``unsafe_skip_checks``) to show what it prevents
CHECKS = frozenset(
    {
        "round_order",  # strictly increasing rounds, one masked vector per round
        "fresh_vector",  # never the same contribution in two sums
        "min_threshold",  # the session's t is a strict majority of every owner's share holders
        "threshold",  # >= t holders take part; >= t survivors and responders
        "partition",  # survivors and dropped split the round's participants; responders are survivors
        "connected",  # the survivors' subgraph is connected
        "consistency",  # every responder's view equals this owner's; responders are a majority of the session
        "once",  # one unmasking answer per round
        "one_kind",  # never both kinds of share for one owner in a round
        "self_mask",  # the self mask b_i (off = single masking, the old pairwise protocol)
    }
)


class SecAggRefused(FlSmpcError, ValueError):
    """An owner refuses a SecAgg step (the message says why); the round cannot use this owner's answer."""


class ViewsMissing(SecAggRefused):
    """Not every responder's view has arrived yet: ask again once they have (nothing was consumed)."""


class UnmaskingError(FlSmpcError, ValueError):
    """The model owner cannot remove the masks: too few or inconsistent answers."""


def session_tag(session: str) -> bytes:
    return hashlib.sha256(b"fl-smpc secagg session\0" + session.encode()).digest()[:16]


# --- the public session: owners, neighbour graph, threshold ------------------------------------------------


def neighbour_graph(owners: Sequence[str], k: Optional[int], seed: bytes) -> Dict[str, FrozenSet[str]]:
    """Each owner's neighbours: all others if ``k`` is None or >= N - 1, else Bell et al.'s Harary graph H(k, N)
    over the owners in an order drawn from the public ``seed`` (sorted by SHA-256(seed, owner): a uniformly
    random permutation for a seed the owners did not choose). Every owner gets k neighbours (with k and N
    odd, one gets k + 1); the graph is k-connected.
    """
    ids = sorted(set(owners))
    n = len(ids)
    if n != len(owners) or n < 3:
        raise SecAggRefused(f"a session needs at least 3 distinct owners, got {list(owners)}")
    if k is None or k >= n - 1:
        return {o: frozenset(ids) - {o} for o in ids}
    if k < 2:
        raise SecAggRefused(f"a neighbour graph needs k >= 2, got {k}")
    order = sorted(ids, key=lambda o: hashlib.sha256(GRAPH_LABEL + b"\0" + seed + b"\0" + o.encode()).digest())
    edges: Dict[str, Set[str]] = {o: set() for o in ids}

    def connect(a: int, b: int) -> None:
        edges[order[a % n]].add(order[b % n])
        edges[order[b % n]].add(order[a % n])

    for i in range(n):
        for d in range(1, k // 2 + 1):
            connect(i, i + d)
    if k % 2:  # one "diameter" per owner (N even), or per owner but one (N odd)
        for i in range((n + 1) // 2):
            connect(i, i + n // 2)
    return {o: frozenset(v) for o, v in edges.items()}


def min_threshold(graph: Mapping[str, FrozenSet[str]]) -> int:
    """The least safe t: a strict majority of every owner's share holders (its neighbours and itself)."""
    return max(len(v) + 1 for v in graph.values()) // 2 + 1


@dataclass(frozen=True)
class SecAggSession:
    """The public description of a session, identical on every owner and on the model owner."""

    id: str
    owners: Tuple[str, ...]  # sorted
    neighbours: Mapping[str, FrozenSet[str]]
    threshold: int
    k: Optional[int] = None
    graph_seed: bytes = b""

    @classmethod
    def create(
        cls,
        id: str,
        owners: Sequence[str],
        k: Optional[int] = None,
        graph_seed: bytes = b"",
        threshold: Optional[int] = None,
        unsafe_any_threshold: bool = False,
    ) -> "SecAggSession":
        """The session from its public values; an owner builds it itself and so refuses an unsafe ``threshold``
        (below :func:`min_threshold`, or above some owner's number of holders: its secrets would be lost)."""
        graph = neighbour_graph(owners, k, graph_seed)
        least = min_threshold(graph)
        t = least if threshold is None else threshold
        fewest = min(len(v) + 1 for v in graph.values())
        if not (least <= t or (unsafe_any_threshold and t >= 1)) or t > fewest:
            raise SecAggRefused(
                f"threshold {t} must be in [{least}, {fewest}]: more than half of every owner's {fewest}"
                f"..{max(len(v) + 1 for v in graph.values())} share holders, and no more than it has"
            )
        return cls(id, tuple(sorted(owners)), graph, t, k, graph_seed)

    def holders(self, owner: str) -> Tuple[str, ...]:
        """Who holds a share of ``owner``'s secrets, in Shamir index order (index = position + 1)."""
        return tuple(sorted(self.neighbours[owner] | {owner}))

    def share_index(self, owner: str, holder: str) -> int:
        return self.holders(owner).index(holder) + 1

    def connected(self, members: Iterable[str]) -> bool:
        """Whether ``members`` induce a connected subgraph of the neighbour graph."""
        left = set(members)
        if not left:
            return False
        todo = [left.pop()]
        while todo:
            reached = self.neighbours[todo.pop()] & left
            left -= reached
            todo.extend(reached)
        return not left


# --- keys and masks ------------------------------------------------------------------------------------


def _hkdf(secret: bytes, label: bytes, *parts: str) -> bytes:
    info = b"\0".join([label, *(p.encode() for p in parts)])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def mask_private_key(seed: bytes, session: str, owner: str, round_: int) -> X25519PrivateKey:
    """The X25519 private key s_i of ``owner`` for one round, derived from its 16-byte shared seed."""
    return X25519PrivateKey.from_private_bytes(_hkdf(seed, MASK_KEY_LABEL, session, owner, str(round_)))


def self_mask_key(seed: bytes, session: str, owner: str, round_: int) -> bytes:
    """The AES-256 key of ``owner``'s self mask PRG(b_i) for one round, from its 16-byte shared seed b_i."""
    return _hkdf(seed, SELF_MASK_LABEL, session, owner, str(round_))


def round_pair_key(
    private_key: X25519PrivateKey, peer_public: bytes, session: str, round_: int, me: str, peer: str
) -> bytes:
    """The pair key of ``me`` and ``peer`` for one round (:func:`fl_smpc.pairwise_owner.pair_key`, bound to the
    session and the round)."""
    return pair_key(private_key, peer_public, f"{session}\0secagg round {round_}", me, peer)


def add_keystreams(
    vector: np.ndarray, streams: Sequence[Tuple[bool, bytes]], round_: int, out: Optional[np.ndarray] = None
) -> np.ndarray:
    """Add (True) or subtract (False) the AES-CTR keystream of each key to the int64 ``vector``: in place, or
    into ``out`` (same size; ``vector`` is then left as it was).

    The counter block is :func:`fl_smpc.pairwise_owner.nonce` (round, 0); every key is used for one round
    only. Chunk by chunk with one running encryptor per key (the same keystream as one long call), as
    :func:`fl_smpc.pairwise_owner.masked_encoding` does, so a chunk and its keystreams stay in the CPU cache.
    """
    if vector.dtype != RING or vector.ndim != 1:
        raise ValueError(f"a masked vector is 1-D {RING}, got {vector.dtype} of shape {vector.shape}")
    start = nonce(round_, 0)
    encryptors = [(add, Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()) for add, key in streams]
    zeros = memoryview(bytes(min(CHUNK, vector.size) * RING.itemsize))
    buffer = bytearray(len(zeros) + 15)  # update_into wants room for one block more than it writes
    target = vector if out is None else out
    if target.shape != vector.shape or target.dtype != RING:
        raise ValueError(f"out must be {RING} of shape {vector.shape}")
    for begin in range(0, vector.size, CHUNK):
        part = target[begin : begin + CHUNK]
        if out is not None:
            np.copyto(part, vector[begin : begin + CHUNK])  # while the chunk is in the cache
        stream = np.frombuffer(buffer, dtype=RING, count=part.size)
        for add, encryptor in encryptors:
            encryptor.update_into(zeros[: part.size * RING.itemsize], buffer)
            (np.add if add else np.subtract)(part, stream, out=part)
    return target


def view_digest(
    session: str, round_: int, participants: Iterable[str], survivors: Iterable[str], dropped: Iterable[str]
) -> bytes:
    """SHA-256 of a round's story in canonical JSON: what two owners compare in the consistency step.

    The story is who took part, whose vectors are in the sum and who dropped: what decides which kind of share
    an owner gives for whom. Who is asked to answer (the responders) may differ from owner to owner.
    """
    view = {
        "label": VIEW_LABEL,
        "session": session,
        "round": round_,
        "participants": sorted(participants),
        "survivors": sorted(survivors),
        "dropped": sorted(dropped),
    }
    return hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode()).digest()


def pack_share(index: int, share: bytes) -> bytes:
    return SHARE_FORMAT.pack(index, share)


def unpack_share(data: bytes) -> Tuple[int, bytes]:
    if not isinstance(data, (bytes, bytearray)) or len(data) != SHARE_FORMAT.size:
        raise UnmaskingError(f"a share is {SHARE_FORMAT.size} bytes")
    index, share = SHARE_FORMAT.unpack(bytes(data))
    return index, share


# --- the owner's state machine -----------------------------------------------------------------------------


@dataclass
class _PeerShares:
    public_key: bytes
    index: int
    self_mask: bytes  # this owner's share of the peer's b
    mask_key: bytes  # this owner's share of the peer's s


@dataclass
class _Round:
    number: int
    public_key: bytes
    own: _PeerShares  # this owner's own shares of its own secrets
    self_mask_key: Optional[bytes]  # forgotten once the vector is masked
    private_key: Optional[X25519PrivateKey]  # forgotten once the vector is masked
    peers: Dict[str, _PeerShares] = field(default_factory=dict)
    participants: Optional[FrozenSet[str]] = None  # set when the vector is masked
    story: Optional[Tuple[FrozenSet[str], FrozenSet[str]]] = None  # survivors, dropped
    view: Optional[bytes] = None
    views: Dict[str, bytes] = field(default_factory=dict)  # responder -> its view digest
    answered: bool = False
    revealed: Dict[str, str] = field(default_factory=dict)  # owner -> kind revealed this round
    poisoned: Optional[str] = None  # why this round's unmasking is refused for good


class SecAggOwner:
    """One data owner's side of one session. Methods take and return plain values and bytes; the caller
    (the owner's message handler) moves the bytes over its links and maps :class:`SecAggRefused` to a refusal.
    """

    def __init__(self, me: str, session: SecAggSession, unsafe_skip_checks: Iterable[str] = ()):
        """``unsafe_skip_checks``: names from :data:`CHECKS` to switch off -- for tests that show a check matters."""
        skip = frozenset(unsafe_skip_checks)
        if not skip <= CHECKS:
            raise ValueError(f"unknown checks {sorted(skip - CHECKS)}")
        if me not in session.neighbours:
            raise SecAggRefused(f"{me!r} is not an owner of session {session.id}")
        # rebuild the public session here: the graph from its seed, and the threshold's bounds
        self.session = SecAggSession.create(
            session.id, session.owners, session.k, session.graph_seed, session.threshold, "min_threshold" in skip
        )
        if dict(self.session.neighbours) != dict(session.neighbours):
            raise SecAggRefused("the session's neighbour graph is not the one its seed gives")
        self.me = me
        self.neighbours = self.session.neighbours[me]
        self.threshold = self.session.threshold
        self._checks = CHECKS - skip
        self._tag = session_tag(session.id)
        self._round: Optional[_Round] = None
        self._last_round = -1  # the last round begun
        self._last_masked = -1
        self._inbox: Dict[int, Dict[str, _PeerShares]] = {}  # shares for rounds this owner has not begun
        self._contributions: Set[bytes] = set()  # SHA-256 of every vector masked in the session

    def _check(self, name: str) -> bool:
        return name in self._checks

    def _refuse(self, problem: str) -> SecAggRefused:
        return SecAggRefused(f"owner {self.me!r}, session {self.session.id}: {problem}")

    # 1. shares, owner to owner ----------------------------------------------------------------------------

    def outgoing_shares(self, round_: int) -> Dict[str, bytes]:
        """Begin ``round_``: fresh b and s seeds, their shares, and one message per neighbour."""
        if self._check("round_order") and round_ <= self._last_round:
            raise self._refuse(f"round {round_} is not after round {self._last_round}")
        nonce(round_, 0)  # range check before the state changes
        holders = self.session.holders(self.me)
        b_seed, s_seed = os.urandom(SEED_BYTES), os.urandom(SEED_BYTES)
        b_shares = Shamir.split(self.threshold, len(holders), b_seed, False)
        s_shares = Shamir.split(self.threshold, len(holders), s_seed, False)
        private_key = mask_private_key(s_seed, self.session.id, self.me, round_)
        public_key = raw_public_key(private_key)
        messages, own = {}, None
        for holder, (index, b_share), (_, s_share) in zip(holders, b_shares, s_shares):
            if holder == self.me:
                own = _PeerShares(public_key, index, b_share, s_share)
            else:
                messages[holder] = SHARES_FORMAT.pack(
                    SHARES_MAGIC, self._tag, round_, public_key, index, b_share, s_share
                )
        assert own is not None
        self._round = _Round(
            round_, public_key, own, self_mask_key(b_seed, self.session.id, self.me, round_), private_key
        )
        self._round.peers.update(self._inbox.pop(round_, {}))
        self._inbox = {r: v for r, v in self._inbox.items() if r > round_}
        self._last_round = max(self._last_round, round_)
        return messages

    def receive_shares(self, peer: str, data: bytes) -> int:
        """Keep a neighbour's message (its round's public key and this owner's shares); returns its round."""
        if peer not in self.neighbours:
            raise self._refuse(f"{peer!r} is not one of its neighbours")
        if not isinstance(data, (bytes, bytearray)) or len(data) != SHARES_FORMAT.size:
            raise self._refuse(f"a shares message is {SHARES_FORMAT.size} bytes")
        magic, tag, round_, public_key, index, b_share, s_share = SHARES_FORMAT.unpack(bytes(data))
        if magic != SHARES_MAGIC or tag != self._tag:
            raise self._refuse(f"shares from {peer!r} are not for session {self.session.id}")
        if index != self.session.share_index(peer, self.me):
            raise self._refuse(f"shares from {peer!r} carry index {index}, not its index for this owner")
        shares = _PeerShares(public_key, index, b_share, s_share)
        current = self._round
        if current is not None and round_ == current.number and current.participants is None:
            box = current.peers
        elif round_ > self._last_round:
            if round_ not in self._inbox and len(self._inbox) >= MAX_PENDING_ROUNDS:
                raise self._refuse(f"shares for round {round_}: already holding {sorted(self._inbox)} ahead")
            box = self._inbox.setdefault(round_, {})
        else:
            raise self._refuse(f"shares from {peer!r} for round {round_}, which is past or already masked")
        if peer in box and box[peer] != shares:
            raise self._refuse(f"{peer!r} already sent other shares for round {round_}")
        box[peer] = shares
        return int(round_)

    # 2. the masked vector, to the model owner ------------------------------------------------------------

    def public_key(self, round_: int) -> bytes:
        """This owner's X25519 public key for ``round_`` (the model owner needs it to remove a dropped
        neighbour's pair masks); send it with the masked vector."""
        if self._round is None or self._round.number != round_:
            raise self._refuse(f"round {round_} is not its current round")
        return self._round.public_key

    def masked_vector(self, round_: int, encoded: np.ndarray, participants: Iterable[str]) -> np.ndarray:
        """``encoded + PRG(b_i) + sum (+/-) PRG(k_ij)`` over its neighbours among ``participants``, once per round.

        ``encoded`` is this owner's contribution in the int64 ring (:func:`fl_smpc.pairwise_owner.encode`);
        ``participants`` are the round's owners as the model owner announces them (they all sent shares).
        """
        state = self._round
        if state is None or state.number != round_:
            raise self._refuse(f"round {round_} has not begun (shares are sent first)")
        if self._check("round_order") and (state.participants is not None or round_ <= self._last_masked):
            raise self._refuse(f"it already masked a vector for round {round_}: one per round, rounds increase")
        members = frozenset(participants)
        if self.me not in members or not members <= set(self.session.owners):
            raise self._refuse(f"participants {sorted(members)} must be session owners and include it")
        partners = members & self.neighbours
        missing = sorted(p for p in partners if p not in state.peers)
        if missing:
            raise self._refuse(f"round {round_}: no shares from participants {missing}")
        if self._check("threshold") and len(partners) + 1 < self.threshold:
            raise self._refuse(
                f"only {len(partners) + 1} of its share holders take part in round {round_}; t = {self.threshold}"
            )
        vector = np.ascontiguousarray(encoded)
        if vector.dtype != RING or vector.ndim != 1:
            raise self._refuse(f"the contribution must be a 1-D {RING} vector")
        digest = hashlib.sha256(memoryview(vector).cast("B")).digest()
        if self._check("fresh_vector") and digest in self._contributions:
            raise self._refuse("this contribution was already masked in this session: never in two sums")
        private_key, b_key = state.private_key, state.self_mask_key
        assert private_key is not None and b_key is not None
        streams = [(True, b_key)] if self._check("self_mask") else []
        for peer in sorted(partners):
            try:
                key = round_pair_key(private_key, state.peers[peer].public_key, self.session.id, round_, self.me, peer)
            except ValueError as err:  # a low-order point: the X25519 secret would be all zeros
                raise self._refuse(f"round {round_}: {peer!r}'s public key is unusable ({err})") from None
            streams.append((peer > self.me, key))
        masked = add_keystreams(vector, streams, round_, out=np.empty_like(vector))
        state.participants = members
        if self._check("round_order"):  # (a weakened owner keeps them, to mask again)
            state.private_key = state.self_mask_key = None  # the shares are all that is left of s_i and b_i
        self._last_masked = round_
        self._contributions.add(digest)
        return masked

    # 3. consistency, owner to owner -----------------------------------------------------------------------

    def _announced(
        self,
        round_: int,
        survivors: Iterable[str],
        dropped: Iterable[str],
        responders: Optional[Iterable[str]],
    ) -> Tuple[_Round, FrozenSet[str], FrozenSet[str], FrozenSet[str]]:
        state = self._round
        if state is None or state.number != round_ or state.participants is None:
            raise self._refuse(f"it masked no vector for round {round_}")
        if state.poisoned:
            raise self._refuse(state.poisoned)
        alive, lost = frozenset(survivors), frozenset(dropped)
        asked = alive if responders is None else frozenset(responders)
        return state, alive, lost, asked

    def _check_announcement(self, state: _Round, alive: FrozenSet[str], lost: FrozenSet[str], asked: FrozenSet[str]):
        assert state.participants is not None
        problems = []
        if self._check("partition"):
            if alive & lost:
                problems.append(f"{sorted(alive & lost)} both survived and dropped")
            if alive | lost != state.participants:
                problems.append(f"survivors and dropped are not the participants {sorted(state.participants)}")
            if not asked <= alive or self.me not in asked:
                problems.append("the responders must be survivors, and include it")
        if self._check("threshold") and min(len(alive), len(asked)) < self.threshold:
            problems.append(f"{len(alive)} survivors, {len(asked)} responders: t = {self.threshold}")
        if self._check("consistency") and 2 * len(asked) <= len(self.session.owners):
            problems.append(f"{len(asked)} responders are not a majority of the session's owners")
        if self._check("connected") and not self.session.connected(alive):
            problems.append("the survivors are not connected in the neighbour graph")
        return problems

    def consistency_view(
        self,
        round_: int,
        survivors: Iterable[str],
        dropped: Iterable[str],
        responders: Optional[Iterable[str]] = None,
        request: bytes = b"",
    ) -> Dict[str, bytes]:
        """Record the model owner's announcement for ``round_`` and check it; returns this owner's view for
        every other responder (send each over this owner's own link to it).

        ``survivors``: the owners whose masked vectors are in the sum; ``dropped``: the round's other participants;
        ``responders``: the survivors asked to answer (default: all of them; leave out one lost after masking).
        Announcing again with the same survivors and dropped but other responders (one was lost during this
        step) is allowed until this owner has answered; another story is refused and ends the round here.
        ``request``: a digest of what this owner was asked to contribute, folded into its view, so owners that
        were sent different requests (parameters, settings, owner sets) never answer: their views differ.
        """
        state, alive, lost, asked = self._announced(round_, survivors, dropped, responders)
        assert state.participants is not None
        if state.story is not None and (alive, lost) != state.story:
            if self._check("once"):
                state.poisoned = f"round {round_} was announced twice, with different survivors"
                raise self._refuse(state.poisoned)
            state.story, state.view, state.views = None, None, {}  # the weakened owner starts over
        problems = self._check_announcement(state, alive, lost, asked)
        if problems:
            if state.story is None:  # a bad first story ends the round; bad responders for a good one do not
                state.poisoned = f"round {round_}: " + "; ".join(problems)
            raise self._refuse(f"round {round_}: " + "; ".join(problems))
        if state.story is None:
            state.story = (alive, lost)
            state.view = view_digest(self.session.id, round_, state.participants, alive, lost)
            if request:
                state.view = hashlib.sha256(state.view + request).digest()
        assert state.view is not None
        message = VIEW_FORMAT.pack(VIEW_MAGIC, self._tag, round_, state.view)
        return dict.fromkeys(sorted(asked - {self.me}), message)

    def receive_view(self, peer: str, data: bytes) -> None:
        """Keep a responder's view of the current round (a second, different one poisons the round)."""
        if peer not in self.session.neighbours or peer == self.me:
            raise self._refuse(f"{peer!r} is not another owner of the session")
        if not isinstance(data, (bytes, bytearray)) or len(data) != VIEW_FORMAT.size:
            raise self._refuse(f"a view is {VIEW_FORMAT.size} bytes")
        magic, tag, round_, digest = VIEW_FORMAT.unpack(bytes(data))
        state = self._round
        if magic != VIEW_MAGIC or tag != self._tag:
            raise self._refuse(f"the view from {peer!r} is not for session {self.session.id}")
        if state is None or state.number != round_ or state.participants is None:
            raise self._refuse(f"a view from {peer!r} for round {round_}, in which it masked nothing")
        if state.views.get(peer, digest) != digest and self._check("once"):
            state.poisoned = f"round {round_}: {peer!r} sent two different views"
        state.views[peer] = digest  # compared with this owner's own view when it answers

    # 4. the unmasking answer, to the model owner -----------------------------------------------------------

    def unmask_answer(
        self, round_: int, survivors: Iterable[str], dropped: Iterable[str], responders: Optional[Iterable[str]] = None
    ) -> Dict[str, Tuple[str, bytes]]:
        """Once per round, after :meth:`consistency_view` with the same survivors and dropped, when every other
        responder's view has arrived and equals this owner's (and no view from anyone differs from it):
        ``{owner: (kind, share)}`` for each participant among its neighbours and itself -- kind :data:`SELF_MASK`
        (``b_j``) for a survivor, :data:`MASK_KEY` (``s_j``) for a dropped owner; ``share`` is :func:`pack_share`
        bytes. Raises :class:`ViewsMissing` (retry later, nothing is used up) while some view has not arrived.
        """
        state, alive, lost, asked = self._announced(round_, survivors, dropped, responders)
        assert state.participants is not None
        if self._check("once") and state.answered:
            raise self._refuse(f"it already answered for round {round_}")
        if state.story is None:
            raise self._refuse(f"round {round_}: the consistency step comes first")
        if (alive, lost) != state.story:
            state.poisoned = f"round {round_}: the unmasking request tells another story than the announcement"
            raise self._refuse(state.poisoned)
        problems = self._check_announcement(state, alive, lost, asked)
        if problems:
            raise self._refuse(f"round {round_}: " + "; ".join(problems))
        if self._check("consistency"):
            others = asked - {self.me}
            differing = sorted(p for p, view in state.views.items() if view != state.view)  # from anyone
            if differing:
                state.poisoned = f"round {round_}: {differing} were told a different story"
                raise self._refuse(state.poisoned)
            missing = sorted(others - set(state.views))
            if missing:
                raise ViewsMissing(f"owner {self.me!r}, round {round_}: no view yet from {missing}")
        answer = {}
        for owner in sorted((self.neighbours | {self.me}) & state.participants):
            kind = SELF_MASK if owner in alive else MASK_KEY
            if owner not in alive and owner not in lost:
                continue  # only with the partition check off
            if self._check("one_kind") and state.revealed.get(owner, kind) != kind:
                raise self._refuse(f"round {round_}: it revealed the other kind of share of {owner!r}")
            shares = state.own if owner == self.me else state.peers[owner]
            if owner == self.me and kind == MASK_KEY:
                raise self._refuse("it is told it dropped, yet it is asked to answer")
            secret = shares.self_mask if kind == SELF_MASK else shares.mask_key
            answer[owner] = (kind, pack_share(shares.index, secret))
        for owner, (kind, _) in answer.items():
            state.revealed[owner] = kind
        state.answered = True
        if self._check("once") and self._check("round_order"):  # no second answer: the other kind is of no use
            state.peers.clear()
        return answer
