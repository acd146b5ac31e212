"""Step 4: secure averaging of the owners' trained models with additive secret sharing.

Two deliberate differences from the seed tutorial:

* **Shares are made on the worker.** The seed calls ``bob_model.get()`` and shares the weights
  afterwards, so the model owner has already seen Bob's model in plaintext. Here each owner
  flattens, encodes (``fix_prec``) and splits (``share``) its own parameters; ``.get()`` on that
  pointer brings back an AdditiveSharingTensor whose children are *pointers to shares* held by
  the owners -- never values.
* **No division on shares.** syft 0.2.9 divides an AdditiveSharingTensor by dividing every share
  separately (``_public_div``, whose comment says it "works in most cases when the tensor is shared
  between 2 workers"); with 3 owners about a quarter of the
  results are off by ~2**64/3/10**3 ~ 6e15. We sum the shares (exact in the int64 ring),
  reveal only the sum (what secure aggregation is meant to reveal), decode it, then divide.

Each owner flattens its parameters into one vector before sharing, so a round costs one ``share``
per owner instead of one per parameter tensor.

Around the tutorial's unchanged ``ptr.fix_prec().share(...)``:

* **Masks from a cryptographic generator.** ``create_hook`` installs :mod:`fl_smpc.share_masks`, so
  syft's ``share`` masks come from AES-CTR under a fresh OS-random key per sharing instead of torch's
  Mersenne Twister; torch's generator (and so ``--seed``) plays no part in them.
* **Round to nearest.** ``fix_prec`` truncates toward zero, which would bias every average toward
  zero; each owner first turns its values into ones that ``fix_prec`` encodes as the nearest integer
  (:func:`rounded_for_encoding`, computed on the owner).
"""

import math
from contextlib import contextmanager
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .errors import AggregationError, ConfigError, OwnerFailed

# syft's fixed-precision field is the int64 ring: encoded values must satisfy |x * 10**p| < 2**63.
FIELD_HALF = 2**63


@contextmanager
def uncompressed_messages():
    """Turn off syft's LZ4 message compression inside the block, restoring the previous scheme.

    Shares are uniformly random int64s: LZ4 cannot shrink them, yet compressing and decompressing
    every share message was ~25-30 % of a secure sum. ``syft.serde.compression.default_compress_scheme``
    is syft's own switch; receivers read the scheme from each message's header byte, so peers that
    still compress (e.g. remote socket workers) interoperate unchanged.
    """
    from syft.serde import compression

    previous = compression.default_compress_scheme
    compression.default_compress_scheme = compression.NO_COMPRESSION
    try:
        yield
    finally:
        compression.default_compress_scheme = previous


def encodable_limit(n_workers: int, precision_fractional: int) -> float:
    """Largest |x| each owner may hold so that the sum of n encoded values still fits in int64."""
    return FIELD_HALF / (n_workers * 10**precision_fractional) * (1 - 1e-6)  # margin for float32 rounding


def check_encodable(flat_ptr, worker: str, n_workers: int, precision_fractional: int) -> None:
    """Check on the worker that its parameters are finite and encodable; only booleans come back."""
    limit = encodable_limit(n_workers, precision_fractional)
    magnitude = flat_ptr.abs()
    if bool((magnitude < limit).all().get()):  # False for NaN and Inf too: one round trip when all is well
        return
    finite = bool((magnitude < float("inf")).all().get())  # False for NaN and Inf alike
    raise unencodable(worker, finite, n_workers, precision_fractional)


def unencodable(worker: str, finite: bool, n_workers: int, precision_fractional: int) -> AggregationError:
    """The refusal of an owner whose values cannot be encoded, for both protocols: what is wrong, and the usual fix.

    Values that grow past the int64 field are almost always a diverging local training, like NaN/Inf.
    """
    if not finite:
        return AggregationError(
            f"worker {worker!r} holds non-finite parameters (NaN or Inf): its local training diverged; "
            "lower the learning rate",
            worker,
        )
    return AggregationError(
        f"worker {worker!r} holds parameters of magnitude >= {encodable_limit(n_workers, precision_fractional):.3g}: "
        f"with {n_workers} workers and precision {precision_fractional} their sum would overflow syft's int64 "
        "fixed-precision field (|sum * 10**precision| must be < 2**63): its local training diverged; lower the "
        "learning rate (or the precision, if such large parameters are meant)",
        worker,
    )


def flatten_on_worker(remote_model):
    """``torch.cat`` of the remote parameters, executed on the worker; returns a pointer to one vector."""
    return torch.cat([p.view(-1) for p in remote_model.parameters()])


def rounded_for_encoding(ptr, precision_fractional: int):
    """Values (float64, computed where ``ptr`` points) that ``fix_prec`` encodes as round(x * 10**p).

    syft's ``fix_prec`` multiplies by 10**p in the tensor's dtype and truncates toward zero (``.long()``),
    so it would encode 0.0019 as 1 quantum and -0.0019 as -1: every average drifts toward zero. Here
    z = round(x * 10**p) (ties to even) is taken in float64, where x * 10**p is exact for float32
    parameters (p <= 12). Returning z / 10**p would not do: fix_prec's product can land just below z and
    truncate to z - 1. Multiplying by (1 + 2**-50) / 10**p instead puts the product above |z| by more
    than the three roundings on the way (each within 2**-53) and below |z| + 1 while |z| < 2**53 / 11,
    so the truncation lands on z exactly. Four remote operations, one message each.
    """
    nearest = (ptr.double() * 10**precision_fractional).round()
    return nearest * ((1 + 2**-50) / 10**precision_fractional)


