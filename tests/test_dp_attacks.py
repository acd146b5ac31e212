"""Red team on issue 16's differential privacy, enforced by each data owner: a model owner holding its valid
``model`` certificate (and, separately, a hostile peer owner) tries to make an honest owner with DP on release

(a) more than its budget allows, (b) with less noise than its budget counts, (c) anything data-dependent outside
the noised vector, or (d) a sum with less noise than accounted through the protocol -- and sends garbage in the
DP fields. Every test asserts that the defence holds. Each was run once against a weakened owner (the check
removed in a scratch copy, or monkeypatched away); the docstring says what that showed. Findings: docs/attacks.md,
section "Differential privacy (issue 16)".

In-process :class:`~fl_smpc.data_owner.owner.DataOwner` objects only (the TLS layer only decides who asks;
tests/test_dp_owner.py::test_over_tls_each_worker_enforces_its_own_budget runs the same budget over mutual TLS).
"""

import json
import math

import numpy as np
import pytest
import torch

from fl_smpc import FLConfig
from fl_smpc.config import OwnerBounds
from fl_smpc.data_owner import owner as owner_module
from fl_smpc.data_owner.owner import MODEL, DataOwner
from fl_smpc.data_owner.privacy import (
    DPSettings,
    OwnerBudget,
    accounting_noise_multiplier,
    noise_variance,
    sensitivity_squared_quanta,
)
from fl_smpc.data_owner.task import load_task
from fl_smpc.errors import ConfigError
from fl_smpc.network.links import InProcessLink
from fl_smpc.network.wire import Message

FEATURES = 4
PRECISION = 3
SESSION = "s"
DP = {"mode": "distributed", "noise_multiplier": 2.0, "clip_norm": 1.0, "sampling_rate": 0.5, "min_owners": 3}


def rows(seed, n=12):
    generator = torch.Generator().manual_seed(seed)
    data = (torch.rand(n, FEATURES, generator=generator) > 0.5).float()
    return data, (torch.rand(n, 1, generator=generator) > 0.5).float()


def make_owner(name="bob", names=("bob", "alice", "jane"), seed=0, ledger=None, bounds=None, **own):
    """One honest owner with DP on (its own settings ``DP`` + ``own``); its peers are unreachable stand-ins."""
    settings = DPSettings(**{**DP, "epsilon": 3.0, "delta": 1e-5, **own})
    peers = {peer: None for peer in names if peer != name}
    owner = DataOwner(name, *rows(seed), load_task("toy"), bounds or OwnerBounds(dp=settings), peers=peers,
                      log=lambda line: None, ledger=ledger)  # fmt: skip
    assert hello(owner, names).kind == "welcome"
    return owner


def hello(owner, names=("bob", "alice", "jane"), session=SESSION):
    fields = {"session": session, "owners": list(names), "neighbours": None, "graph_seed": "00" * 16}
    return owner.handle(MODEL, Message("hello", fields))


def request(owner, dp, round_=1, kind="train", owners=("bob", "alice", "jane"), aggregation="pairwise",
            precision=PRECISION, params=None, session=SESSION):  # fmt: skip
    settings = {"precision": precision, "aggregation": aggregation}
    if kind == "train":
        settings.update(lr=0.1, local_steps=1, fl_round=1, weighting="samples", batch_size=None, dp=dp)
    fields = {"session": session, "round": round_, "owners": list(owners), "task": "toy",
              "fingerprint": owner.fingerprint, "settings": settings}  # fmt: skip
    if params is None:
        params = np.zeros(owner.parameters, dtype=np.float32)
    return Message(kind, fields, {"params": params})


def ask(owner, *args, **kwargs):
    return owner.handle(MODEL, request(owner, *args, **kwargs))


def spent(owner):
    return 0 if owner.budget is None else owner.budget.rounds


# --- (d) a sum over fewer owners than the noise is split over ------------------------------------------------


