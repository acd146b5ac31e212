"""A data owner's side of network mode: a worker process serving its own CSV over syft's websockets.

Each owner runs a :class:`DataOwnerServer` (a ``WebsocketServerWorker``) holding the rows of its CSV
file, tagged so the model owner can find them with ``search``, and one client per peer owner, to
which it sends its shares.
"""

import asyncio
import binascii
import signal
from typing import Callable, Dict

import torch
import websockets
from syft.workers.websocket_server import WebsocketServerWorker

from ..config import CONNECT_TIMEOUT, Address, check_names
from ..errors import ConfigError
from ..pairwise_owner import PairwiseOwner
from ..workers import create_hook
from . import DATA_TAG, TARGET_TAG
from .client import NetworkClient
from .csvdata import read_csv

CLOSE_INTERNAL_ERROR = 1011  # websocket close code: the server could not handle the request


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
    """

    async def _handler(self, connection, *unused_args):
        try:
            async for text in connection:
                try:
                    reply = self._recv_msg(binascii.unhexlify(text[2:-1]))
                except Exception as err:  # anything: the caller must hear about it, not wait
                    await connection.close(CLOSE_INTERNAL_ERROR, failure_reason(self.id, err))
                    return
                await connection.send(str(binascii.hexlify(reply)))
        except websockets.exceptions.ConnectionClosed:
            pass

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
    ``data_ptr.get()``; it cannot stop a client computing on the data and fetching the result
    (syft 0.2.9 executes any command it is sent -- see the README's trust model).
    """
    tensor.allow = lambda user=None: False
    return tensor


def create_data_owner(worker_id: str, data_path: str, host: str = "127.0.0.1", port: int = 8777,
                      peers: Dict[str, Address] = None, timeout: float = CONNECT_TIMEOUT) -> DataOwnerServer:
    """Load and validate the owner's CSV (before anything else), then build its server and peer clients.

    Peers are connected lazily on first use with retries until ``timeout``: they may start later.
    ``timeout`` also bounds a peer's reply; keep it below the model owner's reply timeout so a dead
    peer is reported by name before the model owner gives up on this worker.
    """
    data, target = read_csv(data_path)
    peers = dict(peers or {})
    if not peers:
        raise ConfigError("peers: a worker sends shares to the other owners, so it needs at least one "
                         "peer NAME=HOST:PORT (--peers)")
    check_names((worker_id, *peers))  # same id rules as the in-process run (unique, safe, not "me")
    hook = create_hook()
    data = refuse_get(data.tag(DATA_TAG).describe(f"{worker_id}'s features"))
    target = refuse_get(target.tag(TARGET_TAG).describe(f"{worker_id}'s labels"))
    server = DataOwnerServer(hook, host=host, port=port, id=worker_id, data=[data, target])
    for peer_id, (peer_host, peer_port) in peers.items():
        client = NetworkClient(hook, peer_host, peer_port, id=peer_id, timeout=timeout,
                               connect_timeout=timeout, reconnect=True)
        if peer_id not in server._known_workers:
            server.add_worker(client)
    return server


