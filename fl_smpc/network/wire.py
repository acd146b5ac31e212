"""What a syft 0.2.9 message holds, read before syft turns it into objects.

syft's deserializer acts while it reads: a pointer addressed to this worker becomes the object it
points to (after following its ``point_to_attr``, an arbitrary attribute chain), a tensor is rebuilt
with ``torch.load`` (pickle, so any client could run code on the worker), and other types look up
classes by name or create workers. A data owner therefore first walks the raw msgpack structure,
accepts only the types the training protocol uses, and loads tensors with an unpickler that knows
only tensor storages (:func:`install_safe_tensor_loading`).
"""

import io
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

# Types the protocol's messages contain (found by recording a run); anything else is refused unread.
MESSAGE_TYPES = (
    "TensorCommandMessage",
    "ObjectMessage",
    "ObjectRequestMessage",
    "IsNoneMessage",
    "GetShapeMessage",
    "ForceObjectDeleteMessage",
    "SearchMessage",
    "WorkerCommandMessage",
)

# The only globals a pickled CPU tensor refers to.
_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
SAFE_GLOBALS = frozenset(
    {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}
    | {("torch", f"{name}Storage") for name in _STORAGES}
)


class WireError(ValueError):
    """The message holds something the protocol never sends."""


@dataclass
class Contents:
    """What :func:`read_message` found: the message type and every pointer into this worker."""

    kind: str
    pointers: List[Tuple[object, Optional[str]]] = field(default_factory=list)  # (id, point_to_attr)
    target: Optional[Tuple[object, Optional[str]]] = None  # a command's target pointer (None: a function)
    tensors: int = 0  # tensors sent by value


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"{module!r}.{name!r} is not part of a tensor")
        return super().find_class(module, name)


class _RestrictedPickle:
    """The ``pickle_module`` interface ``torch.load`` uses, restricted to tensor storages."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def load_tensor(data: bytes):
    """``torch.load`` of one plain tensor, refusing any other pickled global (no code runs)."""
    import torch

    try:
        tensor = torch.load(io.BytesIO(data), pickle_module=_RestrictedPickle)
    except Exception as err:  # torch and pickle raise many types for malformed input
        raise WireError(f"not a plain tensor: {err}") from None
    if type(tensor) is not torch.Tensor:
        raise WireError(f"not a plain tensor: {type(tensor).__name__}")
    return tensor


def install_safe_tensor_loading() -> None:
    """Make syft rebuild received tensors with :func:`load_tensor` (process-wide; idempotent).

    syft looks the deserializer up by name on each call, so replacing the module attribute suffices.
    Every tensor the protocol sends is a plain tensor, so nothing legitimate changes.
    """
    from syft.serde.msgpack import torch_serde

    torch_serde.torch_tensor_deserializer = lambda worker, data: load_tensor(data)


@lru_cache(maxsize=None)
def _codes() -> Dict[str, int]:
    """syft's msgpack type code of each class name it can (de)serialize."""
    from syft.serde.msgpack.serde import msgpack_global_state

    return {cls.__name__: entry[0] for cls, entry in msgpack_global_state.simplifiers.items()}


def _text(node) -> str:
    """A simplified ``str`` (``(code, (bytes,))``) or a raw one, as text."""
    if isinstance(node, str):
        return node
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    if isinstance(node, tuple) and len(node) == 2 and node[0] == _codes()["str"]:
        return node[1][0].decode("utf-8", "replace")
    raise WireError("expected a string")


# The handler (a _Reader method) of each type the protocol sends, by class name.
_HANDLERS = {
    "dict": "_dict",
    "list": "_items",
    "tuple": "_items",
    "set": "_items",
    "str": "_text",
    "dtype": "_dtype",
    "Size": "_ints",
    "Tensor": "_tensor",
    "Parameter": "_parameter",
    "PointerTensor": "_pointer",
    "ComputationAction": "_action",
    **dict.fromkeys(MESSAGE_TYPES, "_items"),
    "ForceObjectDeleteMessage": "value",
}  # its payload is the simplified list of ids itself


@lru_cache(maxsize=None)
def _handler_names() -> Dict[int, str]:
    codes = _codes()
    return {codes[name]: handler for name, handler in _HANDLERS.items() if name in codes}


