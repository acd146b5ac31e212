"""Every setting of a run and every default, in one place: :class:`FLConfig` (the federated protocol)
and :class:`RunSpec` (what else a run needs: data set, transport, files). Both validate themselves,
so an invalid value is refused with a :class:`~fl_smpc.errors.ConfigError` naming it, before any work.

Importing this module is light (no torch, no syft): the CLI builds a RunSpec before loading either.
"""

import ipaddress
import math
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import ConfigError, TLSConfigError

# --- the federated protocol (the seed tutorial's values) ---
DEFAULT_WORKERS = ("bob", "alice", "jane")
# syft encodes x as int64(x * 10**p): above ~12 digits float32 inputs carry no more information.
MAX_PRECISION = 12
# torch.manual_seed keeps only the low 32 bits: larger seeds would silently repeat smaller ones.
MAX_SEED = 2**32 - 1
FLOAT32_MAX = 3.4028234663852886e38
# ids become file names (split-data) and syft ids: letters, digits, '_' and '-' only.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
LOSS_REDUCTIONS = ("sum", "mean")
WEIGHTINGS = ("samples", "equal")
# With two owners each learns the other's model from the average (minus its own): refuse by default.
MIN_OWNERS = 3

AGGREGATIONS = ("additive", "pairwise")  # syft's shares (the tutorial's) or pairwise masks (fl_smpc.pairwise)
# tutorial: the seed's loop, the model owner drives training through syft pointers (in-process only);
# owner: each data owner trains with its own task code and releases only its contribution (fl_smpc.data_owner)
TRAININGS = ("tutorial", "owner")
DEFAULT_TASK = "toy"

# --- data sets ---
TOY_ROWS = 6  # the seed's six messages
SMS_FEATURES = 2**12  # hashed features per message
# Each owner's messages become a dense (rows, features) tensor: 2**16 features is 256 KiB of float32 a message.
SMS_MAX_FEATURES = 2**16
SMS_PARTITIONS = ("iid", "skewed")
SMS_TEST_FRACTION = 0.2
SMS_SPLIT_SEED = 2011  # fixed: the same held-out test set and owner shares in every run, whatever --seed is
# FLConfig's defaults are the toy tutorial's; these apply to SMS runs where a flag is not given.
# bce: a mean over L2-normalised hashed rows has small gradients, hence the large step.
# sse: a *sum* over ~1,200 rows per owner diverges unless lr < 1 / rows.
SMS_DEFAULTS: Dict[str, Any] = {"rounds": 20, "local_steps": 20, "lr": {"bce": 100.0, "sse": 2e-4}}
# With --dp on SMS (DP-FedSGD: one full-batch step per round): the settings of docs/privacy.md's study, picked for
# epsilon 1, 3 and 8 at delta 1e-5; a run takes the profile nearest its --dp-epsilon (on a log scale). The noise
# multiplier is not in them: it is calibrated so that the run's rounds fit into the budget (calibrate_noise).
# C = 0.2 needs precision 5 for the grid; q = 1 (no subsampling) makes the RDP bound rigorous for the discrete noise.
SMS_DP_COMMON: Dict[str, Any] = {"local_steps": 1, "precision": 5, "dp_sampling": 1.0, "dp_clip": 0.2}
SMS_DP_PROFILES: Dict[float, Dict[str, Any]] = {
    1.0: {"rounds": 5, "lr": 4000.0, "dp_bias_lr": 0.03},
    3.0: {"rounds": 20, "lr": 1000.0, "dp_bias_lr": 0.1},
    8.0: {"rounds": 30, "lr": 2000.0, "dp_bias_lr": 0.1},
}


# A worker's default least noise multiplier (fl-smpc worker --dp-noise): its budget caps epsilon whatever z is
# asked for; the floor keeps a model owner from spending that budget in a few nearly noiseless rounds.
DP_NOISE_FLOOR = 1.0


