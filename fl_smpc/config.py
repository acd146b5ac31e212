"""One typed object with every knob of a run, defaulting to the seed tutorial's values."""
import math
import secrets
from dataclasses import dataclass, replace
from typing import Optional, Tuple

# syft encodes x as int64(x * 10**p): above ~12 digits float32 inputs carry no more information.
MAX_PRECISION = 12
LOSS_REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class FLConfig:
    """Settings of one federated run (seed tutorial defaults).

    workers: names of the data owners (VirtualWorker ids), at least 2, unique.
    rounds: federated rounds (send -> local training -> secure average -> update).
    local_steps: SGD steps each owner takes on its own data per round (one per batch, see batch_size).
    lr: SGD learning rate of the owners' optimisers.
    precision_fractional: decimal digits kept by ``fix_prec`` (one quantum is 10**-p).
    seed: seeds model initialisation and training; ``None`` draws one (recorded in the history).
    batch_size: rows per local SGD step; ``None`` = the owner's whole partition (the seed's full-batch steps).
        Each step takes the owner's next batch, continuing across rounds and wrapping around.
    loss_reduction: how ``loss_fn`` reduces over examples, ``"sum"`` (the seed's summed squared error)
        or ``"mean"``; the global loss follows it: the sum over all owners' examples, or their mean.
    """

    workers: Tuple[str, ...] = ("bob", "alice", "jane")
    rounds: int = 5
    local_steps: int = 5
    lr: float = 0.1
    precision_fractional: int = 3
    seed: Optional[int] = None
    batch_size: Optional[int] = None
    loss_reduction: str = "sum"

    def __post_init__(self):
        # Accept any sequence of names, store a tuple so the config stays hashable/immutable.
        object.__setattr__(self, "workers", tuple(self.workers))
        names = self.workers
        if len(names) < 2:
            raise ValueError(f"workers: secure averaging needs at least 2 workers, got {len(names)}: {list(names)}")
        if any(not isinstance(n, str) or not n.strip() or n != n.strip() for n in names):
            raise ValueError(f"workers: names must be non-empty strings without surrounding spaces, got {list(names)}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"workers: duplicate worker names {duplicates}; each data owner needs its own id")
        if "me" in names:
            raise ValueError("workers: 'me' is syft's id for the local worker (the model owner); choose another name")
        for name in ("rounds", "local_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr: must be a positive finite number, got {self.lr!r}")
        p = self.precision_fractional
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= MAX_PRECISION:
            raise ValueError(f"precision_fractional: must be an integer from 0 to {MAX_PRECISION}, got {p!r}")
        b = self.batch_size
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(f"batch_size: must be a positive integer or None (whole partition), got {b!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction: must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed: must be an integer from 0 to 2**63-1 or None, got {self.seed!r}")

    def with_seed(self) -> "FLConfig":
        """This config with a concrete seed: a fresh one is drawn when ``seed`` is None, so the run
        can still be reproduced from its recorded settings."""
        return self if self.seed is not None else replace(self, seed=secrets.randbits(31))
