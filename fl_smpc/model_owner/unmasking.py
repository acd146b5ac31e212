"""SecAgg's unmasking on the model owner: from the survivors' masked vectors and at least t owners' answers,
the exact int64 sum of the survivors' encoded vectors (the owners' side: :mod:`fl_smpc.data_owner.secagg`).

For each survivor j (its vector is in the sum) the model owner combines t shares of ``b_j`` (pycryptodome's
Shamir) and subtracts j's self mask; for each dropped owner j it combines t shares of ``s_j``, derives j's
round key pair, and removes the pair masks j's surviving neighbours added for it. The masks between two
survivors cancel in the sum. It never learns ``b_j`` of a dropped owner nor ``s_j`` of a survivor: the owners
refuse to give both kinds of share of one owner in a round, so a masked vector that is in the sum keeps its
self mask unless j really is a survivor, and the sum keeps a dropped owner's pair masks unless j is absent.
"""

from typing import Iterable, List, Mapping, Tuple

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir

from ..data_owner.secagg import (
    MASK_KEY,
    SELF_MASK,
    SecAggSession,
    UnmaskingError,
    add_keystreams,
    mask_private_key,
    round_pair_key,
    self_mask_key,
    unpack_share,
)
from ..pairwise_owner import RING

Answer = Mapping[str, Tuple[str, bytes]]  # one owner's unmask answer: owner -> (kind, packed share)


def _shares(session: SecAggSession, owner: str, kind: str, answers: Mapping[str, Answer]) -> List[Tuple[int, bytes]]:
    """t shares of ``kind`` of ``owner``'s secret, each checked to come from a holder at its own index."""
    found = []
    for answerer in sorted(answers):
        given = answers[answerer].get(owner)
        if given is None:
            continue
        got_kind, packed = given
        if got_kind != kind:
            raise UnmaskingError(f"{answerer!r} gave a {got_kind!r} share of {owner!r}, a {kind!r} one was needed")
        index, share = unpack_share(packed)
        if answerer not in session.holders(owner) or index != session.share_index(owner, answerer):
            raise UnmaskingError(f"{answerer!r} gave a share of {owner!r} at index {index}, not its own")
        found.append((index, share))
    if len(found) < session.threshold:
        raise UnmaskingError(
            f"{len(found)} {kind!r} shares of {owner!r}, {session.threshold} needed: the round cannot be unmasked"
        )
    return found[: session.threshold]


def unmask_sum(
    session: SecAggSession,
    round_: int,
    participants: Iterable[str],
    masked: Mapping[str, np.ndarray],
    public_keys: Mapping[str, bytes],
    answers: Mapping[str, Answer],
) -> np.ndarray:
    """The exact sum (int64, wrapping modulo 2**64) of the encoded vectors of the survivors -- the owners of
    ``masked`` -- among the round's ``participants``; the others dropped.

    ``public_keys``: each survivor's public key for the round (sent with its masked vector); ``answers``: the
    responders' :meth:`~fl_smpc.data_owner.secagg.SecAggOwner.unmask_answer`, at least t holders of each
    survivor's and each dropped owner's secrets. Raises :class:`UnmaskingError` if they do not suffice.
    """
    members = set(participants)
    survivors = sorted(masked)
    dropped = sorted(members - set(survivors))
    if not set(survivors) <= members or not survivors:
        raise UnmaskingError(f"the survivors {survivors} must be participants {sorted(members)}")
    sizes = {np.asarray(v).size for v in masked.values()}
    if len(sizes) != 1:
        raise UnmaskingError(f"the masked vectors differ in size: {sorted(sizes)}")
    total = np.zeros(sizes.pop(), dtype=RING)
    for owner in survivors:
        vector = np.asarray(masked[owner])
        if vector.dtype != RING or vector.ndim != 1:
            raise UnmaskingError(f"{owner!r}'s masked vector must be 1-D {RING}")
        np.add(total, vector, out=total)  # wraps modulo 2**64
    streams: List[Tuple[bool, bytes]] = []  # everything to subtract: (True) or add back: (False)
    for owner in survivors:
        seed = Shamir.combine(_shares(session, owner, SELF_MASK, answers), False)
        streams.append((False, self_mask_key(seed, session.id, owner, round_)))
    for owner in dropped:
        private_key = mask_private_key(
            Shamir.combine(_shares(session, owner, MASK_KEY, answers), False), session.id, owner, round_
        )
        for peer in sorted(session.neighbours[owner] & set(survivors)):
            if peer not in public_keys:
                raise UnmaskingError(f"no round-{round_} public key of survivor {peer!r}")
            key = round_pair_key(private_key, public_keys[peer], session.id, round_, owner, peer)
            # peer added this keystream if owner sorts after it, subtracted it otherwise: undo that
            streams.append((not owner > peer, key))
    return add_keystreams(total, streams, round_)