def test_an_owner_never_joins_a_sum_over_fewer_owners_than_its_noise_is_split_over():
    """HOLE, fixed. An in-process owner with ``OwnerBounds(dp=DPSettings(mode="distributed", min_owners=5))``
    kept the default ``OwnerBounds.min_owners = 3``. The model owner asked a round over 3 owners with the owner's
    own settings (``min_owners`` 5 in the request: each owner adds 1/5 of the variance); the owner answered
    ``ready`` and spent a round: the sum, even with all 3 owners honest, carried 3/5 of the accounted noise.
    (The CLI worker and ``train_with_owners`` set both to the same number, so only the API was open.)
    Fix: ``DataOwner.least_owners`` = max(2, bounds.min_owners, dp.noise_shares), used for the round's owners,
    for a peer's share and for the pairwise survivors, and announced in ``welcome``. Before the fix this test
    failed at the first assertion (reply ``ready``, epsilon 1.36 spent)."""
    names = ("bob", "alice", "jane", "carl", "dave")
    owner = make_owner(names=names, min_owners=5)
    assert owner.bounds.min_owners == 3 and hello(owner, names).fields["min_owners"] == 5
    for dp in ({**DP, "min_owners": 5}, {**DP, "min_owners": 3}):
        reply = ask(owner, dp, owners=names[:3], aggregation="additive")
        assert reply.kind == "refused" and "at least 5 owners" in reply.fields["reason"], reply.fields
    assert owner.contributions == 0 and spent(owner) == 0
    assert ask(owner, {**DP, "min_owners": 5}, owners=names).kind == "ready"  # the full set: served
    assert spent(owner) == 1


def federation(names, own):
    """Owners of the names that are each other's peers (in-process links through the wire codec), DP on."""
    settings = DPSettings(**{**DP, "epsilon": 50.0, "delta": 1e-5, **own})
    owners = {
        name: DataOwner(
            name, *rows(i), load_task("toy"), OwnerBounds(dp=settings, peer_timeout=0.5), log=lambda line: None
        )  # fmt: skip
        for i, name in enumerate(names)
    }
    for name, owner in owners.items():
        owner.peers.update({peer: InProcessLink(other, name) for peer, other in owners.items() if peer != name})
    links = {name: InProcessLink(owner, MODEL) for name, owner in owners.items()}
    for link in links.values():
        fields = {"session": SESSION, "owners": list(names), "neighbours": None, "graph_seed": "00" * 16}
        assert link.request(Message("hello", fields)).kind == "welcome"
    return owners, links


def test_pairwise_a_model_owner_cannot_drop_survivors_below_the_noise_shares():
    """HOLE, fixed (the same root as the test above, in double masking). Four owners, distributed DP over 4
    (``min_owners`` 4 in their DP settings, 3 in their bounds). All four mask their vectors; the model owner then
    announces carl as dropped and asks the three others for their unmasking shares. Before the fix they answered
    (``len(survivors) >= bounds.min_owners = 3``): the model owner unmasks a sum of 3 noise shares of 1/4 each.
    Now every responder refuses ("at least 4 owners"): there is no such sum."""
    names = ("bob", "alice", "jane", "carl")
    owners, links = federation(names, {"min_owners": 4})
    dp = {**DP, "min_owners": 4}
    for name, link in links.items():
        reply = link.request(request(owners[name], dp, owners=names))
        assert reply.kind == "ready" and reply.fields["unreached"] == [], reply.fields
    mask = {"session": SESSION, "round": 1, "participants": list(names)}
    assert all(link.request(Message("mask", mask)).kind == "masked" for link in links.values())
    survivors = ["bob", "alice", "jane"]
    story = {"session": SESSION, "round": 1, "kind": "train", "survivors": survivors, "dropped": ["carl"],
             "responders": survivors}  # fmt: skip
    for name in survivors:
        links[name].request(Message("views", story))
    for name in survivors:
        reply = links[name].request(Message("unmask", story))
        assert reply.kind == "refused" and "at least 4 owners" in reply.fields["reason"], reply.fields


# --- (b) settings that pass weaker_than but carry less noise -----------------------------------------------


