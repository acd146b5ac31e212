"""A data owner: checks each request against its own bounds, trains with its own code, releases one contribution.

:class:`DataOwner` is transport-free: ``handle(requester, message, connection)`` takes a decoded
:class:`~fl_smpc.network.wire.Message` and returns the reply. The network worker (:mod:`.server`) and the
in-process link (:mod:`fl_smpc.model_owner.links`) both call it, so one code path serves both transports.

What the model owner may ask (requester ``"model"``): ``hello`` (start a run), ``train`` and ``evaluate``
(one contribution each per round number), ``sum`` (additive: this owner's share of the round's sum, once).
What a peer owner may ask: ``share`` (it hands over this owner's share of its vector) and ``public_key``
(pairwise). Everything else is refused and logged. A reply never carries text computed from the data:
refusals name the request's fault; a failure inside training is logged here and answered generically.

The rules that make a round's sum the only thing the model owner can learn:

* each round number is used once per kind (``train``, ``evaluate``), increasing: one contribution per
  round, always freshly computed from the parameters of that request;
* a contribution is made only towards a sum over the round's owners (at least this owner's ``min_owners``),
  and for the additive protocol every share of it is accepted only from an owner that names the same
  owner set, so each owner's vector is in exactly one released sum, over the full set, or in none;
* this owner's share of a sum is released once, only when it holds a share from every owner of the set;
* a contribution combines only with contributions to the very same request: the round's digest (session,
  kind, round, owner set, settings and the exact params) goes with every additive share and is checked by
  the owner receiving it; pairwise, it goes with every owner's mask shares (an owner masks only if each
  partner among the participants was sent the same request) and into its consistency view. So a model owner
  that sends one owner crafted params or settings and the others a request whose answer it can predict
  (params 0, lr 1e-12) gets no sum at all, instead of the first owner's update (one of its rows, exact).
"""

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple

import numpy as np
import torch

from ..config import DEFAULT_BOUNDS, WEIGHTINGS, OwnerBounds
from ..data import check_dataset
from ..errors import ConfigError, DataError
from ..network.wire import Message, WireError, field_float, field_int, field_names, field_str
from ..pairwise_owner import encode
from . import contribution
from .local_training import evaluate_rows, load_parameters, train_steps
from .secagg import SecAggOwner, SecAggRefused, SecAggSession, ViewsMissing
from .task import Task, fingerprint, parameter_count

MODEL = "model"  # the requester id of the model owner (its TLS party, whatever its certificate name)
KINDS = ("train", "evaluate")
MAX_ROUND = 2**31 - 1


class Refusal(Exception):
    """A request this owner does not serve; the text (about the request, never the data) goes back."""


class Link(Protocol):
    """Something that carries a request to another party and brings back its reply (a peer owner, here)."""

    def request(self, message: Message) -> Message: ...

    def close(self) -> None: ...


@dataclass
class PendingRound:
    """One additive round this owner joined: the set, its own share, its peers' shares, released or not."""

    owners: Tuple[str, ...]
    digest: str  # of the request this owner answered: a peer's share must be of the same request
    own_share: Optional[np.ndarray] = None
    received: Dict[str, np.ndarray] = field(default_factory=dict)
    trained: str = ""  # digest of this owner's trained parameters in it (recorded once its sum share is released)


@dataclass
class Run:
    """One model owner's run (a session) on this owner."""

    id: str
    connection: object  # the connection that started it; None once that connection closed
    last_round: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pending: Dict[Tuple[str, int], PendingRound] = field(default_factory=dict)
    early: Dict[Tuple[str, int], Dict[str, Tuple[str, np.ndarray]]] = field(default_factory=dict)  # (digest, share)
    secagg: Dict[str, SecAggOwner] = field(default_factory=dict)  # pairwise: double masking, one per kind
    # (kind, round, owners, encoded vector, digest of its trained parameters): awaiting the mask request
    prepared: Optional[Tuple[str, int, Tuple[str, ...], np.ndarray, str]] = None
    requests: Dict[str, Tuple[int, str]] = field(default_factory=dict)  # kind -> (round, digest of its request)
    # pairwise: (kind, round) -> {neighbour: the digest of the request it was sent}, from its mask shares
    peer_requests: Dict[Tuple[str, int], Dict[str, str]] = field(default_factory=dict)


