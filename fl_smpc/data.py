"""Step 2: the data (the seed's toy spam data by default), split across the data owners and sent to them.

Sending is "only for demonstration" (the seed's words): in a real deployment each owner already
holds its rows. Here the model owner builds the dataset and keeps only pointers to the parts.
"""

from typing import List, Sequence, Tuple

import torch

from .errors import DataError


def toy_dataset() -> Tuple[torch.Tensor, torch.Tensor]:
    """The seed's 6 messages x 3 binary features and their spam labels (1 = spam)."""
    data = torch.tensor([[1.0, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]])
    target = torch.tensor([[1.0], [1], [0], [0], [1], [0]])
    return data, target


def check_dataset(data: torch.Tensor, target: torch.Tensor, binary_labels: bool = True) -> None:
    """Raise DataError (a ValueError) naming the problem unless ``data``/``target`` are usable training rows.

    ``binary_labels`` (the toy and SMS classification tasks): data is (rows, features) and target
    holds 0/1 labels of shape (rows, 1). Otherwise (any other task, e.g. regression): data has
    rows along its first dimension and target is (rows,) or (rows, k, ...) of any finite values.
    """
    if not isinstance(data, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise DataError(f"data and target must be torch tensors, got {type(data).__name__} and {type(target).__name__}")
    shape = tuple(data.shape)
    if binary_labels and (data.dim() != 2 or 0 in shape):
        raise DataError(f"data: expected a non-empty 2-D tensor (rows, features), got shape {shape}")
    if data.dim() < 2 or 0 in shape:
        raise DataError(f"data: expected a non-empty tensor (rows, features, ...), got shape {shape}")
    rows = shape[0]
    if binary_labels and tuple(target.shape) != (rows, 1):
        raise DataError(f"target: expected shape ({rows}, 1) to match {rows} data rows, got {tuple(target.shape)}")
    if target.dim() == 0 or target.shape[0] != rows or 0 in target.shape:
        raise DataError(
            f"target: expected {rows} rows, shape ({rows},) or ({rows}, k), to match the data, "
            f"got shape {tuple(target.shape)}"
        )
    if not torch.isfinite(data).all():
        raise DataError("data: contains NaN or Inf")
    if not torch.isfinite(target).all():
        raise DataError("target: contains NaN or Inf")
    if binary_labels:
        labels = target.flatten().tolist()
        bad = [i for i, y in enumerate(labels) if y not in (0.0, 1.0)]
        if bad:
            raise DataError(f"target: labels must be 0 or 1; rows {bad[:10]} have {[labels[i] for i in bad[:10]]}")


def near_even_sizes(total: int, n_parts: int) -> List[int]:
    """numpy.array_split's part sizes: as even as possible, the first parts one larger."""
    base, extra = divmod(total, n_parts)
    return [base + (i < extra) for i in range(n_parts)]


def split_dataset(
    data: torch.Tensor, target: torch.Tensor, n_parts: int, binary_labels: bool = True
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous, near-even split into ``n_parts`` (earlier parts get the extra rows).

    For the toy data and 3 owners this is the seed's split: rows 0-1 bob, 2-3 alice, 4-5 jane.
    ``binary_labels`` is passed to :func:`check_dataset` (False for regression targets).
    """
    check_dataset(data, target, binary_labels)
    rows = data.shape[0]
    if n_parts > rows:
        raise DataError(f"cannot split {rows} data rows across {n_parts} workers: every worker needs at least one row")
    sizes = near_even_sizes(rows, n_parts)
    starts = [sum(sizes[:i]) for i in range(n_parts)]
    return [(data[s : s + n], target[s : s + n]) for s, n in zip(starts, sizes)]


def send_partitions(parts: Sequence[Tuple[torch.Tensor, torch.Tensor]], workers: Sequence) -> List[Tuple]:
    """Send part i to worker i; return the model owner's (data_ptr, target_ptr) pairs."""
    if len(parts) != len(workers):
        raise DataError(f"{len(parts)} data parts for {len(workers)} workers")
    return [(x.send(w), y.send(w)) for (x, y), w in zip(parts, workers)]  # type: ignore[attr-defined]  # syft hook
