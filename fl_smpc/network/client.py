"""The model owner's side of network mode: connections to the data owners' worker processes.

The model owner connects with one :class:`NetworkClient` per owner, finds each owner's data by tag
(the tensors stay on the owner) and runs the unchanged round loop (:func:`fl_smpc.federated.run_rounds`).
Secure averaging names share owners by id, so each owner creates its shares itself and sends them to
its peers over its own client connections; the model owner only ever receives pointers, shares, the
revealed sum, losses and the booleans of the encodability check.

Failures never hang: every connection has a timeout, and a worker that cannot reach a peer closes the
model owner's connection with a reason naming that peer (see :func:`fl_smpc.network.server.failure_reason`).

With a federation directory (``certs``, see :mod:`fl_smpc.network.tls`) every connection is wss://
with mutual TLS: the client presents its own party's certificate and accepts only a server whose
certificate names the worker id it dials.
"""

import binascii
import contextlib
import gc
import http
import select
import socket
import ssl
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import syft as sy
import websocket
from syft.messaging.message import ForceObjectDeleteMessage
from syft.serde.msgpack.serde import _deserialize_msgpack_binary, msgpack_global_state
from syft.workers.websocket_client import WebsocketClientWorker
from torch import nn

from ..config import CONNECT_TIMEOUT, GC_DELAY, MODEL_PARTY, REPLY_TIMEOUT, Address, FLConfig, check_plaintext_hosts
from ..errors import ConfigError, RoundFailed, WorkerSetupError, WorkerUnreachable
from ..federated import History, initial_model, run_rounds
from ..pairwise import forget_session
from ..training import sum_squared_error
from ..workers import create_hook, remove_workers
from . import DATA_TAG, TARGET_TAG
from .tls import client_context, wrap_client


def open_websocket(
    url: str, worker: str, timeout: float, connect_timeout: float, tls: Optional[ssl.SSLContext] = None
) -> websocket.WebSocket:
    """Connect, retrying refused connections with backoff until ``connect_timeout`` (upstream #2258).

    A server that is still starting refuses connections; a fixed sleep would be both slow and
    unreliable, so we retry until a deadline and then name the worker we could not reach.
    A failed TLS handshake, a refused upgrade (HTTP 403: the worker does not accept our party) or
    a server that hangs up during the handshake is not retried: waiting does not change certificates.
    syft's messages are hex text: websocket-client's pure-Python UTF-8 check of every received frame
    (seconds per megabyte) is skipped.
    """
    deadline, pause = time.monotonic() + connect_timeout, 0.05
    while True:
        try:  # the handshake must also finish before the deadline (a hung server accepts TCP, then stalls)
            ws = _connect(url, worker, max(min(timeout, deadline - time.monotonic()), 0.1), tls)
            ws.settimeout(timeout)
            return ws
        except HandshakeRefused as err:
            raise WorkerUnreachable(worker, f"{url}: {err}") from err
        except (OSError, websocket.WebSocketException) as err:
            if time.monotonic() + pause > deadline:
                raise WorkerUnreachable(worker, f"cannot connect to {url} within {connect_timeout:g}s: {err}") from err
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


class HandshakeRefused(Exception):
    """The worker was reached but refused us (TLS or websocket handshake): retrying cannot help."""