class DataOwner:
    """One owner's data, task and bounds, and the state of the run it serves; see the module docstring."""

    def __init__(
        self,
        owner_id: str,
        data: torch.Tensor,
        target: torch.Tensor,
        task: Task,
        bounds: OwnerBounds = DEFAULT_BOUNDS,
        peers: Optional[Mapping[str, Link]] = None,
        log: Optional[Callable[[str], None]] = None,
        ledger: Optional[str] = None,
    ):
        try:
            check_dataset(data, target, binary_labels=task.binary_labels)
        except ValueError as err:
            raise DataError(f"owner {owner_id!r}: {err}") from None
        self.id, self.data, self.target, self.task, self.bounds = owner_id, data, target, task, bounds
        self.model = task.build_model(data.shape[1])
        self.fingerprint = fingerprint(task.name, self.model)
        self.parameters = parameter_count(self.model)
        self.peers: Dict[str, Link] = dict(peers or {})
        self.log = log or logging.getLogger(f"fl_smpc.owner.{owner_id}").info
        self.contributions = 0  # over this owner's lifetime (bounded by bounds.max_rounds)
        self.released: Dict[str, frozenset] = {}  # digest of trained parameters given -> the sum's owner set
        self.budget: Optional[Any] = None  # its privacy budget (OwnerBudget), counted with its own settings
        self.budget_precision: Optional[int] = None
        self.ledger: Optional[Any] = None  # with DP and a path: its spent rounds on disk, across restarts
        if ledger is not None and bounds.dp is not None:
            from .ledger import PrivacyLedger

            self.ledger = PrivacyLedger(ledger)
            spent = self.ledger.load(bounds.dp, self.parameters + 1)
            if spent is not None:
                self.budget_precision, rounds = spent
                self.budget = self.ledger.budget(bounds.dp, self.budget_precision, self.parameters + 1, rounds)
        self.refused = 0
        self.run: Optional[Run] = None
        self._state = threading.Condition()
        self._training = threading.Lock()  # one training at a time: the owner's model object is shared

    # --- dispatch -------------------------------------------------------------------------------------

    def handle(self, requester: str, message: Message, connection: object = None) -> Message:
        """The reply to one request. Never raises: a refusal or a failure is a ``refused`` message."""
        handlers = MODEL_REQUESTS if requester == MODEL else PEER_REQUESTS if requester in self.peers else {}
        try:
            handler = handlers.get(message.kind)
            if handler is None:
                raise Refusal(f"{message.kind!r} is not a request this owner serves for {requester!r}")
            return handler(self, requester, message, connection)
        except (Refusal, WireError) as err:
            self.refused += 1
            self.log(f"refused {message.kind} from {requester}: {err}")
            return Message("refused", {"reason": str(err)})
        except Exception as err:  # the task's code or ours failed on this owner's data: the detail stays here
            self.refused += 1
            self.log(f"{message.kind} from {requester} failed: {type(err).__name__}: {err}")
            return Message("refused", {"reason": f"{message.kind} failed on owner {self.id!r} (see its log)"})

    def connection_closed(self, connection: object) -> None:
        """The transport's notice that a connection closed: a run it started may now be replaced."""
        with self._state:
            if self.run is not None and self.run.connection is connection:
                self.run.connection = None

    # --- model owner's requests -----------------------------------------------------------------------

    def _hello(self, requester, message: Message, connection) -> Message:
        session = field_str(message.fields, "session", 64)
        with self._state:
            run = self.run
            if run is not None and run.id != session and run.connection not in (None, connection):
                raise Refusal("another connection's run is in progress; it ends when that connection closes")
            if run is None or run.id != session:
                self.run = Run(session, connection, secagg=self._secagg_of(session, message.fields))
                self.log(f"run {session} started")
            elif run.connection is None:
                run.connection = connection
        return Message(
            "welcome",
            {
                "owner": self.id,
                "task": self.task.name,
                "fingerprint": self.fingerprint,
                "parameters": self.parameters,
                "features": int(self.data.shape[1]),
                "metrics": list(self.task.metric_names),
                "min_owners": self.least_owners,
            },
        )

    def _secagg_of(self, session: str, fields) -> Dict[str, SecAggOwner]:
        """This owner's side of the run's double masking, from the public session the model owner announces
        (the run's owners, the neighbour graph's degree and seed); an unsafe threshold or graph is refused.

        One masking session per kind of contribution. A repeated contribution is this owner's rule, not the
        masking's: the same trained parameters may go to sums over the same owners (a converged model), never
        to sums over different owner sets (:meth:`_never_in_two_sums`).
        """
        owners = field_names(fields, "owners", self.bounds.max_owners)
        strangers = [o for o in owners if o != self.id and o not in self.peers]
        if self.id not in owners or strangers:
            raise Refusal(f"the run's owners must include this owner and only its peers, not {strangers}")
        if len(owners) < 3:  # a masked "sum" of two owners tells each the other's vector: additive only
            return {}
        k = fields.get("neighbours")
        if k is not None:
            k = field_int(fields, "neighbours", 2, self.bounds.max_owners)
        seed = field_str(fields, "graph_seed", 64)
        try:
            return {
                kind: SecAggOwner(
                    self.id,
                    SecAggSession.create(f"{session}-{kind}", owners, k, bytes.fromhex(seed)),
                    ("fresh_vector",),
                )
                for kind in KINDS
            }
        except (SecAggRefused, ValueError) as err:
            raise Refusal(f"the run's masking session is refused: {err}") from None

    def _contribute(self, requester, message: Message, connection) -> Message:
        kind = message.kind
        fields = message.fields
        run = self._run_of(fields, connection)
        round_ = field_int(fields, "round", 1, MAX_ROUND)
        owners = self._owners_of(fields)
        if field_str(fields, "task") != self.task.name or field_str(fields, "fingerprint", 64) != self.fingerprint:
            raise Refusal(f"this owner trains task {self.task.name!r} with architecture {self.fingerprint}")
        settings = self._settings(fields.get("settings"), kind)
        params = message.arrays.get("params")
        if params is None or params.dtype != np.float32 or params.shape != (self.parameters,):
            raise Refusal(f"params must be {self.parameters} float32 values")
        if not np.isfinite(params).all():
            raise Refusal("params must be finite")
        if set(message.arrays) != {"params"}:
            raise Refusal("a contribution request carries the params array only")
        with self._state:  # reserve the round number before any work: a second request for it is refused
            if round_ <= run.last_round[kind]:
                raise Refusal(f"{kind} round {round_} is not after round {run.last_round[kind]}: one contribution each")
            if self.contributions >= self.bounds.max_rounds:
                raise Refusal(f"this owner's limit of {self.bounds.max_rounds} contributions is reached")
            if kind == "train" and self.bounds.dp is not None:
                self._budget_for(settings["precision"])
            if kind == "train" and self.budget is not None and not self.budget.can_take_round():
                raise Refusal(
                    f"privacy budget spent: one more round would take epsilon to "
                    f"{self.budget.epsilon_after(self.budget.rounds + 1):.4g} > {self.budget.epsilon:g}"
                )
            run.last_round[kind] = round_
            self.contributions += 1
            digest = request_digest(run.id, kind, round_, owners, fields["settings"], params)
            if settings["aggregation"] == "additive":  # peers' shares may arrive while this owner trains
                self._join(run, kind, round_, owners, digest)
            else:  # double masking: the round's seeds, Shamir-shared with the neighbours
                if not run.secagg:
                    raise Refusal("pairwise masking (SecAgg) needs a run of at least 3 owners; use additive")
                run.requests[kind] = (round_, digest)
                for key in [key for key in run.peer_requests if key[0] == kind and key[1] < round_]:
                    del run.peer_requests[key]
                try:
                    mask_shares = run.secagg[kind].outgoing_shares(round_)
                except SecAggRefused as err:
                    raise Refusal(str(err)) from None
        if settings["aggregation"] == "additive":
            unreached = []
        else:
            unreached = self._send(run, kind, round_, owners, mask_shares, digest)
        vector = self._vector(kind, settings, torch.from_numpy(params))
        vector = contribution.clipped(vector, len(owners), settings["precision"])
        encoded = encode(vector, settings["precision"])
        trained = self._never_in_two_sums(encoded, owners) if kind == "train" else ""
        epsilon: Dict[str, float] = {}
        if kind == "train" and self.budget is not None:  # public: it depends on the settings and the count only
            with self._state:
                if self.ledger is not None:  # on disk before the release leaves: a restart cannot forget it,
                    # and another worker on the same data (the same ledger) counts into the same budget
                    from .privacy import BudgetExhausted

                    assert self.bounds.dp is not None and self.budget_precision is not None
                    try:
                        self.ledger.take(self.bounds.dp, self.budget_precision, self.parameters + 1, self.budget)
                    except BudgetExhausted as err:
                        raise Refusal(str(err)) from None
                    except (OSError, DataError):
                        raise Refusal("this owner cannot record its privacy budget: the round is declined") from None
                epsilon = {"epsilon": self.budget.take_round()}
        if settings["aggregation"] == "pairwise":
            with self._state:
                run.prepared = (kind, round_, owners, encoded, trained)
            reply = Message("ready", {"unreached": unreached, **epsilon})
        else:
            reply = self._share(run, kind, round_, owners, vector, settings["precision"], digest, trained)
            reply.fields.update(epsilon)
        self.log(
            f"released {kind} round {round_}: {reply.kind} of {vector.size} values, towards a sum over "
            f"{', '.join(owners)}"
        )
        return reply

    def _vector(self, kind: str, settings: dict, params: torch.Tensor) -> np.ndarray:
        """This owner's contribution vector (float64): trained on its own rows, or evaluated on them."""
        rows = self.data.shape[0]
        with self._training:
            model = load_parameters(self.model, params)
            if kind == "evaluate":
                loss, metrics = evaluate_rows(model, self.data, self.target, self.task)
                extra = [float(rows), contribution.loss_part(loss, rows, self.task.reduction)]
                return np.array(extra + [rows * metrics[m] for m in self.task.metric_names], dtype=np.float64)
            if settings.get("dp") is not None:  # DP-FedSGD: the noised sum of clipped per-example gradients
                from .privacy import noised_contribution

                grid = noised_contribution(
                    model, self.task.loss_fn, self.data, self.target, settings["dp"], settings["precision"],
                    self.task.reduction,
                )  # fmt: skip
                return grid.astype(np.float64) / 10.0 ** settings["precision"]  # exact: the encoder gives it back
            first_step = (settings["fl_round"] - 1) * settings["local_steps"]
            trained, local_loss = train_steps(
                model, self.data, self.target, self.task, settings["lr"], settings["local_steps"],
                settings["batch_size"], first_step,
            )  # fmt: skip
            weight = float(rows) if settings["weighting"] == "samples" else 1.0
            tail = np.array([weight, float(rows), weight * local_loss], dtype=np.float64)
            return np.concatenate([trained.double().numpy() * weight, tail])

    def _sum(self, requester, message: Message, connection) -> Message:
        run = self._run_of(message.fields, connection)
        kind = field_str(message.fields, "kind", 16, KINDS)
        round_ = field_int(message.fields, "round", 1, MAX_ROUND)
        deadline = time.monotonic() + self.bounds.peer_timeout
        with self._state:
            pending = run.pending.get((kind, round_))
            if pending is None:
                raise Refusal(f"this owner holds no unreleased share of {kind} round {round_}")
            while True:
                missing = [o for o in pending.owners if o != self.id and o not in pending.received]
                if (pending.own_share is not None and not missing) or not self._state.wait(
                    max(0.0, deadline - time.monotonic())
                ):
                    break
            if pending.own_share is None or run.pending.get((kind, round_)) is not pending:
                raise Refusal(f"this owner holds no unreleased share of {kind} round {round_}")
            missing = [o for o in pending.owners if o != self.id and o not in pending.received]
            if missing:
                raise Refusal(f"no share of {kind} round {round_} arrived from {', '.join(missing)}")
            del run.pending[(kind, round_)]  # released once: a second request finds nothing
            self._record_release(pending.trained, pending.owners)
            total = pending.own_share.copy()
            for share in pending.received.values():
                np.add(total, share, out=total)  # wraps modulo 2**64, as syft's ring does
        self.log(f"released its share of the {kind} round {round_} sum over {', '.join(pending.owners)}")
        return Message("sum_share", {}, {"share": total})

    # --- peers' requests ------------------------------------------------------------------------------

    def _receive_share(self, requester, message: Message, connection) -> Message:
        fields = message.fields
        kind = field_str(fields, "kind", 16, KINDS)
        round_ = field_int(fields, "round", 1, MAX_ROUND)
        owners = self._owners_of(fields)
        digest = field_str(fields, "request", 64)
        share = message.arrays.get("share")
        lengths = self._lengths(kind)
        if share is None or share.dtype != np.int64 or share.ndim != 1 or share.size not in lengths:
            raise Refusal(f"a {kind} share is {' or '.join(map(str, lengths))} int64 values")
        if set(message.arrays) != {"share"}:
            raise Refusal("a share message carries the share array only")
        if requester not in owners:
            raise Refusal("a share must come from an owner of the round")
        with self._state:
            run = self.run
            if run is None or field_str(fields, "session", 64) != run.id:
                raise Refusal("no such run on this owner")
            pending = run.pending.get((kind, round_))
            if pending is not None:
                if pending.owners != owners:
                    raise Refusal(f"{kind} round {round_} is among other owners on this owner")
                if not same_request(pending.digest, digest):
                    raise Refusal(f"{kind} round {round_} was asked with another request on this owner")
                if requester in pending.received:
                    raise Refusal(f"a share of {kind} round {round_} from {requester!r} is already here")
                pending.received[requester] = share
                self._state.notify_all()
            elif round_ <= run.last_round[kind]:
                raise Refusal(f"{kind} round {round_} is over on this owner")
            else:  # the peer was faster than our own request: hold it, within bounds
                key = (kind, round_)
                if key not in run.early and len(run.early) >= self.bounds.max_pending_rounds * len(KINDS):
                    # full: the farthest round goes if this one is nearer, so shares a peer sends for far
                    # rounds cannot keep out the shares of the next ones
                    farthest = max(run.early, key=lambda held: held[1])
                    if farthest[1] <= round_:
                        raise Refusal("too many rounds of shares ahead of this owner's own")
                    del run.early[farthest]
                early = run.early.setdefault(key, {})
                if requester in early:
                    raise Refusal(f"a share of {kind} round {round_} from {requester!r} is already here")
                early[requester] = (digest, share)
        return Message("ok")

    # --- the two protocols ----------------------------------------------------------------------------

    def _share(
        self, run: Run, kind: str, round_: int, owners, vector, precision: int, digest: str, trained: str = ""
    ) -> Message:
        """Additive: ``fix_prec().share()`` among the round's owners; each peer's share goes to it directly."""
        shares = contribution.additive_shares(vector, owners, precision)
        with self._state:
            pending = run.pending.get((kind, round_))
            if pending is None:  # a newer round replaced it meanwhile
                raise Refusal(f"{kind} round {round_} was overtaken by a later round")
            pending.own_share, pending.trained = shares[self.id], trained
            self._state.notify_all()
        unreached = []
        for peer in owners:
            if peer == self.id:
                continue
            fields = {"session": run.id, "kind": kind, "round": round_, "owners": list(owners), "request": digest}
            try:
                reply = self.peers[peer].request(Message("share", fields, {"share": shares[peer]}))
            except Exception as err:  # a peer that cannot be reached is named; the round cannot complete
                self.log(f"could not give {peer!r} its share of {kind} round {round_}: {err}")
                reply = None
            if reply is None or reply.kind != "ok":
                unreached.append(peer)
        return Message("shared", {"unreached": unreached})

    def _join(self, run: Run, kind: str, round_: int, owners: Tuple[str, ...], digest: str) -> None:
        """Open this owner's side of an additive round (lock held): shares that came early move in if they
        are of the same request, older rounds of this kind are dropped (their sums were never asked for)."""
        pending = run.pending[(kind, round_)] = PendingRound(owners, digest)
        for sender, (their_digest, share) in run.early.pop((kind, round_), {}).items():
            if same_request(digest, their_digest):
                pending.received[sender] = share
        for key in [key for key in run.early if key[0] == kind and key[1] <= round_]:
            del run.early[key]
        for key in [key for key in run.pending if key[0] == kind and key[1] < round_]:
            del run.pending[key]

    def _never_in_two_sums(self, encoded: np.ndarray, owners: Tuple[str, ...]) -> str:
        """Refuse to contribute trained parameters identical to ones already released towards a sum over another
        owner set: the difference of the two sums would be the other owners' difference (the model owner
        re-sending an earlier round's parameters to fewer owners). Identical ones for the same set (a model
        that has converged) add nothing the model owner does not know. Returns the parameters' digest."""
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(encoded)).cast("B")).hexdigest()
        with self._state:
            earlier = self.released.get(digest)
        if earlier is not None and earlier != frozenset(owners):
            raise Refusal("these trained parameters already went towards a sum over other owners")
        return digest

    def _record_release(self, trained: str, owners) -> None:
        """Remember (lock held) that trained parameters ``trained`` went towards a sum over ``owners``: when
        this owner's additive sum share leaves, or its masked vector (whose unmasking it cannot veto)."""
        if trained:
            self.released[trained] = frozenset(owners)
            while len(self.released) > RELEASED_REMEMBERED:
                self.released.pop(next(iter(self.released)))

    def _send(
        self, run: Run, kind: str, round_: int, owners: Tuple[str, ...], messages: Dict[str, bytes], digest: str
    ) -> list:
        """Each neighbour among the round's owners its mask shares and the digest of this owner's request, owner
        to owner (no lock held: a peer may be sending us its own). Returns the neighbours not reached."""
        unreached = []
        for peer, data in messages.items():
            if peer not in owners:
                continue
            fields = {"session": run.id, "kind": kind, "round": round_, "request": digest}
            try:
                reply = self.peers[peer].request(Message("mask_shares", fields, {"data": _bytes(data)}))
            except Exception as err:
                self.log(f"could not give {peer!r} its mask shares of round {round_}: {err}")
                reply = None
            if reply is None or reply.kind != "ok":
                unreached.append(peer)
        return unreached

    def _mask(self, requester, message: Message, connection) -> Message:
        """Double masking, step 2: this owner's prepared vector, masked for the round's participants."""
        run = self._run_of(message.fields, connection)
        round_ = field_int(message.fields, "round", 1, MAX_ROUND)
        participants = field_names(message.fields, "participants", self.bounds.max_owners)
        with self._state:
            prepared, run.prepared = run.prepared, None
            if prepared is None or prepared[1] != round_:
                raise Refusal(f"this owner prepared no contribution for round {round_}")
            kind, _, owners, encoded, trained = prepared
            if not set(participants) <= set(owners):
                raise Refusal(f"the participants must be among round {round_}'s owners")
            # a vector is masked only towards partners sent the very same request: their masks cancel with this
            # owner's, so a partner sent crafted params could otherwise be unmasked by responders sent another
            asked, digest = run.requests.get(kind, (0, ""))
            held = run.peer_requests.get((kind, round_), {})
            partners = [p for p in participants if p in run.secagg[kind].neighbours]
            differing = [p for p in partners if not same_request(held.get(p, ""), digest)]
            if asked != round_ or differing:
                raise Refusal(f"round {round_}: participants {differing} were sent another request than this owner")
            try:
                masked = run.secagg[kind].masked_vector(round_, encoded, participants)
                key = run.secagg[kind].public_key(round_)
            except SecAggRefused as err:
                raise Refusal(str(err)) from None
            self._record_release(trained, participants)
        self.log(
            f"released the masked {kind} vector of round {round_} ({masked.size} values), {len(participants)} owners"
        )
        return Message("masked", {}, {"masked": masked, "key": _bytes(key)})

    def _views(self, requester, message: Message, connection) -> Message:
        """Double masking, step 3: record the model owner's story of the round and send this owner's view of
        it to every other responder, over this owner's own links."""
        run = self._run_of(message.fields, connection)
        kind, round_, survivors, dropped, responders = self._story(message.fields)
        with self._state:
            asked, digest = run.requests.get(kind, (0, ""))
            if asked != round_:
                raise Refusal(f"this owner contributed to no {kind} round {round_}")
            try:  # the view carries the digest of this owner's request: owners asked different things never answer
                views = run.secagg[kind].consistency_view(round_, survivors, dropped, responders, bytes.fromhex(digest))
            except SecAggRefused as err:
                raise Refusal(str(err)) from None
        unreached = []
        for peer, data in views.items():
            try:
                fields = {"session": run.id, "kind": kind}
                reply = self.peers[peer].request(Message("view", fields, {"data": _bytes(data)}))
            except Exception:
                reply = None
            if reply is None or reply.kind != "ok":
                unreached.append(peer)
        return Message("ok", {"unreached": unreached})

    def _unmask(self, requester, message: Message, connection) -> Message:
        """Double masking, step 4: once per round, when every responder's view agrees with this owner's: for
        each participant among its neighbours, its share of b (in the sum) or of s (dropped), never both."""
        run = self._run_of(message.fields, connection)
        kind, round_, survivors, dropped, responders = self._story(message.fields)
        deadline = time.monotonic() + self.bounds.peer_timeout
        with self._state:
            while True:
                try:
                    answer = run.secagg[kind].unmask_answer(round_, survivors, dropped, responders)
                    break
                except ViewsMissing as err:
                    if not self._state.wait(max(0.0, deadline - time.monotonic())):
                        raise Refusal(str(err)) from None
                except SecAggRefused as err:
                    raise Refusal(str(err)) from None
        self.log(f"released its unmasking shares of round {round_} ({len(answer)} owners)")
        return Message("unmask_answer", {"answers": {o: [kind, share.hex()] for o, (kind, share) in answer.items()}})

    def _story(self, fields) -> tuple:
        names = self.bounds.max_owners
        survivors = field_names(fields, "survivors", names)
        if len(survivors) < self.least_owners:
            raise Refusal(f"this owner unmasks only sums over at least {self.least_owners} owners")
        return (
            field_str(fields, "kind", 16, KINDS),
            field_int(fields, "round", 1, MAX_ROUND),
            field_names(fields, "survivors", names),
            field_names(fields, "dropped", names) if fields.get("dropped") else (),
            field_names(fields, "responders", names),
        )

    def _receive_mask_shares(self, requester, message: Message, connection) -> Message:
        with self._state:
            run = self.run
            data = message.arrays.get("data")
            kind = field_str(message.fields, "kind", 16, KINDS)
            round_ = field_int(message.fields, "round", 1, MAX_ROUND)
            digest = field_str(message.fields, "request", 64)
            if run is None or not run.secagg or field_str(message.fields, "session", 64) != run.id:
                raise Refusal("no such run on this owner")
            if data is None or data.dtype != np.uint8 or data.ndim != 1:
                raise Refusal("mask shares are bytes")
            known = run.peer_requests.get((kind, round_), {}).get(requester)
            if known is not None and not same_request(known, digest):
                raise Refusal(f"{requester!r} already sent mask shares of another request for round {round_}")
            try:
                if run.secagg[kind].receive_shares(requester, data.tobytes()) != round_:
                    raise Refusal("the mask shares are not of the round they are sent for")
            except SecAggRefused as err:
                raise Refusal(str(err)) from None
            run.peer_requests.setdefault((kind, round_), {})[requester] = digest
        return Message("ok")

    def _receive_view(self, requester, message: Message, connection) -> Message:
        return self._to_secagg(requester, message, "receive_view")

    def _to_secagg(self, requester: str, message: Message, method: str) -> Message:
        """A peer's double-masking message (its mask shares, or its view of a round) for the run's masking of
        one kind; the sender is the peer of the authenticated link, never a field of the message."""
        with self._state:
            run = self.run
            data = message.arrays.get("data")
            kind = field_str(message.fields, "kind", 16, KINDS)
            if run is None or not run.secagg or field_str(message.fields, "session", 64) != run.id:
                raise Refusal("no such run on this owner")
            if data is None or data.dtype != np.uint8 or data.ndim != 1 or set(message.arrays) != {"data"}:
                raise Refusal(f"{message.kind} carries one array of bytes")
            try:
                getattr(run.secagg[kind], method)(requester, data.tobytes())
            except SecAggRefused as err:
                raise Refusal(str(err)) from None
            self._state.notify_all()  # an unmasking request may be waiting for this view
        return Message("ok")

    # --- checks ---------------------------------------------------------------------------------------

    @property
    def least_owners(self) -> int:
        """The fewest owners of a sum this owner contributes to or unmasks: its ``min_owners``, and with distributed
        DP at least the owners its noise is split over -- each adds ``1 / noise_shares`` of the variance, so a sum
        over fewer (even all honest) would carry less noise than its budget counts."""
        shares = self.bounds.dp.noise_shares if self.bounds.dp is not None else 1
        return max(2, self.bounds.min_owners, shares)

    def _run_of(self, fields, connection) -> Run:
        session = field_str(fields, "session", 64)
        with self._state:
            run = self.run
            if run is None or run.id != session:
                raise Refusal("no such run on this owner: say hello first")
            if run.connection is not connection:
                raise Refusal("this run belongs to another connection")
            return run

    def _owners_of(self, fields) -> Tuple[str, ...]:
        owners = field_names(fields, "owners", self.bounds.max_owners)
        if self.id not in owners:
            raise Refusal("the round's owners must include this owner")
        if len(owners) < self.least_owners:
            raise Refusal(f"this owner contributes only to sums over at least {self.least_owners} owners")
        strangers = [o for o in owners if o != self.id and o not in self.peers]
        if strangers:
            raise Refusal(f"owners {strangers} are not peers of this owner")
        return owners

    def _settings(self, settings, kind: str) -> dict:
        if not isinstance(settings, dict):
            raise Refusal("settings must be an object")
        b = self.bounds
        out: Dict[str, Any] = {
            "precision": field_int(settings, "precision", 0, b.max_precision),
            "aggregation": field_str(settings, "aggregation", 16, b.aggregations),
        }
        if kind == "train":
            out.update(
                lr=field_float(settings, "lr", 1e-12, b.max_lr),
                local_steps=field_int(settings, "local_steps", 1, b.max_local_steps),
                fl_round=field_int(settings, "fl_round", 1, MAX_ROUND),
                weighting=field_str(settings, "weighting", 16, WEIGHTINGS),
                batch_size=None if settings.get("batch_size") is None else field_int(settings, "batch_size", 1, 2**31),
            )
            out["dp"] = self._dp_of(settings.get("dp"), settings["local_steps"], out["precision"])
        elif self.bounds.dp is not None:
            raise Refusal("with differential privacy this owner releases only noised gradient sums: no evaluation")
        unknown = set(settings) - set(out) - ({"batch_size", "dp"} if kind == "train" else set())
        if unknown:
            raise Refusal(f"unknown settings {sorted(unknown)}")
        return out

    def _budget_for(self, precision: int) -> None:
        """The owner's accountant, made at its first private round (the noise's grid depends on the precision,
        which then stays fixed: one mechanism, composed round after round). Counted with the owner's own
        settings: requests may only be stronger, so this over-counts, never under-counts."""
        from .privacy import OwnerBudget

        assert self.bounds.dp is not None  # called for an owner with its own DP settings only
        if self.budget is None:
            self.budget = OwnerBudget.for_settings(self.bounds.dp, precision, self.parameters + 1)
            self.budget_precision = precision
        elif precision != self.budget_precision:
            raise Refusal(f"this owner's private rounds are at precision {self.budget_precision}")

    def _dp_of(self, requested, local_steps: int, precision: int):
        """The round's DP settings (None: no DP), refused if weaker than this owner's own, or if its grid at
        ``precision`` is refused (before the round is reserved: a one-line refusal naming the settings)."""
        own = self.bounds.dp
        if requested is None:
            if own is not None:
                raise Refusal("this owner trains only with differential privacy at least as strong as its own")
            return None
        if not isinstance(requested, dict) or set(requested) != set(DP_FIELDS):
            raise Refusal(f"dp settings hold exactly {', '.join(DP_FIELDS)}")
        try:
            from .privacy import DPSettings

            dp = DPSettings(**requested, epsilon=own.epsilon if own else 1e3, delta=own.delta if own else 0.5)
        except (ConfigError, TypeError) as err:
            raise Refusal(str(err)) from None
        weaker = dp.weaker_than(own) if own is not None else []
        try:
            from .privacy import accounting_noise_multiplier, check_grid, noise_variance

            check_grid(dp.clip_norm, precision, self.parameters)
            if own is not None and not weaker:
                # the distributed bound's tau grows as the shares shrink (a smaller clip norm): the multiplier the
                # budget counts (the owner's own) must not exceed the request's
                dimension = self.parameters + 1
                requested_z = accounting_noise_multiplier(dp, precision, dimension)
                own_z = accounting_noise_multiplier(own, precision, dimension)
                if requested_z < own_z:
                    weaker.append(
                        f"effective noise multiplier {requested_z:.6g} < the owner's {own_z:.6g} (shares of "
                        f"{noise_variance(dp, precision)} quanta**2 at clip norm {dp.clip_norm:g})"
                    )
        except ConfigError as err:
            raise Refusal(str(err)) from None
        if weaker:
            raise Refusal(f"dp settings weaker than this owner's: {'; '.join(weaker)}")
        if local_steps != 1:
            raise Refusal("differential privacy needs exactly 1 local step per round (DP-FedSGD)")
        return dp

    def _lengths(self, kind: str) -> Tuple[int, ...]:
        """The sizes a peer's share of a ``kind`` contribution may have (training: FedAvg's, or DP-FedSGD's P + 1)."""
        if kind == "train":
            return (contribution.train_length(self.parameters), self.parameters + 1)
        return (contribution.evaluate_length(len(self.task.metric_names)),)