def sms_dp_defaults(epsilon: float) -> Dict[str, Any]:
    """The SMS DP settings for a budget: the profile whose epsilon is nearest on a log scale, plus the common ones."""
    nearest = min(SMS_DP_PROFILES, key=lambda e: abs(math.log(e / epsilon)) if epsilon > 0 else e)
    return {**SMS_DP_COMMON, **SMS_DP_PROFILES[nearest]}


LOSSES = ("sse", "bce")
DATASETS = ("toy", "sms")

# --- transports ---
TRANSPORTS = ("virtual", "websocket")
REPLY_TIMEOUT = 30.0  # seconds the model owner waits for one reply (local training included)
CONNECT_TIMEOUT = 10.0  # seconds to keep retrying a refused connection (a server may still be starting)
PEER_TIMEOUT = 10.0  # a worker's connect/reply timeout towards its peers; below REPLY_TIMEOUT, so a dead peer is named
GC_DELAY = 0.5  # seconds the model owner collects remote deletes before sending them in one message
WORKER_HOST, WORKER_PORT = "127.0.0.1", 8777


# --- a data owner's own limits (fl-smpc worker flags; checked on the owner, whatever the model owner asks) ---
@dataclass(frozen=True)
class OwnerBounds:
    """What a data owner agrees to do for a model owner: every request outside these is refused.

    The model owner chooses each round's settings; the owner checks them against its own bounds, set at
    start (``fl-smpc worker`` flags, these defaults). Sizes bound memory and work per request.
    """

    min_owners: int = MIN_OWNERS  # never contribute to a sum over fewer owners
    max_owners: int = 1000  # nor over more (bounds the work of one sharing)
    max_lr: float = 1e4
    max_local_steps: int = 1000
    max_rounds: int = 10_000  # contributions (train + evaluate) over the worker's lifetime
    max_precision: int = 6  # fixed-point digits (higher makes the clip bound small: see contribution.py)
    aggregations: Tuple[str, ...] = AGGREGATIONS
    max_message: int = 64 * 2**20  # bytes of one websocket message (the params of a 16M-parameter model)
    max_connections: int = 16  # open connections at once (model owner + peers + spares)
    peer_timeout: float = PEER_TIMEOUT  # seconds to reach a peer, and to wait for the shares of a round
    max_pending_rounds: int = 2  # rounds of peers' shares held before this owner has joined them
    # the owner's own differential privacy (fl_smpc.data_owner.privacy.DPSettings): every training request must
    # be at least as private, and the owner stops at its epsilon; None: it requires none
    dp: Optional[Any] = None


DEFAULT_BOUNDS = OwnerBounds()

# --- mutual TLS (network mode) ---
MODEL_PARTY = "model"  # the model owner's party id: its certificate is model.pem in the --certs directory
CERT_DAYS = 365  # validity of the certificates `fl-smpc certs` makes
SECURITY_CHOICE = (
    "give --certs DIR (mutual TLS: DIR holds ca.pem and each party's NAME.pem and NAME.key; "
    "`fl-smpc certs` makes them) or --insecure (plain ws://, loopback addresses only)"
)

Address = Tuple[str, int]


def check_names(names) -> Tuple[str, ...]:
    """The data owners' ids as a tuple; ConfigError unless >= 2, unique, safe as file names, not 'me'."""
    names = tuple(names)
    if len(names) < 2:
        raise ConfigError(f"workers: secure averaging needs at least 2 workers, got {len(names)}: {list(names)}")
    bad = [n for n in names if not isinstance(n, str) or not NAME_PATTERN.fullmatch(n)]
    if bad:
        raise ConfigError(
            f"workers: names must be 1-64 letters, digits, '_' or '-' (no spaces, dots or path separators), got {bad}"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"workers: duplicate worker names {duplicates}; each data owner needs its own id")
    if "me" in names:
        raise ConfigError("workers: 'me' is syft's id for the local worker (the model owner); choose another name")
    return names


