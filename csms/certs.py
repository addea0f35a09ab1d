"""Station certificates signed by the CSMS (OCPP 2.0.1 A02/A03, the 1.6 security
whitepaper's SignCertificate / CertificateSigned).

A station sends a certificate signing request (PKCS#10, PEM); the CSMS checks it and,
with the CA it was given (``[security] station_ca_cert`` / ``station_ca_key``), issues
the certificate and sends it back with the CA's certificate as the chain. Checked:
the request is a well-formed CSR whose signature verifies with its own key, and its
common name is the station's identity (the CN is what security profile 3 checks on
every connection); its key is an RSA key of at least 2048 bits or an EC key on
P-256/P-384 (the curves OCPP names). The certificate names the station (CN) under
the CA's organisation; nothing else the request asserts is copied. The CSMS signs
only for stations that connected with TLS and their password (security profile 2)
or certificate (3): the config refuses a station CA below profile 2.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .exceptions import CSMSError


class CertificateRequestError(CSMSError, ValueError):
    """A certificate signing request the CSMS will not sign; ``str()`` says why."""


class StationCA:
    """The CA that signs station certificates."""

    def __init__(self, cert_path: Path, key_path: Path, *, validity_days: int = 365) -> None:
        self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key must be an RSA or EC key")
        mine = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        theirs = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if mine != theirs:
            raise ValueError("the CA key does not belong to the CA certificate")
        self.key = key
        self.validity_days = validity_days

    def check(self, csr_pem: str, station_id: str) -> x509.CertificateSigningRequest:
        """The request, if the CSMS will sign it (CertificateRequestError otherwise)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("ascii", "replace"))
        except ValueError:
            raise CertificateRequestError("not a PEM certificate signing request") from None
        try:
            valid = csr.is_signature_valid
        except UnsupportedAlgorithm:
            raise CertificateRequestError("signed with an unsupported algorithm") from None
        if not valid:
            raise CertificateRequestError("its signature does not verify")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [station_id]:
            raise CertificateRequestError(
                f"its common name must be the station identity {station_id!r}")
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise CertificateRequestError("an RSA key needs at least 2048 bits")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise CertificateRequestError(f"curve {key.curve.name} is not allowed")
        else:
            raise CertificateRequestError("the key must be RSA or EC")
        return csr

    def sign(self, csr: x509.CertificateSigningRequest, *,
             now: dt.datetime | None = None) -> str:
        """The station certificate followed by the CA certificate, PEM."""
        now = now or dt.datetime.now(dt.UTC)
        # The subject is the CSMS's to say: the station's identity under the
        # organisation of the CA (what a station asserts beyond its CN is not copied).
        names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(a.value))
                 for a in self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        subject = x509.Name([*names[:1], x509.NameAttribute(NameOID.COMMON_NAME, str(cn))])
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(self.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=self.validity_days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM)
                + self.cert.public_bytes(serialization.Encoding.PEM)).decode("ascii")
