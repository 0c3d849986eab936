"""The federation's small PKI: a root CA, the SuperLink's server certificate, and per-site node keys.

The coordinator creates everything here once (``cardiofm coordinator init`` / ``register-site``);
nothing of it belongs in the repository. Private keys are written with mode 0600.

* CA and server keys: ECDSA P-384, certificates signed with SHA-384.
* Server certificate: ``extendedKeyUsage = serverAuth``; its subject alternative names always hold
  ``localhost`` and ``127.0.0.1`` (the SuperLink's own ServerApp and the ``flwr`` admin CLI connect
  back over loopback, and the proxy verifies the upstream as ``localhost``), plus the public DNS
  names and IP addresses the coordinator gives.
* Site keys (SuperNode authentication): ECDSA P-384 in OpenSSH format, the private key without a
  passphrase (the SuperNode reads it unattended), the public key as one ``ecdsa-sha2-nistp384`` line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cardiofm.errors import ConfigError, MissingResourceError

CURVE = ec.SECP384R1
LOOPBACK_DNS = "localhost"
LOOPBACK_IP = "127.0.0.1"
CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server.key"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$)(\*\.)?{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class PkiPaths:
    """Where the coordinator's CA and server certificate live (all in one folder)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (public: every site and the admin CLI get a copy)."""
        return self.folder / CA_CERT_NAME

    @property
    def ca_key(self) -> Path:
        """The CA private key (0600; needed only to issue a new server certificate)."""
        return self.folder / CA_KEY_NAME

    @property
    def server_cert(self) -> Path:
        """The SuperLink's (and the proxy's) server certificate, PEM."""
        return self.folder / SERVER_CERT_NAME

    @property
    def server_key(self) -> Path:
        """The server private key (0600)."""
        return self.folder / SERVER_KEY_NAME


@dataclass(frozen=True)
class SiteKeyPair:
    """Paths of one site's node-authentication key pair."""

    private_key: Path
    public_key: Path


def site_name_ok(name: str) -> bool:
    """True if ``name`` can name a site (and a file): letters, digits, ``._-``, at most 63 characters."""
    return bool(_SITE_NAME.match(name))


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte on (no window with wider rights)."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; refusing to overwrite a private key (remove it first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def normalise_sans(dns_names: list[str], ip_addresses: list[str]) -> tuple[list[str], list[str]]:
    """Validate SAN entries and add the loopback names; order kept, duplicates dropped.

    Raises
    ------
    ConfigError
        For a malformed DNS name or IP address, naming it.
    """
    dns: list[str] = []
    for name in [LOOPBACK_DNS, *dns_names]:
        clean = name.strip().lower().rstrip(".")
        if not _DNS_NAME.match(clean):
            raise ConfigError(f"{name!r} is not a valid DNS name for the server certificate (--name)")
        if clean not in dns:
            dns.append(clean)
    ips: list[str] = []
    for raw in [LOOPBACK_IP, *ip_addresses]:
        try:
            ip = str(ipaddress.ip_address(raw.strip()))
        except ValueError as exc:
            raise ConfigError(f"{raw!r} is not a valid IP address for the server certificate (--ip)") from exc
        if ip not in ips:
            ips.append(ip)
    return dns, ips