def check_party(name, what: str = "--model-party") -> str:
    """A party id (a certificate's name): the same rules as worker names."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{what}: a party id is 1-64 letters, digits, '_' or '-', got {name!r}")
    return name


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")


def check_positive_float(name: str, value, maximum: float = FLOAT32_MAX) -> None:
    """ConfigError unless ``value`` is a finite number in (0, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}: must be a positive finite number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # math.isfinite(int) overflows past 1e308
        raise ConfigError(f"{name}: must be a positive finite number, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{name}: must be at most {maximum:g}, got {value!r}")


@dataclass(frozen=True)
class FLConfig:
    """Settings of one federated run (seed tutorial defaults).

    workers: names of the data owners (VirtualWorker ids), at least 2, unique.
    rounds: federated rounds (send -> local training -> secure average -> update).
    local_steps: SGD steps each owner takes on its own data per round (one per batch, see batch_size).
    lr: SGD learning rate of the owners' optimisers (finite, positive, representable in float32).
    precision_fractional: decimal digits kept by ``fix_prec`` (one quantum is 10**-p).
    seed: seeds model initialisation and training, 0..2**32-1 (torch keeps 32 bits of a seed);
        ``None`` draws one (recorded in the history).
    batch_size: rows per local SGD step; ``None`` = the owner's whole partition (the seed's full-batch steps).
        Each step takes the owner's next batch, continuing across rounds and wrapping around.
    loss_reduction: how ``loss_fn`` reduces over examples, ``"sum"`` (the seed's summed squared error)
        or ``"mean"``; the global loss follows it: the sum over all owners' examples, or their mean.
    weighting: FedAvg weights, ``"samples"`` (each owner by its number of examples, as FedAvg; equal
        owners give the seed's ``/ 3``) or ``"equal"`` (each owner counts once).
    min_owners: no sum over fewer owners is ever revealed; a round that cannot gather them fails.
    owners_per_round: a random subset of this many owners trains each round (FedAvg's client fraction),
        drawn from ``seed`` and the round number; ``None`` = every owner.
    aggregation: "additive" (the tutorial's ``fix_prec().share()``) or "pairwise" (pairwise masks).
    training: "tutorial" (the seed's loop: the model owner drives training through syft pointers; in-process
        only) or "owner" (each owner trains with its own code and releases only its contribution; the only
        way over the network).
    neighbours: owner-side pairwise masking (SecAgg's double masking): each owner masks with and shares its
        secrets among ``neighbours`` others (SecAgg+'s graph, Bell et al. 2020); ``None`` = all pairs.
    dp: differential privacy on each owner (owner-side training, one local step per round: DP-FedSGD):
        ``"local"`` (each owner adds all the noise) or ``"distributed"`` (each adds its share, so that any
        ``min_owners`` honest owners give the sum the full noise); ``None`` = off. ``dp_epsilon``/``dp_delta``:
        each in-process owner's budget; ``dp_noise`` (noise multiplier z; ``None``: the least z with which
        ``rounds`` rounds fit into the budget, ``privacy.calibrate_noise``), ``dp_clip`` (per-example L2 clip C),
        ``dp_sampling`` (Poisson sampling rate q): see fl_smpc/data_owner/privacy.py. ``dp_bias_lr``: the
        biases' step relative to the weights' (the model owner's choice, post-processing: a bias carries as
        much noise as any weight but moves every output at once). ``dp_accountant``: how the in-process owners
        count epsilon, ``"prv"`` (tight; for the discrete noise an assumption) or ``"rdp"`` (proven, larger).
    """

    workers: Tuple[str, ...] = DEFAULT_WORKERS
    rounds: int = 5
    local_steps: int = 5
    lr: float = 0.1
    precision_fractional: int = 3
    seed: Optional[int] = None
    batch_size: Optional[int] = None
    loss_reduction: str = "sum"
    weighting: str = "samples"
    min_owners: int = MIN_OWNERS
    owners_per_round: Optional[int] = None
    aggregation: str = "additive"
    training: str = "tutorial"
    neighbours: Optional[int] = None
    dp: Optional[str] = None
    dp_epsilon: float = 3.0
    dp_delta: float = 1e-5
    dp_noise: Optional[float] = None
    dp_clip: float = 1.0
    dp_sampling: float = 0.05
    dp_bias_lr: float = 1.0
    dp_accountant: str = "prv"

    def __post_init__(self):
        # Accept any sequence of names, store a tuple so the config stays hashable/immutable.
        object.__setattr__(self, "workers", check_names(self.workers))
        _positive_int("rounds", self.rounds)
        _positive_int("local_steps", self.local_steps)
        check_positive_float("lr", self.lr)
        p = self.precision_fractional
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= MAX_PRECISION:
            raise ConfigError(f"precision_fractional: must be an integer from 0 to {MAX_PRECISION}, got {p!r}")
        s = self.seed
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED):
            raise ConfigError(
                f"seed: must be an integer from 0 to {MAX_SEED} (torch keeps 32 bits of a seed) or None, got {s!r}"
            )
        b = self.batch_size
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ConfigError(f"batch_size: must be a positive integer or None (whole partition), got {b!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(
                f"loss_reduction: must be one of {', '.join(LOSS_REDUCTIONS)}, got {self.loss_reduction!r}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting: must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        m, n, k = self.min_owners, len(self.workers), self.owners_per_round
        if not isinstance(m, int) or isinstance(m, bool) or m < 2:
            raise ConfigError(f"min_owners: must be an integer of at least 2, got {m!r}")
        if n < m:
            why = (
                " With two owners each learns the other's model from the average; --min-owners 2 "
                "(min_owners=2) accepts that knowingly."
                if n == 2
                else ""
            )
            raise ConfigError(
                f"workers: {n} owners, but min_owners is {m}: no sum over fewer than {m} owners is revealed.{why}"
            )
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not m <= k <= n):
            raise ConfigError(
                f"owners_per_round: must be an integer from min_owners ({m}) to the number of owners ({n}), got {k!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation: must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.training not in TRAININGS:
            raise ConfigError(f"training: must be one of {', '.join(TRAININGS)}, got {self.training!r}")
        if self.dp is not None:
            if self.dp not in ("local", "distributed") or self.training != "owner":
                raise ConfigError(
                    f"dp: 'local' or 'distributed' with owner-side training (training='owner', --training owner), "
                    f"got {self.dp!r} with training {self.training!r}"
                )
            if self.local_steps != 1:
                raise ConfigError(
                    f"local_steps: differential privacy needs exactly 1 local step per round (DP-FedSGD), got "
                    f"{self.local_steps}: the accountant counts one subsampled Gaussian release per round"
                )
            self.dp_settings(calibrate=False)  # checks the numbers
            check_positive_float("dp_bias_lr", self.dp_bias_lr)
        k = self.neighbours
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 2 or self.training != "owner"):
            raise ConfigError(
                f"neighbours: SecAgg+'s neighbour graph (an integer of at least 2) applies to owner-side training's "
                f"pairwise masking, got {k!r}"
            )

    def dp_settings(self, calibrate: bool = True):
        """The run's :class:`~fl_smpc.data_owner.privacy.DPSettings` (None without ``dp``).

        ``dp_noise=None`` is calibrated to the rounds (seconds, cached); ``calibrate=False`` puts 1 in its place,
        to check the other numbers quickly.
        """
        if self.dp is None:
            return None
        from .data_owner.privacy import DPSettings, calibrate_noise

        z = self.dp_noise
        if z is None:
            z = (
                calibrate_noise(self.dp_epsilon, self.dp_delta, self.dp_sampling, self.rounds, self.dp_accountant)
                if calibrate
                else 1.0
            )
        return DPSettings.for_mode(
            self.dp, z, self.dp_clip, self.dp_sampling, self.dp_epsilon, self.dp_delta, self.min_owners,
            self.dp_accountant,
        )  # fmt: skip

    def with_dp_noise(self) -> "FLConfig":
        """This config with a concrete ``dp_noise`` (calibrated when None), so the run records the z it used."""
        if self.dp is None or self.dp_noise is not None:
            return self
        return replace(self, dp_noise=self.dp_settings().noise_multiplier)

    def with_seed(self) -> "FLConfig":
        """This config with a concrete seed: a fresh one is drawn when ``seed`` is None, so the run
        can still be reproduced from its recorded settings."""
        return self if self.seed is not None else replace(self, seed=secrets.randbits(32))


