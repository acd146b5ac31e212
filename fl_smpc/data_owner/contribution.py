"""What leaves a data owner: its contribution to a secure sum, and nothing else.

A contribution is one float64 vector whose layout both sides know from public settings:

* ``train``: ``[w * parameters (P values), w, n, w * local loss]``
* ``evaluate``: ``[n, loss part, n * metric ...]``

where ``n`` is the owner's number of examples, ``w`` its FedAvg weight (``n``, or 1 with equal weighting)
a loss part is the loss itself for a summed loss, ``n`` times it for a mean, and a metric is a mean over
the owner's rows. Summed over the owners and divided by the summed weights (or counts) this gives the
federation's weighted averages; the model owner never sees one owner's values.

Every value is clipped to the encodable bound of the round -- a number the model owner can compute from
the public settings -- so a contribution is always encodable: an owner never answers "too large", an answer
that would depend on its data. A NaN (diverged training) is sent as 0.

Two ways to hide the vector, both on the owner: the tutorial's ``fix_prec().share()`` (:func:`additive_shares`,
one share per owner of the round) or pairwise masks (:func:`fl_smpc.pairwise_owner.masked_encoding`).
"""

import threading
from typing import Dict, Sequence

import numpy as np
import torch

from ..secure_aggregation import encodable_limit, rounded_for_encoding

TRAIN_EXTRA = 3  # w, n, w * local loss
EVALUATE_EXTRA = 2  # n, loss part
_sharing = threading.Lock()  # syft's hook and worker registry are not thread-safe


def train_length(parameters: int) -> int:
    return parameters + TRAIN_EXTRA


def evaluate_length(metrics: int) -> int:
    return EVALUATE_EXTRA + metrics


def clipped(values: np.ndarray, n_owners: int, precision: int) -> np.ndarray:
    """``values`` as float64 with NaN -> 0 and every value within the round's encodable bound."""
    limit = encodable_limit(n_owners, precision)
    return np.clip(
        np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=limit, neginf=-limit), -limit, limit
    )


def loss_part(loss: float, rows: int, reduction: str) -> float:
    return loss if reduction == "sum" else rows * loss


def additive_shares(vector: np.ndarray, owners: Sequence[str], precision: int) -> Dict[str, np.ndarray]:
    """The tutorial's ``fix_prec().share(...)`` on this owner's own vector: one int64 share per owner.

    syft's ``share`` places each share on a worker; here the workers are in-process stand-ins, one per
    owner of the round, from which the shares are taken to be sent over the owner's own links. The values
    are rounded to nearest first (syft's ``fix_prec`` truncates). Masks come from AES-CTR
    (:mod:`fl_smpc.share_masks`, installed by ``create_hook``).
    """
    from ..workers import create_hook, virtual_workers

    values = rounded_for_encoding(torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64)), precision)
    with _sharing, virtual_workers([f"share-for-{owner}" for owner in owners], create_hook()) as stand_ins:
        shared = values.fix_prec(precision_fractional=precision).share(*stand_ins)
        pointers = shared.child.child.child  # FixedPrecisionTensor -> AdditiveSharingTensor -> {id: pointer}
        return {owner: pointers[w.id].get().numpy().astype("<i8") for owner, w in zip(owners, stand_ins)}


def decode_sum(total: np.ndarray, precision: int) -> np.ndarray:
    """The float64 values of an int64 sum of encodings (one quantum is 10**-precision)."""
    return total.astype(np.float64) / 10.0**precision
