"""Start data-owner worker processes on this machine and always stop them again.

Used by ``fl-smpc demo-network`` and the tests. Each worker runs ``python -m fl_smpc worker`` in
its own process group (so a Ctrl-C aimed at the launcher does not kill a worker mid-message, and
stopping a group also stops anything the worker started); on Linux a worker also gets SIGTERM if
the launcher itself dies. Readiness is the worker's "serving on" line, polled with a deadline --
never a fixed sleep -- and a worker that exits instead is reported with the end of its log.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

from ..config import MODEL_PARTY, Address
from ..errors import WorkerStartError

READY_MARK = "serving on"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (another process could still take it before the worker binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent():  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the launcher's finally block is the only guarantee


def worker_command(
    name: str,
    data_path: str,
    address: Address,
    peers: Dict[str, Address],
    timeout: Optional[float] = None,
    certs: Optional[str] = None,
    model_party: str = MODEL_PARTY,
    extra: Sequence[str] = (),
) -> List[str]:
    """The ``fl-smpc worker`` command line for one owner (run with this interpreter), ``extra`` flags last.

    With ``certs`` the worker uses mutual TLS; without, ``--insecure`` (plain ws://, loopback only).
    """
    cmd = [
        sys.executable,
        "-m",
        "fl_smpc",
        "worker",
        "--id",
        name,
        "--data",
        data_path,
        "--host",
        address[0],
        "--port",
        str(address[1]),
    ]
    if peers:
        cmd += ["--peers", ",".join(f"{n}={h}:{p}" for n, (h, p) in peers.items())]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    cmd += ["--certs", certs] if certs is not None else ["--insecure"]
    if model_party != MODEL_PARTY:
        cmd += ["--model-party", model_party]
    return cmd + list(extra)


def start_worker(
    name: str,
    data_path: str,
    address: Address,
    peers: Dict[str, Address],
    log_path: str,
    timeout: Optional[float] = None,
    certs: Optional[str] = None,
    model_party: str = MODEL_PARTY,
    extra: Sequence[str] = (),
) -> subprocess.Popen:
    """Start one worker process in its own session, output to ``log_path``; see :func:`wait_ready`."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            worker_command(name, data_path, address, peers, timeout, certs, model_party, extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop_processes(procs: List[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds in total, then SIGKILL what is left."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone (its group is empty)
        os.killpg(proc.pid, sig)  # pid == pgid: started with start_new_session


def wait_ready(proc: subprocess.Popen, log_path: str, name: str, deadline: float) -> None:
    """Return once the worker's log shows it is serving; raise WorkerStartError if it exits or times out."""
    while True:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        if READY_MARK in log:
            return
        if proc.poll() is not None:
            raise WorkerStartError(f"worker {name!r} exited with code {proc.returncode}:\n{log[-2000:]}")
        if time.monotonic() > deadline:
            raise WorkerStartError(f"worker {name!r} did not start serving in time:\n{log[-2000:]}")
        time.sleep(0.05)


@contextmanager
def local_workers(
    data_paths: Dict[str, str],
    host: str = "127.0.0.1",
    ready_timeout: float = 60.0,
    timeout: Optional[float] = None,
    log_dir: Optional[str] = None,
    certs: Optional[str] = None,
    model_party: str = MODEL_PARTY,
    worker_args: Sequence[str] = (),
) -> Iterator["WorkerAddresses"]:
    """Run one worker process per ``{name: csv_path}`` on free ports; yield ``{name: (host, port)}``.

    Every process is stopped on exit, whatever happened (error, Ctrl-C). ``timeout`` is passed to
    the workers (peer connect/reply timeout); so are ``certs`` (the federation directory: mutual TLS,
    the workers accepting ``model_party`` and each other) or, without it, ``--insecure``, and
    ``worker_args`` (e.g. ``--min-owners 2``). Logs go to ``log_dir`` (default: a temporary dir).
    The ``Popen`` objects are available as ``addresses.processes`` for tests that kill one.
    """
    addresses = WorkerAddresses({name: (host, free_port(host)) for name in data_paths})
    with tempfile.TemporaryDirectory(prefix="fl-smpc-workers-") as tmp:
        log_dir = log_dir or tmp
        try:
            for name, path in data_paths.items():
                peers = {n: a for n, a in addresses.items() if n != name}
                addresses.logs[name] = os.path.join(log_dir, f"{name}.log")
                addresses.processes[name] = start_worker(
                    name, path, addresses[name], peers, addresses.logs[name], timeout, certs, model_party, worker_args
                )
            deadline = time.monotonic() + ready_timeout
            for name, proc in addresses.processes.items():
                wait_ready(proc, addresses.logs[name], name, deadline)
            yield addresses
        finally:
            stop_processes(list(addresses.processes.values()))


class WorkerAddresses(dict):
    """``{name: (host, port)}`` plus the worker ``processes`` and ``logs`` (paths) by name."""

    def __init__(self, *args):
        super().__init__(*args)
        self.processes: Dict[str, subprocess.Popen] = {}
        self.logs: Dict[str, str] = {}