def _connect(url: str, worker: str, timeout: float, tls: Optional[ssl.SSLContext]) -> websocket.WebSocket:
    """One websocket connection; with ``tls``, our own TLS handshake first (websocket-client 0.57 takes
    no SSLContext, but it takes a connected socket), accepting only a server certified as ``worker``."""
    sock = None
    if tls is not None:
        parts = urlsplit(url)
        # the worker URLs we build always name a port
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)  # type: ignore[arg-type]
        try:
            for option in websocket.DEFAULT_SOCKET_OPTION:  # as websocket-client's own sockets: TCP_NODELAY
                sock.setsockopt(*option)
            sock = wrap_client(tls, sock, worker)
        except ssl.SSLError as err:
            sock.close()
            plain = getattr(err, "reason", None) == "WRONG_VERSION_NUMBER"  # a plain HTTP reply to our hello
            hint = " (is the worker started with --insecure?)" if plain else ""
            raise HandshakeRefused(f"TLS handshake failed: {err}{hint}") from err
        except BaseException:
            sock.close()
            raise
    try:
        return websocket.create_connection(url, timeout=timeout, max_size=None, socket=sock, skip_utf8_validation=True)
    except websocket.WebSocketBadStatusException as err:
        if err.status_code != http.HTTPStatus.FORBIDDEN:
            raise
        raise HandshakeRefused(
            f"the worker does not accept our party ({err}): a worker accepts only the model "
            "owner's party (--model-party) and its --peers"
        ) from err
    except (
        ssl.SSLError,
        ConnectionResetError,
        ConnectionAbortedError,
        BrokenPipeError,
        websocket.WebSocketConnectionClosedException,
    ) as err:
        # TLS 1.3: a server that rejects our certificate can only say so after our side of the handshake
        # is done; a TLS server that is sent plain HTTP hangs up
        why = (
            "the worker did not accept our certificate (it must be issued by the worker's CA)"
            if tls
            else "the worker hung up during the websocket handshake (does it use TLS? then give --certs)"
        )
        raise HandshakeRefused(f"{why}: {type(err).__name__}: {err}") from err


class NetworkClient(WebsocketClientWorker):
    """syft's websocket client with bounded waits and errors that name the worker.

    Differences from ``WebsocketClientWorker``: it does not connect in ``__init__`` (call
    :meth:`open`, or set ``reconnect`` to connect on first use, as peers do); a timeout, reset or
    refused connection raises :class:`WorkerUnreachable` instead of syft's silent resend; and a
    server that closes the connection with a reason (a failed request, see :func:`failure_reason`)
    raises ``WorkerUnreachable`` naming the worker given in that reason.
    ``reconnect``: reopen a dropped connection before the next message (peers: a restarted peer
    is reached again); the model owner keeps it False, as a restarted worker has lost its objects.
    ``tls``: a :func:`~fl_smpc.network.tls.client_context`; the connection is then wss:// and the
    server must hold the certificate of party ``id``.
    """

    def __init__(
        self,
        hook,
        host: str,
        port: int,
        id: str,
        timeout: float = REPLY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect: bool = False,
        tls: Optional[ssl.SSLContext] = None,
    ):
        self.connect_timeout, self.reconnect, self.closed, self.tls = connect_timeout, reconnect, False, tls
        # the first failure and when: syft swallows some errors (``is_none``, ``__del__``), train_network reports them
        self.failure: Optional[WorkerUnreachable] = None
        self.failed_at = float("inf")
        super().__init__(hook, host, port, secure=tls is not None, id=id, timeout=timeout)

    def connect(self):  # called by WebsocketClientWorker.__init__: connecting is deferred to open()
        pass

    def open(self) -> "NetworkClient":
        self.ws = open_websocket(self.url, self.id, self.timeout, self.connect_timeout, self.tls)
        self.closed = False
        return self

    def reopen(self) -> "NetworkClient":
        """Connect again after a failure (a restarted worker): its objects are new, so are our pointers."""
        self._drop()
        self.open()
        self.failure, self.failed_at = None, float("inf")
        return self

    def close(self):
        """Close for good: later messages fail, except garbage collection, which is dropped."""
        self._drop()
        self.closed = True

    def _drop(self):
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.close(timeout=1)

    def _usable(self) -> bool:
        """Connected and idle: a server only ever speaks in reply, so readable now means closed or reset.

        With TLS, bytes already decrypted and buffered (``pending``) count as readable too.
        """
        if self.ws is None or not self.ws.connected:
            return False
        if isinstance(self.ws.sock, ssl.SSLSocket) and self.ws.sock.pending():
            return False
        readable, _, _ = select.select([self.ws.sock], [], [], 0)
        return not readable

    def _recv_msg(self, message: bytes) -> bytes:
        return self._forward_to_websocket_server_worker(message)

    def _forward_to_websocket_server_worker(self, message: bytes) -> bytes:
        try:
            return self._exchange(message)
        except WorkerUnreachable as err:
            if self.failure is None:
                self.failure, self.failed_at = err, time.monotonic()
            if is_delete_message(message):
                # garbage collection (``__del__``) of a pointer whose worker is gone or was closed:
                # nothing left to delete, and raising would only print noise
                return sy.serde.serialize(None)
            raise

    def _exchange(self, message: bytes) -> bytes:
        if self.closed:
            raise WorkerUnreachable(self.id, "connection closed")
        if not self._usable():
            if not self.reconnect:
                raise WorkerUnreachable(self.id, "connection lost")
            self._drop()
            self.open()
        try:
            self.ws.send(str(binascii.hexlify(message)))
            opcode, data = self.ws.recv_data()
        except (OSError, websocket.WebSocketException) as err:
            self._drop()
            timed_out = isinstance(err, (socket.timeout, websocket.WebSocketTimeoutException))
            waited = f" within {self.timeout:g}s" if timed_out else ""
            raise WorkerUnreachable(self.id, f"no reply{waited}: {type(err).__name__}: {err}") from err
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self._drop()
            worker, _, reason = data[2:].decode("utf-8", "replace").partition("\n")
            if not reason:
                raise WorkerUnreachable(self.id, "closed the connection")
            via = "" if worker == self.id else f" (reported by {self.id!r})"
            raise WorkerUnreachable(worker, reason + via)
        return binascii.unhexlify(data.decode()[2:-1])


