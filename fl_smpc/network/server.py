"""A data owner's side of network mode: a worker process serving its own CSV over syft's websockets.

Each owner runs a :class:`DataOwnerServer` (a ``WebsocketServerWorker``) holding the rows of its CSV
file, tagged so the model owner can find them with ``search``, and one client per peer owner, to
which it sends its shares. With TLS (:mod:`fl_smpc.network.tls`) every connection is mutually
authenticated and only the model owner and the peers may connect; every message then passes the
owner's release policy (:mod:`fl_smpc.network.policy`) before syft handles it.
"""

import asyncio
import binascii
import functools
import hashlib
import http
import itertools
import signal
import ssl
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Sequence

import torch
import websockets
from syft.workers.websocket_server import WebsocketServerWorker

from ..config import CONNECT_TIMEOUT, MODEL_PARTY, Address, check_names, check_party, check_plaintext_hosts
from ..errors import ConfigError, TLSConfigError
from ..pairwise_owner import PairwiseOwner
from ..workers import create_hook
from . import DATA_TAG, TARGET_TAG
from .client import NetworkClient
from .csvdata import read_csv
from .policy import DEFAULT_SETTINGS, OwnerPolicy, PolicySettings
from .tls import client_context, peer_party, server_context
from .wire import install_safe_tensor_loading

PEER_PATH = "/peer/"  # without TLS a peer owner *claims* its id: ws://host:port/peer/<its id>

CLOSE_INTERNAL_ERROR = 1011  # websocket close code: the server could not handle the request
CLOSE_POLICY_VIOLATION = 1008  # websocket close code: this client is not allowed


def failure_reason(worker_id: str, err: Exception) -> str:
    """Close reason ``"<culprit id>\\n<error>"`` (<= 123 bytes, the websocket limit).

    The culprit is the peer when the error came from reaching a peer, else this worker.
    """
    culprit = getattr(err, "worker", None) or worker_id
    text = f"{culprit}\n{type(err).__name__}: {err}"
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


