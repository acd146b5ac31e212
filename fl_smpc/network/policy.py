"""A data owner's release policy, enforced in its own worker: the client is never trusted.

syft 0.2.9 executes whatever it is sent, so a worker that only refuses ``data.get()`` still hands
out ``(data + 0)``, copies, views, moves and shares of its data. This policy sits in front of syft's
message routing (:meth:`OwnerPolicy.receive`) and

* lets through only the messages and commands the training protocol sends (an allow-list);
* keeps the owner's data and labels read-only and in place: they may be an *argument* of a
  command, never its target, never written, copied out, moved or deleted;
* tracks which objects depend on private values ("taint": the set of owners whose data went into
  each object) and lets a tainted value leave only as a scalar within a per-round budget (losses,
  the encodability checks), or as this owner's share of a sum over at least ``min_owners`` owners;
* isolates connections: each sees only its own objects, the owner's data (read-only) and, for the
  model owner, the shares its peers sent.

docs/policy.md gives the rules, the recorded protocol traffic and what a model owner can still learn.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import syft as sy
import torch
from syft.exceptions import GetNotPermittedError
from syft.generic.pointers.pointer_tensor import PointerTensor

from . import DATA_TAG, TARGET_TAG
from .wire import Contents, WireError, read_message

MODEL_OWNER = "model"  # the requester id of the model owner (an unauthenticated connection counts as one)

PROTECTED, PLAIN, SHARE, POINTERS = "protected", "plain", "share", "pointers"

# The pairwise protocol's worker commands (fl_smpc.pairwise_owner), checked by OwnerPolicy._check_pairwise.
PAIRWISE_COMMANDS = frozenset({"pairwise_public_key", "pairwise_agree_keys", "pairwise_masked_vector"})
# The commands of a training round (recorded, see docs/policy.md). Everything else is refused.
READS = frozenset(
    {
        "__add__",
        "__sub__",
        "__mul__",
        "__pow__",
        "__lt__",
        "__bool__",
        "abs",
        "all",
        "sum",
        "long",
        "type",
        "view",
        "backward",
        "share",
        "double",
        "round",
    }
)
WRITES = frozenset({"add_", "zero_", "detach_"})  # in place on the caller's own tensors only
FUNCTIONS = frozenset({"torch.nn.functional.linear", "torch.cat"})
POINTER_ATTRS = frozenset({None, "data", "grad", "grad.data"})  # what optimizers reach through a pointer
# share()'s options as the protocol sends them (dtype None means syft's default, the int64 ring, too)
SHARE_OPTIONS = {
    "protocol": ("snn",),
    "field": (None,),
    "dtype": (None, "long"),
    "crypto_provider": (None,),
    "requires_grad": (False,),
}


@dataclass(frozen=True)
class PolicySettings:
    """What an owner releases. ``max_release`` (elements of one released sum) defaults to the
    parameter count of a linear model over the owner's features; ``worker_commands`` allow-lists
    syft WorkerCommandMessages (which call any worker method by name), none by default."""

    min_owners: int = 3
    scalars_per_round: int = 4
    max_release: Optional[int] = None
    worker_commands: FrozenSet[str] = frozenset()


DEFAULT_SETTINGS = PolicySettings()


class Refusal(Exception):
    """A request the policy does not allow; the reason is sent to the requester."""


@dataclass
class Record:
    """What the policy knows about one stored object."""

    owners: FrozenSet[str]  # owners whose private values this object depends on (empty: public)
    kind: str  # PROTECTED (the data), PLAIN, SHARE (additive shares and sums of them), POINTERS
    creator: str  # requester id that made it
    session: int  # the connection that made it (0: the owner itself)
    parts: FrozenSet = frozenset()  # SHARE: the elementary shares summed in it


@dataclass
class Session:
    """One connection: its requester and its round (a round ends with the release of a sum)."""

    serial: int
    requester: str
    scalars: int = 0  # tainted scalars handed out in the current round


def refusal_error(worker_id: str, reason: str) -> GetNotPermittedError:
    """syft's GetNotPermittedError carrying the reason: syft sends it back as a normal reply (the
    connection stays open) and the client raises it with this text."""
    error = GetNotPermittedError(f"worker {worker_id!r} refused: {reason}")
    error.get_attributes = lambda: {"args": error.args}
    return error


class OwnerPolicy:
    """The policy of one data owner's worker; ``log(line)`` receives one line per refusal."""

    def __init__(
        self,
        worker,
        peers: Sequence[str],
        settings: PolicySettings = DEFAULT_SETTINGS,
        log: Optional[Callable[[str], None]] = None,
    ):
        self.worker, self.settings = worker, settings
        self.peers = frozenset(peers)
        self.log = log or (lambda line: None)
        self.records: Dict[object, Record] = {}
        self.protected: Dict[object, torch.Tensor] = {}
        self.sessions: Dict[Tuple[int, str], Session] = {}
        self.spent: Set[object] = set()  # shares already part of a released sum
        self.max_release = settings.max_release
        self.traffic: Counter = Counter()  # allowed (requester kind, message, command)
        self.refused = 0
        self._depth = 0
        self._share_session: Optional[Session] = None
        self._share_owners: FrozenSet[str] = frozenset()

    # --- setup ---

    def protect(self, *tensors: torch.Tensor) -> None:
        """Register the owner's data and labels (already stored in the worker) as read-only and private."""
        for tensor in tensors:
            tensor_id = tensor.id  # type: ignore[attr-defined]  # syft's hook adds Tensor.id
            self.protected[tensor_id] = tensor
            self.records[tensor_id] = Record(frozenset({self.worker.id}), PROTECTED, self.worker.id, 0)
        if self.max_release is None and tensors and tensors[0].dim() == 2:
            self.max_release = tensors[0].shape[1] + 1

    # --- entry point ---

    def receive(self, message: bytes, requester: Optional[str], connection: int) -> bytes:
        """Check, execute and account one message; a refusal becomes a GetNotPermittedError reply.

        A message arriving while another is handled comes from this worker itself (syft sends the
        owner's own share to itself while running ``share``).
        """
        nested = self._depth > 0
        who = self.worker.id if nested else (requester or MODEL_OWNER)
        session = self._share_session if nested else self._session(connection, who)
        what = "message"
        self._depth += 1
        try:
            contents = self._read(message)
            what = contents.kind
            response, command = self._handle(message, contents, who, session, nested)
            role = "self" if nested else "peer" if who in self.peers else "model"
            self.traffic[(role, contents.kind, command)] += 1
        except Refusal as refusal:
            self.refused += 1
            caller = "itself" if nested else f"{who} (connection {connection})"
            self.log(f"refused {what} from {caller}: {refusal}")
            raise refusal_error(self.worker.id, str(refusal)) from None
        finally:
            self._depth -= 1
        return sy.serde.serialize(response, worker=self.worker)

    def close(self, connection: int) -> None:
        """Forget a closed connection's round state (its objects stay until deleted)."""
        for key in [k for k in self.sessions if k[0] == connection]:
            del self.sessions[key]

    # --- dispatch ---

    def _read(self, message: bytes) -> Contents:
        try:
            return read_message(message, self.worker.id)
        except WireError as err:
            raise Refusal(str(err)) from None

    def _handle(self, message, contents, who, session, nested):
        if not nested and who != MODEL_OWNER and who not in self.peers:
            raise Refusal(f"unknown requester {who!r}")
        if nested and contents.kind != "ObjectMessage":
            raise Refusal(f"{contents.kind} from the worker itself")
        if who in self.peers and contents.kind not in (
            "ObjectMessage",
            "ForceObjectDeleteMessage",
            "WorkerCommandMessage",
        ):
            raise Refusal(
                f"a peer owner only sends shares, asks for a pairwise public key and deletes its own "
                f"objects, not {contents.kind}"
            )
        refs = [(obj_id, attr, self._visible(session, obj_id)) for obj_id, attr in self._pointers(contents)]
        try:
            msg = sy.serde.deserialize(message, worker=self.worker)
        except WireError as err:  # a tensor that is not a plain tensor (see wire.load_tensor)
            raise Refusal(str(err)) from None
        handler = getattr(self, "_" + contents.kind)
        return handler(msg, session, contents, refs)

    def _pointers(self, contents: Contents):
        for obj_id, attr in contents.pointers:
            if attr not in POINTER_ATTRS:
                raise Refusal(f"pointer attribute {attr!r} is not part of the protocol")
            yield obj_id, attr

    def _route(self, msg):
        for handler in self.worker.message_handlers:
            if handler.supports(msg):
                return handler.handle(msg)
        raise Refusal(f"no handler for {type(msg).__name__}")

    # --- message types ---

    def _SearchMessage(self, msg, session, contents, refs):
        terms = [msg.query] if isinstance(msg.query, str) else list(msg.query)
        if len(terms) != 1 or terms[0] not in (DATA_TAG, TARGET_TAG):
            raise Refusal(f"search answers only {DATA_TAG} or {TARGET_TAG}, not {terms}")
        # syft's hook adds Tensor.tags and Tensor.create_pointer
        found = [t for t in self.protected.values() if terms[0] in (t.tags or ())]  # type: ignore[attr-defined]
        pointers = [
            t.create_pointer(garbage_collect_data=False, owner=sy.local_worker, tags=t.tags).wrap()  # type: ignore[attr-defined]
            for t in found
        ]
        return pointers, terms[0]

    def _IsNoneMessage(self, msg, session, contents, refs):
        self._visible(session, msg.object_id)
        return self._route(msg), None

    def _GetShapeMessage(self, msg, session, contents, refs):
        self._visible(session, msg.tensor_id)  # shapes never depend on values: no allowed command makes them
        return self._route(msg), None

    def _WorkerCommandMessage(self, msg, session, contents, refs):
        name = msg.command_name
        if name in PAIRWISE_COMMANDS:
            self._check_pairwise(name, msg.message[0], session)
        elif name not in self.settings.worker_commands or session.requester in self.peers:
            raise Refusal(
                f"worker command {name!r} is not allowed (none is, unless the owner allows it with --allow-command)"
            )
        return self._route(msg), name

    def _check_pairwise(self, name: str, args, session: Session) -> None:
        """The pairwise protocol's commands: a peer asks only for a public key; the model owner agrees keys
        and asks for a masked vector of a tensor of its own connection, among at least ``min_owners``
        owners of this federation. The masked vector is this owner's release of the round."""
        federation = self.peers | {self.worker.id}
        if (session.requester in self.peers) != (name == "pairwise_public_key"):
            raise Refusal(f"{name!r} is not for {'a peer' if session.requester in self.peers else 'the model owner'}")
        owners = args[4] if name == "pairwise_masked_vector" else args[1]
        if not isinstance(owners, (list, tuple)) or not set(owners) <= federation:
            raise Refusal(f"pairwise owners {owners!r} are not all owners of this federation")
        if name != "pairwise_masked_vector":
            return
        if len(set(owners)) < self.settings.min_owners:
            raise Refusal(
                f"a masked vector among {len(set(owners))} owner(s): a sum must cover at least "
                f"{self.settings.min_owners} owners (--min-owners)"
            )
        rec = self._visible(session, args[0])
        if rec.kind != PLAIN:
            raise Refusal("only a plain tensor of this connection is masked")
        obj = self.worker.object_store._objects[args[0]]
        if self.max_release is not None and obj.numel() > self.max_release:
            raise Refusal(f"a released sum has at most {self.max_release} elements, not {obj.numel()}")
        session.scalars = 0  # the masked vector is this owner's release: it ends the round

    def _ForceObjectDeleteMessage(self, msg, session, contents, refs):
        store = self.worker.object_store._objects
        present = [i for i in msg.object_ids if i in store]
        for obj_id in present:
            rec = self.records.get(obj_id)
            if rec is None or rec.kind == PROTECTED or not self._deletable(session, rec):
                raise Refusal(f"object {obj_id} is not this connection's to delete")
        response = self._route(msg)
        self._prune()
        return response, None

    def _ObjectMessage(self, msg, session, contents, refs):
        obj = msg.object
        if not isinstance(obj, torch.Tensor):
            raise Refusal("only tensors may be sent to a data owner")
        obj_id = obj.id  # type: ignore[attr-defined]  # syft's hook adds Tensor.id
        if obj_id in self.worker.object_store._objects or obj_id in self.records:
            raise Refusal(f"object id {obj_id} is already in use")
        if self._depth > 1:  # the owner's own share, sent to itself by ``share``
            if session is None:
                raise Refusal("the worker sends objects to itself only while sharing")
            rec = Record(self._share_owners, SHARE, self.worker.id, session.serial, frozenset({obj_id}))
        elif session.requester in self.peers:
            who = session.requester
            if type(obj) is not torch.Tensor or obj.dtype != torch.int64 or obj.requires_grad:
                raise Refusal("a peer owner only sends shares (int64 tensors)")
            rec = Record(frozenset({who}), SHARE, who, session.serial, frozenset({obj_id}))
        else:
            rec = Record(frozenset(), PLAIN, session.requester, session.serial)
        response = self._route(msg)
        self.records[obj_id] = rec
        return response, None

    def _ObjectRequestMessage(self, msg, session, contents, refs):
        rec = self._visible(session, msg.object_id)
        obj = self.worker.object_store._objects[msg.object_id]
        self._check_release(session, rec, obj)
        response = self._route(msg)
        self.records.pop(msg.object_id, None)
        return response, None

    def _TensorCommandMessage(self, msg, session, contents, refs):
        action = msg.action
        name = action.name
        self._check_command(action, contents, refs, session)
        owners = frozenset().union(*(rec.owners for _, _, rec in refs))
        if name == "__bool__" and owners:
            self._charge_scalar(session, "a boolean")
        if name == "share":
            self._share_session, self._share_owners = session, owners
        try:
            response = self._route(msg)
        finally:
            self._share_session, self._share_owners = None, frozenset()
        if response is not None and name != "__bool__":
            raise Refusal(f"{name} returned a value")
        self._account_command(action, contents, refs, session, owners)
        return response, name

    # --- rules ---

    def _session(self, connection: int, who: str) -> Session:
        key = (connection, who)
        if key not in self.sessions:
            self.sessions[key] = Session(connection, who)
        return self.sessions[key]

    def _visible(self, session: Optional[Session], obj_id) -> Record:
        """The record of an object this connection may use; refused (without saying whether it exists) if not."""
        rec = self.records.get(obj_id)
        if session is not None and rec is not None and obj_id in self.worker.object_store._objects:
            if rec.kind == PROTECTED or rec.session == session.serial:
                return rec
            if rec.kind == SHARE and rec.creator in self.peers and session.requester not in self.peers:
                return rec
        raise Refusal(f"no object {obj_id} for this connection")

    def _deletable(self, session: Session, rec: Record) -> bool:
        if session.requester in self.peers:
            return rec.creator == session.requester
        return rec.session == session.serial or (rec.kind == SHARE and rec.creator in self.peers)

    def _check_command(self, action, contents: Contents, refs, session: Session) -> None:
        name = action.name
        if session.requester in self.peers or session.requester == self.worker.id:
            raise Refusal("only the model owner runs commands")
        if name not in READS | WRITES | FUNCTIONS:
            raise Refusal(f"command {name!r} is not part of the training protocol")
        if (name in FUNCTIONS) != (contents.target is None):
            raise Refusal(f"{name!r} called on the wrong kind of target")
        if action.return_value:
            raise Refusal("commands do not return values (fetch results with get)")
        store = self.worker.object_store._objects
        if any(i in store or i in self.records for i in action.return_ids):
            raise Refusal("result ids already in use")
        kinds = {rec.kind for _, _, rec in refs}
        if POINTERS in kinds:
            raise Refusal("pointer-holding objects cannot be computed on")
        target_rec = refs[0][2] if contents.target is not None else None
        if target_rec is not None and target_rec.kind == PROTECTED:
            raise Refusal(f"{name!r} on the owner's data or labels: they may only be read as an argument")
        if SHARE in kinds:
            self._check_share_sum(action, refs)
        if action.target is None and contents.target is not None:
            raise Refusal(f"{name!r} on a missing tensor")
        tensors = [action.target] if contents.target is not None else []
        tensors += [a for a in _flatten(action.args) if isinstance(a, torch.Tensor)]
        if any(getattr(t, "is_wrapper", False) or not isinstance(t, torch.Tensor) for t in tensors):
            raise Refusal("commands run on plain tensors only")
        if name == "share":
            assert target_rec is not None  # share is a method: its target was checked above
            self._check_share(action, target_rec)
        elif action.kwargs:
            raise Refusal(f"keyword arguments to {name!r} are not part of the protocol")
        if name == "type" and not (len(action.args) == 1 and isinstance(action.args[0], torch.dtype)):
            raise Refusal("type() takes one dtype")
        if name == "backward" and action.args:
            raise Refusal("backward() takes no arguments")
        if name in WRITES:
            assert target_rec is not None  # writes are methods: their target was checked above
            if target_rec.session != session.serial:
                raise Refusal(f"{name!r} on an object this connection did not create")
            if self._aliases_protected(action.target):
                raise Refusal(f"{name!r} would write into the owner's data or labels")
        if any(isinstance(a, str) for a in _flatten(action.args)) and name != "share":
            raise Refusal(f"string arguments to {name!r} are not part of the protocol")

    def _check_share_sum(self, action, refs) -> None:
        """Shares only ever get added to shares: anything else could isolate one owner's share."""
        if not (
            action.name == "__add__"
            and len(refs) == 2
            and len(action.args) == 1
            and all(rec.kind == SHARE for _, _, rec in refs)
        ):
            raise Refusal("shares may only be added to other shares")
        if refs[0][2].parts & refs[1][2].parts:
            raise Refusal("a share cannot be added to a sum it is already part of")

    def _check_share(self, action, target_rec: Record) -> None:
        owners = list(action.args)
        if any(k not in SHARE_OPTIONS or v not in SHARE_OPTIONS[k] for k, v in action.kwargs.items()):
            raise Refusal(f"share() takes only the protocol's options {SHARE_OPTIONS}, not {action.kwargs}")
        if len(set(owners)) != len(owners) or not set(owners) <= self.peers | {self.worker.id}:
            raise Refusal(
                f"shares go only to distinct owners of this federation ({sorted(self.peers)} and "
                f"{self.worker.id!r}), not {owners}"
            )
        if target_rec.owners and len(owners) < self.settings.min_owners:
            raise Refusal(
                f"a private value is shared among at least {self.settings.min_owners} owners "
                f"(--min-owners), not {len(owners)}"
            )
        if action.target.dtype != torch.int64:
            raise Refusal("only fixed-precision (int64) values are shared")

    def _check_release(self, session: Session, rec: Record, obj) -> None:
        """May this object leave? (ObjectRequestMessage: syft's ``get``.)"""
        if rec.kind == PROTECTED:
            raise Refusal("the owner's data and labels never leave the worker")
        if rec.kind == POINTERS:
            shares = getattr(getattr(obj, "child", None), "child", None)
            if not (isinstance(shares, dict) and all(isinstance(p, PointerTensor) for p in shares.values())):
                raise Refusal("not a tensor of pointers to shares")
            return
        if not rec.owners:
            return  # public: the model owner's own values, or computed only from them
        if rec.kind == SHARE:
            self._release_sum(session, rec, obj)
        elif obj.numel() == 1:
            self._charge_scalar(session, "a scalar")
        else:
            raise Refusal(
                f"a value computed from the private data of {sorted(rec.owners)} leaves only as a "
                f"scalar ({self.settings.scalars_per_round} per round) or as this owner's share of a "
                f"sum over at least {self.settings.min_owners} owners"
            )

    def _release_sum(self, session: Session, rec: Record, obj) -> None:
        if len(rec.owners) < self.settings.min_owners:
            raise Refusal(
                f"this owner's share of a sum over {len(rec.owners)} owner(s) {sorted(rec.owners)}: "
                f"a sum must cover at least {self.settings.min_owners} owners (--min-owners)"
            )
        if rec.parts & self.spent:
            raise Refusal("a share already released as part of a sum is not released again")
        if self.max_release is not None and obj.numel() > self.max_release:
            raise Refusal(f"a released sum has at most {self.max_release} elements, not {obj.numel()}")
        self.spent |= rec.parts
        session.scalars = 0  # the release ends the round

    def _charge_scalar(self, session: Session, what: str) -> None:
        if session.scalars >= self.settings.scalars_per_round:
            raise Refusal(
                f"{what} computed from private data: this round's {self.settings.scalars_per_round} "
                "scalars are used up (a round ends when this owner releases its share of a sum)"
            )
        session.scalars += 1

    def _aliases_protected(self, tensor) -> bool:
        return _storage(tensor) in {_storage(p) for p in self.protected.values()}

    def _account_command(self, action, contents, refs, session: Session, owners: FrozenSet[str]) -> None:
        """Taint what the command produced or changed."""
        name = action.name
        store = self.worker.object_store._objects
        if name in WRITES and owners:  # the written memory, under whatever id or view, now holds private values
            refs[0][2].owners |= owners
            written = _storage(action.target)
            for rec_id, rec in self._own_records(session):
                if _storage(store.get(rec_id)) == written:
                    rec.owners |= owners
        if name == "backward" and owners:  # gradients went into the caller's tensors (and any view of them)
            for _, rec in self._own_records(session):
                rec.owners |= owners
        for result_id in action.return_ids:
            obj = store.get(result_id)
            if obj is None:
                continue
            if _storage(obj) is not None and self._aliases_protected(obj):
                self._undo_alias(result_id)
                raise Refusal(f"{name!r} returned the owner's data itself")
            if name == "share":
                self.records[result_id] = Record(owners, POINTERS, session.requester, session.serial)
            elif refs and all(rec.kind == SHARE for _, _, rec in refs):
                parts = frozenset().union(*(rec.parts for _, _, rec in refs))
                self.records[result_id] = Record(owners, SHARE, session.requester, session.serial, parts)
            else:
                self.records[result_id] = Record(owners, PLAIN, session.requester, session.serial)

    def _own_records(self, session: Session):
        return [(i, rec) for i, rec in self.records.items() if rec.session == session.serial and rec.kind != PROTECTED]

    def _prune(self) -> None:
        """Drop records of objects syft removed by itself (e.g. ``type`` re-registering a tensor)."""
        store = self.worker.object_store._objects
        for obj_id in [i for i in self.records if i not in store]:
            del self.records[obj_id]

    def _undo_alias(self, result_id) -> None:
        store = self.worker.object_store._objects
        store.pop(result_id, None)
        for obj_id, tensor in self.protected.items():
            tensor.id = obj_id  # type: ignore[attr-defined]  # syft's hook adds Tensor.id
            store[obj_id] = tensor


def _storage(obj) -> Optional[int]:
    """The address of a plain tensor's memory (views and aliases share it); None for anything else."""
    if not isinstance(obj, torch.Tensor) or getattr(obj, "is_wrapper", False):
        return None
    return obj.storage().data_ptr() or None  # type: ignore[attr-defined]  # not in torch 1.4's Storage stub


def _flatten(args) -> List:
    out = []
    for a in args:
        out.extend(_flatten(a) if isinstance(a, (list, tuple)) else [a])
    return out