def test_a_smaller_clip_norm_cannot_shrink_the_distributed_noise_below_what_the_budget_counts():
    """HOLE (tiny), fixed. ``weaker_than`` ignored ``clip_norm`` ("the noise scales with it"); but the distributed
    bound (Kairouz, Liu & Steinke 2021: epsilon = Delta / sqrt(m s2) + tau sqrt(d)) has a ``tau`` that grows as each
    owner's share s2 shrinks, and the owner's budget counts ``accounting_noise_multiplier`` of its OWN clip norm.
    The owner: z = 0.3396, C = 1 (shares of ~40,000 quanta**2: tau underflows, the budget counts 0.3396). The
    request: the same z and C = 0.005 (K = 5, the least check_grid allows for the toy's 5 values), so that each
    share is s2 = 1 quantum**2 with z**2 Delta**2 / m = 0.9995 (no slack from rounding up): the sum's real bound is
    2.9471 against the 1 / z = 2.9446 the budget counts (effective multiplier 0.33945 < 0.3396). Small (at most
    ~3e-4 sqrt(min_owners) relative), but released as "at least as strong". Now refused when the request's
    accounting multiplier is below the owner's. Before the fix the request was served (``ready``, a round spent)."""
    owner = make_owner(noise_multiplier=0.3396, epsilon=1000.0)
    small = {**DP, "noise_multiplier": 0.3396, "clip_norm": 0.005}
    settings = DPSettings(**small)
    assert noise_variance(settings, PRECISION) == 1
    assert accounting_noise_multiplier(settings, PRECISION, owner.parameters + 1) < 0.3396
    reply = ask(owner, small)
    assert reply.kind == "refused" and "effective noise multiplier" in reply.fields["reason"], reply.fields
    assert owner.contributions == 0 and spent(owner) == 0


def test_every_accepted_request_carries_at_least_the_accounted_noise():
    """HELD (and the tau check above). Many requests around the owner's settings (z, q, mode, min_owners, clip
    norms from 4 quanta to 10**6): for each one the owner accepts, the noise it adds per unit of the real
    sensitivity (s2 / Delta**2, both exact integers at the run's grid) is at least z_own**2 / shares_own, its
    sampling rate at most q_own, and the accountant's multiplier at least the budget's. Weakened (``weaker_than``
    returning no reasons, scratch copy) this failed on the first weaker request (sampling rate 0.51 > 0.5)."""
    owner = make_owner()
    own = owner.bounds.dp
    accepted = 0
    for mode, m in (("distributed", 2), ("distributed", 3), ("distributed", 4), ("local", 1), ("local", 7)):
        for z in (1.0, 1.999, 2.0, 2.5):
            for q in (0.05, 0.5, 0.51, 1.0):
                for clip in (0.004, 0.005, 0.3, 1.0, 1000.0):
                    req = {"mode": mode, "noise_multiplier": z, "clip_norm": clip, "sampling_rate": q, "min_owners": m}
                    try:
                        dp = owner._dp_of(req, 1, PRECISION)
                    except owner_module.Refusal:
                        continue
                    accepted += 1
                    ratio = noise_variance(dp, PRECISION) / sensitivity_squared_quanta(dp.clip_norm, PRECISION)
                    assert ratio >= own.noise_multiplier**2 / own.noise_shares, req
                    assert dp.sampling_rate <= own.sampling_rate, req
                    dimension = owner.parameters + 1
                    assert accounting_noise_multiplier(dp, PRECISION, dimension) >= accounting_noise_multiplier(
                        own, PRECISION, dimension
                    ), req
    assert accepted > 20


# --- (a) more rounds than the budget allows ------------------------------------------------------------------


def test_the_budget_holds_across_sessions_precisions_and_redone_rounds(tmp_path):
    """HELD. The model owner redoes each round with the same params and opens a new session (a new ``hello``,
    round numbers from 1 again) after every round, and tries another precision: every release is counted (the
    budget lives on the owner, not on the run), each is freshly noised, the ledger on disk counts them all, another
    precision is refused, and the round after the budget is declined with "privacy budget spent". Weakened (the
    budget reset on each ``hello``, in a scratch copy) the owner served far more rounds than allowed."""
    ledger = str(tmp_path / "bob.dp-ledger.json")
    owner = make_owner(ledger=ledger, epsilon=2.0)
    allowed = OwnerBudget.for_settings(owner.bounds.dp, PRECISION, owner.parameters + 1).max_rounds()
    assert allowed == 2
    vectors, served = [], 0
    for session in range(allowed + 2):
        assert hello(owner, session=f"s{session}").kind == "welcome"
        if session == 1:
            other = ask(owner, DP, precision=PRECISION + 1, session=f"s{session}")
            assert other.kind == "refused" and f"at precision {PRECISION}" in other.fields["reason"]
        reply = ask(owner, DP, round_=1, session=f"s{session}")
        if reply.kind == "refused":
            assert "privacy budget spent" in reply.fields["reason"]
            continue
        served += 1
        vectors.append(owner.run.prepared[3].copy())
        with open(ledger) as f:
            assert json.load(f)["rounds"] == served
    assert served == allowed == spent(owner)
    assert all(not np.array_equal(vectors[0], v) for v in vectors[1:])  # fresh noise on every redo


