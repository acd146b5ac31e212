"""Mutual TLS: the certificates `fl-smpc certs` makes, who may connect to a worker, and whom a client accepts.

Real worker processes on loopback (one TLS worker, one --insecure worker for contrast), started once
for the module and always stopped. Each refusal is checked next to the case that is accepted, so a
check that stopped refusing would fail here.
"""
import datetime
import os
import shutil
import ssl
import stat
import time
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fl_smpc.cli import main
from fl_smpc.config import FLConfig, RunSpec
from fl_smpc.errors import TLSConfigError, WorkerUnreachable
from fl_smpc.network import tls
from fl_smpc.data_owner.server import OwnerServer
from fl_smpc.model_owner.connect import owner_links
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.network.launcher import free_port, start_worker, stop_processes, wait_ready
from fl_smpc.network.links import open_websocket

OWNERS = ("bob", "alice", "jane")


def load_cert(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


# --- fl-smpc certs ---------------------------------------------------------------------------------------

def naive_write(path, data, mode):
    """The weak version: create the file with default permissions (and chmod afterwards, too late)."""
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("writer", ["os.open with mode 0600", "open() then chmod"])
def test_certs_command_writes_keys_readable_by_the_owner_only(tmp_path, capsys, monkeypatch, writer):
    if writer != "os.open with mode 0600":
        monkeypatch.setattr(tls, "_write_new", naive_write)
    previous = os.umask(0)  # the worst umask: only the mode given at creation protects a key
    try:
        assert main(["certs", "--out", str(tmp_path), "--parties", "model,bob", "--days", "3"]) == 0
    finally:
        os.umask(previous)
    out = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in out) == ["bob.key", "bob.pem", "ca.key", "ca.pem", "model.key",
                                                        "model.pem"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    keys_private = all(mode == 0o600 for name, mode in modes.items() if name.endswith(".key"))
    assert keys_private == (writer == "os.open with mode 0600"), modes


def test_certificates_name_their_party_and_chain_to_the_ca(tmp_path):
    tls.create_federation(str(tmp_path), ["model", "bob"], days=3)
    ca, bob = load_cert(tmp_path / "ca.pem"), load_cert(tmp_path / "bob.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    bob.verify_directly_issued_by(ca)
    assert isinstance(bob.public_key(), ec.EllipticCurvePublicKey) and bob.public_key().curve.name == "secp256r1"
    assert not bob.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert bob.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["bob"]
    assert set(bob.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert bob.not_valid_after_utc - bob.not_valid_before_utc == tls.CLOCK_SKEW + datetime.timedelta(days=3)
    assert tls.certificate_party(str(tmp_path / "bob.pem")) == "bob"


def test_existing_files_are_kept_and_a_new_party_joins_the_existing_ca(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--parties", "model,bob"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["certs", "--out", str(tmp_path), "--parties", "bob"]) == 2
    assert "bob.key, bob.pem already exist" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    assert main(["certs", "--out", str(tmp_path), "--parties", "dave"]) == 0
    assert "issued by the existing CA" in capsys.readouterr().err
    load_cert(tmp_path / "dave.pem").verify_directly_issued_by(load_cert(tmp_path / "ca.pem"))
    assert (tmp_path / "ca.pem").read_bytes() == before["ca.pem"]

    assert main(["certs", "--out", str(tmp_path), "--parties", "model,bob", "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before["ca.pem"]  # --force: a new CA


@pytest.mark.parametrize("parties, message", [
    ("model,../bob", "ids must be 1-64 letters"),
    ("model,bob,Bob", "duplicate party ids ['Bob', 'bob']"),
    ("model,ca", "'ca' is reserved"),
])
def test_certs_command_refuses_bad_party_ids_and_writes_nothing(tmp_path, capsys, parties, message):
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--parties", parties]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_nothing_is_left_half_written_when_a_file_cannot_be_placed(tmp_path, monkeypatch):
    calls, link = [], os.link

    def link_failing_on_the_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        link(src, dst)

    monkeypatch.setattr(tls.os, "link", link_failing_on_the_third)
    with pytest.raises(TLSConfigError, match="No space left on device; nothing was written"):
        tls.create_federation(str(tmp_path), ["model", "bob"])
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


# --- identities in the TLS handshake (in memory) -----------------------------------------------------------

@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A federation with the three owners, the model owner and mallory (a valid certificate, but no role);
    and another CA's "model" certificate."""
    root = tmp_path_factory.mktemp("tls")
    certs, other = str(root / "certs"), str(root / "other")
    tls.create_federation(certs, ["model", *OWNERS, "mallory"], days=1)
    tls.create_federation(other, ["model"], days=1)
    return SimpleNamespace(root=root, certs=certs, other=other)


def memory_handshake(server_context, client_context, server_name):
    """A TLS handshake between two SSLObjects over memory buffers; returns the server's SSLObject."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_context.wrap_bio(c_in, c_out, server_hostname=server_name)
    for _ in range(10):
        pending = False
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pending = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            return server
    raise AssertionError("handshake did not finish")


def test_contexts_require_tls_1_2_and_a_certificate_from_the_ca(federation):
    server, client = tls.server_context(federation.certs, "bob"), tls.client_context(federation.certs, "model")
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2 and client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls.peer_party(memory_handshake(server, client, "bob")) == "model"
    with pytest.raises(ssl.SSLCertVerificationError, match="not valid for 'alice'"):
        memory_handshake(server, client, "alice")  # bob's certificate does not pass for alice


def test_peer_party_needs_the_cn_among_the_dns_names():
    assert tls.peer_party({"subject": ((("commonName", "bob"),),), "subjectAltName": (("DNS", "bob"),)}) == "bob"
    for cert in [None, {}, {"subject": ((("commonName", "bob"),),), "subjectAltName": (("DNS", "alice"),)},
                 {"subject": ((("commonName", "bob"),),)}]:
        with pytest.raises(ssl.SSLError):
            tls.peer_party(cert)


def test_a_certificate_of_another_party_is_not_loaded_as_ours(federation, tmp_path):
    shutil.copy(os.path.join(federation.certs, "ca.pem"), tmp_path)
    for suffix in (".pem", ".key"):  # jane's files under bob's name
        shutil.copy(os.path.join(federation.certs, f"jane{suffix}"), tmp_path / f"bob{suffix}")
    with pytest.raises(TLSConfigError, match="is for party 'jane', not 'bob'"):
        tls.server_context(str(tmp_path), "bob")
    with pytest.raises(TLSConfigError, match=r"missing alice.pem, alice.key"):
        tls.client_context(str(tmp_path), "alice")


@pytest.mark.parametrize("party, requester", [("model", "model"), ("jane", "jane"), ("mallory", None),
                                             (None, "model")])
def test_the_server_knows_who_sent_each_request(federation, party, requester):
    """The requester is the party of the verified certificate: the model owner as "model", a peer by its id; a
    party the worker does not expect is refused; a plain, unauthenticated socket (--insecure) counts as the
    model owner, unless it claims a peer's id in its path."""
    server = OwnerServer.__new__(OwnerServer)  # requester_of only: no owner, no socket
    server.owner = SimpleNamespace(id="bob", peers={"alice": None, "jane": None})
    server.allowed, server.model_party = frozenset({"model", "alice", "jane"}), "model"
    ssl_object = None if party is None else memory_handshake(
        tls.server_context(federation.certs, "bob"), tls.client_context(federation.certs, party), "bob")
    connection = SimpleNamespace(transport=SimpleNamespace(get_extra_info=lambda key: ssl_object))
    if requester is None:
        with pytest.raises(PermissionError, match="does not accept party 'mallory'"):
            server.requester_of(connection, "/")
    else:
        assert server.requester_of(connection, "/") == requester
        assert server.requester_of(connection, "/peer/jane") == ("jane" if party is None else requester)


# --- real worker processes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bob(federation):
    """Worker bob twice: with --certs and with --insecure. Its peers are never started: it reaches them lazily."""
    paths = split_to_csv(str(federation.root / "data"), OWNERS)
    peers = {"alice": ("127.0.0.1", free_port()), "jane": ("127.0.0.1", free_port())}
    servers = {"tls": ("127.0.0.1", free_port()), "insecure": ("127.0.0.1", free_port())}
    procs = {}
    try:
        for kind, address in servers.items():
            log = str(federation.root / f"bob-{kind}.log")
            procs[kind] = start_worker("bob", paths["bob"], address, peers, log, 5.0,
                                       federation.certs if kind == "tls" else None)
        deadline = time.monotonic() + 60
        for kind, proc in procs.items():
            wait_ready(proc, str(federation.root / f"bob-{kind}.log"), f"bob ({kind})", deadline)
        yield servers
    finally:
        stop_processes(list(procs.values()))
    assert all(proc.poll() is not None for proc in procs.values())


def client_without_role(federation, certificate):
    """A client that trusts the federation's CA (so it accepts bob) but presents no or a foreign certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(os.path.join(federation.certs, "ca.pem"))
    if certificate == "another CA":
        context.load_cert_chain(*tls.party_files(federation.other, "model")[1:])
    return context


@pytest.mark.parametrize("certificate, server", [("none", "tls"), ("another CA", "tls"), ("none", "insecure")])
def test_a_client_without_a_certificate_from_the_ca_cannot_connect(federation, bob, certificate, server):
    host, port = bob[server]
    if server == "insecure":  # the weak version: plain websockets let anyone in
        open_websocket(f"ws://{host}:{port}", "bob", timeout=5, connect_timeout=5).close()
        return
    started = time.monotonic()
    with pytest.raises(WorkerUnreachable, match="did not accept our certificate"):
        open_websocket(f"wss://{host}:{port}", "bob", timeout=5, connect_timeout=5,
                       tls=client_without_role(federation, certificate))
    assert time.monotonic() - started < 5  # refused, not retried until the deadline


@pytest.mark.parametrize("party, accepted", [("model", True), ("jane", True), ("mallory", False)])
def test_only_the_model_owner_and_the_peers_are_accepted(federation, bob, party, accepted):
    """mallory's certificate is valid (same CA), but bob neither trains for nor shares with mallory."""
    if accepted:
        with owner_links({"bob": bob["tls"]}, timeout=5, connect_timeout=5, certs=federation.certs,
                         party=party) as links:
            assert links["bob"].ws.connected  # the upgrade was accepted (what each may then ask is the owner's)
    else:
        with pytest.raises(WorkerUnreachable, match=r"does not accept our party \(Handshake status 403"):
            with owner_links({"bob": bob["tls"]}, timeout=5, connect_timeout=5, certs=federation.certs,
                             party=party):
                pass


@pytest.mark.parametrize("identity_check", [True, False])
def test_a_server_holding_another_owners_certificate_is_refused(federation, bob, monkeypatch, identity_check):
    """We dial "alice" and reach bob (a moved worker, a spoofed address): his certificate is not alice's."""
    import fl_smpc.network.links

    if not identity_check:  # the weak version: TLS that checks the CA only
        unchecked = tls.client_context(federation.certs, "model")
        unchecked.check_hostname = False
        monkeypatch.setattr(fl_smpc.network.links, "wrap_client",
                            lambda context, sock, expected: unchecked.wrap_socket(sock))
    host, port = bob["tls"]
    context = tls.client_context(federation.certs, "model")
    if identity_check:
        with pytest.raises(WorkerUnreachable, match="certificate is not valid for 'alice'"):
            open_websocket(f"wss://{host}:{port}", "alice", timeout=5, connect_timeout=5, tls=context)
    else:
        open_websocket(f"wss://{host}:{port}", "alice", timeout=5, connect_timeout=5, tls=context).close()


def test_plain_and_tls_clients_are_told_what_the_worker_speaks(federation, bob):
    with pytest.raises(WorkerUnreachable, match="does it use TLS"):
        open_websocket("ws://%s:%d" % bob["tls"], "bob", timeout=5, connect_timeout=5)
    with pytest.raises(WorkerUnreachable, match="started with --insecure"):
        open_websocket("wss://%s:%d" % bob["insecure"], "bob", timeout=5, connect_timeout=5,
                       tls=tls.client_context(federation.certs, "model"))


# --- choosing TLS or --insecure -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([], "needs a security choice: give --certs DIR"),
    (["--insecure", "--certs", "x"], "--certs and --insecure exclude each other"),
    (["--insecure"], "allowed on loopback addresses only, not --workers 10.0.0.1"),
])
def test_the_run_needs_tls_or_insecure_on_loopback(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--transport", "websocket", "--workers", "bob=10.0.0.1:1,alice=127.0.0.1:2,jane=127.0.0.1:3", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err, err


@pytest.mark.parametrize("hosts, allowed", [(("127.0.0.1", "localhost"), True), (("::1", "127.0.0.2"), True),
                                            (("127.0.0.1", "10.0.0.2"), False), (("0.0.0.0", "127.0.0.1"), False)])
def test_insecure_is_loopback_only(hosts, allowed):
    def make():
        return RunSpec(FLConfig(workers=("bob", "alice"), min_owners=2, training="owner"), transport="websocket",
                       addresses={"bob": (hosts[0], 1), "alice": (hosts[1], 2)}, insecure=True)

    if allowed:
        make()
    else:
        with pytest.raises(TLSConfigError, match="loopback addresses only"):
            make()


@pytest.mark.parametrize("flags, message", [
    (["--insecure", "--host", "0.0.0.0"], "loopback addresses only, not --host 0.0.0.0"),
    (["--insecure", "--peers", "alice=10.0.0.2:8777,jane=127.0.0.1:1"], "not --peers 10.0.0.2"),
    ([], "no security chosen: give --certs DIR"),
    (["--certs", "nowhere"], "--certs nowhere: no such directory"),
    (["--certs", "CERTS", "--id", "model"], "'model' is the model owner's party id"),
])
def test_worker_refuses_insecure_off_loopback_and_missing_certificates(federation, tmp_path, capsys, flags, message):
    data = split_to_csv(str(tmp_path), OWNERS)["bob"]
    flags = [federation.certs if f == "CERTS" else f for f in flags]
    argv = ["worker", "--id", "bob", "--data", data, "--port", "0", "--peers", "alice=127.0.0.1:2,jane=127.0.0.1:1",
            *flags]
    try:
        code = main(argv)
    except SystemExit as done:  # argparse: flag errors
        code = done.code
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1], err  # one line names what is wrong


@pytest.mark.parametrize("days_later, message", [(0, None), (2, "the certificate expired on"),
                                                 (-1, "is valid only from")])
def test_an_expired_own_certificate_is_refused_at_start(federation, monkeypatch, days_later, message):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days_later)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(tls, "datetime", SimpleNamespace(datetime=Clock, timezone=datetime.timezone))
    if message is None:
        tls.server_context(federation.certs, "bob")
    else:
        with pytest.raises(TLSConfigError, match=message):
            tls.server_context(federation.certs, "bob")
