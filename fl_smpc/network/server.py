"""A data owner's side of network mode: a worker process serving its own CSV over syft's websockets.

Each owner runs a :class:`DataOwnerServer` (a ``WebsocketServerWorker``) holding the rows of its CSV
file, tagged so the model owner can find them with ``search``, and one client per peer owner, to
which it sends its shares. With TLS (:mod:`fl_smpc.network.tls`) every connection is mutually
authenticated and only the model owner and the peers may connect.
"""

import asyncio
import binascii
import functools
import http
import signal
import ssl
from typing import Callable, Dict, FrozenSet, Iterable, Optional

import torch
import websockets
from syft.workers.websocket_server import WebsocketServerWorker

from ..config import CONNECT_TIMEOUT, MODEL_PARTY, Address, check_names, check_party, check_plaintext_hosts
from ..errors import ConfigError, TLSConfigError
from ..workers import create_hook
from . import DATA_TAG, TARGET_TAG
from .client import NetworkClient
from .csvdata import read_csv
from .tls import client_context, peer_party, server_context

CLOSE_INTERNAL_ERROR = 1011  # websocket close code: the server could not handle the request
CLOSE_POLICY_VIOLATION = 1008  # websocket close code: this client is not allowed


def failure_reason(worker_id: str, err: Exception) -> str:
    """Close reason ``"<culprit id>\\n<error>"`` (<= 123 bytes, the websocket limit).

    The culprit is the peer when the error came from reaching a peer, else this worker.
    """
    culprit = getattr(err, "worker", None) or worker_id
    text = f"{culprit}\n{type(err).__name__}: {err}"
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


class DataOwnerServer(WebsocketServerWorker):
    """syft's ``WebsocketServerWorker``, answering every message on the connection it came from.

    syft 0.2.9 puts the requests of *all* connections into one ``broadcast_queue`` and runs one
    reply task per connection that takes whatever request is next: once a server has two clients
    (the model owner and a peer sending shares), a reply can leave on the wrong connection and its
    caller waits forever (PySyft #2428, "one client per server"). Here each connection handles its
    own requests in order. A request that fails closes that connection with a reason naming the
    worker at fault, so the caller gets an error instead of a hang. ``serve`` replaces ``start``
    to report the bound port and to stop cleanly on SIGINT/SIGTERM.

    With ``tls`` (a :func:`~fl_smpc.network.tls.server_context`) a client must present a certificate
    from the federation CA naming one of the ``allowed`` parties, else its upgrade is refused with
    HTTP 403. While a message is handled, ``current_requester`` is the party id that sent it (None
    without TLS: nothing is authenticated then), for per-requester rules in ``recv_msg``. Requests are
    handled one at a time on the event loop, so it always belongs to the message being handled.
    """

    def __init__(self, hook, host: str, port: int, id: str, data=None, tls: Optional[ssl.SSLContext] = None,
                 allowed: Iterable[str] = ()):
        self.tls, self.allowed = tls, frozenset(allowed)
        self.current_requester: Optional[str] = None
        super().__init__(hook, host=host, port=port, id=id, data=data)

    def requester(self, connection) -> Optional[str]:
        """The party id of a connection's verified certificate (None without TLS); PermissionError if not allowed."""
        return authenticate(connection.transport.get_extra_info("ssl_object"), self.allowed, self.id)

    async def _handler(self, connection, *unused_args):
        try:
            try:
                party = self.requester(connection)
            except PermissionError as err:  # only reached if a connection skipped the upgrade check
                await connection.close(CLOSE_POLICY_VIOLATION, failure_reason(self.id, err))
                return
            async for text in connection:
                try:
                    self.current_requester = party
                    reply = self._recv_msg(binascii.unhexlify(text[2:-1]))
                except Exception as err:  # anything: the caller must hear about it, not wait
                    await connection.close(CLOSE_INTERNAL_ERROR, failure_reason(self.id, err))
                    return
                finally:
                    self.current_requester = None
                await connection.send(str(binascii.hexlify(reply)))
        except websockets.exceptions.ConnectionClosed:
            pass

    def serve(self, on_ready: Callable[[int], None] = None) -> None:
        """Serve until SIGINT or SIGTERM; ``on_ready(port)`` once listening (port 0 picks a free one)."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(websockets.serve(
            self._handler, self.host, self.port, max_size=None, ping_interval=None, close_timeout=1, ssl=self.tls,
            create_protocol=functools.partial(PartyCheckingProtocol, owner=self)))
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
        raise PermissionError(f"worker {worker_id!r} does not accept party {party!r}; it accepts "
                              f"{', '.join(sorted(allowed))}")
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
    ``data_ptr.get()``; it cannot stop a client computing on the data and fetching the result
    (syft 0.2.9 executes any command it is sent -- see the README's trust model).
    """
    tensor.allow = lambda user=None: False
    return tensor


def create_data_owner(worker_id: str, data_path: str, host: str = "127.0.0.1", port: int = 8777,
                      peers: Dict[str, Address] = None, timeout: float = CONNECT_TIMEOUT, certs: Optional[str] = None,
                      model_party: str = MODEL_PARTY) -> DataOwnerServer:
    """Load and validate the owner's CSV (before anything else), then build its server and peer clients.

    Peers are connected lazily on first use with retries until ``timeout``: they may start later.
    ``timeout`` also bounds a peer's reply; keep it below the model owner's reply timeout so a dead
    peer is reported by name before the model owner gives up on this worker.
    ``certs``: the federation directory (ca.pem, <worker_id>.pem/.key); the worker then serves wss://,
    presents its certificate to its peers and accepts only ``model_party`` and the peers. Without
    ``certs`` it speaks plain ws://, which is refused unless every address is a loopback address.
    """
    data, target = read_csv(data_path)
    peers = dict(peers or {})
    if not peers:
        raise ConfigError("peers: a worker sends shares to the other owners, so it needs at least one "
                         "peer NAME=HOST:PORT (--peers)")
    check_names((worker_id, *peers))  # same id rules as the in-process run (unique, safe, not "me")
    check_party(model_party)
    if model_party in (worker_id, *peers):
        raise TLSConfigError(f"{model_party!r} is the model owner's party id; a data owner needs another id")
    if certs is None:
        check_plaintext_hosts({"--host": [host], "--peers": [h for h, _ in peers.values()]})
        tls = peer_tls = None
    else:
        tls, peer_tls = server_context(certs, worker_id), client_context(certs, worker_id)
    hook = create_hook()  # also makes this worker's share masks cryptographic (fl_smpc.share_masks)
    data = refuse_get(data.tag(DATA_TAG).describe(f"{worker_id}'s features"))
    target = refuse_get(target.tag(TARGET_TAG).describe(f"{worker_id}'s labels"))
    server = DataOwnerServer(hook, host=host, port=port, id=worker_id, data=[data, target], tls=tls,
                             allowed=(model_party, *peers))
    for peer_id, (peer_host, peer_port) in peers.items():
        client = NetworkClient(hook, peer_host, peer_port, id=peer_id, timeout=timeout,
                               connect_timeout=timeout, reconnect=True, tls=peer_tls)
        if peer_id not in server._known_workers:
            server.add_worker(client)
    return server


