"""OCPP security profiles for the CSMS: password hashes, Basic auth and TLS contexts.

Profile 0: no security (the twin's in-process CSMS). Profile 1: HTTP Basic
auth on the websocket upgrade. Profile 2: Basic auth over TLS 1.2+. Profile 3:
mutual TLS, the client certificate names the station.

The rules the server enforces (OCPP-J 2.0.1 Part 2 "Security"):

- Basic auth: the username must equal the station identity in the URL path,
  the password must be 16 to 40 characters (2.0.1 ``BasicAuthPassword``).
  Passwords are stored only as salted hashes (:func:`hash_password`):
  ``sha256$salt$hash`` (HMAC-SHA256, microseconds to check) from now on;
  older ``scrypt$N$r$p$salt$hash`` hashes are still accepted, checked on a
  small dedicated thread pool (:class:`PasswordVerifier`).

Why a fast salted hash is enough here (and scrypt is not needed): a slow hash
protects *low-entropy* secrets, human passwords an attacker can enumerate
from a dictionary once a hash leaks. OCPP station passwords are machine
generated: :func:`generate_password` draws 40 characters from 62 (238 bits)
and even the shortest password OCPP allows, 16 random characters of that
alphabet, carries 95 bits. Guessing that offline at 10^12 SHA-256 per second
takes about 10^16 years, with or without scrypt's factor of ~10^5 in cost;
no dictionary covers it. The per-hash random salt (128 bits) keeps equal
passwords from having equal hashes and makes precomputed tables useless. So
salted SHA-256 is as safe as scrypt for these passwords, while scrypt's 50 ms
and 16 MiB per check let a handful of wrong passwords, or an honest reconnect
storm, starve the server. :func:`hash_password` therefore only takes
passwords of at least 16 characters and is meant for generated ones
(``evtwin csms hash-password --generate``); a human-chosen password of that
length may carry far less entropy, and the docs say to generate instead.
- TLS: 1.2 or newer. For TLS 1.2 the CSMS offers the four suites OCPP 2.0.1
  names (A00.FR.318: TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM, which need an ECDSA
  certificate, and TLS_RSA_WITH_AES_128/256_GCM, which need an RSA one), and
  the ECDHE-RSA AES-GCM suites before them (forward secrecy with an RSA
  certificate); ``tls_ciphers = "ecdhe"`` leaves out the static-RSA suites.
  One certificate of each key type can be configured (``tls_cert`` and
  ``tls_cert_2``). TLS 1.3 keeps OpenSSL's defaults (all of them AEAD suites).
- Mutual TLS: the certificate must chain to the configured CA (checked by
  OpenSSL during the handshake) and its subject CN must equal the station
  identity in the URL path. The spec only says the CN *contains* the serial
  number; we require equality so that one certificate cannot be used for
  another station whose identity happens to contain it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import logging
import secrets
import ssl
import string
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from .exceptions import ConfigError

log = logging.getLogger("evtwin.csms.security")

__all__ = [
    "PASSWORD_MAX_CHARS",
    "PASSWORD_MIN_CHARS",
    "TLS12_CIPHERS",
    "PasswordVerifier",
    "SecurityConfig",
    "VerifierBusy",
    "certificate_common_names",
    "check_password_hash",
    "describe_ssl_error",
    "generate_password",
    "hash_password",
    "hash_password_command",
    "is_legacy_hash",
    "password_length_ok",
    "server_ssl_context",
    "verify_password",
]

#: OCPP 2.0.1 ``BasicAuthPassword``: passwordString, 16 to 40 characters.
PASSWORD_MIN_CHARS = 16
PASSWORD_MAX_CHARS = 40

#: TLS 1.2 suites with forward secrecy: ECDHE with an ECDSA certificate (two of
#: the four OCPP 2.0.1 Part 2 A00.FR.318 names) or an RSA one. OpenSSL names.
TLS12_CIPHERS_ECDHE = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
#: The TLS 1.2 suites a CSMS offers by default: the above, then A00.FR.318's other
#: two, TLS_RSA_WITH_AES_128/256_GCM (static RSA key exchange, RSA certificate).
TLS12_CIPHERS = (*TLS12_CIPHERS_ECDHE, "AES128-GCM-SHA256", "AES256-GCM-SHA384")
#: ``[security] tls_ciphers``: which TLS 1.2 suites the CSMS offers.
CIPHER_SETS = {"spec": TLS12_CIPHERS, "ecdhe": TLS12_CIPHERS_ECDHE}

# The hash every new password gets: HMAC-SHA256 keyed with a random salt (see
# the module docstring for why a fast hash is safe for OCPP passwords).
_SHA256_SCHEME = "sha256"
# scrypt (legacy, still verified) cost: the "interactive login" parameters of the scrypt paper and
# RFC 7914 (N=2^14, r=8, p=1), about 16 MiB and 50 ms per hash here.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# A hash naming a larger cost than this is refused as a config error rather
# than allowed to eat the server's memory on every login.
_SCRYPT_MAX_MEM = 256 * 2**20

Profile = Literal[0, 1, 2, 3]


# --------------------------------------------------------------------------- passwords
def password_length_ok(password: str) -> bool:
    """Whether ``password`` has the 16 to 40 characters OCPP 2.0.1 requires."""
    return PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt_mem(n: int, r: int, p: int) -> int:
    # OpenSSL needs 128*r*(N+2) bytes for V plus 128*r*p for B.
    return 128 * r * (n + 2) + 128 * r * p


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("salt and hash must be base64") from None


def _parse_sha256(encoded: str) -> tuple[bytes, bytes]:
    """``sha256$salt_b64$hash_b64`` -> ``(salt, hash)``; ValueError if malformed."""
    parts = encoded.split("$")
    if len(parts) != 3:
        raise ValueError("expected 'sha256$salt_b64$hash_b64' "
                         "(make one with `evtwin csms hash-password`)")
    salt, digest = _b64decode(parts[1]), _b64decode(parts[2])
    if len(salt) < 16 or len(digest) != 32:
        raise ValueError("sha256 hashes need a salt of at least 16 bytes and a 32-byte hash")
    return salt, digest


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """``scrypt$N$r$p$salt_b64$hash_b64`` -> ``(N, r, p, salt, hash)``; ValueError if malformed."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected 'sha256$salt_b64$hash_b64' or the older "
                         "'scrypt$N$r$p$salt_b64$hash_b64' "
                         "(make one with `evtwin csms hash-password`)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
    except ValueError:
        raise ValueError("scrypt N, r and p must be integers") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError(f"bad scrypt parameters N={n} r={r} p={p} "
                         "(N a power of 2 above 1, r and p at least 1)")
    if _scrypt_mem(n, r, p) > _SCRYPT_MAX_MEM:
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} need more than "
                         f"{_SCRYPT_MAX_MEM // 2**20} MiB per login")
    salt, digest = _b64decode(parts[4]), _b64decode(parts[5])
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt must be at least 8 bytes and hash at least 16 bytes")
    return n, r, p, salt, digest