def create_ca(folder: Path, common_name: str = "cardiofm federation root CA", days: int = 3650) -> PkiPaths:
    """Create the federation's root CA in ``folder`` (``ca.crt``, ``ca.key`` with mode 0600).

    Raises
    ------
    ConfigError
        If a CA key already exists there (a second CA would silently lock every site out).
    """
    paths = PkiPaths(folder)
    if paths.ca_key.exists():
        raise ConfigError(f"a CA already exists in {folder}; remove {paths.ca_key.name} there to create a new one")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cardiofm federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(paths.ca_key, _key_pem(key), overwrite=False)
    _write_public(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    for path in (paths.ca_cert, paths.ca_key):
        if not path.is_file():
            raise MissingResourceError(f"{path} is missing: create the CA with `cardiofm coordinator init`")
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{paths.ca_key} is not an ECDSA key; recreate the CA with `cardiofm coordinator init`")
    return cert, key


def create_server_certificate(
    paths: PkiPaths, dns_names: list[str], ip_addresses: list[str], days: int = 825
) -> PkiPaths:
    """Issue the SuperLink's server certificate from the CA in ``paths.folder``.

    Parameters
    ----------
    paths:
        The PKI folder holding ``ca.crt`` and ``ca.key``; ``server.pem`` and ``server.key`` are
        (re)written there.
    dns_names, ip_addresses:
        Public names of the coordinator; ``localhost`` and ``127.0.0.1`` are always added.
    days:
        Validity.

    Raises
    ------
    MissingResourceError
        If the CA is missing.
    ConfigError
        For malformed names or addresses.
    """
    dns, ips = normalise_sans(dns_names, ip_addresses)
    ca_cert, ca_key = _load_ca(paths)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cardiofm federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, dns[1] if len(dns) > 1 else dns[0]),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(paths.server_key, _key_pem(key), overwrite=True)
    _write_public(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def server_sans(cert_path: Path) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses in a certificate's subject alternative names."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]


def verify_server_certificate(paths: PkiPaths) -> None:
    """Check that the server certificate is signed by the CA, is current and matches its key.

    Raises
    ------
    MissingResourceError
        If a file is missing (naming the command that creates it).
    ConfigError
        If the certificate was not issued by this CA, has expired, or does not belong to the key.
    """
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise MissingResourceError(f"{path} is missing: create it with `cardiofm coordinator init`")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(
            f"{paths.server_cert} was not issued by {paths.ca_cert}; reissue it with `cardiofm coordinator init`"
        ) from exc
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(
            f"{paths.server_cert} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}); reissue it with `cardiofm coordinator init --renew`"
        )
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"{paths.server_key} does not belong to {paths.server_cert}; reissue both with init")


def create_site_keypair(folder: Path, name: str, overwrite: bool = False) -> SiteKeyPair:
    """Create a site's ECDSA P-384 node-authentication key pair in OpenSSH format.

    Writes ``<folder>/<name>.key`` (private, 0600) and ``<folder>/<name>.key.pub``
    (``ecdsa-sha2-nistp384 ... <name>@cardiofm``).

    Raises
    ------
    ConfigError
        For a site name that cannot be a file name, or an existing key without ``overwrite``.
    """
    if not site_name_ok(name):
        raise ConfigError(f"site name {name!r} must be letters, digits, '.', '_' or '-' (at most 63 characters)")
    key = _new_key()
    pair = SiteKeyPair(folder / f"{name}.key", folder / f"{name}.key.pub")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(pair.private_key, private, overwrite=overwrite)
    _write_public(pair.public_key, public + f" {name}@cardiofm\n".encode())
    return pair


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read and check a site's OpenSSH public key: it must be ECDSA P-384.

    Raises
    ------
    MissingResourceError
        If the file is missing.
    ConfigError
        If it is not an OpenSSH ECDSA P-384 public key (e.g. RSA, ed25519, or a private key).
    """
    if not path.is_file():
        raise MissingResourceError(f"site public key {path} not found")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path} is not an OpenSSH public key; create one with `ssh-keygen -t ecdsa -b 384` "
            "or let `cardiofm coordinator register-site` generate it"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, CURVE):
        raise ConfigError(f"{path} must be an ECDSA P-384 key (ssh-keygen -t ecdsa -b 384), got {type(key).__name__}")
    return key


def load_site_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read and check a site's OpenSSH private key (ECDSA P-384, unencrypted, not world-readable).

    Raises
    ------
    MissingResourceError
        If the file is missing.
    ConfigError
        If it is not an ECDSA P-384 OpenSSH private key, or group/others may read it.
    """
    if not path.is_file():
        raise MissingResourceError(
            f"site private key {path} not found: the coordinator hands it over in the site bundle"
        )
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by group or others; restrict it with `chmod 600 {path.name}`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not an unencrypted OpenSSH private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, CURVE):
        raise ConfigError(f"{path} must be an ECDSA P-384 key (ssh-keygen -t ecdsa -b 384)")
    return key
