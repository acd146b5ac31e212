"""The model owner's round loop for owner-side training: send parameters and settings, sum, decode, update.

Each round the model owner asks every owner of the round to ``train`` from the global parameters with the
round's settings; each owner answers with its contribution hidden (additive shares sent owner to owner, or a
pairwise-masked vector). The model owner adds them in the int64 ring and decodes **only the sum**:
``[sum of w * parameters, sum of w, sum of n, sum of w * local loss]``, so it learns the weighted averages.
Then it asks the owners to ``evaluate`` the new global model the same way (the global loss and the task's
metrics, averaged over the owners). The round's history matches the tutorial loop's
(:func:`fl_smpc.federated.run_rounds`), except that no single owner's loss is known: ``local_loss`` is the
owners' weighted mean.

An owner that fails during an attempt (unreachable, timed out, or refusing) voids it -- its share or its
masks are missing, so no sum exists -- and the attempt is made again, from the same global parameters,
among the others under a new round number (owners never reuse one), as long as ``min_owners`` remain.
"""

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..config import FLConfig
from ..data_owner.contribution import decode_sum, encodable_limit
from ..data_owner.owner import Link
from ..data_owner.secagg import SecAggSession, UnmaskingError
from ..data_owner.task import Task, fingerprint, parameter_count
from ..errors import FlSmpcError, RoundFailed, WorkerSetupError, WorkerUnreachable
from ..history import History, RoundResult, owners_of_round, snapshot
from ..network.wire import Message
from .unmasking import unmask_sum


class OwnersDropped(Exception):
    """Owners failed during an attempt: ``reasons`` maps each to why. No sum of the attempt exists."""

    def __init__(self, reasons: Dict[str, str]):
        super().__init__("; ".join(f"{owner}: {why}" for owner, why in reasons.items()))
        self.reasons = reasons


@dataclass
class Federation:
    """The model owner's links to the owners (in config order), the task, the run's session and round counter.

    :meth:`start` learns the owners' feature count and checks that every owner trains the same task with
    the same architecture (its fingerprint: parameter names and shapes).
    """

    links: Dict[str, Link]  # owner id -> its link
    task: Task
    features: int = 0
    fingerprint: str = ""
    parameters: int = 0
    metric_names: Tuple[str, ...] = ()
    session: str = ""
    next_round: int = 1
    available: List[str] = field(default_factory=list)  # the owners that joined the current run
    # ask the owners at once (separate processes); in one process one after another: syft's hook on torch
    # is not thread-safe
    concurrent: bool = True
    masking: Dict[str, SecAggSession] = field(default_factory=dict)  # double masking, per kind (public)
    neighbours: Optional[int] = None  # SecAgg+'s graph degree; None: all pairs
    epsilon: Dict[str, float] = field(default_factory=dict)  # DP: each owner's epsilon spent, as it reported

    def request(self, owner: str, message: Message) -> Message:
        reply = self.links[owner].request(message)
        if reply.kind == "refused":
            raise OwnerRefused(owner, str(reply.fields.get("reason", "no reason given"))[:300])
        return reply

    def start(self, skip_unreachable: bool = False) -> None:
        """A new run on every owner (fresh pairwise keys, round numbers from 1).

        ``skip_unreachable``: an owner that cannot be reached is left out (it will be dropped from the
        round and asked again before the next), instead of failing the run.
        """
        self.session, self.next_round = secrets.token_hex(16), 1
        owners, seed = list(self.links), secrets.token_hex(16)
        self.masking = {
            kind: SecAggSession.create(f"{self.session}-{kind}", owners, self.neighbours, bytes.fromhex(seed))
            for kind in ("train", "evaluate")
            if len(owners) >= 3  # pairwise masking of two owners is refused on the owners
        }
        hello = {"session": self.session, "owners": owners, "neighbours": self.neighbours, "graph_seed": seed}
        welcomes: Dict[str, Message] = {}
        for owner in self.links:
            try:
                welcomes[owner] = self.request(owner, Message("hello", hello))
            except WorkerUnreachable:
                if not skip_unreachable:
                    raise
        for owner, welcome in welcomes.items():
            if welcome.kind != "welcome" or welcome.fields.get("owner") != owner:
                raise WorkerSetupError(
                    f"the worker given as {owner!r} introduced itself as {welcome.fields.get('owner')!r}: use its --id"
                )
        features = {owner: welcome.fields.get("features") for owner, welcome in welcomes.items()}
        if len(set(features.values())) != 1:
            raise WorkerSetupError(f"owners disagree on the number of feature columns: {features}")
        if not self.fingerprint:
            self.features = int(next(iter(features.values())) or 0)
            model = self.task.build_model(self.features)
            self.fingerprint, self.parameters = fingerprint(self.task.name, model), parameter_count(model)
        for owner, welcome in welcomes.items():
            fields = welcome.fields
            if fields.get("task") != self.task.name or fields.get("fingerprint") != self.fingerprint:
                raise WorkerSetupError(
                    f"owner {owner!r} trains task {fields.get('task')!r} (architecture {fields.get('fingerprint')}); "
                    f"this run is task {self.task.name!r} ({self.fingerprint}): both sides must name the same --task"
                )
            self.metric_names = tuple(fields.get("metrics") or ())
        self.available = list(welcomes)

    def take_round(self) -> int:
        number, self.next_round = self.next_round, self.next_round + 1
        return number


