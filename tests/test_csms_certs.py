"""Station certificates signed by the CSMS (csms/certs.py): what it refuses to sign,
and what the certificate it issues says, checked with ``cryptography``."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from evtwin.csms.certs import CertificateRequestError, StationCA
from tests.pki import make_pki


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> StationCA:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    return StationCA(pki.ca, pki.ca.with_suffix(".key"), validity_days=30)


def csr_pem(key: Any, *names: tuple[Any, str]) -> str:
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in names])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_issues_the_station_certificate_under_the_cas_organisation(ca: StationCA) -> None:
    key = p256()
    pem = csr_pem(key, (NameOID.ORGANIZATION_NAME, "Someone Else"),
                  (NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"), (NameOID.COMMON_NAME, "CS1"))
    chain = x509.load_pem_x509_certificates(ca.sign(ca.check(pem, "CS1")).encode())
    cert, issuer = chain
    assert issuer == ca.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    # Only the CN from the request, under the CA's own organisation.
    assert cert.subject.rfc4514_string() == "CN=CS1,O=evtwin test"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 30


@pytest.mark.parametrize(("make", "why"), [
    (lambda: "not a csr", "not a PEM"),
    (lambda: csr_pem(p256(), (NameOID.COMMON_NAME, "CS2")), "common name"),
    (lambda: csr_pem(p256(), (NameOID.COMMON_NAME, "CS1"), (NameOID.COMMON_NAME, "CS1")),
     "common name"),
    (lambda: csr_pem(p256(), (NameOID.ORGANIZATION_NAME, "x")), "common name"),
    (lambda: csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024),
                     (NameOID.COMMON_NAME, "CS1")), "2048"),
    (lambda: csr_pem(ec.generate_private_key(ec.SECP521R1()), (NameOID.COMMON_NAME, "CS1")),
     "curve"),
])
def test_refuses_what_it_should_not_sign(ca: StationCA, make: Any, why: str) -> None:
    with pytest.raises(CertificateRequestError, match=why):
        ca.check(make(), "CS1")


def test_refuses_a_request_whose_signature_does_not_verify(ca: StationCA) -> None:
    pem = csr_pem(p256(), (NameOID.COMMON_NAME, "CS1"))
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(
        serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    body = base64.encodebytes(bytes(der)).decode()
    forged = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CertificateRequestError, match="signature does not verify"):
        ca.check(forged, "CS1")


def test_a_ca_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(ValueError, match="does not belong"):
        StationCA(pki.ca, pki.cs1.key)
