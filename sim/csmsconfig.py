"""``evtwin csms config-for``: the CSMS configuration that matches a scenario.

``evtwin stations`` connects the scenario's virtual stations (``<site>-001``,
...) to a CSMS, and their EVs present the id tokens ``TOKEN0001``, ...; a CSMS
must be provisioned with exactly those. :func:`write_csms_config` writes that
configuration for ``evtwin csms serve``: the same stations, EVSEs, sites,
tokens and strategy the twin gives its own CSMS (:func:`evtwin.sim.runner.csms_config`),
and for security profiles 1 and 2 one generated password (stations take one
``--password`` for all) with a salted hash per station, and for profile 2 a
certificate authority and a server certificate for ``127.0.0.1``/``localhost``.

Every file is written to a temporary folder first and the configuration is
loaded with :func:`evtwin.csms.config.load_config` before anything is moved
into place, so what is written always starts a CSMS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evtwin.csms.config import ServeConfig, load_config
from evtwin.csms.exceptions import ConfigError
from evtwin.csms.security import generate_password, hash_password

from .scenario import Scenario

#: Security profiles ``config-for`` can set up (3, mutual TLS, needs a
#: certificate per station: not generated here).
PROFILES = (0, 1, 2)


@dataclass(frozen=True, slots=True)
class WrittenConfig:
    """What :func:`write_csms_config` wrote (paths) or, without ``out``, the text."""

    config: Path | None
    text: str
    password_file: Path | None = None
    ca_cert: Path | None = None
    stations: int = 0
    tokens: int = 0


def _toml(value: Any) -> str:
    """A TOML value: JSON strings, numbers and lists are valid TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def companion_paths(out: Path, profile: int) -> dict[str, Path]:
    """The files written beside ``out`` for a security profile, by role."""
    stem = out.name.removesuffix(".toml")
    paths: dict[str, Path] = {}
    if profile >= 1:
        paths["password"] = out.with_name(f"{stem}.password")
    if profile == 2:
        paths["ca"] = out.with_name(f"{stem}-ca.pem")
        paths["cert"] = out.with_name(f"{stem}-server.pem")
        paths["key"] = out.with_name(f"{stem}-server.key")
    return paths


def config_text(sc: Scenario, *, source: str, security_profile: int = 0,
                password: str | None = None, tls: tuple[str, str] | None = None) -> str:
    """The TOML text of the configuration for ``sc`` (see the module docstring).

    ``password`` (profiles 1 and 2) is hashed once per station (each hash has
    its own salt); ``tls`` is ``(certificate, key)`` relative to the config file
    (profile 2).
    """
    from evtwin.csms.feeder import needs_feeder

    from .runner import Twin, csms_config

    twin = Twin(sc)  # the stations' ids, EVSEs, lines and buses exactly as the run has them
    cfg = csms_config(sc, twin.model, twin.station_lines())
    lead_h = max(24.0, math.ceil(sc.duration_h) + 1.0)
    lines = [
        f"# CSMS configuration for the stations and id tokens of scenario {sc.name!r}",
        f"# (written by `evtwin csms config-for {source}`). Start it with",
        "#   evtwin csms serve --config THIS_FILE --db csms.sqlite",
        "# and run the stations against it with `evtwin stations --scenario "
        f"{source}` (the same --set options).",
        "",
        "[server]",
        'host = "127.0.0.1"',
        "port = 9000",
        "",
        "[security]",
        f"profile = {security_profile}",
    ]
    if tls is not None:
        lines += [f"tls_cert = {_toml(tls[0])}", f"tls_key = {_toml(tls[1])}"]
    lines += [
        "",
        "[control]",
        f"strategy = {_toml(cfg.strategy)}",
        f"interval_s = {_toml(float(cfg.control_interval_s))}",
        f"charging_rate_unit = {_toml(cfg.charging_rate_unit)}",
        f"v2g_peak_target_percent = {_toml(float(cfg.v2g_peak_target_percent))}",
        "",
        "[ocpp]",
        f"heartbeat_interval_s = {cfg.heartbeat_interval_s}",
        "# `evtwin stations --speed` runs the stations' clocks ahead of the wall clock,",
        "# by up to the scenario's duration.",
        f"max_event_lead_h = {_toml(lead_h)}",
        "",
    ]
    for site in cfg.sites:
        lines += ["[[sites]]", f"name = {_toml(site.name)}"]
        if site.limit_kw is not None:
            lines.append(f"limit_kw = {_toml(float(site.limit_kw))}")
        lines.append("")
    for spec in cfg.stations:
        lines += ["[[stations]]", f"id = {_toml(spec.station_id)}", f"site = {_toml(spec.site)}",
                  "evse_max_kw = [" + ", ".join(_toml(e.max_power_w / 1000.0)
                                                for e in spec.evses) + "]",
                  f"phases = {spec.evses[0].phases}"]
        if spec.evses[0].line is not None:
            lines.append(f"line = {spec.evses[0].line}")
        lines.append(f"bus = {twin.bus_of[spec.station_id]}")
        if password is not None:
            lines.append(f"password_hash = {_toml(hash_password(password))}")
        lines.append("")
    if needs_feeder(cfg.strategy):
        g = sc.grid
        lines += ["[feeder]", f"network = {_toml(g.network)}",
                  f"v_min_pu = {_toml(g.v_min_pu)}", f"v_max_pu = {_toml(g.v_max_pu)}",
                  f"line_loading_max_percent = {_toml(float(g.line_loading_max_percent))}",
                  f"trafo_loading_max_percent = {_toml(float(g.trafo_loading_max_percent))}",
                  ""]
    lines += ["[tokens]", "accepted = [" + ", ".join(_toml(t) for t in sorted(cfg.id_tokens))
              + "]", ""]
    return "\n".join(lines)


def _certificates(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    """A certificate authority and a server certificate it signed for 127.0.0.1,
    ::1 and localhost (ECDSA P-256, valid for a year); the CA's key is not kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evtwin"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("evtwin CSMS test CA"))
          .issuer_name(name("evtwin CSMS test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(name("localhost"))
              .issuer_name(ca.subject).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=365))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"),
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                  x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                  server_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (mode 0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_csms_config(sc: Scenario, out: Path | None, *, source: str,
                      security_profile: int = 0, force: bool = False) -> WrittenConfig:
    """Write the CSMS configuration for ``sc`` to ``out`` (and, for security
    profiles 1 and 2, the password file and certificates beside it).

    Without ``out`` (profile 0 only) nothing is written and the text is
    returned. Raises :class:`ConfigError` naming ``--out`` when a file would be
    overwritten without ``force`` or cannot be written, or
    ``--security-profile`` for a profile it cannot set up.
    """
    if security_profile not in PROFILES:
        raise ConfigError("--security-profile", f"{security_profile}: config-for sets up "
                                                "profiles 0, 1 and 2")
    if out is None:
        if security_profile:
            raise ConfigError("--out", f"required with --security-profile {security_profile} "
                                       "(the password file is written beside it)")
        text = config_text(sc, source=source)
        model = _validate(text, None)
        return WrittenConfig(None, text, stations=len(model.stations),
                             tokens=len(model.tokens.accepted))
    companions = companion_paths(out, security_profile)
    targets = [out, *companions.values()]
    folders = [str(p) for p in targets if p.is_dir()]
    if folders:
        raise ConfigError("--out", f"{', '.join(folders)} is a folder: give a file name, "
                                   "e.g. csms.toml")
    if not force:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise ConfigError("--out", f"{', '.join(existing)} exists already; "
                                       "use --force to overwrite")
    if not out.parent.is_dir():
        raise ConfigError("--out", f"{out}: no folder {out.parent}")
    password = generate_password() if security_profile else None
    tls = ((companions["cert"].name, companions["key"].name) if security_profile == 2
           else None)
    text = config_text(sc, source=source, security_profile=security_profile,
                       password=password, tls=tls)
    try:
        # Beside the target, so the final moves are renames on one file system.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".config-for-") as tmp:
            staged = {p: Path(tmp) / p.name for p in targets}
            staged[out].write_text(text, encoding="utf-8")
            if password is not None:
                _write_private(staged[companions["password"]], (password + "\n").encode())
            if security_profile == 2:
                _certificates(staged[companions["ca"]], staged[companions["cert"]],
                              staged[companions["key"]])
            model = _validate(text, staged[out])
            for final, tmp_path in staged.items():
                os.replace(tmp_path, final)
    except OSError as exc:
        raise ConfigError("--out", f"{out}: cannot write: {exc.strerror or exc}") from None
    return WrittenConfig(out, text, companions.get("password"), companions.get("ca"),
                         stations=len(model.stations), tokens=len(model.tokens.accepted))


def _validate(text: str, path: Path | None) -> ServeConfig:
    """Load the configuration as ``evtwin csms serve`` would (``path``: where it is
    staged, with its companion files), so nothing written fails to start a CSMS."""
    if path is not None:
        return load_config(path)
    with tempfile.TemporaryDirectory(prefix="evtwin-config-for-") as tmp:
        staged = Path(tmp) / "csms.toml"
        staged.write_text(text, encoding="utf-8")
        return load_config(staged)


__all__ = ["PROFILES", "WrittenConfig", "companion_paths", "config_text", "write_csms_config"]