def _secret_bytes(password: str) -> bytes:
    # surrogateescape: websockets decodes Basic credentials that way, so a
    # password that is not UTF-8 is compared as the bytes that were sent.
    return password.encode("utf-8", "surrogateescape")


def _hmac_sha256(password: str, salt: bytes) -> bytes:
    return hmac.new(salt, _secret_bytes(password), hashlib.sha256).digest()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(_secret_bytes(password), salt=salt, n=n, r=r, p=p,
                          maxmem=_scrypt_mem(n, r, p) + 2**20, dklen=dklen)


def hash_password(password: str) -> str:
    """Hash a station password (or API token) for the config file: ``sha256$salt_b64$hash_b64``.

    HMAC-SHA256 keyed with 16 random salt bytes, so two hashes of one password
    differ. Only for generated passwords of 16 to 40 characters (see the
    module docstring for why a fast hash is then as safe as scrypt); raises
    :class:`ConfigError` for any other length.
    """
    if not password_length_ok(password):
        raise ConfigError("password", f"must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} "
                                      f"characters (OCPP BasicAuthPassword), got {len(password)}")
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"{_SHA256_SCHEME}${_b64(salt)}${_b64(_hmac_sha256(password, salt))}"


def check_password_hash(encoded: str) -> None:
    """Raise ValueError naming the problem unless :func:`verify_password` can read ``encoded``."""
    if encoded.startswith(_SHA256_SCHEME + "$"):
        _parse_sha256(encoded)
    else:
        _parse_hash(encoded)


