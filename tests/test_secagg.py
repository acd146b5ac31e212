"""SecAgg double masking with SecAgg+ neighbour graphs, in process: exact sums with and without dropouts,
and every lie of a model owner (issue 17) yields no owner's vector.

Each lie is also played against a weakened owner (one of its checks switched off with
``unsafe_skip_checks``), to show the test can fail: there the same attacker recovers the vector exactly.
The attacker is the model owner: it holds every masked vector and every round public key, and pools every
share any owner gave it in the round.
"""

import contextlib
from typing import Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir

from fl_smpc.data_owner.secagg import (
    CHECKS,
    MASK_KEY,
    SELF_MASK,
    SHARES_FORMAT,
    SecAggOwner,
    SecAggRefused,
    SecAggSession,
    UnmaskingError,
    ViewsMissing,
    add_keystreams,
    mask_private_key,
    min_threshold,
    neighbour_graph,
    round_pair_key,
    self_mask_key,
    unpack_share,
)
from fl_smpc.model_owner.unmasking import unmask_sum
from fl_smpc.pairwise_owner import RING, encode

PRECISION = 3
QUANTUM = 10.0**-PRECISION
Answers = Dict[str, Dict[str, Tuple[str, bytes]]]
Story = Tuple[Set[str], Set[str], Set[str]]  # survivors, dropped, responders


class Federation:
    """N owners of one session, driven in process the way the lead's handlers will drive them."""

    def __init__(
        self,
        n: int,
        k: Optional[int] = None,
        threshold: Optional[int] = None,
        skip: Iterable[str] = (),
        size: int = 1000,
        seed: int = 0,
    ):
        self.names = [f"o{i}" for i in range(n)]
        self.skip = frozenset(skip)
        unsafe = "min_threshold" in self.skip
        self.session = SecAggSession.create("test-session", self.names, k, b"graph", threshold, unsafe)
        self.owners = {name: SecAggOwner(name, self.session, self.skip) for name in self.names}
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.round = 0

    def values(self) -> Dict[str, np.ndarray]:
        return {name: (self.rng.standard_normal(self.size) * 3).astype(np.float32) for name in self.names}

    def shares(self, round_: int, among: Optional[Iterable[str]] = None) -> None:
        members = set(self.names if among is None else among)
        for sender in sorted(members):
            for receiver, message in self.owners[sender].outgoing_shares(round_).items():
                if receiver in members:
                    self.owners[receiver].receive_shares(sender, message)

    def mask(
        self, round_: int, encoded: Mapping[str, np.ndarray], participants: Iterable[str], senders: Iterable[str]
    ) -> Tuple[Dict[str, np.ndarray], Dict[str, bytes]]:
        members = set(participants)
        masked = {name: self.owners[name].masked_vector(round_, encoded[name], members) for name in sorted(senders)}
        keys = {name: self.owners[name].public_key(round_) for name in members}
        return masked, keys

    def unmask(self, round_: int, stories: Mapping[str, Story]) -> Answers:
        """Each responder is told its story (survivors, dropped, responders); views go owner to owner; returns
        the answers of the owners that gave one."""
        outgoing = []  # every announcement first, then every view, then the answers
        for name, (survivors, dropped, responders) in stories.items():
            with contextlib.suppress(SecAggRefused):
                outgoing.append((name, self.owners[name].consistency_view(round_, survivors, dropped, responders)))
        for name, views in outgoing:
            for peer, message in views.items():
                with contextlib.suppress(SecAggRefused):
                    self.owners[peer].receive_view(name, message)
        answers = {}
        for name, (survivors, dropped, responders) in stories.items():
            with contextlib.suppress(SecAggRefused):
                answers[name] = self.owners[name].unmask_answer(round_, survivors, dropped, responders)
        return answers

    def honest_round(self, encoded, participants=None, senders=None, responders=None):
        """One round as an honest model owner runs it: the exact sum of the survivors' encoded vectors."""
        self.round += 1
        participants = set(self.names if participants is None else participants)
        senders = set(participants if senders is None else senders)
        responders = set(senders if responders is None else responders)
        self.shares(self.round, participants)
        masked, keys = self.mask(self.round, encoded, participants, senders)
        story = (senders, participants - senders, responders)
        answers = self.unmask(self.round, dict.fromkeys(responders, story))
        return unmask_sum(self.session, self.round, participants, masked, keys, answers), masked, keys, answers