class OwnerRefused(FlSmpcError, RuntimeError):
    """An owner refused a request (the reason is about the request, never the owner's data)."""

    def __init__(self, owner: str, reason: str):
        super().__init__(f"owner {owner!r} refused: {reason}")
        self.worker = owner


def secure_round(
    federation: Federation, owners: Sequence[str], kind: str, params: torch.Tensor, settings: dict
) -> Tuple[np.ndarray, List[str], Dict[str, str]]:
    """One attempt: the owners' contributions, summed in the int64 ring; only the sum is decoded.

    Returns (the decoded sum, its contributors, the owners lost on the way). Additive: every owner of the
    attempt or none (OwnersDropped voids it; a redo trains afresh under a new round number). Pairwise (double
    masking): the sum over the owners that sent a masked vector, even if some are lost afterwards.
    """
    round_ = federation.take_round()
    fields = {
        "session": federation.session,
        "round": round_,
        "owners": list(owners),
        "task": federation.task.name,
        "fingerprint": federation.fingerprint,
        "settings": settings,
    }
    request = Message(kind, fields, {"params": params.detach().to(torch.float32).numpy()})
    replies = _ask_all(federation, owners, lambda owner: request)
    for owner, (reply, _) in replies.items():
        spent = None if reply is None else reply.fields.get("epsilon")
        if isinstance(spent, (int, float)) and not isinstance(spent, bool):
            federation.epsilon[owner] = float(spent)
    dropped = {owner: why for owner, (reply, why) in replies.items() if why}
    for owner, (reply, _) in replies.items():
        for peer in (reply.fields.get("unreached") or []) if reply is not None else []:
            if peer in owners and peer not in dropped:
                dropped[peer] = f"{owner!r} could not reach it"
    if settings["aggregation"] == "pairwise":
        alive = [o for o in owners if o not in dropped]
        return double_masked_sum(federation, kind, round_, alive, dropped, settings)
    _raise_if(dropped)
    ask_sum = Message("sum", {"session": federation.session, "round": round_, "kind": kind})
    sums = _ask_all(federation, owners, lambda owner: ask_sum)
    _raise_if({owner: why for owner, (_, why) in sums.items() if why})
    vectors = [_array(reply, "sum_share", "share", owner) for owner, (reply, _) in sums.items()]
    if len({v.size for v in vectors}) != 1:
        raise OwnersDropped(dict.fromkeys(owners, "sent a vector of another length"))
    total = vectors[0].copy()
    for vector in vectors[1:]:
        np.add(total, vector, out=total)  # wraps modulo 2**64
    return decode_sum(total, settings["precision"]), list(owners), {}