class DataOwnerServer(PairwiseOwner, WebsocketServerWorker):
    """syft's ``WebsocketServerWorker``, answering every message on the connection it came from.

    syft 0.2.9 puts the requests of *all* connections into one ``broadcast_queue`` and runs one
    reply task per connection that takes whatever request is next: once a server has two clients
    (the model owner and a peer sending shares), a reply can leave on the wrong connection and its
    caller waits forever (PySyft #2428, "one client per server"). Here each connection handles its
    own requests in order. A request that fails closes that connection with a reason naming the
    worker at fault, so the caller gets an error instead of a hang. ``serve`` replaces ``start``
    to report the bound port and to stop cleanly on SIGINT/SIGTERM. :class:`PairwiseOwner` adds the
    owner's side of pairwise masking, reaching peers over the clients this owner was started with.

    With ``tls`` (a :func:`~fl_smpc.network.tls.server_context`) a client must present a certificate
    from the federation CA naming one of the ``allowed`` parties, else its upgrade is refused with
    HTTP 403. With a :class:`~fl_smpc.network.policy.OwnerPolicy` (``enable_policy``) every message
    passes the owner's release policy first. While a message is handled, ``current_requester`` is the
    peer owner that sent it, or None for the model owner (``model_party``), and ``current_connection``
    numbers its connection. Without TLS nobody is authenticated: a peer only claims its id in the
    path. Requests are handled one at a time on the event loop, so both always belong to the message
    being handled.
    """

    policy: Optional[OwnerPolicy] = None
    _connections = itertools.count(1)

    def __init__(
        self,
        hook,
        host: str,
        port: int,
        id: str,
        data=None,
        tls: Optional[ssl.SSLContext] = None,
        allowed: Iterable[str] = (),
        model_party: str = MODEL_PARTY,
    ):
        self.tls, self.allowed, self.model_party = tls, frozenset(allowed), model_party
        self.current_requester: Optional[str] = None
        self.current_connection = 0
        super().__init__(hook, host=host, port=port, id=id, data=data)

    def requester(self, connection) -> Optional[str]:
        """The party id of a connection's verified certificate (None without TLS); PermissionError if not allowed."""
        return authenticate(connection.transport.get_extra_info("ssl_object"), self.allowed, self.id)

    def requester_of(self, party: Optional[str], path: str) -> Optional[str]:
        """The policy's requester: None for the model owner, else the peer owner's id."""
        if self.tls is not None:
            return None if party == self.model_party else party
        claimed = path[len(PEER_PATH) :] if path.startswith(PEER_PATH) else None
        return claimed if self.policy is not None and claimed in self.policy.peers else None

    async def _handler(self, connection, path: str = "/", *unused_args):
        serial = next(self._connections)
        try:
            try:
                party = self.requester(connection)
            except PermissionError as err:  # only reached if a connection skipped the upgrade check
                await connection.close(CLOSE_POLICY_VIOLATION, failure_reason(self.id, err))
                return
            requester = self.requester_of(party, path)
            async for text in connection:
                try:
                    self.current_requester, self.current_connection = requester, serial
                    reply = self._recv_msg(binascii.unhexlify(text[2:-1]))
                except Exception as err:  # anything: the caller must hear about it, not wait
                    await connection.close(CLOSE_INTERNAL_ERROR, failure_reason(self.id, err))
                    return
                finally:
                    self.current_requester = None
                await connection.send(str(binascii.hexlify(reply)))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            if self.policy is not None:
                self.policy.close(serial)

    def recv_msg(self, bin_message: bytes) -> bytes:
        if self.policy is None:
            return super().recv_msg(bin_message)
        return self.policy.receive(bin_message, self.current_requester, self.current_connection)

    def enable_policy(
        self,
        peers: Sequence[str],
        settings: PolicySettings = DEFAULT_SETTINGS,
        log: Optional[Callable[[str], None]] = None,
    ) -> OwnerPolicy:
        """Put the owner's release policy in front of syft's message routing; the tagged data and
        labels become read-only and private. Received tensors are loaded without pickle globals."""
        install_safe_tensor_loading()
        policy = OwnerPolicy(self, peers, settings, log)
        policy.protect(*self.owner_tensors())
        self.policy = policy
        return policy

    def owner_tensors(self):
        """The owner's (data, labels) as currently stored: under the ids the policy protects, else by tag."""
        if self.policy is not None:
            store = self.object_store._objects
            return tuple(store[i] for i in self.policy.protected if i in store)
        return tuple(t for tag in (DATA_TAG, TARGET_TAG) for t in self.object_store.find_by_tag(tag)[:1])

    def fingerprint(self) -> str:
        """SHA-256 of the stored data and labels: equal at start and stop if nobody changed them."""
        return fingerprint(*self.owner_tensors())

    def serve(self, on_ready: Optional[Callable[[int], None]] = None) -> None:
        """Serve until SIGINT or SIGTERM; ``on_ready(port)`` once listening (port 0 picks a free one)."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        # websockets documents None (no limit, no pings) and any protocol factory; its annotations allow neither
        server = loop.run_until_complete(
            websockets.serve(
                self._handler,
                self.host,
                self.port,
                max_size=None,  # type: ignore[arg-type]
                ping_interval=None,  # type: ignore[arg-type]
                close_timeout=1,
                ssl=self.tls,
                create_protocol=functools.partial(PartyCheckingProtocol, owner=self),  # type: ignore[arg-type]
            )
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None:
                on_ready(server.sockets[0].getsockname()[1])
            loop.run_until_complete(stop.wait())
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            server.close()
            loop.run_until_complete(server.wait_closed())


def authenticate(ssl_object: Optional[ssl.SSLObject], allowed: FrozenSet[str], worker_id: str) -> Optional[str]:
    """The allowed party id in a verified peer certificate; None for a plain connection (no TLS).

    A certificate from the CA is not enough: a worker talks only to the model owner and its peers,
    so any other party id (a new member of the federation, a typo) raises ``PermissionError``.
    """
    if ssl_object is None:
        return None
    try:
        party = peer_party(ssl_object)
    except ssl.SSLError as err:
        raise PermissionError(f"worker {worker_id!r} refuses the client: {err}") from None
    if party not in allowed:
        raise PermissionError(
            f"worker {worker_id!r} does not accept party {party!r}; it accepts {', '.join(sorted(allowed))}"
        )
    return party


class PartyCheckingProtocol(websockets.WebSocketServerProtocol):
    """Refuses the websocket upgrade (HTTP 403) of a client whose certificate names a party not allowed.

    The check runs after the TLS handshake and before any syft message, so an unknown party is
    refused at connect; the client sees the status in its handshake.
    """

    def __init__(self, *args, owner: DataOwnerServer, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner

    async def process_request(self, path, request_headers):
        try:
            self.owner.requester(self)
        except PermissionError as err:
            return http.HTTPStatus.FORBIDDEN, [], f"{err}\n".encode()
        return None


def refuse_get(tensor: torch.Tensor) -> torch.Tensor:
    """Make syft answer ``GetNotPermittedError`` to a ``.get()`` of this very tensor.

    syft checks ``tensor.allow(user)`` before handing an object out. This stops the plain
    ``data_ptr.get()`` only; computing on the data and fetching the result is stopped by the
    owner's release policy (:mod:`fl_smpc.network.policy`), of which this is a second layer.
    """
    tensor.allow = lambda user=None: False  # type: ignore[attr-defined]  # syft's hook adds Tensor.allow
    return tensor


class PeerClient(NetworkClient):
    """A data owner's connection to a peer owner, naming the caller in the path (``/peer/<id>``).

    Without TLS that is a claim, not a proof; it lets the peer's policy attribute the shares it
    receives to this owner (docs/policy.md). With TLS the peer reads the caller from its certificate.
    """

    def __init__(self, *args, caller: str, **kwargs):
        self.caller = caller
        super().__init__(*args, **kwargs)

    @property
    def url(self):
        return f"{super().url}{PEER_PATH}{self.caller}"


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 over the tensors' shapes, dtypes and values (the owner's own check that its data did not change)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_owner_server(
    hook,
    worker_id: str,
    data: torch.Tensor,
    target: torch.Tensor,
    host: str = "127.0.0.1",
    port: int = 8777,
    tls: Optional[ssl.SSLContext] = None,
    allowed: Iterable[str] = (),
    model_party: str = MODEL_PARTY,
) -> DataOwnerServer:
    """The server holding an owner's data and labels, tagged for search and refusing a plain get."""
    # syft's hook adds Tensor.tag and Tensor.describe
    data = refuse_get(data.tag(DATA_TAG).describe(f"{worker_id}'s features"))  # type: ignore[attr-defined]
    target = refuse_get(target.tag(TARGET_TAG).describe(f"{worker_id}'s labels"))  # type: ignore[attr-defined]
    return DataOwnerServer(
        hook, host=host, port=port, id=worker_id, data=[data, target], tls=tls, allowed=allowed, model_party=model_party
    )