def parse_addresses(text: str) -> Dict[str, Address]:
    """``"bob=127.0.0.1:8777,alice=10.0.0.2:8778"`` -> ``{"bob": ("127.0.0.1", 8777), ...}``."""
    addresses: Dict[str, Address] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, hostport = (s.strip() for s in item.partition("="))
        host, colon, port = hostport.rpartition(":")
        if not (sep and colon and name and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"bad worker address {item!r}: expected NAME=HOST:PORT with a port from 1 to 65535, "
                "e.g. bob=127.0.0.1:8777"
            )
        if name in addresses:
            raise ConfigError(f"worker {name!r} is given twice")
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"bad worker name {name!r} in {item!r}: use 1-64 letters, digits, '_' or '-'")
        addresses[name] = (host, int(port))
    if not addresses:
        raise ConfigError("no worker addresses given: expected NAME=HOST:PORT[,NAME=HOST:PORT...]")
    return addresses


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (127.0.0.0/8, ::1) or ``localhost``? Other names are not resolved."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_plaintext_hosts(hosts: Dict[str, Sequence[str]]) -> None:
    """TLSConfigError unless every host is loopback: plain ws:// has no authentication and no encryption.

    ``hosts`` maps where the hosts come from (a flag name) to the hosts, so the message can name it.
    """
    remote = {what: sorted({h for h in values if not is_loopback(h)}) for what, values in hosts.items()}
    remote = {what: values for what, values in remote.items() if values}
    if remote:
        where = "; ".join(f"{what} {', '.join(values)}" for what, values in remote.items())
        raise TLSConfigError(
            f"--insecure (plain ws://: no authentication, no encryption) is allowed on loopback "
            f"addresses only, not {where}: use --certs DIR (mutual TLS; `fl-smpc certs` makes one)"
        )