def double_masked_sum(
    federation: Federation, kind: str, round_: int, participants: List[str], dropped: Dict[str, str], settings: dict
) -> Tuple[np.ndarray, List[str], Dict[str, str]]:
    """SecAgg's steps 2-4 over the owners that prepared a contribution: masked vectors, the owners' consistency
    check of the round's story, one unmasking answer each; an owner lost at any step costs no redo."""
    dropped = dict(dropped)
    if len(participants) < 2:
        raise OwnersDropped(dropped or {"(none)": "no owner prepared a contribution"})
    ask = {"session": federation.session, "round": round_}
    replies = _ask_all(federation, participants, lambda o: Message("mask", {**ask, "participants": participants}))
    masked, keys = {}, {}
    for owner, (reply, why) in replies.items():
        vector, key = (None, None) if reply is None else (reply.arrays.get("masked"), reply.arrays.get("key"))
        if reply is None or reply.kind != "masked" or vector is None or vector.dtype != np.int64 or key is None:
            dropped[owner] = why or "sent no masked vector"
        else:
            masked[owner], keys[owner] = vector, key.tobytes()
    survivors = sorted(masked, key=participants.index)
    responders = list(survivors)
    while True:
        if len(survivors) < 2 or len(responders) < 1:
            raise OwnersDropped(dropped or dict.fromkeys(participants, "too few owners answered"))
        story = {
            **ask,
            "kind": kind,
            "survivors": survivors,
            "dropped": [o for o in participants if o not in masked],
            "responders": responders,
        }
        views = _ask_all(federation, responders, lambda o, story=story: Message("views", story))
        lost = {o: why for o, (_, why) in views.items() if why}
        if not lost:
            answers = _ask_all(federation, responders, lambda o, story=story: Message("unmask", story))
            lost = {o: why for o, (reply, why) in answers.items() if why or reply is None}
        if lost:  # a responder lost during the unmasking: the same story, fewer responders
            dropped.update({o: f"{why} (while unmasking)" for o, why in lost.items() if o not in dropped})
            responders = [o for o in responders if o not in lost]
            continue
        break
    shares = {
        owner: {o: (kind, bytes.fromhex(share)) for o, (kind, share) in reply.fields["answers"].items()}
        for owner, (reply, _) in answers.items()
        if reply is not None
    }
    try:
        total = unmask_sum(federation.masking[kind], round_, participants, masked, keys, shares)
    except (UnmaskingError, ValueError, TypeError, KeyError) as err:
        raise OwnersDropped(dict.fromkeys(participants, f"the round could not be unmasked: {err}")) from None
    contributors = [o for o in participants if o in masked]
    return (
        decode_sum(total, settings["precision"]),
        contributors,
        {o: why for o, why in dropped.items() if o not in masked},
    )


def _ask_all(federation: Federation, owners, request_for) -> Dict[str, Tuple[Optional[Message], str]]:
    """Ask every owner at once (one thread each, as separate machines work): {owner: (reply, why it failed)}.

    An owner that could not reach a peer names it in its reply (``unreached``); the callers drop that peer.
    """
    if not owners:
        return {}

    def ask(owner):
        try:
            return federation.request(owner, request_for(owner)), ""
        except (OwnerRefused, WorkerUnreachable) as err:
            return None, str(err)

    with ThreadPoolExecutor(max_workers=len(owners) if federation.concurrent else 1) as pool:
        return dict(zip(owners, pool.map(ask, owners)))