def encoded_values(values: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {name: encode(v, PRECISION) for name, v in values.items()}


def plain_sum(encoded: Mapping[str, np.ndarray], owners: Iterable[str]) -> np.ndarray:
    total = np.zeros(next(iter(encoded.values())).size, dtype=RING)
    for name in owners:
        total += encoded[name]
    return total


def pooled_secret(session: SecAggSession, answer_sets: Sequence[Answers], owner: str, kind: str) -> Optional[bytes]:
    """What the attacker can reconstruct from every answer it ever got: the secret, or None (< t shares)."""
    shares = {}
    for answers in answer_sets:
        for given in answers.values():
            if owner in given and given[owner][0] == kind:
                index, share = unpack_share(given[owner][1])
                shares[index] = share
    if len(shares) < session.threshold:
        return None
    return Shamir.combine(sorted(shares.items())[: session.threshold], False)


def attack(
    fed: Federation,
    round_: int,
    victim: str,
    y: np.ndarray,
    partners: Iterable[str],
    keys: Mapping[str, bytes],
    answer_sets: Sequence[Answers],
    self_mask: bool = True,
) -> Optional[np.ndarray]:
    """The attacker's estimate of ``victim``'s encoded vector from its masked vector ``y``: None when it lacks
    the shares to strip a mask (b of the victim; s of the victim or of each partner)."""
    session = fed.session
    streams = []
    if self_mask:
        b = pooled_secret(session, answer_sets, victim, SELF_MASK)
        if b is None:
            return None
        streams.append((False, self_mask_key(b, session.id, victim, round_)))
    s_victim = pooled_secret(session, answer_sets, victim, MASK_KEY)
    for peer in sorted(partners):
        if s_victim is not None:
            private = mask_private_key(s_victim, session.id, victim, round_)
            key = round_pair_key(private, keys[peer], session.id, round_, victim, peer)
        else:
            s_peer = pooled_secret(session, answer_sets, peer, MASK_KEY)
            if s_peer is None:
                return None
            private = mask_private_key(s_peer, session.id, peer, round_)
            key = round_pair_key(private, keys[victim], session.id, round_, peer, victim)
        streams.append((not peer > victim, key))  # the victim added the keystream if the peer sorts after it
    return add_keystreams(y.copy(), streams, round_)


def recovered(estimate: Optional[np.ndarray], truth: np.ndarray) -> bool:
    return estimate is not None and bool(np.array_equal(estimate, truth))


# --- honest rounds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 7, 10])
def test_no_dropout_gives_the_exact_sum(n):
    fed = Federation(n)
    for _ in range(2):  # two rounds: fresh keys each
        values = fed.values()
        encoded = encoded_values(values)
        total, masked, _, _ = fed.honest_round(encoded)
        assert np.array_equal(total, plain_sum(encoded, fed.names))
        mean = total.astype(np.float64) / 10**PRECISION / n
        assert np.abs(mean - np.mean([v.astype(np.float64) for v in values.values()], axis=0)).max() <= QUANTUM
        for name in fed.names:  # what the model owner sees of one owner looks nothing like it
            assert np.abs(masked[name] - encoded[name]).min() > 2**40


def test_a_large_vector_sums_exactly():
    fed = Federation(10, size=100_000)
    encoded = encoded_values(fed.values())
    total, *_ = fed.honest_round(encoded)
    assert np.array_equal(total, plain_sum(encoded, fed.names))


@pytest.mark.parametrize(("n", "k"), [(7, None), (10, None), (10, 4), (12, 5), (11, 5)])
def test_dropouts_before_and_after_masking_cost_no_redo(n, k):
    """Owner A is lost after the shares (its vector never arrives), owner B after its masked vector (it
    gives no answer): one unmasking among the others gives the exact sum over the survivors, B included."""
    fed = Federation(n, k)
    values = fed.values()
    encoded = encoded_values(values)
    lost_before, lost_after = fed.names[1], fed.names[-1]
    senders = set(fed.names) - {lost_before}
    total, *_ = fed.honest_round(encoded, senders=senders, responders=senders - {lost_after})
    assert np.array_equal(total, plain_sum(encoded, senders))
    mean = total.astype(np.float64) / 10**PRECISION / len(senders)
    plain = np.mean([values[s].astype(np.float64) for s in senders], axis=0)
    assert np.abs(mean - plain).max() <= QUANTUM
    # the next round goes on with everyone, on fresh keys
    encoded = encoded_values(fed.values())
    total, *_ = fed.honest_round(encoded)
    assert np.array_equal(total, plain_sum(encoded, fed.names))


def test_too_few_answers_cannot_be_unmasked():
    fed = Federation(5)  # t = 3
    encoded = encoded_values(fed.values())
    fed.round = 1
    fed.shares(1)
    masked, keys = fed.mask(1, encoded, fed.names, fed.names)
    story: Story = (set(fed.names), set(), set(fed.names))
    answers = fed.unmask(1, dict.fromkeys(fed.names, story))
    few = {name: answers[name] for name in fed.names[:2]}
    with pytest.raises(UnmaskingError, match="needed"):
        unmask_sum(fed.session, 1, fed.names, masked, keys, few)
    assert np.array_equal(unmask_sum(fed.session, 1, fed.names, masked, keys, answers), plain_sum(encoded, fed.names))


# --- sessions and neighbour graphs ---------------------------------------------------------------------------


def test_neighbour_graphs_are_harary_graphs_under_a_public_permutation():
    owners = [f"o{i}" for i in range(20)]
    for k in (2, 3, 4, 5, 8):
        graph = neighbour_graph(owners, k, b"seed")
        degrees = sorted(len(v) for v in graph.values())
        assert degrees == [k] * 20
        assert all(a in graph[b] for a in owners for b in graph[a])  # undirected
        assert graph == neighbour_graph(owners, k, b"seed")  # everyone derives the same graph
        assert graph != neighbour_graph(owners, k, b"other seed")
        session = SecAggSession.create("s", owners, k, b"seed")
        assert session.threshold == (k + 1) // 2 + 1 and session.connected(owners)
        # k-connected: no k - 1 owners cut it
        assert all(session.connected(set(owners) - set(owners[i : i + k - 1])) for i in range(20))
    odd = neighbour_graph([f"o{i}" for i in range(11)], 5, b"seed")
    assert sorted(len(v) for v in odd.values()) == [5] * 10 + [6]
    assert neighbour_graph(owners, None, b"") == neighbour_graph(owners, 19, b"") == neighbour_graph(owners, 40, b"")
    assert all(len(v) == 19 for v in neighbour_graph(owners, None, b"").values())


def test_an_owner_refuses_an_unsafe_threshold_or_a_forged_graph():
    owners = ["a", "b", "c", "d", "e"]
    assert min_threshold(neighbour_graph(owners, None, b"")) == 3
    with pytest.raises(SecAggRefused, match="threshold"):
        SecAggSession.create("s", owners, threshold=2)  # two stories of 2 + 2 holders would fit among 5
    with pytest.raises(SecAggRefused, match="threshold"):
        SecAggSession.create("s", owners, threshold=6)  # more than the holders: secrets lost
    session = SecAggSession.create("s", [f"o{i}" for i in range(10)], 4, b"seed")
    forged = SecAggSession(session.id, session.owners, neighbour_graph(session.owners, 4, b"x"), 3, 4, b"seed")
    with pytest.raises(SecAggRefused, match="graph"):
        SecAggOwner("o0", forged)
    low = SecAggSession(session.id, session.owners, session.neighbours, 2, 4, b"seed")
    with pytest.raises(SecAggRefused, match="threshold"):
        SecAggOwner("o0", low)


def test_shares_messages_are_checked():
    fed = Federation(4)
    messages = fed.owners["o0"].outgoing_shares(1)
    assert set(messages) == {"o1", "o2", "o3"} and {len(m) for m in messages.values()} == {SHARES_FORMAT.size}
    o1 = fed.owners["o1"]
    with pytest.raises(SecAggRefused, match="bytes"):
        o1.receive_shares("o0", messages["o1"] + b"\0")
    with pytest.raises(SecAggRefused, match="index"):
        o1.receive_shares("o0", messages["o2"])  # o2's shares, replayed to o1
    other = SecAggOwner("o0", SecAggSession.create("other-session", fed.names)).outgoing_shares(1)
    with pytest.raises(SecAggRefused, match="session"):
        o1.receive_shares("o0", other["o1"])
    o1.receive_shares("o0", messages["o1"])
    o1.receive_shares("o0", messages["o1"])  # the same message twice is harmless
    with pytest.raises(SecAggRefused, match="other shares"):
        o1.receive_shares("o0", messages["o1"][:-1] + bytes([messages["o1"][-1] ^ 1]))
    graph_fed = Federation(10, k=4)
    stranger = next(n for n in graph_fed.names if n not in graph_fed.session.neighbours["o0"] and n != "o0")
    with pytest.raises(SecAggRefused, match="neighbours"):
        graph_fed.owners["o0"].receive_shares(
            stranger, next(iter(graph_fed.owners[stranger].outgoing_shares(1).values()))
        )


def test_every_round_has_fresh_keys_and_an_owner_told_it_dropped_refuses():
    fed = Federation(5)
    encoded = encoded_values(fed.values())
    _, _, keys1, _ = fed.honest_round(encoded)
    _, _, keys2, _ = fed.honest_round(encoded_values(fed.values()))
    assert not set(keys1.values()) & set(keys2.values())
    fed.round = 3
    fed.shares(3)
    fed.mask(3, encoded_values(fed.values()), fed.names, fed.names)
    with pytest.raises(SecAggRefused, match="survivors"):
        fed.owners["o0"].consistency_view(3, set(fed.names) - {"o0"}, {"o0"}, set(fed.names))


def test_an_owner_masks_only_if_t_of_its_holders_take_part():
    """Told a participant set with fewer than t of its share holders, an owner masks nothing: otherwise a model
    owner could declare those few partners dropped and strip every pair mask off its vector."""
    fed = Federation(7)  # t = 4
    fed.shares(1)
    encoded = encoded_values(fed.values())
    with pytest.raises(SecAggRefused, match="share holders take part"):
        fed.owners["o0"].masked_vector(1, encoded["o0"], {"o0", "o1", "o2"})
    fed.owners["o0"].masked_vector(1, encoded["o0"], {"o0", "o1", "o2", "o3"})


# --- the lies ----------------------------------------------------------------------------------------------


def split_stories(fed: Federation, victim: str, group_a: Sequence[str], group_b: Sequence[str], ask_all: bool):
    """Group A is told the victim dropped (to give s shares), group B that it survived (to give b shares); the
    responders are every survivor of the story (``ask_all``) or the group itself."""
    everyone = set(fed.names)
    a_story = (everyone - {victim}, {victim}, everyone - {victim} if ask_all else set(group_a))
    b_story: Story = (everyone, set(), everyone if ask_all else set(group_b))
    return {**dict.fromkeys(group_a, a_story), **dict.fromkeys(group_b, b_story)}


@pytest.mark.parametrize(
    ("skip", "threshold", "leaks"),
    [
        ((), None, False),
        ({"consistency"}, None, False),  # the threshold alone still stops it: 2t - 1 > the victim's holders
        ({"min_threshold"}, 2, False),  # the consistency step alone stops it
        ({"consistency", "min_threshold"}, 2, True),  # weakened: both off
    ],
)
def test_different_survivor_sets_told_to_different_owners_yield_nothing(skip, threshold, leaks):
    victim = "o0"
    for ask_all in (True, False):
        group_a, group_b = ["o1", "o2", "o3"], ["o0", "o4", "o5", "o6"]
        fed = Federation(7, threshold=threshold, skip=skip, seed=1)
        encoded = encoded_values(fed.values())
        fed.shares(1)
        masked, keys = fed.mask(1, encoded, fed.names, fed.names)
        answers = fed.unmask(1, split_stories(fed, victim, group_a, group_b, ask_all))
        if not skip:
            # asking every survivor, each owner sees a view not its own; asking only the group, group A is
            # not a majority of the session: the B group answers its own consistent story (b shares only)
            assert set(answers) == (set() if ask_all else set(group_b))
        estimate = attack(fed, 1, victim, masked[victim], set(fed.names) - {victim}, keys, [answers])
        assert recovered(estimate, encoded[victim]) is leaks


@pytest.mark.parametrize(
    ("skip", "threshold", "leaks"),
    [
        ((), None, False),
        ({"consistency"}, None, False),  # too few of o0's holders are left to give its b shares
        ({"min_threshold"}, 2, False),  # the responders are no majority
        ({"consistency", "min_threshold"}, 2, True),
    ],
)
def test_a_smaller_participant_set_told_to_one_owner_yields_nothing(skip, threshold, leaks):
    """o0 is told only o1..o3 take part, the others that all seven do; then o1..o3 are declared dropped (their
    s shares strip o0's pair masks) and o0 a survivor (its b shares strip its self mask)."""
    fed = Federation(7, threshold=threshold, skip=skip)
    encoded = encoded_values(fed.values())
    fed.shares(1)
    everyone = set(fed.names)
    small = {"o0", "o1", "o2", "o3"}
    y = fed.owners["o0"].masked_vector(1, encoded["o0"], small)
    masked, keys = fed.mask(1, encoded, everyone, everyone - {"o0"})
    masked["o0"] = y
    responders = {"o4", "o5", "o6"}
    story = (everyone - {"o1", "o2", "o3"}, {"o1", "o2", "o3"}, responders)
    answers = fed.unmask(1, dict.fromkeys(responders, story))
    if not skip:
        assert answers == {}
    estimate = attack(fed, 1, "o0", y, small - {"o0"}, keys, [answers])
    assert recovered(estimate, encoded["o0"]) is leaks


@pytest.mark.parametrize(("skip", "leaks"), [((), False), ({"round_order"}, True)])
def test_a_replayed_round_number_is_refused(skip, leaks):
    """Round 1 runs honestly; the model owner then asks an owner to mask its next contribution under round 1
    again: the same masks, so the two masked vectors would give the difference of its two contributions."""
    fed = Federation(5, skip=skip)
    first = encoded_values(fed.values())
    _, masked, _, _ = fed.honest_round(first)
    second = encoded_values(fed.values())
    victim = fed.owners["o2"]
    if not leaks:
        with pytest.raises(SecAggRefused, match="round 1"):
            victim.masked_vector(1, second["o2"], fed.names)
        with pytest.raises(SecAggRefused, match="not after round 1"):
            victim.outgoing_shares(1)
        with pytest.raises(SecAggRefused, match="not after round 1"):
            victim.outgoing_shares(0)
        return
    replayed = victim.masked_vector(1, second["o2"], fed.names)
    assert np.array_equal(replayed - masked["o2"], second["o2"] - first["o2"])


@pytest.mark.parametrize(("skip", "leaks"), [((), False), ({"fresh_vector"}, True)])
def test_the_same_contribution_is_never_in_two_sums(skip, leaks):
    """The model owner replays round 1's parameters under round 2 (owners would train the same vectors) and
    leaves out owner o3: the two sums would differ by o3's vector."""
    fed = Federation(5, skip=skip)
    encoded = encoded_values(fed.values())
    total1, *_ = fed.honest_round(encoded)
    others = set(fed.names) - {"o3"}
    if not leaks:
        with pytest.raises(SecAggRefused, match="already masked"):
            fed.honest_round(encoded, participants=others)
        return
    total2, *_ = fed.honest_round(encoded, participants=others)
    assert np.array_equal(total1 - total2, encoded["o3"])


@pytest.mark.parametrize(("skip", "leaks"), [((), False), ({"once"}, False), ({"once", "one_kind"}, True)])
def test_a_second_unmasking_request_is_refused(skip, leaks):
    """After the honest unmasking (b shares of everyone), the model owner asks again claiming o0 dropped, to get
    o0's s shares too. Refused by "once"; with that off, still by "one_kind"; with both off, o0's vector leaks."""
    fed = Federation(5, skip=skip)
    encoded = encoded_values(fed.values())
    _, masked, keys, first = fed.honest_round(encoded)
    everyone = set(fed.names)
    story = (everyone - {"o0"}, {"o0"}, everyone - {"o0"})
    second = fed.unmask(1, dict.fromkeys(everyone - {"o0"}, story))
    if not skip:
        assert second == {}
    estimate = attack(fed, 1, "o0", masked["o0"], everyone - {"o0"}, keys, [first, second])
    assert recovered(estimate, encoded["o0"]) is leaks


@pytest.mark.parametrize(("skip", "leaks"), [((), False), ({"once", "one_kind"}, True)])
def test_both_kinds_of_shares_of_one_owner_are_never_given(skip, leaks):
    """Asked for o0's b share and then its s share, an owner gives the first only; an announcement naming o0
    both a survivor and dropped is refused outright."""
    fed = Federation(5, skip=skip)
    encoded = encoded_values(fed.values())
    fed.shares(1)
    masked, keys = fed.mask(1, encoded, fed.names, fed.names)
    everyone = set(fed.names)
    first = fed.unmask(1, dict.fromkeys(everyone, (everyone, set(), everyone)))
    others = everyone - {"o0"}
    second = fed.unmask(1, dict.fromkeys(others, (others, {"o0"}, others)))
    estimate = attack(fed, 1, "o0", masked["o0"], others, keys, [first, second])
    assert recovered(estimate, encoded["o0"]) is leaks
    if not leaks:
        assert set(first) == everyone and second == {}
        fresh = Federation(5)
        fresh.shares(1)
        fresh.mask(1, encoded, fresh.names, fresh.names)
        with pytest.raises(SecAggRefused, match="both survived and dropped"):
            fresh.owners["o1"].consistency_view(1, everyone, {"o0"}, everyone)


@pytest.mark.parametrize(("skip", "leaks"), [((), False), ({"self_mask"}, True)])
def test_claiming_a_present_owner_dropped_reveals_only_its_pair_masks(skip, leaks):
    """Everyone is told o0 dropped although its masked vector is in hand: the owners give o0's s shares, so its
    pair masks come off, but its self mask stays (no b share of o0 is given). With the self mask off -- single
    masking, the old pairwise protocol -- its vector leaks."""
    fed = Federation(6, skip=skip)
    encoded = encoded_values(fed.values())
    fed.shares(1)
    masked, keys = fed.mask(1, encoded, fed.names, fed.names)
    everyone = set(fed.names)
    others = everyone - {"o0"}
    answers = fed.unmask(1, dict.fromkeys(others, (others, {"o0"}, others)))
    assert set(answers) == others  # a consistent story: the owners answer
    estimate = attack(fed, 1, "o0", masked["o0"], others, keys, [answers], self_mask=False)
    assert recovered(estimate, encoded["o0"]) is leaks
    if not leaks:
        assert estimate is not None and np.abs(estimate - encoded["o0"]).min() > 2**40  # still masked by b
        # the masks of o0 cannot be removed from a sum it is in: the sum over the others is exact, and adding
        # o0's vector with its pair masks removed leaves its self mask in the sum
        survivors = {name: masked[name] for name in others}
        total = unmask_sum(fed.session, 1, fed.names, survivors, keys, answers)
        assert np.array_equal(total, plain_sum(encoded, others))
        with_o0 = total + estimate
        assert np.abs(with_o0 - plain_sum(encoded, everyone)).min() > 2**40


def test_all_checks_are_exercised():
    assert {
        "round_order",
        "fresh_vector",
        "min_threshold",
        "threshold",
        "partition",
        "connected",
        "consistency",
        "once",
        "one_kind",
        "self_mask",
    } == CHECKS


def test_views_missing_is_not_a_refusal():
    fed = Federation(4)
    fed.shares(1)
    fed.mask(1, encoded_values(fed.values()), fed.names, fed.names)
    everyone = set(fed.names)
    owner = fed.owners["o0"]
    owner.consistency_view(1, everyone, set(), everyone)
    with pytest.raises(ViewsMissing):
        owner.unmask_answer(1, everyone, set(), everyone)
    for peer in fed.names[1:]:
        views = fed.owners[peer].consistency_view(1, everyone, set(), everyone)
        owner.receive_view(peer, views["o0"])
    answer = owner.unmask_answer(1, everyone, set(), everyone)
    assert set(answer) == everyone and {kind for kind, _ in answer.values()} == {SELF_MASK}
    assert owner._round is not None and owner._round.peers == {}  # the peers' s shares are forgotten


def test_disconnected_survivors_are_refused():
    fed = Federation(10, k=2)  # a ring
    fed.shares(1)
    encoded = encoded_values(fed.values())
    ring = fed.session.neighbours
    cut = sorted(ring["o0"])  # o0's two neighbours dropped: o0 alone, the other seven a path
    participants = set(fed.names)
    fed.mask(1, encoded, participants, participants)
    survivors = participants - set(cut)
    with pytest.raises(SecAggRefused, match="not connected"):
        fed.owners["o0"].consistency_view(1, survivors, set(cut), survivors)


def test_an_owner_lost_during_the_consistency_step_is_left_out_by_a_second_announcement():
    """o6's masked vector is in, but it sends no view: the others wait (ViewsMissing); the model owner announces
    the same survivors again with fewer responders, and the round completes without a redo."""
    fed = Federation(7)
    encoded = encoded_values(fed.values())
    fed.shares(1)
    masked, keys = fed.mask(1, encoded, fed.names, fed.names)
    everyone = set(fed.names)
    alive = everyone - {"o6"}
    for name in sorted(alive):
        for peer, message in fed.owners[name].consistency_view(1, everyone, set(), everyone).items():
            fed.owners[peer].receive_view(name, message)
    for name in sorted(alive):
        with pytest.raises(ViewsMissing, match="o6"):
            fed.owners[name].unmask_answer(1, everyone, set(), everyone)
    with pytest.raises(SecAggRefused, match="announced twice"):  # another story is not allowed
        fed.owners["o0"].consistency_view(1, everyone - {"o6"}, {"o6"}, alive)
    answers = fed.unmask(1, dict.fromkeys(alive, (everyone, set(), alive)))
    assert set(answers) == alive - {"o0"}  # o0 refused the other story above, and stays out of this round
    assert np.array_equal(unmask_sum(fed.session, 1, fed.names, masked, keys, answers), plain_sum(encoded, everyone))


def test_a_low_order_public_key_is_refused():
    fed = Federation(3)
    messages = {name: fed.owners[name].outgoing_shares(1) for name in fed.names}
    forged = bytearray(messages["o1"]["o0"])
    forged[28:60] = bytes(32)  # the public key field: the all-zero point gives an all-zero X25519 secret
    fed.owners["o0"].receive_shares("o1", bytes(forged))
    fed.owners["o0"].receive_shares("o2", messages["o2"]["o0"])
    with pytest.raises(SecAggRefused, match="unusable"):
        fed.owners["o0"].masked_vector(1, np.zeros(8, dtype=RING), fed.names)