def check_port(port, allow_zero: bool = True) -> int:
    """A TCP port to bind: 1..65535, or 0 (the OS picks a free one) when ``allow_zero``."""
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ConfigError(f"port: must be an integer from {low} to 65535, got {port!r}")
    return port


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs besides the protocol settings; what the CLI, notebook and tests pass to ``run``.

    dataset: "toy" (the seed's 6 messages) or "sms" (real messages, held-out test set, baselines).
    data_file, features, partition: sms only (your own messages file; hashed features; "iid" or "skewed").
    loss: "sse" (the seed's summed squared error) or "bce" (mean logistic loss; sms only).
    transport: "virtual" (in-process VirtualWorkers) or "websocket" (``addresses`` of ``fl-smpc worker``
        processes, one per name of ``config.workers``, same order).
    timeout: websocket: seconds to wait for one reply. checkpoint/resume: JSON file paths.
    resume_rounds: with resume, the rounds the continued run has in all (``--rounds`` given with ``--resume``):
        more than the checkpoint's config asks for extends a finished run; None keeps the checkpoint's.
    certs, insecure: websocket only, exactly one: the federation directory for mutual TLS (ca.pem and
        ``<model_party>.pem``/``.key``), or plain ws:// (loopback addresses only).
    model_party: our party id with ``certs`` (the certificate the model owner presents).
    task: owner-side training: what the owners train (a built-in task name or a task module; every worker
        must serve the same one). The toy data set's task is ``toy``.
    """

    config: FLConfig = field(default_factory=FLConfig)
    dataset: str = "toy"
    data_file: Optional[str] = None
    features: int = SMS_FEATURES
    partition: str = "iid"
    loss: str = "sse"
    transport: str = "virtual"
    addresses: Optional[Dict[str, Address]] = None
    timeout: float = REPLY_TIMEOUT
    checkpoint: Optional[str] = None
    resume: Optional[str] = None
    resume_rounds: Optional[int] = None
    certs: Optional[str] = None
    insecure: bool = False
    model_party: str = MODEL_PARTY
    task: str = DEFAULT_TASK

    def __post_init__(self):
        for name, value, allowed in (
            ("dataset", self.dataset, DATASETS),
            ("loss", self.loss, LOSSES),
            ("transport", self.transport, TRANSPORTS),
            ("partition", self.partition, SMS_PARTITIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
        _positive_int("features", self.features)
        if self.resume_rounds is not None:
            _positive_int("rounds", self.resume_rounds)
            if not self.resume:
                raise ConfigError("resume_rounds: applies to a resumed run only (give resume)")
        if self.features > SMS_MAX_FEATURES:
            raise ConfigError(
                f"features: at most {SMS_MAX_FEATURES} (each message becomes a dense row of that many float32 "
                f"values), got {self.features}"
            )
        check_positive_float("timeout", self.timeout, maximum=24 * 3600.0)
        sms = self.dataset == "sms"
        if not sms and (
            self.data_file or self.features != SMS_FEATURES or self.partition != "iid" or self.loss == "bce"
        ):
            raise ConfigError("--data-file, --features, --partition and --loss bce need --dataset sms")
        if sms and (self.transport != "virtual" or self.checkpoint or self.resume):
            raise ConfigError(
                "--dataset sms runs in-process: it cannot be combined with --transport websocket, "
                "--checkpoint or --resume"
            )
        if self.dataset == "toy" and len(self.config.workers) > TOY_ROWS:
            raise ConfigError(
                f"workers: the toy data has {TOY_ROWS} rows, so at most {TOY_ROWS} workers "
                f"(one row each), got {len(self.config.workers)}"
            )
        if self.transport == "websocket":
            if self.config.training != "owner":
                raise ConfigError(
                    "training: over the network each owner trains with its own code (training='owner', "
                    "--training owner): the tutorial's loop has the model owner run computations on the owners' "
                    "data, and no allow-list of such computations can stop one that copies the data out"
                )
            if not self.addresses:
                raise ConfigError("the websocket transport needs the workers' addresses (NAME=HOST:PORT)")
            if tuple(self.addresses) != self.config.workers:
                raise ConfigError(
                    f"addresses are given for {list(self.addresses)} but the config names {list(self.config.workers)}"
                )
            self._check_security()
        elif self.task != DEFAULT_TASK:
            raise ConfigError("--task names what remote workers train: it needs --transport websocket")
        elif self.addresses:
            raise ConfigError("worker addresses (NAME=HOST:PORT) need the websocket transport")
        elif self.certs is not None or self.insecure:
            raise ConfigError("--certs and --insecure apply to the websocket transport only")

    def _check_security(self) -> None:
        """Exactly one of certs / insecure; insecure only on loopback; our party id not a worker's."""
        if self.certs is not None and self.insecure:
            raise TLSConfigError("--certs and --insecure exclude each other: " + SECURITY_CHOICE)
        if self.certs is None and not self.insecure:
            raise TLSConfigError("the websocket transport needs a security choice: " + SECURITY_CHOICE)
        if self.insecure:
            assert self.addresses is not None  # __post_init__ calls this for the websocket transport only
            check_plaintext_hosts({"--workers": [host for host, _ in self.addresses.values()]})
        else:
            check_party(self.model_party)
            if self.model_party in self.config.workers:
                raise TLSConfigError(
                    f"workers: {self.model_party!r} is the model owner's party id "
                    "(--model-party); a data owner needs another id"
                )