def _array(reply: Optional[Message], kind: str, name: str, owner: str) -> np.ndarray:
    array = None if reply is None else reply.arrays.get(name)
    if reply is None or reply.kind != kind or array is None or array.dtype != np.int64 or array.ndim != 1:
        raise OwnersDropped({owner: f"sent no {kind}"})
    return array


def _raise_if(dropped: Dict[str, str]) -> None:
    if dropped:
        raise OwnersDropped(dropped)


def gather(
    federation: Federation, owners: List[str], kind: str, params: torch.Tensor, settings: dict, min_owners: int
) -> Tuple[np.ndarray, List[str], Dict[str, str]]:
    """The decoded sum over ``owners``, redone among the rest while owners fail; (sum, contributors, dropped)."""
    dropped: Dict[str, str] = {}
    alive = list(owners)
    while True:
        if len(alive) < min_owners:
            raise RoundFailedEarly(
                f"{'; '.join(f'{o}: {why}' for o, why in dropped.items())}; {len(alive)} owners left "
                f"({', '.join(alive) or 'none'}), fewer than min_owners {min_owners}",
                next(iter(dropped), None),
            )
        try:
            total, contributors, lost = secure_round(federation, alive, kind, params, settings)
            if len(contributors) < min_owners:
                raise OwnersDropped(lost or dict.fromkeys(alive, "too few owners"))
            dropped.update({owner: f"{why} (during {kind})" for owner, why in lost.items()})
            return total, contributors, dropped
        except OwnersDropped as failed:
            dropped.update({owner: f"{why} (during {kind})" for owner, why in failed.reasons.items()})
            alive = [o for o in alive if o not in failed.reasons]


class RoundFailedEarly(FlSmpcError, RuntimeError):
    def __init__(self, message: str, worker: Optional[str]):
        super().__init__(message)
        self.worker = worker


def evaluation(federation: Federation, owners: List[str], params, config: FLConfig, reduction: str):
    """The global loss of ``params`` over the owners' rows and the task's metrics (weighted means).

    With differential privacy the owners release nothing but their noised gradient sums: no evaluation on
    their rows (NaN; the model owner's own ``evaluate`` hook, e.g. a held-out test set, still runs).
    """
    if config.dp is not None:
        return float("nan"), {}, list(owners), {}
    settings = {"precision": config.precision_fractional, "aggregation": config.aggregation}
    total, contributors, dropped = gather(federation, owners, "evaluate", params, settings, config.min_owners)
    rows = max(total[0], 1.0)
    loss = total[1] if reduction == "sum" else total[1] / rows
    metrics = {name: float(total[2 + i] / rows) for i, name in enumerate(federation.metric_names)}
    return float(loss), metrics, contributors, dropped


def run_owner_rounds(
    model: nn.Module,
    federation: Federation,
    config: FLConfig,
    history: Optional[History] = None,
    evaluate: Optional[Callable[[nn.Module], dict]] = None,
    on_round: Optional[Callable] = None,
    reconnect: Optional[Callable[[str], object]] = None,
) -> History:
    """``config.rounds`` rounds of owner-side training over ``federation`` (in place on ``model``).

    ``evaluate(model) -> dict`` adds the model owner's own metrics (e.g. on its held-out test set);
    ``reconnect(owner)`` is called before a round for each owner dropped in the previous one (a restarted
    worker rejoins; every owner then starts a new run, so pairwise keys are agreed afresh).
    """
    evaluate = evaluate or (lambda _model: {})
    names = list(federation.links)
    reduction = federation.task.reduction
    if not federation.session:
        federation.start()
    if history is None:
        loss, metrics, _, _ = evaluation(federation, names, parameters_to_vector(model.parameters()), config, reduction)
        history = History(config, snapshot(model), loss, initial_metrics={**metrics, **evaluate(model)})
    dropped: Dict[str, str] = {}
    for r in range(len(history.rounds) + 1, config.rounds + 1):
        if reconnect is not None and dropped:
            for owner in list(dropped):
                try:
                    reconnect(owner)
                except Exception:  # still away: it is asked again, and dropped again, this round
                    continue
            federation.start(skip_unreachable=True)
        try:
            result = owner_round(model, federation, config, r, reduction, evaluate)
        except BaseException as err:  # Ctrl-C too: put back the last completed round's model
            model.load_state_dict(history.latest_state())
            if not isinstance(err, Exception):
                raise
            if config.dp is not None and "privacy budget spent" in str(err):
                history.stopped = f"round {r}: too few owners with privacy budget left ({err})"
                return history
            raise RoundFailed(r, err, history, getattr(err, "worker", None)) from err
        dropped = result.dropped
        history.rounds.append(result)
        if on_round is not None:
            on_round(result, history)
    return history