RELEASED_REMEMBERED = 10_000  # trained-parameter digests an owner keeps (32 bytes + a set each)
DP_FIELDS = ("mode", "noise_multiplier", "clip_norm", "sampling_rate", "min_owners")


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def request_digest(session: str, kind: str, round_: int, owners, settings: dict, params: np.ndarray) -> str:
    """SHA-256 of everything the model owner chose for this contribution (the owner set as a set). The honest
    model owner sends every owner of a round the same request, so every owner of the round computes the same."""
    chosen = {"session": session, "kind": kind, "round": round_, "owners": sorted(owners), "settings": settings}
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True, separators=(",", ":")).encode())
    digest.update(np.ascontiguousarray(params, dtype="<f4").tobytes())
    return digest.hexdigest()


def same_request(digest: str, other: str) -> bool:
    return hmac.compare_digest(digest, other)


MODEL_REQUESTS = {
    "hello": DataOwner._hello,
    "train": DataOwner._contribute,
    "evaluate": DataOwner._contribute,
    "sum": DataOwner._sum,
    "mask": DataOwner._mask,
    "views": DataOwner._views,
    "unmask": DataOwner._unmask,
}
PEER_REQUESTS = {
    "share": DataOwner._receive_share,
    "mask_shares": DataOwner._receive_mask_shares,
    "view": DataOwner._receive_view,
}
