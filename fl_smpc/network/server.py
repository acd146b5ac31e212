"""A data owner's side of network mode: a worker process serving its own CSV over syft's websockets.

Each owner runs a :class:`DataOwnerServer` (a ``WebsocketServerWorker``) holding the rows of its CSV
file, tagged so the model owner can find them with ``search``, and one client per peer owner, to
which it sends its shares.
"""

import asyncio
import binascii
import hashlib
import itertools
import signal
from typing import Callable, Dict, Optional, Sequence

import torch
import websockets
from syft.workers.websocket_server import WebsocketServerWorker

from ..config import CONNECT_TIMEOUT, Address, check_names
from ..errors import ConfigError
from ..workers import create_hook
from . import DATA_TAG, TARGET_TAG
from .client import NetworkClient
from .csvdata import read_csv
from .policy import DEFAULT_SETTINGS, MODEL_OWNER, OwnerPolicy, PolicySettings
from .wire import install_safe_tensor_loading

PEER_PATH = "/peer/"  # a peer owner connects to ws://host:port/peer/<its id>

CLOSE_INTERNAL_ERROR = 1011  # websocket close code: the server could not handle the request


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

    With a :class:`~fl_smpc.network.policy.OwnerPolicy` (``enable_policy``), every message passes
    the owner's release policy first; ``current_requester`` is the party the current message came
    from (None: the model owner) and ``current_connection`` numbers its connection.
    """

    policy: Optional[OwnerPolicy] = None
    current_requester: Optional[str] = None
    current_connection = 0
    _connections = itertools.count(1)

    async def _handler(self, connection, path: str = "/", *unused_args):
        serial = next(self._connections)
        # plain ws:// authenticates nobody: a peer *claims* its id in the path (see docs/policy.md)
        claimed = path[len(PEER_PATH):] if path.startswith(PEER_PATH) else None
        requester = claimed if self.policy is not None and claimed in self.policy.peers else None
        try:
            async for text in connection:
                try:
                    self.current_requester, self.current_connection = requester, serial
                    reply = self._recv_msg(binascii.unhexlify(text[2:-1]))
                except Exception as err:  # anything: the caller must hear about it, not wait
                    await connection.close(CLOSE_INTERNAL_ERROR, failure_reason(self.id, err))
                    return
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

    def enable_policy(self, peers: Sequence[str], settings: PolicySettings = DEFAULT_SETTINGS,
                      log: Callable[[str], None] = None) -> OwnerPolicy:
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

    def serve(self, on_ready: Callable[[int], None] = None) -> None:
        """Serve until SIGINT or SIGTERM; ``on_ready(port)`` once listening (port 0 picks a free one)."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(websockets.serve(
            self._handler, self.host, self.port, max_size=None, ping_interval=None, close_timeout=1))
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


def refuse_get(tensor: torch.Tensor) -> torch.Tensor:
    """Make syft answer ``GetNotPermittedError`` to a ``.get()`` of this very tensor.

    syft checks ``tensor.allow(user)`` before handing an object out. This stops the plain
    ``data_ptr.get()`` only; computing on the data and fetching the result is stopped by the
    owner's release policy (:mod:`fl_smpc.network.policy`), of which this is a second layer.
    """
    tensor.allow = lambda user=None: False
    return tensor


class PeerClient(NetworkClient):
    """A data owner's connection to a peer owner, naming the caller in the path (``/peer/<id>``).

    On plain ws:// that is a claim, not a proof; it lets the peer's policy attribute the shares
    it receives to this owner (docs/policy.md).
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


def data_owner_server(hook, worker_id: str, data: torch.Tensor, target: torch.Tensor, host: str = "127.0.0.1",
                      port: int = 8777) -> DataOwnerServer:
    """The server holding an owner's data and labels, tagged for search and refusing a plain get."""
    data = refuse_get(data.tag(DATA_TAG).describe(f"{worker_id}'s features"))
    target = refuse_get(target.tag(TARGET_TAG).describe(f"{worker_id}'s labels"))
    return DataOwnerServer(hook, host=host, port=port, id=worker_id, data=[data, target])


def create_data_owner(worker_id: str, data_path: str, host: str = "127.0.0.1", port: int = 8777,
                      peers: Dict[str, Address] = None, timeout: float = CONNECT_TIMEOUT,
                      policy: Optional[PolicySettings] = DEFAULT_SETTINGS,
                      log: Callable[[str], None] = None) -> DataOwnerServer:
    """Load and validate the owner's CSV (before anything else), then build its server and peer clients.

    Peers are connected lazily on first use with retries until ``timeout``: they may start later.
    ``timeout`` also bounds a peer's reply; keep it below the model owner's reply timeout so a dead
    peer is reported by name before the model owner gives up on this worker.
    ``policy`` None serves syft's original behaviour (every command executed): tests only.
    ``log(line)`` receives the policy's refusals.
    """
    data, target = read_csv(data_path)
    peers = dict(peers or {})
    if not peers:
        raise ConfigError("peers: a worker sends shares to the other owners, so it needs at least one "
                         "peer NAME=HOST:PORT (--peers)")
    check_names((worker_id, *peers))  # same id rules as the in-process run (unique, safe, not "me")
    if policy is not None and MODEL_OWNER in (worker_id, *peers):
        raise ConfigError(f"workers: {MODEL_OWNER!r} is the model owner's identity, not a data owner's id")
    if policy is not None and not 2 <= policy.min_owners <= len(peers) + 1:
        raise ConfigError(f"min-owners: a released sum must cover 2 to {len(peers) + 1} owners (this worker and "
                          f"its {len(peers)} peer(s)), got {policy.min_owners}")
    hook = create_hook()
    server = data_owner_server(hook, worker_id, data, target, host, port)
    for peer_id, (peer_host, peer_port) in peers.items():
        client = PeerClient(hook, peer_host, peer_port, id=peer_id, timeout=timeout,
                            connect_timeout=timeout, reconnect=True, caller=worker_id)
        if peer_id not in server._known_workers:
            server.add_worker(client)
    if policy is not None:
        server.enable_policy(list(peers), policy, log)
    return server