def secure_sum(tensor_ptrs: Sequence, workers: Sequence, precision_fractional: int = 3) -> torch.Tensor:
    """Sum one remote tensor per owner; the model owner only handles shares and the revealed sum.

    ``ptr.fix_prec().share(...)`` runs on the pointer's worker, after :func:`rounded_for_encoding` (both
    make new tensors, the pointed-to one is left as it was); ``.get()`` returns to us the
    AdditiveSharingTensor of pointers to the shares. Adding those adds share-wise on each owner.
    Each owner's shares are added to the running total as soon as they exist, so at most two sets
    of shares are alive at a time (peak RSS for 10 owners x 10**6 parameters: ~0.8 GB instead of ~1.8 GB).
    Owners are named by id: each resolves the ids to its own connections to its peers (worker
    objects such as ``WebsocketClientWorker`` cannot be serialized into the command).
    """
    owners = [getattr(w, "id", w) for w in workers]
    with uncompressed_messages():
        total: Any = None  # an AdditiveSharingTensor once the first owner's shares exist
        for ptr, owner in zip(tensor_ptrs, owners):
            try:
                ptr = rounded_for_encoding(ptr, precision_fractional)
                shared = ptr.fix_prec(precision_fractional=precision_fractional).share(*owners).get()
                total = shared if total is None else total + shared
            except Exception as err:  # before the reveal: the shares made so far are dropped with ``total``
                raise OwnerFailed(getattr(err, "worker", None) or owner, "sharing", err) from err
        return total.get().float_prec()  # the reveal: all or nothing


def scaled_flat_parameters(
    remote_models: Sequence,
    workers: Sequence,
    weights: Optional[Sequence[float]] = None,
    check_precision: Optional[int] = None,
) -> Tuple[List, List[float]]:
    """Each owner's parameters flattened and scaled by its weight, on the owner; both protocols start here.

    Returns the pointers and the weights used: equal weights become 1 each (no scaling, so equal
    owners give exactly the plain mean). With ``check_precision`` each owner also checks that its
    scaled values are finite and encodable (:func:`check_encodable`; raises AggregationError). An owner
    that fails otherwise (unreachable, timed out, an error on it) raises OwnerFailed naming it.
    """
    if len(remote_models) != len(workers):
        raise ConfigError(f"{len(remote_models)} models for {len(workers)} workers")
    weights = [1.0] * len(workers) if weights is None else [float(w) for w in weights]
    if len(weights) != len(workers) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"weights must be one positive finite number per worker, got {weights}")
    if len(set(weights)) == 1:
        weights = [1.0] * len(workers)
    flat = []
    for model, worker, weight in zip(remote_models, workers, weights):
        try:
            ptr = flatten_on_worker(model)
            ptr = ptr if weight == 1.0 else ptr * weight
            if check_precision is not None:
                check_encodable(ptr, worker.id, len(workers), check_precision)
        except AggregationError:
            raise
        except Exception as err:
            raise OwnerFailed(getattr(err, "worker", None) or worker.id, "check", err) from err
        flat.append(ptr)
    return flat, weights


def secure_average(
    remote_models: Sequence, workers: Sequence, precision_fractional: int = 3, weights: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """Weighted FedAvg of the owners' remote models as one flat vector (``parameters_to_vector`` order).

    Each owner scales its own parameters by its weight (FedAvg: its number of examples) before
    encoding, so only the weighted sum is revealed; dividing it by the sum of the weights gives the
    average. ``weights`` defaults to 1 each (a plain mean). The weights themselves are known to the
    model owner (FedAvg needs them; an owner's example count is what it reveals).
    Raises AggregationError naming the worker if its scaled parameters are NaN/Inf or too large to
    encode, and OwnerFailed if an owner fails before the reveal; nothing has been revealed then and the
    caller's global model is untouched.
    """
    flat, weights = scaled_flat_parameters(remote_models, workers, weights, check_precision=precision_fractional)
    return secure_sum(flat, workers, precision_fractional) / sum(weights)


def secure_average_per_tensor(remote_models: Sequence, workers: Sequence, precision_fractional: int = 3) -> List:
    """The seed's layout: one ``share`` per parameter tensor per owner. Same result, more messages.

    Kept for the benchmark that compares it with the flattened :func:`secure_average`.
    """
    per_model = [list(m.parameters()) for m in remote_models]
    for params, worker in zip(per_model, workers):
        for p in params:
            check_encodable(p, worker.id, len(workers), precision_fractional)
    return [
        secure_sum([params[i] for params in per_model], workers, precision_fractional) / len(workers)
        for i in range(len(per_model[0]))
    ]