def is_delete_message(message: bytes) -> bool:
    """Is this syft's ``ForceObjectDeleteMessage``? Read from the raw msgpack: detailing has side effects."""
    return _deserialize_msgpack_binary(message)[0] == msgpack_global_state.simplifiers[ForceObjectDeleteMessage][0]


@contextmanager
def network_workers(
    addresses: Dict[str, Address],
    hook=None,
    timeout: float = REPLY_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    certs: Optional[str] = None,
    party: str = MODEL_PARTY,
) -> Iterator[List[NetworkClient]]:
    """Connect the model owner to every worker (retrying until ``connect_timeout``); close and forget them on exit.

    ``certs``: the federation directory; we present ``<party>.pem`` and each worker must present its own
    id's certificate. Without ``certs`` the connections are plain ws://, refused unless all on loopback.
    Meanwhile the model owner batches syft's garbage collection (see :func:`batched_deletes`).
    """
    if certs is None:
        check_plaintext_hosts({"--workers": [host for host, _ in addresses.values()]})
    tls = client_context(certs, party) if certs is not None else None
    hook = hook or create_hook()
    taken = [n for n in addresses if n in hook.local_worker._known_workers]
    if taken:
        raise ConfigError(f"workers {taken} already exist in this process; remove them first")
    clients = []
    try:
        for name, (host, port) in addresses.items():
            clients.append(
                NetworkClient(hook, host, port, id=name, timeout=timeout, connect_timeout=connect_timeout, tls=tls)
            )
            clients[-1].open()
        with batched_deletes(hook.local_worker, clients):
            yield clients
    finally:
        for client in clients:
            client.close()
        remove_workers(hook, clients)


@contextmanager
def batched_deletes(local_worker, clients: List[NetworkClient], delay: float = GC_DELAY):
    """Send syft's remote deletes at most every ``delay`` seconds per worker, and the rest on exit.

    syft deletes the remote object of every freed pointer with its own round trip (``garbage_delay``
    0): over a network that is a third of a run's messages. Batching keeps the workers' memory
    bounded (one ``delay`` worth of objects) and the run's messages fewer.

    syft keys its batches by worker *id* but sends a batch to whichever location object's pointer
    happens to trigger the flush. A pointer left over from an earlier worker of the same name (a
    closed connection, an in-process VirtualWorker "bob") would carry this run's batch to that old
    worker, and the live worker would keep the objects. So only our clients' pointers are batched;
    any other pointer deletes at its own location at once, as syft does by default.
    """
    store = local_worker.object_store
    ours = {client.id: client for client in clients}
    batch = local_worker.garbage

    def garbage(object_id, location):
        if ours.get(location.id) is location:
            batch(object_id, location)
        else:
            local_worker.send_msg(ForceObjectDeleteMessage([object_id]), location)

    previous, store.garbage_delay = store.garbage_delay, delay
    local_worker.garbage = garbage
    try:
        yield
    finally:
        gc.collect()  # pointers caught in reference cycles queue their deletes now, not after the flush
        del local_worker.garbage
        store.garbage_delay = previous
        for client in clients:
            ids = store.trash.pop(client.id, (0, []))[1]
            if ids and client.failure is None:
                local_worker.send_msg(ForceObjectDeleteMessage(ids), location=client)