@lru_cache(maxsize=None)
def _type_names() -> Dict[int, str]:
    return {code: name for name, code in _codes().items()}


class _Reader:
    def __init__(self, worker_id):
        self.worker_id = str(worker_id)
        self.out = Contents("")

    def value(self, node):
        if node is None or isinstance(node, (bool, int, float)):
            return
        if not (isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], int)):
            raise WireError(f"unexpected {type(node).__name__} in the message")
        code, payload = node
        handler = _handler_names().get(code)
        if handler is None:
            raise WireError(f"{_type_names().get(code, code)} is not part of the protocol")
        if not isinstance(payload, (tuple, str)):
            raise WireError(f"malformed {_type_names()[code]}")
        getattr(self, handler)(payload)

    def _text(self, payload):
        if not (len(payload) == 1 and isinstance(payload[0], bytes)):
            raise WireError("malformed string")

    def _dtype(self, payload):
        if not isinstance(payload, str):
            raise WireError("malformed dtype")

    def _items(self, payload):
        for item in payload:
            self.value(item)

    def _dict(self, payload):
        for pair in payload:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise WireError("malformed dict")
            self.value(pair[0])
            self.value(pair[1])

    def _ints(self, payload):
        if not all(isinstance(n, int) for n in payload):
            raise WireError("malformed Size")

    def _tensor(self, payload):
        if len(payload) != 9:
            raise WireError("malformed tensor")
        tensor_id, data, chain, grad, tags, description, serializer, origin, id_at_origin = payload
        if not isinstance(data, bytes) or _text(serializer) != "torch":
            raise WireError("tensors must be sent in torch's format")
        if chain is not None or origin is not None or id_at_origin is not None:
            raise WireError("tensors must be sent as plain values (no wrapped or remote-autograd tensors)")
        for node in (tensor_id, tags, description):
            self.value(node)
        if grad is not None:
            self._tensor(grad)
        self.out.tensors += 1

    def _parameter(self, payload):
        if len(payload) != 4 or not isinstance(payload[1], tuple) or payload[1][:1] != (_codes()["Tensor"],):
            raise WireError("malformed parameter")
        self.value(payload[0])
        self.value(payload[1])
        if payload[3] is not None:
            self._tensor(payload[3])

    def _action(self, payload):
        if len(payload) != 6:
            raise WireError("malformed command")
        name, target, *rest = payload
        self.value(name)
        if target is not None:
            if not (isinstance(target, tuple) and len(target) == 2 and target[0] == _codes()["PointerTensor"]):
                raise WireError("a command's target must be a pointer to a tensor")
            self.value(target)
            self.out.target = self.out.pointers[-1]
        for node in rest:
            self.value(node)

    def _pointer(self, payload):
        if len(payload) != 8:
            raise WireError("malformed pointer")
        pointer_id, id_at_location, location, attr, shape, _collect, tags, description = payload
        if _text(location) != self.worker_id:
            raise WireError(f"a pointer to worker {_text(location)!r}: this worker acts only on its own objects")
        for node in (pointer_id, shape, tags):
            self.value(node)
        if description is not None:
            _text(description)
        target = _text(id_at_location) if isinstance(id_at_location, tuple) else id_at_location
        self.out.pointers.append((target, None if attr is None else _text(attr)))


def read_message(message: bytes, worker_id) -> Contents:
    """Walk a serialized syft message without building any object; raise WireError if it holds
    a type the protocol does not use, a wrapped tensor, or a pointer to another worker."""
    from syft.serde.msgpack.serde import _deserialize_msgpack_binary

    try:
        raw = _deserialize_msgpack_binary(message)
    except Exception as err:  # msgpack / decompression errors
        raise WireError(f"unreadable message: {type(err).__name__}") from None
    reader, names = _Reader(worker_id), _type_names()
    kind = names.get(raw[0], "unknown") if isinstance(raw, tuple) and raw and isinstance(raw[0], int) else "unknown"
    if kind not in MESSAGE_TYPES or len(raw) != 2:
        raise WireError(f"{kind} messages are not part of the protocol")
    reader.out.kind = kind
    try:
        reader.value(raw)
    except RecursionError:
        raise WireError("message nested too deeply") from None
    return reader.out