def owner_round(model: nn.Module, federation: Federation, config: FLConfig, r: int, reduction: str, evaluate):
    """One round: train among the round's owners, update the global model, evaluate it among all owners."""
    names = list(federation.links)
    chosen = [names[i] for i in owners_of_round(config, r) if names[i] in federation.available]
    away = {n: "not reachable when the run (re)started" for n in names if n not in federation.available}
    settings: Dict[str, Any] = {
        "lr": config.lr,
        "local_steps": config.local_steps,
        "batch_size": config.batch_size,
        "weighting": config.weighting,
        "fl_round": r,
        "precision": config.precision_fractional,
        "aggregation": config.aggregation,
    }
    dp = config.dp_settings()
    if dp is not None:
        fields = ("mode", "noise_multiplier", "clip_norm", "sampling_rate", "min_owners")
        settings["dp"] = {name: getattr(dp, name) for name in fields}
    params = parameters_to_vector(model.parameters()).detach()
    federation.epsilon = {}
    total, contributors, dropped = gather(federation, chosen, "train", params, settings, config.min_owners)
    dropped = {**away, **dropped}
    epsilon = {o: e for o, e in federation.epsilon.items() if o in contributors}
    if dp is not None:  # DP-FedSGD: one step along the noised mean of the clipped per-example gradients
        from ..data_owner.privacy import count_quanta

        quantum = 10.0**-config.precision_fractional
        count = max(total[-1] / (count_quanta(dp.clip_norm, config.precision_fractional) * quantum), 1.0)
        rates = torch.cat(
            [
                torch.full((p.numel(),), config.lr * (config.dp_bias_lr if name.endswith("bias") else 1.0))
                for name, p in model.named_parameters()
            ]
        )
        with torch.no_grad():
            step = torch.from_numpy((total[:-1] / count).astype(np.float32))
            vector_to_parameters(params - rates * step, model.parameters())
        result = RoundResult(r, {}, float("nan"), snapshot(model), evaluate(model), contributors, dropped)
        result.epsilon = epsilon
        return result
    size = federation.parameters
    # every owner clips to this bound: a sum this large means some owner's values were clipped (diverged)
    limit = encodable_limit(len(contributors), config.precision_fractional)
    average = total[:size] / total[size]
    if not np.isfinite(average).all() or np.abs(total[:size]).max() >= limit / 2:
        raise DivergedError(
            "the averaged parameters reach the encodable bound: local training diverged; lower the learning rate"
        )
    with torch.no_grad():
        vector_to_parameters(torch.from_numpy(average.astype(np.float32)), model.parameters())
    local_loss = float(total[size + 2] / total[size])
    new_params = parameters_to_vector(model.parameters()).detach()
    reachable = [n for n in federation.available if n not in dropped]
    loss, metrics, _, _ = evaluation(federation, reachable, new_params, config, reduction)
    result = RoundResult(
        r, {}, loss, snapshot(model), {**metrics, **evaluate(model)}, contributors, dropped, local_loss
    )
    result.epsilon = epsilon
    return result


class DivergedError(FlSmpcError, ArithmeticError):
    """The secure average is non-finite or at the encoding's bound: the owners' training diverged."""
