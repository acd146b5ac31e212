"""The network worker of a data owner (``fl-smpc worker``): a websocket server around its :class:`DataOwner`.

It speaks only the owner-side protocol (:mod:`fl_smpc.network.wire`): no syft message, no pickle, no
compression. With TLS (:mod:`fl_smpc.network.tls`) every connection is mutually authenticated and only the
model owner's party and the owner's peers may connect (others get HTTP 403 before any message).

Bounds, all from the owner's :class:`~fl_smpc.config.OwnerBounds`: the largest frame (``max_message``, and
never more than this owner's own largest request: a header and its params, or a peer's share of its train
vector; checked by websockets at the frame's header, before it buffers more), the number of open
connections (``max_connections``, at most ``PARTY_CONNECTIONS`` of them per party, and the peers together
leave the model owner ``PARTY_CONNECTIONS``; one more is refused at the upgrade with 503), one request at a
time per connection, and memory per connection: a
connection holds nothing once its reply is sent (pending shares belong to the owner's run, bounded by
``max_pending_rounds``). Requests run in a thread pool, so a peer's ``share`` is stored while the model
owner's ``train`` is still training: owner-to-owner traffic never waits on the handler serving the model owner.
"""

import asyncio
import concurrent.futures
import functools
import http
import signal
import ssl
from typing import Callable, Dict, FrozenSet, Optional

import websockets

from ..config import DEFAULT_BOUNDS, MODEL_PARTY, Address, OwnerBounds, check_names, check_party, check_plaintext_hosts
from ..errors import ConfigError, TLSConfigError
from ..network.links import WebsocketLink
from ..network.tls import client_context, peer_party, server_context
from ..network.wire import HEADER_PREFIX, MAX_HEADER, WireError, decode, encode
from . import contribution
from .owner import MODEL, DataOwner, Link
from .task import Task, load_task

PEER_PATH = "/peer/"  # without TLS a peer owner *claims* its id: ws://host:port/peer/<its id>
CLOSE_POLICY_VIOLATION = 1008  # websocket close code: this client or frame is not allowed
CLOSE_TOO_BIG = 1009
PARTY_CONNECTIONS = 4  # open connections of one party at once: room to reconnect, none to fill the owner


