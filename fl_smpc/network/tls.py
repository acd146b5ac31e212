"""Mutual TLS for network mode: a small certificate authority, and the SSL contexts of workers and model owner.

syft's websocket workers execute whatever they are sent, so who may connect matters more than
secrecy on the wire. Every party (the model owner and each data owner) holds a certificate from
one federation CA whose subject CN *and* DNS subjectAltName are its party id. Both ends verify:

* a worker accepts only certificates from the CA (``CERT_REQUIRED``), then only the party ids it
  expects (the model owner and its peers); the id is read from the verified certificate;
* a client checks the server's certificate against the CA and against the party id it means to
  reach, by using that id as the TLS server name (OpenSSL's hostname check) and then comparing
  the certificate's id exactly. So identity does not depend on IP addresses or DNS: certificates
  keep working when a worker moves, and a server holding another owner's certificate is refused.

Directory layout (``fl-smpc certs``): ``ca.pem``, ``ca.key`` (only needed to add parties later),
and ``<party>.pem`` / ``<party>.key`` for each party. Keys are written readable by the owner only.
"""

import contextlib
import datetime
import os
import ssl
from typing import Any, Dict, Iterable, List, Tuple, Union

from ..config import CERT_DAYS, NAME_PATTERN
from ..errors import TLSConfigError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
CERT_SUFFIX, KEY_SUFFIX = ".pem", ".key"
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid a little before "now": clocks differ


# --- creating a federation -------------------------------------------------------------------------------


def check_parties(parties: Iterable[str]) -> List[str]:
    """Party ids as a list: valid worker names, unique even ignoring case (TLS name checks ignore case), not 'ca'."""
    parties = list(parties)
    if not parties:
        raise TLSConfigError("parties: give at least one party id, e.g. model,bob,alice,jane")
    bad = [p for p in parties if not isinstance(p, str) or not NAME_PATTERN.fullmatch(p)]
    if bad:
        raise TLSConfigError(f"parties: ids must be 1-64 letters, digits, '_' or '-' (they name files), got {bad}")
    lower = [p.lower() for p in parties]
    duplicates = sorted({p for p in parties if lower.count(p.lower()) > 1})
    if duplicates:
        raise TLSConfigError(f"parties: duplicate party ids {duplicates} (ids are compared ignoring case)")
    if "ca" in lower:
        raise TLSConfigError("parties: 'ca' is reserved for the certificate authority's files")
    return parties


def create_federation(
    out_dir: str, parties: Iterable[str], days: int = CERT_DAYS, overwrite: bool = False
) -> Dict[str, str]:
    """Write a CA and one EC P-256 key and certificate per party into ``out_dir``; return ``{name: path}``.

    If ``out_dir`` already holds ``ca.pem`` and ``ca.key`` (and not ``overwrite``), that CA issues the
    new parties' certificates, so a party can join later. Existing files are never replaced unless
    ``overwrite`` (which also makes a new CA). Everything is generated in memory and then moved into
    place file by file; if any file cannot be placed, the ones already placed are removed again.
    """
    parties = check_parties(parties)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 100 * 366:
        raise TLSConfigError(f"days: must be an integer from 1 to {100 * 366}, got {days!r}")
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert_path, ca_key_path = os.path.join(out_dir, CA_CERT), os.path.join(out_dir, CA_KEY)
    files: Dict[str, bytes] = {}
    if not overwrite and os.path.exists(ca_cert_path) and os.path.exists(ca_key_path):
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now, days)
        files[CA_CERT], files[CA_KEY] = _pem_cert(ca_cert), _pem_key(ca_key)
    for party in parties:
        key = ec.generate_private_key(ec.SECP256R1())
        files[party + CERT_SUFFIX] = _pem_cert(_party_certificate(party, key, ca_cert, ca_key, now, days))
        files[party + KEY_SUFFIX] = _pem_key(key)
    if not overwrite:
        taken = sorted(name for name in files if os.path.lexists(os.path.join(out_dir, name)))
        if taken:
            verb = "exists" if len(taken) == 1 else "exist"
            raise TLSConfigError(
                f"{out_dir}: {', '.join(taken)} already {verb}; choose another directory or "
                "overwrite them (fl-smpc certs --force)"
            )
    os.makedirs(out_dir, exist_ok=True)
    return _write_all(out_dir, files, overwrite)


def _ca_certificate(key, now: datetime.datetime, days: int):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-smpc federation CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(signs_certificates: bool):
    """Signatures only (EC keys sign the TLS handshake); a CA also signs certificates and CRLs."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _party_certificate(party: str, key, ca_cert, ca_key, now: datetime.datetime, days: int):
    """CN = SAN DNS = the party id; serverAuth + clientAuth, as every party is both server and client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)  # never outlive the CA
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(party)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _load_ca(cert_path: str, key_path: str):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise TLSConfigError(f"cannot use the existing CA {cert_path} / {key_path}: {err}") from None
    # our CA keys are EC (RSA and DSA keys have public_numbers too)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise TLSConfigError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_all(out_dir: str, files: Dict[str, bytes], overwrite: bool) -> Dict[str, str]:
    """Write each file to a temporary name (keys created 0600), then move all into place, or none."""
    temps: Dict[str, str] = {}
    placed: List[str] = []
    try:
        for name, data in files.items():
            temps[name] = _write_new(
                os.path.join(out_dir, f".{name}.tmp-{os.getpid()}"), data, 0o600 if name.endswith(KEY_SUFFIX) else 0o644
            )
        for name, temp in temps.items():
            final = os.path.join(out_dir, name)
            if overwrite:
                os.replace(temp, final)
            else:
                os.link(temp, final)  # fails if the file appeared meanwhile: never replaces one
                os.unlink(temp)
            placed.append(final)
    except FileExistsError as err:
        _remove(placed + list(temps.values()))
        raise TLSConfigError(f"{err.filename2 or err.filename}: already exists; nothing was written") from None
    except OSError as err:
        _remove(placed + list(temps.values()))
        raise TLSConfigError(f"cannot write to {out_dir}: {err.strerror or err}; nothing was written") from None
    return {name: os.path.join(out_dir, name) for name in files}