def test_two_workers_on_the_same_data_share_one_budget(tmp_path):
    """HOLE, fixed. The same data served by two workers (one per model owner, or a second one started by
    mistake), so with the same ledger (``DATA.dp-ledger.json`` by default): each loaded the ledger at start and
    counted from it in memory, the last writer won. Before the fix each of the two served the whole budget (2 +
    2 = 4 releases of the same rows for a budget of 2 rounds), and the ledger said 2. Now every release is
    counted under the ledger's lock after catching up with the other's rounds: 2 in all, then "privacy budget
    spent" from both."""
    ledger = str(tmp_path / "data.csv.dp-ledger.json")
    first, second = make_owner(ledger=ledger, epsilon=2.0), make_owner(ledger=ledger, epsilon=2.0)
    allowed = OwnerBudget.for_settings(first.bounds.dp, PRECISION, first.parameters + 1).max_rounds()
    assert allowed == 2
    served = 0
    for round_ in range(1, 4):
        for owner in (first, second):
            reply = ask(owner, DP, round_=round_)
            if reply.kind == "refused":
                assert "privacy budget spent" in reply.fields["reason"], reply.fields
            else:
                served += 1
    assert served == allowed
    with open(ledger) as f:
        assert json.load(f)["rounds"] == allowed


def test_a_release_whose_ledger_cannot_be_written_does_not_leave(tmp_path):
    """HELD. The ledger's directory vanishes (disk full, read-only): the round is declined with a one-line
    refusal before anything leaves, and the budget does not move. Weakened (``owner.ledger = None``, the ledger
    ignored) the release went out with no record on disk."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    owner = make_owner(ledger=str(folder / "bob.dp-ledger.json"))
    folder.rmdir()
    reply = ask(owner, DP)
    assert reply.kind == "refused" and "cannot record its privacy budget" in reply.fields["reason"]
    assert spent(owner) == 0 and owner.run.prepared is None


# --- (c) nothing data-dependent outside the noised vector --------------------------------------------------


def test_with_dp_every_reply_is_the_same_whatever_the_owners_data():
    """HELD. Two owners with different rows get the same sequence of requests (DP rounds at crafted params:
    zeros, 1e30, -1e30; an evaluation; a round without DP; weaker DP; more local steps; garbage): every reply is
    identical field by field (refusal texts, epsilon, unreached), the only array-free contribution is the prepared
    P + 1 noised vector (no loss, no count in the clear), and an evaluation prepares nothing. Weakened (the
    "no evaluation" refusal removed in a scratch copy) the evaluation was prepared: the test failed."""
    first, second = make_owner(seed=1), make_owner(seed=2)
    assert not torch.equal(first.data, second.data)
    p = first.parameters
    requests = [
        {"dp": DP, "round_": 1},
        {"dp": DP, "round_": 2, "params": np.full(p, 1e30, dtype=np.float32)},
        {"dp": DP, "round_": 3, "params": np.full(p, -1e30, dtype=np.float32)},
        {"dp": None, "round_": 4, "kind": "evaluate"},
        {"dp": None, "round_": 5},
        {"dp": {**DP, "noise_multiplier": 1.0}, "round_": 6},
        {"dp": {**DP, "clip_norm": 1e-9}, "round_": 7},
        {"dp": DP, "round_": 8, "params": np.full(p, np.nan, dtype=np.float32)},
    ]
    for kwargs in requests:
        replies = [ask(owner, **kwargs) for owner in (first, second)]
        assert replies[0].kind == replies[1].kind and replies[0].fields == replies[1].fields, kwargs
        assert not replies[0].arrays
        for owner in (first, second):
            if replies[0].kind == "ready":
                assert owner.run.prepared[0] == "train" and owner.run.prepared[3].size == p + 1
            else:
                assert owner.run.prepared is None or owner.run.prepared[1] != kwargs["round_"]
        if kwargs.get("kind") == "evaluate":
            assert replies[0].kind == "refused" and "no evaluation" in replies[0].fields["reason"]
    assert spent(first) == spent(second) == 3


# --- garbage in the DP fields ------------------------------------------------------------------------------

GARBAGE = [10**400, -(10**400), 2**63, float("nan"), float("inf"), -float("inf"), -1, 0, True, False, None, "1",
           [1], {}, 1e300, 1e-300]  # fmt: skip


@pytest.mark.parametrize("name", ["mode", "noise_multiplier", "clip_norm", "sampling_rate", "min_owners"])
def test_garbage_in_a_dp_field_is_a_one_line_refusal_naming_it(name):
    """HELD for most values; FIXED for three. Every garbage value of every DP field gets a one-line refusal that
    names the field (never the generic "train failed"), before the round is reserved, and nothing is spent.
    Before the fix: an integer beyond float's range (``10**400``, valid JSON) raised OverflowError inside
    ``DPSettings`` (``math.isfinite``), so the owner answered the generic "train failed on owner 'bob'" (and
    ``DPSettings`` / ``FLConfig`` raised OverflowError in-process); the refusal of ``mode`` = ``10**400`` echoed all
    401 digits; a clip norm below the grid (``1e-300``, or 4 quanta for 5 values) was accepted, reserved the round
    and failed inside training ("train failed"). Each failed this test before the fix."""
    owner = make_owner()
    for value in GARBAGE:
        reply = ask(owner, {**DP, name: value})
        if reply.kind != "refused":  # a value that is merely stronger (1e-300 as a sampling rate) is served
            assert name == "sampling_rate" and value == 1e-300
            continue
        reason = reply.fields["reason"]
        assert "\n" not in reason and len(reason) < 300 and "failed on owner" not in reason, (value, reason)
        assert name.replace("_", " ") in reason or name in reason or "weaker" in reason, (value, reason)
    assert owner.contributions == spent(owner) <= 1


@pytest.mark.parametrize("dp", ["distributed", 3, [DP], {**DP, "epsilon": 100.0}, {"mode": "local"}, True])
def test_garbage_dp_settings_are_refused(dp):
    owner = make_owner()
    reply = ask(owner, dp)
    assert reply.kind == "refused" and "dp settings hold exactly" in reply.fields["reason"]
    assert owner.contributions == 0


@pytest.mark.parametrize("value", [10**400, float("nan"), -1.0, True])
def test_a_huge_integer_in_the_api_is_a_config_error_not_a_traceback(value):
    """FIXED: ``DPSettings(noise_multiplier=10**400)`` raised OverflowError, ``FLConfig(dp_noise=10**400)`` too."""
    with pytest.raises(ConfigError, match="noise_multiplier"):
        DPSettings(noise_multiplier=value)
    with pytest.raises(ConfigError):
        FLConfig(training="owner", dp="distributed", local_steps=1, dp_noise=value)
    with pytest.raises(ConfigError):
        OwnerBudget(3.0, 1e-5, value, 0.5)


# --- a hostile peer owner -----------------------------------------------------------------------------------


def test_a_hostile_peer_can_neither_ask_for_a_release_nor_break_the_sum_into_a_crash():
    """HELD. A peer (alice, authenticated as herself) sends the model owner's requests: each refused, nothing
    spent. In a DP additive round she then sends a share of the non-DP length (P + 3, which the owner accepts for
    ``train``) and jane a proper one: the owner's sum share is one generic line (the round is lost, an
    availability matter: a peer can always withhold its share), never a traceback and never a partial sum.
    Weakened (peers served the model owner's requests, in a scratch copy) alice's ``hello`` was welcomed."""
    owner = make_owner()
    for kind in ("hello", "train", "evaluate", "sum", "mask", "unmask"):
        message = request(owner, DP, kind="train") if kind == "train" else Message(kind, {"session": SESSION})
        reply = owner.handle("alice", message)
        assert reply.kind == "refused" and "not a request this owner serves" in reply.fields["reason"]
    assert owner.contributions == 0 and spent(owner) == 0
    message = request(owner, DP, aggregation="additive")
    shared = owner.handle(MODEL, message)
    assert shared.kind == "shared" and "epsilon" in shared.fields
    digest = owner_module.request_digest(
        SESSION, "train", 1, ("bob", "alice", "jane"), message.fields["settings"], message.arrays["params"]
    )
    fields = {"session": SESSION, "kind": "train", "round": 1, "owners": ["bob", "alice", "jane"], "request": digest}
    p = owner.parameters
    for peer, size in (("alice", p + 3), ("jane", p + 1)):
        share = np.zeros(size, dtype=np.int64)
        assert owner.handle(peer, Message("share", fields, {"share": share})).kind == "ok"
    reply = owner.handle(MODEL, Message("sum", {"session": SESSION, "kind": "train", "round": 1}))
    assert reply.kind == "refused" and not reply.arrays and "\n" not in reply.fields["reason"]
    assert spent(owner) == 1 and math.isfinite(owner.budget.epsilon_spent)