def create_data_owner(
    worker_id: str,
    data_path: str,
    host: str = "127.0.0.1",
    port: int = 8777,
    peers: Optional[Dict[str, Address]] = None,
    timeout: float = CONNECT_TIMEOUT,
    certs: Optional[str] = None,
    model_party: str = MODEL_PARTY,
    policy: Optional[PolicySettings] = DEFAULT_SETTINGS,
    log: Optional[Callable[[str], None]] = None,
) -> DataOwnerServer:
    """Load and validate the owner's CSV (before anything else), then build its server and peer clients.

    Peers are connected lazily on first use with retries until ``timeout``: they may start later.
    ``timeout`` also bounds a peer's reply; keep it below the model owner's reply timeout so a dead
    peer is reported by name before the model owner gives up on this worker.
    ``certs``: the federation directory (ca.pem, <worker_id>.pem/.key); the worker then serves wss://,
    presents its certificate to its peers and accepts only ``model_party`` and the peers. Without
    ``certs`` it speaks plain ws://, which is refused unless every address is a loopback address.
    ``policy`` None serves syft's original behaviour (every command executed): tests only.
    ``log(line)`` receives the policy's refusals.
    """
    data, target = read_csv(data_path)
    peers = dict(peers or {})
    if not peers:
        raise ConfigError(
            "peers: a worker sends shares to the other owners, so it needs at least one peer NAME=HOST:PORT (--peers)"
        )
    check_names((worker_id, *peers))  # same id rules as the in-process run (unique, safe, not "me")
    check_party(model_party)
    if model_party in (worker_id, *peers):
        raise TLSConfigError(f"{model_party!r} is the model owner's party id; a data owner needs another id")
    if certs is None:
        check_plaintext_hosts({"--host": [host], "--peers": [h for h, _ in peers.values()]})
        tls = peer_tls = None
    else:
        tls, peer_tls = server_context(certs, worker_id), client_context(certs, worker_id)
    if policy is not None and not 2 <= policy.min_owners <= len(peers) + 1:
        raise ConfigError(
            f"min-owners: a released sum must cover 2 to {len(peers) + 1} owners (this worker and "
            f"its {len(peers)} peer(s)), got {policy.min_owners}"
        )
    hook = create_hook()  # also makes this worker's share masks cryptographic (fl_smpc.share_masks)
    server = data_owner_server(hook, worker_id, data, target, host, port, tls, (model_party, *peers), model_party)
    for peer_id, (peer_host, peer_port) in peers.items():
        client = PeerClient(
            hook,
            peer_host,
            peer_port,
            id=peer_id,
            timeout=timeout,
            connect_timeout=timeout,
            reconnect=True,
            tls=peer_tls,
            caller=worker_id,
        )
        if peer_id not in server._known_workers:
            server.add_worker(client)
    if policy is not None:
        server.enable_policy(list(peers), policy, log)
    return server
