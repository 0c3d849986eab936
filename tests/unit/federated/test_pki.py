"""The federation PKI: SANs, key types, file modes, and that the CA really vouches for the server."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from cardiofm.errors import ConfigError, MissingResourceError
from cardiofm.federated import pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def issued(tmp_path: Path) -> pki.PkiPaths:
    paths = pki.create_ca(tmp_path / "pki")
    return pki.create_server_certificate(paths, ["superlink.example.org", "fl.hospital-net.de"], ["192.0.2.10"])


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_sans_always_hold_loopback_plus_public_names(issued: pki.PkiPaths) -> None:
    dns, ips = pki.server_sans(issued.server_cert)
    assert dns == ["localhost", "superlink.example.org", "fl.hospital-net.de"]
    assert ips == ["127.0.0.1", "192.0.2.10"]
    cert = _cert(issued.server_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_loopback_only_when_no_public_names(tmp_path: Path) -> None:
    paths = pki.create_server_certificate(pki.create_ca(tmp_path), [], [])
    assert pki.server_sans(paths.server_cert) == (["localhost"], ["127.0.0.1"])


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("localhost"),
        x509.DNSName("superlink.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
    ],
)
def test_ca_verifies_server_certificate_for_each_san(issued: pki.PkiPaths, name: x509.GeneralName) -> None:
    store = Store([_cert(issued.ca_cert)])
    verifier = PolicyBuilder().store(store).build_server_verifier(name)
    chain = verifier.verify(_cert(issued.server_cert), [])
    assert chain[-1] == _cert(issued.ca_cert)


def test_name_outside_the_sans_and_foreign_ca_are_rejected(issued: pki.PkiPaths, tmp_path: Path) -> None:
    store = Store([_cert(issued.ca_cert)])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.example.org"))
    with pytest.raises(VerificationError):
        verifier.verify(_cert(issued.server_cert), [])
    other = pki.create_ca(tmp_path / "other")
    foreign = Store([_cert(other.ca_cert)])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(foreign).build_server_verifier(x509.DNSName("localhost")).verify(
            _cert(issued.server_cert), []
        )


def test_verify_server_certificate_detects_foreign_ca_and_wrong_key(issued: pki.PkiPaths, tmp_path: Path) -> None:
    pki.verify_server_certificate(issued)
    other = pki.create_ca(tmp_path / "other")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src, dst in ((other.ca_cert, "ca.crt"), (issued.server_cert, "server.pem"), (issued.server_key, "server.key")):
        (mixed / dst).write_bytes(src.read_bytes())
    with pytest.raises(ConfigError, match="not issued by"):
        pki.verify_server_certificate(pki.PkiPaths(mixed))
    (mixed / "ca.crt").write_bytes(issued.ca_cert.read_bytes())
    (mixed / "server.key").write_bytes(other.ca_key.read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        pki.verify_server_certificate(pki.PkiPaths(mixed))
    with pytest.raises(MissingResourceError, match="coordinator init"):
        pki.verify_server_certificate(pki.PkiPaths(tmp_path / "nowhere"))


def test_key_types_are_ecdsa_p384(issued: pki.PkiPaths) -> None:
    for cert_path in (issued.ca_cert, issued.server_cert):
        key = _cert(cert_path).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP384R1)
    ca = _cert(issued.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_private_keys_are_0600_and_certificates_public(issued: pki.PkiPaths, tmp_path: Path) -> None:
    assert _mode(issued.ca_key) == 0o600
    assert _mode(issued.server_key) == 0o600
    assert _mode(issued.ca_cert) == 0o644
    assert _mode(issued.server_cert) == 0o644
    pair = pki.create_site_keypair(tmp_path / "bundle", "site-a")
    assert _mode(pair.private_key) == 0o600
    assert _mode(pair.public_key) == 0o644


def test_site_keypair_is_openssh_ecdsa_p384(tmp_path: Path) -> None:
    pair = pki.create_site_keypair(tmp_path, "site-a")
    line = pair.public_key.read_text().strip()
    assert line.startswith("ecdsa-sha2-nistp384 ")
    assert line.endswith(" site-a@cardiofm")
    private = pki.load_site_private_key(pair.private_key)
    public = pki.load_site_public_key(pair.public_key)
    assert private.public_key().public_numbers() == public.public_numbers()
    # exactly what flower-supernode does with --auth-supernode-private-key (accepts only the OpenSSH format)
    loaded = serialization.load_ssh_private_key(pair.private_key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)


def test_existing_keys_and_ca_are_never_overwritten(issued: pki.PkiPaths, tmp_path: Path) -> None:
    before = issued.ca_key.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        pki.create_ca(issued.folder)
    assert issued.ca_key.read_bytes() == before
    pki.create_site_keypair(tmp_path, "site-a")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        pki.create_site_keypair(tmp_path, "site-a")


def test_wrong_key_kinds_are_refused(tmp_path: Path) -> None:
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ed_pub = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    for i, key in enumerate((rsa_pub, ed_pub, p256)):
        path = tmp_path / f"k{i}.pub"
        path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
        with pytest.raises(ConfigError, match="P-384"):
            pki.load_site_public_key(path)
    pair = pki.create_site_keypair(tmp_path, "site-b")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        pki.load_site_public_key(pair.private_key)
    with pytest.raises(MissingResourceError):
        pki.load_site_public_key(tmp_path / "missing.pub")


def test_world_readable_private_key_is_refused(tmp_path: Path) -> None:
    pair = pki.create_site_keypair(tmp_path, "site-a")
    pair.private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        pki.load_site_private_key(pair.private_key)


@pytest.mark.parametrize(("dns", "ips"), [(["bad_name"], []), (["-x.org"], []), ([], ["300.1.1.1"]), ([], ["host"])])
def test_malformed_san_entries_are_config_errors(tmp_path: Path, dns: list[str], ips: list[str]) -> None:
    paths = pki.create_ca(tmp_path)
    with pytest.raises(ConfigError):
        pki.create_server_certificate(paths, dns, ips)
    assert not paths.server_cert.exists()


def test_server_certificate_needs_the_ca(tmp_path: Path) -> None:
    with pytest.raises(MissingResourceError, match="coordinator init"):
        pki.create_server_certificate(pki.PkiPaths(tmp_path), ["a.example.org"], [])


@pytest.mark.parametrize("name", ["", "../x", "a b", "x" * 64, "-a"])
def test_site_names_that_cannot_be_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        pki.create_site_keypair(tmp_path, name)