def _write_new(path: str, data: bytes, mode: int) -> str:
    """Create ``path`` with ``mode`` from the start (a key is never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return path


def _remove(paths: List[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- using a federation: SSL contexts and party ids ------------------------------------------------------


def party_files(certs_dir: str, party: str) -> Tuple[str, str, str]:
    """``(ca.pem, <party>.pem, <party>.key)`` in ``certs_dir``; TLSConfigError naming what is missing."""
    paths = (
        os.path.join(certs_dir, CA_CERT),
        os.path.join(certs_dir, party + CERT_SUFFIX),
        os.path.join(certs_dir, party + KEY_SUFFIX),
    )
    if not os.path.isdir(certs_dir):
        raise TLSConfigError(f"--certs {certs_dir}: no such directory (make one with `fl-smpc certs`)")
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise TLSConfigError(
            f"--certs {certs_dir}: missing {', '.join(missing)} (party {party!r} needs ca.pem, "
            f"{party}.pem and {party}.key)"
        )
    return paths


def _context(protocol: int, certs_dir: str, party: str) -> ssl.SSLContext:
    ca, cert, key = party_files(certs_dir, party)
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(ca)
        context.load_cert_chain(cert, key)
    except OSError as err:  # ssl.SSLError (not PEM, key does not match) or e.g. a key we may not read
        raise TLSConfigError(
            f"--certs {certs_dir}: cannot load {os.path.basename(cert)}, {os.path.basename(key)} "
            f"or {CA_CERT}: {getattr(err, 'reason', None) or err.strerror or err}"
        ) from None
    check_own_certificate(cert, party)
    return context


def server_context(certs_dir: str, party: str) -> ssl.SSLContext:
    """A worker's context: present ``<party>.pem``; require a client certificate issued by ``ca.pem``."""
    return _context(ssl.PROTOCOL_TLS_SERVER, certs_dir, party)


def client_context(certs_dir: str, party: str) -> ssl.SSLContext:
    """A client's context: present ``<party>.pem``; verify servers against ``ca.pem`` and their name.

    Connect with :func:`wrap_client`, which sets the expected party id as the server name.
    """
    context = _context(ssl.PROTOCOL_TLS_CLIENT, certs_dir, party)
    context.check_hostname = True
    return context


def wrap_client(context: ssl.SSLContext, sock, expected: str) -> ssl.SSLSocket:
    """TLS handshake on ``sock``, accepting only a server whose certificate is party ``expected``.

    The server name is the party id, so OpenSSL's hostname check matches it against the certificate's
    DNS name; :func:`peer_party` then compares exactly (DNS names ignore case, party ids do not).
    """
    tls = context.wrap_socket(sock, server_hostname=expected)
    found = peer_party(tls)
    if found != expected:
        tls.close()
        raise ssl.SSLCertVerificationError(f"the server's certificate is for party {found!r}, not {expected!r}")
    return tls


def peer_party(peer: Union[ssl.SSLObject, ssl.SSLSocket, dict, None]) -> str:
    """The party id in a verified peer certificate: its CN, which must also be one of its DNS names.

    ``peer`` is an SSL object/socket after the handshake or its ``getpeercert()`` dict. Raises
    ``ssl.SSLError`` when there is no certificate or it does not name one party consistently.
    """
    getpeercert = getattr(peer, "getpeercert", None)
    cert: Any = getpeercert() if getpeercert is not None else peer
    if not cert:
        raise ssl.SSLError("the peer presented no certificate")
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    dns = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    if len(names) != 1 or names[0] not in dns:
        raise ssl.SSLError(f"the peer's certificate does not name one party (CN {names}, DNS names {dns})")
    return names[0]


def check_own_certificate(path: str, party: str) -> None:
    """Refuse at start-up, with a clear message, what every peer would refuse later: a certificate for
    another party, or one that has expired or is not valid yet."""
    own = certificate_party(path)
    if own != party:
        raise TLSConfigError(f"{path}: this certificate is for party {own!r}, not {party!r}")
    cert, now = _load_certificate(path), datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise TLSConfigError(
            f"{path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "make a new one (fl-smpc certs)"
        )
    if now < cert.not_valid_before_utc:
        raise TLSConfigError(
            f"{path}: the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC (is this machine's clock right?)"
        )


def certificate_party(path: str) -> str:
    """The party id of a certificate file (CN that is also a DNS name), as :func:`peer_party` reads it."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = _load_certificate(path)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        dns = []
    if len(names) != 1 or names[0] not in dns:
        raise TLSConfigError(
            f"{path}: the certificate must name its party as CN and as a DNS subjectAltName "
            f"(found CN {names}, DNS names {dns})"
        )
    return names[0]


def _load_certificate(path: str):
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as err:
        raise TLSConfigError(f"{path}: not a PEM certificate: {err}") from None
