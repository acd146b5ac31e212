"""The transports of owner-side training: a link carries one request to a party and brings back its reply.

* :class:`InProcessLink` calls a :class:`~fl_smpc.data_owner.owner.DataOwner` in this process, through the
  wire codec as the network would (in-process ``--training owner``: the tests exercise the owner's code);
* :class:`WebsocketLink` is one websocket connection to a worker (the model owner's to each owner, and each
  owner's to each peer), with mutual TLS when given a :func:`~fl_smpc.network.tls.client_context`: we
  present our certificate and accept only a server whose certificate names the party we dial.

Every wait is bounded, and a failure raises :class:`~fl_smpc.errors.WorkerUnreachable` naming the party.
Frames are binary, uncompressed (no permessage-deflate is offered), at most ``max_message`` bytes.
"""

import contextlib
import http
import select
import socket
import ssl
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

import websocket

from ..config import CONNECT_TIMEOUT, DEFAULT_BOUNDS, REPLY_TIMEOUT
from ..errors import WorkerUnreachable
from .tls import wrap_client
from .wire import Message, WireError, decode, encode


def open_websocket(
    url: str, worker: str, timeout: float, connect_timeout: float, tls: Optional[ssl.SSLContext] = None
) -> websocket.WebSocket:
    """Connect, retrying refused connections with backoff until ``connect_timeout`` (upstream #2258).

    A server that is still starting refuses connections; a fixed sleep would be both slow and
    unreliable, so we retry until a deadline and then name the worker we could not reach.
    A failed TLS handshake, a refused upgrade (HTTP 403: the worker does not accept our party) or
    a server that hangs up during the handshake is not retried: waiting does not change certificates.
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


class InProcessLink:
    """A link to a DataOwner in this process: the request and the reply both pass through the wire codec."""

    def __init__(self, owner, requester: str, max_message: int = DEFAULT_BOUNDS.max_message):
        self.owner, self.requester, self.max_message, self.id = owner, requester, max_message, owner.id

    def request(self, message: Message) -> Message:
        received = decode(encode(message), self.max_message)
        return decode(encode(self.owner.handle(self.requester, received, connection=self)), self.max_message)

    def close(self) -> None:
        self.owner.connection_closed(self)


class WebsocketLink:
    """One websocket connection to party ``id`` at ``host:port``; requests one at a time, each bounded.

    ``reconnect``: open a closed connection again before the next request (an owner's links to its peers:
    a restarted peer is reached again). The model owner reopens explicitly (:meth:`reopen`). ``path``: without
    TLS a peer *claims* its id in the path (``/peer/<id>``); with TLS its certificate names it.
    """

    def __init__(
        self,
        id: str,
        host: str,
        port: int,
        tls: Optional[ssl.SSLContext] = None,
        timeout: float = REPLY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect: bool = False,
        max_message: int = DEFAULT_BOUNDS.max_message,
        path: str = "",
    ):
        self.id, self.host, self.port, self.tls, self.path = id, host, port, tls, path
        self.timeout, self.connect_timeout, self.reconnect, self.max_message = (
            timeout,
            connect_timeout,
            reconnect,
            max_message,
        )
        self.ws: Optional[websocket.WebSocket] = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{self.path}"

    def open(self) -> "WebsocketLink":
        self.ws = open_websocket(self.url, self.id, self.timeout, self.connect_timeout, self.tls)
        return self

    def reopen(self) -> "WebsocketLink":
        self.close()
        return self.open()

    def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                ws.close(timeout=1)

    def _usable(self) -> bool:
        """Connected and idle: a server only speaks in reply, so a socket readable now is closed or reset
        (bytes TLS already decrypted and buffered count as readable too)."""
        if self.ws is None or not self.ws.connected:
            return False
        if isinstance(self.ws.sock, ssl.SSLSocket) and self.ws.sock.pending():
            return False
        readable, _, _ = select.select([self.ws.sock], [], [], 0)
        return not readable

    def request(self, message: Message) -> Message:
        frame = encode(message)
        with self._lock:
            if not self._usable():
                self.close()
                if not self.reconnect:
                    raise WorkerUnreachable(self.id, "connection closed")
                self.open()
            assert self.ws is not None
            try:
                self.ws.send_binary(frame)
                opcode, data = self.ws.recv_data()
            except (OSError, websocket.WebSocketException) as err:
                self.close()
                timed_out = isinstance(err, (socket.timeout, websocket.WebSocketTimeoutException))
                waited = f" within {self.timeout:g}s" if timed_out else ""
                raise WorkerUnreachable(self.id, f"no reply{waited}: {type(err).__name__}: {err}") from err
        if opcode != websocket.ABNF.OPCODE_BINARY:
            self.close()
            reason = data[2:].decode("utf-8", "replace") if opcode == websocket.ABNF.OPCODE_CLOSE else "a text frame"
            raise WorkerUnreachable(self.id, f"closed the connection: {reason or 'no reason given'}")
        try:
            return decode(data, self.max_message)
        except WireError as err:
            raise WorkerUnreachable(self.id, f"sent a malformed reply: {err}") from None