def find_data(client: NetworkClient) -> Tuple:
    """The owner's (data_ptr, target_ptr), found by tag; the tensors stay on the worker."""
    found = []
    for tag in (DATA_TAG, TARGET_TAG):
        hits = client.search([tag])
        if len(hits) != 1:
            raise WorkerSetupError(f"worker {client.id!r} holds {len(hits)} tensors tagged {tag}, expected 1")
        location = hits[0].location  # resolved by id: only our client of that name if the ids agree
        if location is not client:
            raise WorkerSetupError(
                f"the worker at {client.url} has id {getattr(location, 'id', location)!r}, "
                f"but it was given as {client.id!r}: use its --id"
            )
        found.append(hits[0])
    return tuple(found)


def feature_count(remote_data: List[Tuple], names: List[str]) -> int:
    """The common number of feature columns; a worker whose file differs is named."""
    counts = {name: data_ptr.shape[1] for name, (data_ptr, _) in zip(names, remote_data)}
    if len(set(counts.values())) != 1:
        raise WorkerSetupError(f"workers disagree on the number of feature columns: {counts}")
    return next(iter(counts.values()))


def train_network(
    config: FLConfig,
    addresses: Dict[str, Address],
    model: Optional[nn.Module] = None,
    history: Optional[History] = None,
    loss_fn=sum_squared_error,
    evaluate=None,
    on_round=None,
    timeout: float = REPLY_TIMEOUT,
    connect_timeout: Optional[float] = None,
    hook=None,
    certs: Optional[str] = None,
    party: str = MODEL_PARTY,
) -> History:
    """:func:`fl_smpc.federated.train_federated` over websocket workers that hold their own data.

    ``addresses`` maps each name of ``config.workers`` (same order) to its ``(host, port)``.
    ``model`` defaults to ``nn.Linear(features, 1)`` initialised from ``config.seed``, exactly as
    in-process, so both transports give the same model. With ``history`` (a checkpoint) the run
    resumes after its last completed round, from that round's model. ``connect_timeout`` defaults
    to the smaller of ``timeout`` and :data:`CONNECT_TIMEOUT`. ``certs``/``party``: mutual TLS as in
    :func:`network_workers` (without ``certs``: plain ws://, loopback only).
    """
    if tuple(addresses) != config.workers:
        raise ConfigError(f"addresses are given for {list(addresses)} but the config names {list(config.workers)}")
    config = config.with_seed()
    connect_timeout = min(timeout, CONNECT_TIMEOUT) if connect_timeout is None else connect_timeout
    with network_workers(addresses, hook, timeout, connect_timeout, certs, party) as clients:
        remote_data = [find_data(c) for c in clients]
        features = feature_count(remote_data, list(config.workers))
        model = initial_model(config, features, model, history)

        def rejoin(index: int):
            """A dropped owner, tried again before a round: reconnect and find its data by tag."""
            client = clients[index]
            client.reopen()
            data = find_data(client)
            forget_session(clients)  # pairwise masks: the restarted owner has lost its keys, so all agree anew
            if data[0].shape[1] != features:
                raise WorkerSetupError(
                    f"worker {client.id!r} came back with {data[0].shape[1]} feature columns, expected {features}"
                )
            return client, data

        try:
            return run_rounds(
                model,
                clients,
                remote_data,
                config,
                loss_fn,
                history=history,
                evaluate=evaluate,
                on_round=on_round,
                reconnect=rejoin,
            )
        except RoundFailed as err:
            first = min(clients, key=lambda c: c.failed_at).failure
            if err.worker is None and first is not None:  # syft swallowed the real error and failed obscurely
                raise RoundFailed(err.round, first, err.history, first.worker) from err
            raise