def is_legacy_hash(encoded: str) -> bool:
    """Whether ``encoded`` is an old ``scrypt$...`` hash: slow to check, worth re-hashing."""
    return encoded.startswith("scrypt$")


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the hash ``encoded`` (constant-time comparison).

    Takes microseconds for ``sha256$`` hashes and about 50 ms of CPU for
    legacy ``scrypt$`` ones (use :class:`PasswordVerifier` in the server).
    Raises ValueError if ``encoded`` is not a hash :func:`check_password_hash`
    accepts (config files are checked for that when loaded).
    """
    if encoded.startswith(_SHA256_SCHEME + "$"):
        salt, expected = _parse_sha256(encoded)
        return hmac.compare_digest(_hmac_sha256(password, salt), expected)
    n, r, p, salt, expected = _parse_hash(encoded)
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


class VerifierBusy(Exception):
    """Too many slow (scrypt) checks are already queued; try again later."""


class PasswordVerifier:
    """Checks passwords against hashes without ever stalling the event loop.

    ``sha256$`` hashes are checked inline: one HMAC, microseconds. Legacy
    ``scrypt$`` hashes cost about 50 ms of CPU and 16 MiB each, so they run on
    this verifier's own pool of ``max_workers`` threads (never the event
    loop's default executor, which the ``ocpp`` library needs for schema
    validation), with at most ``max_waiting`` more queued; beyond that
    :meth:`verify` raises :class:`VerifierBusy` at once instead of letting a
    queue grow past the handshake timeout.

    A password that matched a scrypt hash is remembered by its SHA-256 digest
    (in memory, compared in constant time), one per hash, at most
    ``max_cached`` hashes: a reconnect storm pays scrypt once per station, and
    once a station's password is known every other password for that hash is
    rejected without scrypt (a hash has one password). Keeping an unsalted
    SHA-256 of a 95+ bit random password in memory reveals nothing useful.
    """

    def __init__(self, *, max_workers: int = 1, max_waiting: int = 32,
                 max_cached: int = 100_000) -> None:
        if max_workers < 1 or max_waiting < 0:
            raise ValueError(f"max_workers {max_workers} must be >= 1 and "
                             f"max_waiting {max_waiting} >= 0")
        self.max_workers = max_workers
        self.max_waiting = max_waiting
        self.max_cached = max_cached
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def quick(self, password: str, encoded: str) -> bool | None:
        """The answer if it costs microseconds, else None (a scrypt hash not yet verified).

        Raises ValueError for an unreadable hash.
        """
        if not is_legacy_hash(encoded):
            return verify_password(password, encoded)
        known = self._verified.get(encoded)
        if known is None:
            check_password_hash(encoded)
            return None
        return hmac.compare_digest(hashlib.sha256(_secret_bytes(password)).digest(), known)

    async def verify(self, password: str, encoded: str) -> bool:
        """Whether ``password`` matches ``encoded``; raises :class:`VerifierBusy` when full."""
        answer = self.quick(password, encoded)
        if answer is not None:
            return answer
        if self._pending >= self.max_workers + self.max_waiting:
            raise VerifierBusy(f"{self._pending} scrypt checks already running or queued")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_workers,
                                                thread_name_prefix="evtwin-scrypt")
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, verify_password, password, encoded)
        finally:
            self._pending -= 1
        if ok:
            with self._lock:
                self._verified[encoded] = hashlib.sha256(_secret_bytes(password)).digest()
                self._verified.move_to_end(encoded)
                while len(self._verified) > self.max_cached:
                    self._verified.popitem(last=False)
        return ok

    @property
    def pending(self) -> int:
        """Slow checks running or queued now."""
        return self._pending

    def close(self) -> None:
        """Stop the worker threads (queued checks are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def generate_password(length: int = PASSWORD_MAX_CHARS) -> str:
    """A random station password of ``length`` letters and digits (about 5.95 bits each)."""
    if not PASSWORD_MIN_CHARS <= length <= PASSWORD_MAX_CHARS:
        raise ValueError(f"password length {length} outside "
                         f"{PASSWORD_MIN_CHARS}..{PASSWORD_MAX_CHARS}")
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


#: What to do when no password came in (the end of ``evtwin csms hash-password``'s errors).
_PASSWORD_SOURCES = "type it at a terminal, pipe it in with --stdin, or make one with --generate"


def _terminal_prompt(text: str) -> str:
    """``getpass.getpass``, refused (ConfigError) where it could not hide the input:
    with no terminal it would read stdin and echo the password."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(text)
        except getpass.GetPassWarning:
            raise ConfigError("password", f"no terminal to ask on; {_PASSWORD_SOURCES}"
                              ) from None
        except EOFError:
            sys.stderr.write("\n")  # getpass ends the prompt's line only after an answer
            raise


def hash_password_command(*, generate: bool = False, stdin: TextIO | None = None,
                          prompt: Callable[[str], str] = _terminal_prompt) -> str:
    """What ``evtwin csms hash-password`` prints: a ``password_hash = "..."`` TOML line.

    The password comes from ``stdin`` (its first line) when given, else from
    two prompts that must agree; it is never taken from the command line,
    where it would end up in shell history. With ``generate`` a random
    40-character password is made and printed on a comment line above the
    hash, to be configured on the station. Raises :class:`ConfigError` for a
    password of the wrong length, prompts that differ, an empty ``stdin`` or
    the end of input at a prompt.
    """
    lines = []
    if generate:
        password = generate_password()
        lines.append(f"# station password (set it on the station, keep it secret): {password}")
    elif stdin is not None:
        line = stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            what = "its first line is empty" if line else "end of input"
            raise ConfigError("password", f"nothing on stdin ({what}); {_PASSWORD_SOURCES}")
    else:
        try:
            password = prompt("Station password (16-40 characters): ")
            if prompt("Repeat: ") != password:
                raise ConfigError("password", "the two entries differ")
        except EOFError:
            raise ConfigError("password", f"end of input at the prompt; {_PASSWORD_SOURCES}"
                              ) from None
    lines.append(f'password_hash = "{hash_password(password)}"')
    return "\n".join(lines)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SecurityConfig:
    """How :class:`~evtwin.csms.server.CSMSServer` authenticates stations.

    ``profile`` 0 (none), 1 (Basic auth), 2 (Basic auth over TLS) or 3
    (mutual TLS). ``password_hashes`` maps station identity to a
    :func:`hash_password` hash (profiles 1 and 2). ``tls_cert`` and
    ``tls_key`` are the server's PEM certificate (chain) and key (profiles 2
    and 3); ``ca_cert`` the PEM CA bundle station certificates must chain to
    (profile 3).
    """

    profile: Profile = 0
    password_hashes: Mapping[str, str] = field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_cert: Path | None = None
    tls_cert_2: Path | None = None
    """A second server certificate, of the other key type (RSA beside ECDSA)."""
    tls_key_2: Path | None = None
    tls_ciphers: str = "spec"
    """``spec`` (OCPP 2.0.1's four TLS 1.2 suites and ECDHE-RSA) or ``ecdhe``."""

    def __post_init__(self) -> None:
        if self.profile not in (0, 1, 2, 3):
            raise ConfigError("security.profile", f"must be 0, 1, 2 or 3, got {self.profile!r}")
        if self.tls:
            for name in ("tls_cert", "tls_key"):
                if getattr(self, name) is None:
                    raise ConfigError(f"security.{name}",
                                      f"required for security profile {self.profile}")
        if self.profile == 3 and self.ca_cert is None:
            raise ConfigError("security.ca_cert", "required for security profile 3")
        if (self.tls_cert_2 is None) != (self.tls_key_2 is None):
            raise ConfigError("security.tls_key_2" if self.tls_key_2 is None
                              else "security.tls_cert_2", "tls_cert_2 and tls_key_2 go together")
        if self.tls_ciphers not in CIPHER_SETS:
            raise ConfigError("security.tls_ciphers",
                              f"must be one of {', '.join(CIPHER_SETS)}, got {self.tls_ciphers!r}")
        for identity, encoded in self.password_hashes.items():
            try:
                check_password_hash(encoded)
            except ValueError as exc:
                raise ConfigError(f"password_hashes.{identity}", str(exc)) from None

    @property
    def basic_auth(self) -> bool:
        """Whether stations must send HTTP Basic credentials (profiles 1 and 2)."""
        return self.profile in (1, 2)

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS (profiles 2 and 3)."""
        return self.profile >= 2

    @property
    def client_certificates(self) -> bool:
        """Whether stations must present a certificate (profile 3)."""
        return self.profile == 3

    def ssl_context(self, *,
                    on_handshake_error: Callable[[ssl.SSLError], None] | None = None
                    ) -> ssl.SSLContext | None:
        """The server's TLS context, or None without TLS; see :func:`server_ssl_context`."""
        if not self.tls:
            return None
        assert self.tls_cert is not None and self.tls_key is not None  # __post_init__
        second = ((self.tls_cert_2, self.tls_key_2)
                  if self.tls_cert_2 is not None and self.tls_key_2 is not None else None)
        return server_ssl_context(self.tls_cert, self.tls_key,
                                  ca_cert=self.ca_cert if self.client_certificates else None,
                                  on_handshake_error=on_handshake_error, second=second,
                                  ciphers=self.tls_ciphers)


# --------------------------------------------------------------------------- TLS
def server_ssl_context(cert: str | Path, key: str | Path, *, ca_cert: str | Path | None = None,
                       on_handshake_error: Callable[[ssl.SSLError], None] | None = None,
                       second: tuple[str | Path, str | Path] | None = None,
                       ciphers: str = "spec") -> ssl.SSLContext:
    """A TLS server context for OCPP security profile 2, or 3 when ``ca_cert`` is given.

    TLS 1.2 minimum; for TLS 1.2 only the suites of ``ciphers`` (see
    :data:`CIPHER_SETS`); TLS 1.3 suites are OpenSSL's defaults. ``second`` is
    another certificate and key, of the other key type: OpenSSL then picks the
    one the client's suite needs (an RSA one for TLS_RSA_WITH_AES_128_GCM).
    With ``ca_cert`` a client certificate chaining to
    it is required, so a client without one, or with one from another CA,
    fails the handshake. ``on_handshake_error`` is called with every
    handshake that fails (wrong TLS version, bad or missing client
    certificate, plain HTTP on the TLS port): such connections never reach
    the websocket layer, so this is the only place they can be seen. It is
    not told the peer's address (asyncio does not hand it to the TLS object).
    Raises OSError or ssl.SSLError for unreadable or mismatched files.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(CIPHER_SETS[ciphers]))
    ctx.load_cert_chain(cert, key)
    if second is not None:
        _check_other_key_type(key, second[1])
        ctx.load_cert_chain(*second)
    if ca_cert is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=ca_cert)
    if on_handshake_error is not None:
        ctx.sslobject_class = _reporting_sslobject(on_handshake_error)
    return ctx


def _check_other_key_type(first_key: str | Path, second_key: str | Path) -> None:
    """A second certificate must have the other key type: OpenSSL keeps one per type,
    so a second of the same type would silently replace the first."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    kinds = []
    for path in (first_key, second_key):
        try:
            key = load_pem_private_key(Path(path).read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ssl.SSLError(f"{path}: not an unencrypted PEM private key: {exc}") from None
        kinds.append(type(key).__name__.removeprefix("_").split("PrivateKey")[0])
    if kinds[0] == kinds[1]:
        raise ssl.SSLError(f"both certificates have {kinds[0]} keys; tls_cert_2 must have "
                           "the other key type (RSA beside ECDSA)")


def _reporting_sslobject(callback: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    # asyncio drives TLS through SSLContext.wrap_bio, whose return type is the
    # documented, overridable SSLContext.sslobject_class; hooking do_handshake
    # is the one public way to see a handshake asyncio rejects (it logs those
    # only in debug mode, and websockets never hears of them).
    class ReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake needs more bytes
            except ssl.SSLError as exc:
                try:
                    callback(exc)
                except Exception:  # reporting must not change how the handshake fails
                    log.exception("reporting a failed TLS handshake failed")
                raise

    return ReportingSSLObject


def certificate_common_names(peercert: Mapping[str, Any] | None) -> list[str]:
    """The subject CNs of a certificate as returned by ``SSLObject.getpeercert()``."""
    if not peercert:
        return []
    return [value for rdn in peercert.get("subject", ()) for key, value in rdn
            if key == "commonName"]


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """One line for a failed handshake: OpenSSL's reason and, for bad certificates, why."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    verify = getattr(exc, "verify_message", None)
    return f"TLS handshake failed: {reason}" + (f" ({verify})" if verify else "")
