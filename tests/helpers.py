"""Small helpers shared by several test modules."""

import io

import torch
from torch import nn


def remote_vectors(rows, workers):
    """One bias-free nn.Linear per worker whose weight is the given row, sent to that worker."""
    remote = []
    for row, w in zip(rows, workers):
        m = nn.Linear(len(row), 1, bias=False)
        with torch.no_grad():
            m.weight.set_(torch.tensor([row]))
        remote.append(m.send(w))
    return remote


def raw_bytes(replies):
    """Every bytes object inside raw syft replies, decoded without syft's detailers (no side effects)."""
    from syft.serde.msgpack.serde import _deserialize_msgpack_binary

    found = []

    def walk(obj):
        if isinstance(obj, (tuple, list)):
            for item in obj:
                walk(item)
        elif isinstance(obj, bytes):
            found.append(obj)

    for reply in replies:
        walk(_deserialize_msgpack_binary(reply))
    return found


def received_tensors(replies):
    """Every tensor inside the raw replies (serialized tensors are bytes objects there)."""
    found = []
    for blob in raw_bytes(replies):
        if len(blob) <= 16:
            continue
        try:
            tensor = torch.load(io.BytesIO(blob))
        except Exception:
            continue
        if isinstance(tensor, torch.Tensor):
            found.append(tensor)
    return found