class OwnerServer:
    """Serves ``owner`` on ``host:port`` until SIGINT/SIGTERM (:meth:`serve`)."""

    def __init__(
        self,
        owner: DataOwner,
        host: str,
        port: int,
        tls: Optional[ssl.SSLContext] = None,
        model_party: str = MODEL_PARTY,
    ):
        self.owner, self.host, self.port, self.tls, self.model_party = owner, host, port, tls, model_party
        self.allowed: FrozenSet[str] = frozenset({model_party, *owner.peers})
        self.bounds: OwnerBounds = owner.bounds
        self.open_connections = 0
        self.party_connections: Dict[str, int] = {}  # requester ("model" or a peer id) -> open connections
        self.max_frame = frame_limit(owner)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.bounds.max_connections)

    def requester_of(self, connection, path: str) -> str:
        """``"model"`` for the model owner, else the peer owner's id (from its certificate, or claimed without TLS)."""
        ssl_object = connection.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            party = authenticate(ssl_object, self.allowed, self.owner.id)
            return MODEL if party == self.model_party else party
        claimed = path[len(PEER_PATH) :] if path.startswith(PEER_PATH) else None
        return claimed if claimed in self.owner.peers else MODEL

    async def _handler(self, connection, path: str = "/"):
        requester = self.requester_of(connection, path)
        loop = asyncio.get_event_loop()
        try:
            async for frame in connection:
                try:
                    message = decode(frame, self.max_frame)
                except WireError as err:
                    self.owner.refused += 1
                    self.owner.log(f"refused a frame from {requester}: {err}")
                    await connection.close(CLOSE_POLICY_VIOLATION, f"malformed message: {err}"[:120])
                    return
                reply = await loop.run_in_executor(self.pool, self.owner.handle, requester, message, connection)
                await connection.send(encode(reply))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.owner.connection_closed(connection)

    def serve(self, on_ready: Optional[Callable[[int], None]] = None) -> None:
        """Serve until SIGINT or SIGTERM; ``on_ready(port)`` once listening (port 0 picks a free one)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            websockets.serve(
                self._handler,
                self.host,
                self.port,
                ssl=self.tls,
                max_size=self.max_frame,
                max_queue=1,  # one frame read ahead per connection: memory per connection is bounded
                compression=None,  # no permessage-deflate: no decompression bomb
                ping_interval=None,  # type: ignore[arg-type]  # websockets documents None: no pings
                close_timeout=1,
                create_protocol=functools.partial(CheckingProtocol, server=self),  # type: ignore[arg-type]
            )
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None and server.sockets:
                on_ready(server.sockets[0].getsockname()[1])
            loop.run_until_complete(stop.wait())
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            server.close()
            loop.run_until_complete(server.wait_closed())
            self.pool.shutdown(wait=False)
            for link in self.owner.peers.values():
                link.close()

    def admit(self, requester: str) -> bool:
        """Count a new connection of ``requester`` unless its party holds ``PARTY_CONNECTIONS`` already or the
        owner is full; the peers together never take the model owner's last ``PARTY_CONNECTIONS`` slots."""
        reserve = min(PARTY_CONNECTIONS, self.bounds.max_connections // 2)
        peers = self.open_connections - self.party_connections.get(MODEL, 0)
        if (
            self.party_connections.get(requester, 0) >= PARTY_CONNECTIONS
            or self.open_connections >= self.bounds.max_connections
            or (requester != MODEL and peers >= self.bounds.max_connections - reserve)
        ):
            return False
        self.party_connections[requester] = self.party_connections.get(requester, 0) + 1
        self.open_connections += 1
        return True

    def release(self, requester: str) -> None:
        self.party_connections[requester] -= 1
        self.open_connections -= 1


def frame_limit(owner: DataOwner) -> int:
    """The largest frame ``owner`` reads: a header and its largest array (the float32 params of a request, or
    a peer's int64 share of a train or evaluate vector), and never above its ``max_message``."""
    metrics = len(owner.task.metric_names)
    values = max(
        4 * owner.parameters, 8 * contribution.train_length(owner.parameters), 8 * contribution.evaluate_length(metrics)
    )
    return min(owner.bounds.max_message, HEADER_PREFIX.size + MAX_HEADER + values)


def authenticate(ssl_object: ssl.SSLObject, allowed: FrozenSet[str], worker_id: str) -> str:
    """The allowed party id in a verified peer certificate; PermissionError for any other party."""
    try:
        party = peer_party(ssl_object)
    except ssl.SSLError as err:
        raise PermissionError(f"worker {worker_id!r} refuses the client: {err}") from None
    if party not in allowed:
        raise PermissionError(
            f"worker {worker_id!r} does not accept party {party!r}; it accepts {', '.join(sorted(allowed))}"
        )
    return party


class CheckingProtocol(websockets.WebSocketServerProtocol):
    """Refuses the websocket upgrade (HTTP 403) of a party not allowed, and (503) one connection too many."""

    def __init__(self, *args, server: OwnerServer, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner_server = server
        self.counted: Optional[str] = None  # the requester whose connection this is, once admitted

    async def process_request(self, path, request_headers):
        try:
            requester = self.owner_server.requester_of(self, path)
        except PermissionError as err:
            return http.HTTPStatus.FORBIDDEN, [], f"{err}\n".encode()
        if not self.owner_server.admit(requester):
            return http.HTTPStatus.SERVICE_UNAVAILABLE, [], b"too many connections\n"
        self.counted = requester
        return None

    def connection_lost(self, exc):
        if self.counted is not None:
            self.owner_server.release(self.counted)
            self.counted = None
        super().connection_lost(exc)


def create_owner_server(
    worker_id: str,
    data_path: str,
    task: str = "toy",
    host: str = "127.0.0.1",
    port: int = 8777,
    peers: Optional[Dict[str, Address]] = None,
    certs: Optional[str] = None,
    model_party: str = MODEL_PARTY,
    bounds: OwnerBounds = DEFAULT_BOUNDS,
    log: Optional[Callable[[str], None]] = None,
    ledger: Optional[str] = None,
) -> OwnerServer:
    """Load the owner's task and data (before anything else), then build its server and its links to peers.

    ``certs``: the federation directory (ca.pem, <worker_id>.pem/.key): wss://, our certificate presented to
    peers, only ``model_party`` and the peers accepted. Without it plain ws://, loopback addresses only.
    """
    the_task: Task = load_task(task)
    data, target = the_task.read(data_path)
    peers = dict(peers or {})
    if not peers:
        raise ConfigError("peers: an owner shares with the other owners, so it needs at least one peer NAME=HOST:PORT")
    check_names((worker_id, *peers))
    check_party(model_party)
    if model_party in (worker_id, *peers):
        raise TLSConfigError(f"{model_party!r} is the model owner's party id; a data owner needs another id")
    if MODEL in (worker_id, *peers):  # the owner's requester id of the model owner, whatever --model-party says
        raise TLSConfigError(f"{MODEL!r} names the model owner's requests on a worker; a data owner needs another id")
    if not 2 <= bounds.min_owners <= len(peers) + 1:
        raise ConfigError(
            f"min-owners: a sum covers 2 to {len(peers) + 1} owners (this worker and its {len(peers)} peer(s)), "
            f"got {bounds.min_owners}"
        )
    if certs is None:
        check_plaintext_hosts({"--host": [host], "--peers": [h for h, _ in peers.values()]})
        tls = peer_tls = None
    else:
        tls, peer_tls = server_context(certs, worker_id), client_context(certs, worker_id)
    links: Dict[str, Link] = {
        peer: WebsocketLink(
            peer,
            peer_host,
            peer_port,
            peer_tls,
            timeout=bounds.peer_timeout,
            connect_timeout=bounds.peer_timeout,
            reconnect=True,
            max_message=bounds.max_message,
            path="" if peer_tls else f"{PEER_PATH}{worker_id}",
        )  # fmt: skip
        for peer, (peer_host, peer_port) in peers.items()
    }
    from ..workers import create_hook

    create_hook()  # before any request thread runs torch: the additive shares use syft's fix_prec().share()
    owner = DataOwner(worker_id, data, target, the_task, bounds, links, log, ledger)
    return OwnerServer(owner, host, port, tls, model_party)
