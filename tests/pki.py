"""Test PKI: a CA, server and station certificates made with ``cryptography``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


# --------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_ec: Cert
    server_rsa: Cert
    cs1: Cert          # CN=CS1, from the trusted CA
    cs2: Cert          # CN=CS2, from the trusted CA
    rogue_cs1: Cert    # CN=CS1, from another CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evtwin test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(folder: Path, stem: str, cn: str, key: Any, issuer: tuple[x509.Name, Any] | None,
           *, ca: bool = False, server: bool = False) -> Cert:
    """Write ``stem.pem`` and ``stem.key``; self-signed when ``issuer`` is None."""
    issuer_name, issuer_key = issuer if issuer is not None else (_name(cn), key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    elif server:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    out = Cert(folder / f"{stem}.pem", folder / f"{stem}.key")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out


def client_ctx(pki: PKI, cert: Cert | None = None) -> ssl.SSLContext:
    """A station's TLS context: trusts our CA, checks the server's IP SAN."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def make_pki(folder: Path) -> PKI:
    """Issue every certificate the security tests use into ``folder``."""

    def ec_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key, other_ca_key = ec_key(), ec_key()
    ca = _issue(folder, "ca", "evtwin test CA", ca_key, None, ca=True)
    by_ca = (_name("evtwin test CA"), ca_key)
    by_other = (_name("someone else's CA"), other_ca_key)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return PKI(
        ca=ca.cert,
        server_ec=_issue(folder, "server-ec", "csms", ec_key(), by_ca, server=True),
        server_rsa=_issue(folder, "server-rsa", "csms", rsa_key, by_ca, server=True),
        cs1=_issue(folder, "cs1", "CS1", ec_key(), by_ca),
        cs2=_issue(folder, "cs2", "CS2", ec_key(), by_ca),
        rogue_cs1=_issue(folder, "rogue-cs1", "CS1", ec_key(), by_other),
    )




def tls11_client(pki: PKI) -> ssl.SSLContext:
    ctx = client_ctx(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3's default security level refuses to offer TLS 1.1 at all; lower
    # it so the client really sends a TLS 1.1 hello and the *server* refuses.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


