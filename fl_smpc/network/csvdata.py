"""A data owner's own rows as a CSV file, read once by its worker process at start-up.

Format (documented in the README): a header row, then one row per example; every column but the
last is a numeric feature, the last is the label, 0 or 1. Every row has the header's column count.

    x0,x1,x2,label
    1,1,1,1
    0,1,1,1

A bad file must stop the worker *before* it serves, so every error names the file and the line.
"""

import contextlib
import csv
import errno
import math
import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..config import FLOAT32_MAX, check_names
from ..data import check_dataset, split_dataset, toy_dataset
from ..errors import DataError
from ..history_io import new_file_mode


class DataFileError(DataError):
    """The data file is missing or malformed; the message names the file and the line."""


def read_csv(path: str, binary_labels: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(data, target)`` float tensors of shapes (rows, features) and (rows, 1).

    ``binary_labels`` (the classification tasks): the last column must be 0 or 1; otherwise any
    finite number (a regression target).
    """
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: data file not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataFileError(f"{path}: cannot read: {err}") from None
    if not rows:
        raise DataFileError(f"{path}: empty file; expected a header row (features..., label) and data rows")
    (_, header), body = rows[0], rows[1:]
    if all(_is_number(cell) for cell in header):
        raise DataFileError(f"{path}: line 1 looks like data, not a header: add a header row (e.g. x0,x1,...,label)")
    width = len(header)
    if width < 2:
        raise DataFileError(f"{path}: line 1: the header needs at least one feature column and a label column")
    if not body:
        raise DataFileError(f"{path}: no data rows after the header")
    values = []
    for n, row in body:
        if len(row) != width:
            raise DataFileError(f"{path}: line {n}: expected {width} columns like the header, got {len(row)}")
        bad = next((i for i, v in enumerate(row) if not _is_number(v)), None)
        if bad is not None:  # the cell, not the row: a row may be long
            raise DataFileError(f"{path}: line {n}, column {bad + 1}: non-numeric value {row[bad]!r:.40}")
        numbers = [float(v) for v in row]
        bad = next((i for i, v in enumerate(numbers) if not (math.isfinite(v) and abs(v) <= FLOAT32_MAX)), None)
        if bad is not None:
            raise DataFileError(
                f"{path}: line {n}, column {bad + 1}: NaN, infinite or beyond-float32 value {row[bad]!r:.40}"
            )
        if binary_labels and numbers[-1] not in (0.0, 1.0):
            raise DataFileError(f"{path}: line {n}: label (last column) must be 0 or 1, got {row[-1]!r}")
        values.append(numbers)
    table = torch.tensor(values)
    return table[:, :-1].contiguous(), table[:, -1:].contiguous()


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def write_csv(path: str, data: torch.Tensor, target: torch.Tensor, binary_labels: bool = True) -> None:
    """Write rows in :func:`read_csv`'s format (``repr`` floats, so values round-trip exactly)."""
    check_dataset(data, target, binary_labels)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow([f"x{i}" for i in range(data.shape[1])] + ["label"])
        for x, y in zip(data.tolist(), target.tolist()):
            out.writerow([_number(v) for v in x + y])


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def split_to_csv(
    out_dir: str, names: Sequence[str], data: Optional[torch.Tensor] = None, target: Optional[torch.Tensor] = None
) -> Dict[str, str]:
    """Split a dataset (default: the seed's toy data) like the in-process run; one ``NAME.csv`` per owner.

    Returns ``{name: path}``. Uses :func:`fl_smpc.data.split_dataset`, so owner i gets the same
    rows as worker i of the in-process run and the two runs are comparable. All or nothing: every
    check comes first, the files are written as temporary files and renamed into place only when all
    are whole; on any error they, and the directories made for them, are removed.
    """
    names = check_names(names)  # ids become file names: no path separators, no '..', no duplicates
    if data is None and target is None:
        data, target = toy_dataset()
    # every check before the first file is written; a missing data or target is refused with one line
    parts = split_dataset(data, target, len(names))  # type: ignore[arg-type]
    made = _missing_dirs(out_dir)
    paths = {name: os.path.join(out_dir, f"{name}.csv") for name in names}
    temporary: Dict[str, str] = {}
    try:
        for path in paths.values():
            if os.path.isdir(path):  # os.replace would fail half-way through
                raise IsADirectoryError(errno.EISDIR, f"{os.path.basename(path)} is a directory", path)
        os.makedirs(out_dir, exist_ok=True)
        for name, (x, y) in zip(names, parts):
            fd, temporary[name] = tempfile.mkstemp(prefix=f".fl-smpc-{name}-", suffix=".csv.tmp", dir=out_dir)
            os.close(fd)
            write_csv(temporary[name], x, y)
        for name, tmp in list(temporary.items()):
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, paths[name])
            del temporary[name]
    except BaseException:
        for tmp in temporary.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for directory in made:  # deepest first; only if empty
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    return paths


def _missing_dirs(path: str) -> list:
    """The directories ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing
