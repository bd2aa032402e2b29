"""``--web.config.file``: TLS, mutual TLS and basic auth in the Prometheus exporter-toolkit format.

The same YAML file an operator wrote for node_exporter works here (exporter-toolkit
docs/web-configuration.md), for the subset Python's ``ssl`` can honour::

    tls_server_config:
      cert_file: /etc/gpuwatch/tls.crt
      key_file: /etc/gpuwatch/tls.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: /etc/gpuwatch/clients-ca.crt
      min_version: TLS12                             # TLS10 … TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$…                           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')

Unknown keys, and keys gpuwatch cannot honour (``cipher_suites``, ``curve_preferences``,
``RequestClientCert``, ``rate_limit``), are refused rather than ignored: silently serving weaker
TLS than the file asks for would be worse than not starting. Errors name the file, key and value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

log = logging.getLogger(__name__)


class WebConfigError(ValueError):
    """A web config file that cannot be used; the message names file, key and value."""


_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")  # accept unverified certs
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
_TLS_REFUSED = {"cert", "key", "client_ca", "cipher_suites", "curve_preferences", "client_allowed_sans"}
_TLS_IGNORED = {"prefer_server_cipher_suites"}  # no effect in Go since 1.18 either
_HTTP_KEYS = {"http2", "headers"}  # http2 is accepted and ignored: gpuwatch speaks HTTP/1.1
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}


@functools.cache
def _dummy_hash() -> bytes:
    """Checked when the user is unknown, so a wrong user name costs as long as a wrong password
    and timing does not reveal which users exist (exporter-toolkit does the same)."""
    return bcrypt.hashpw(b"gpuwatch", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class WebConfig:
    """A validated web config; ``ssl_context`` is None for plain HTTP."""

    path: Path | None = None
    files: tuple[Path, ...] = ()  # every file it was built from, to notice a change
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    _cache: set[bytes] = field(default_factory=set, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def authorized(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header against ``basic_auth_users``; always True without users.

        bcrypt is slow on purpose (~50 ms at cost 10); a successful check is cached by a digest of
        user, hash and password, as exporter-toolkit does, so scrapes every few seconds stay cheap.
        """
        if not self.users:
            return True
        user, password = _parse_basic(authorization)
        if user is None or password is None:
            return False
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), hashed or b"", password.encode()])).digest()
        with self._lock:
            if hashed is not None and key in self._cache:
                return True
        ok = bcrypt.checkpw(password.encode(), hashed or _dummy_hash()) and hashed is not None
        if ok:
            with self._lock:
                self._cache.add(key)
        return ok


def _parse_basic(header: str | None) -> tuple[str | None, str | None]:
    if not header:
        return None, None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def load(path: str | Path) -> WebConfig:
    """Read, validate and build a web config; raises :class:`WebConfigError`."""
    path = Path(path)
    where = f"web config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if doc is None:
        return WebConfig(path=path, files=(path,))
    top = _mapping(doc, where, "")
    _known(top, _TOP_KEYS, where, "", refused={"rate_limit"})
    ssl_context = None
    if top.get("tls_server_config") is not None:
        ssl_context = _tls(_mapping(top["tls_server_config"], where, "tls_server_config"), path, where)
    headers: dict[str, str] = {}
    if top.get("http_server_config") is not None:
        http = _mapping(top["http_server_config"], where, "http_server_config")
        _known(http, _HTTP_KEYS, where, "http_server_config.")
        for name, value in _mapping(http.get("headers") or {}, where, "http_server_config.headers").items():
            if not isinstance(value, str) or "\n" in value or "\r" in value:
                raise _bad(where, f"http_server_config.headers.{name}", value, "expected a one-line string")
            headers[str(name)] = value
    users: dict[str, bytes] = {}
    for user, hashed in _mapping(top.get("basic_auth_users") or {}, where, "basic_auth_users").items():
        key = f"basic_auth_users.{user}"
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise _bad(where, key, "<hidden>", "expected a bcrypt hash ($2y$…, e.g. from htpasswd -nBC 10)")
        users[str(user)] = hashed.encode()
    return WebConfig(path=path, files=_files(path, top), ssl_context=ssl_context, users=users, headers=headers)


def _files(path: Path, top: Mapping[str, Any]) -> tuple[Path, ...]:
    tls = top.get("tls_server_config") or {}
    named = [tls[k] for k in ("cert_file", "key_file", "client_ca_file") if tls.get(k)]
    return (path, *(_relative(path, str(v)) for v in named))


class WebConfigSource:
    """The web config in force, re-read when one of its files changes (so certificates can be
    rotated without a restart) or on :meth:`reload`. A file that turns bad keeps the old config."""

    def __init__(self, path: str | Path | None) -> None:
        self._path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._config = WebConfig() if self._path is None else load(self._path)
        self._stamp = self._signature()

    def _signature(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for file in self._config.files:
            try:
                st = file.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def current(self) -> WebConfig:
        """The config to use for the next connection (cheap: a few stat calls)."""
        with self._lock:
            if self._path is not None and self._signature() != self._stamp:
                self._reload_locked()
            return self._config

    def reload(self, path: str | Path | None) -> None:
        """Read ``path`` (None: plain HTTP, no auth) now; raises :class:`WebConfigError` and keeps the old."""
        new = None if path is None else Path(path)
        config = WebConfig() if new is None else load(new)
        with self._lock:
            self._path, self._config = new, config
            self._stamp = self._signature()

    def _reload_locked(self) -> None:
        assert self._path is not None
        try:
            self._config = load(self._path)
            log.info("web config %s changed; reloaded", self._path)
        except WebConfigError as exc:
            log.error("%s; keeping the previous web config", exc)
        self._stamp = self._signature()


def _tls(tls: Mapping[str, Any], path: Path, where: str) -> ssl.SSLContext:
    prefix = "tls_server_config."
    _known(tls, _TLS_KEYS | _TLS_IGNORED, where, prefix, refused=_TLS_REFUSED)
    for key in ("cert_file", "key_file"):
        if not isinstance(tls.get(key), str) or not tls[key]:
            raise _bad(where, prefix + key, tls.get(key), "required with tls_server_config")
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type in _UNSUPPORTED_CLIENT_AUTH:
        raise _bad(
            where, prefix + "client_auth_type", auth_type, "certificates that are not verified are not supported"
        )
    if auth_type not in _CLIENT_AUTH:
        raise _bad(where, prefix + "client_auth_type", auth_type, f"expected one of {', '.join(_CLIENT_AUTH)}")
    ca_file = tls.get("client_ca_file")
    if _CLIENT_AUTH[auth_type] != ssl.CERT_NONE and not ca_file:
        raise _bad(where, prefix + "client_ca_file", ca_file, f"required with client_auth_type {auth_type}")
    if ca_file and auth_type == "NoClientCert":
        raise _bad(
            where,
            prefix + "client_auth_type",
            auth_type,
            "client_ca_file is set but client certificates are not asked for",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in _TLS_VERSIONS:
                raise _bad(where, prefix + key, tls[key], f"expected one of {', '.join(_TLS_VERSIONS)}")
            setattr(context, attribute, _TLS_VERSIONS[tls[key]])
    if "min_version" not in tls:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default
    cert, private_key = _relative(path, tls["cert_file"]), _relative(path, tls["key_file"])
    for name, file in (("cert_file", cert), ("key_file", private_key)):
        if not file.is_file():
            raise _bad(where, prefix + name, str(file), "no such file")
    try:
        context.load_cert_chain(cert, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise _bad(
            where, prefix + "cert_file", str(cert), f"cannot load the certificate and key: {_reason(exc)}"
        ) from exc
    context.verify_mode = _CLIENT_AUTH[auth_type]
    if ca_file:
        ca = _relative(path, str(ca_file))
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise _bad(where, prefix + "client_ca_file", str(ca), f"cannot load it: {_reason(exc)}") from exc
    return context


def _relative(config_path: Path, value: str) -> Path:
    """Paths in the file are relative to the file's directory, as in exporter-toolkit."""
    file = Path(value)
    return file if file.is_absolute() else config_path.parent / file


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, key or "(top level)", value, "expected a mapping of keys to values")
    return value


def _known(table: Mapping[str, Any], known: set[str], where: str, prefix: str, refused: set[str] | None = None) -> None:
    for key in table:
        if refused and key in refused:
            raise WebConfigError(f"{where}: key {prefix}{key!s}: not supported by gpuwatch")
        if key not in known:
            raise WebConfigError(f"{where}: unknown key {prefix}{key!s} (known: {', '.join(sorted(known))})")


def _bad(where: str, key: str, value: Any, reason: str) -> WebConfigError:
    return WebConfigError(f"{where}: key {key}: value {value!r}: {reason}")
