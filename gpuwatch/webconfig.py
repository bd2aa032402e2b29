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

A file is taken only when it was read whole and unchanged (the same inode, size and mtime before
and after the read), so a rewrite in place (``cat >``, an editor, ``open('w')``) is never taken
half-written; and an empty file never replaces a running config that has TLS or users (the
moment between truncating and writing looks exactly like that).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
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

# A bcrypt hash: $2a$, $2b$ or $2y$, a two-digit cost, 22 characters of salt and 31 of hash.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
MIN_BCRYPT_COST = 4  # bcrypt's own minimum
MAX_BCRYPT_COST = 16  # ~4 s a check on a 2020s core; beyond it one wrong password is a denial of service
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; htpasswd and Go's bcrypt refuse longer passwords
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, space and tab: no CR, LF or NUL
READ_ATTEMPTS = 3  # reads of a file that changed while being read, before giving up
_REREAD_AFTER_S = 0.02


class AuthBusy(Exception):
    """No password check could start in time; answer 503 rather than wait longer."""


class BasicAuth:
    """Checks ``Authorization`` headers against bcrypt hashes, cheaply for the clients that matter.

    bcrypt is slow on purpose (~60 ms at cost 10, ~250 ms at 12), so:

    * a successful check is cached (at most ``PASSED_CACHE`` entries, least recently used
      dropped) by a SHA-256 digest of user, hash and password, as exporter-toolkit does: a
      scraper pays bcrypt once, not per scrape;
    * a failed check is cached the same way for ``FAILED_CACHE_S``, so a flood repeating one
      wrong password costs one bcrypt;
    * checks that miss both caches run one at a time (bcrypt releases the GIL), so a flood of
      wrong passwords takes one core and is answered at bcrypt's pace, while cached credentials
      are never queued behind it; a check whose client is gone by its turn (``abandoned``) is
      skipped;
    * an unknown user is checked against the costliest configured hash, so it takes as long as
      a wrong password and timing does not reveal which users exist.
    """

    PASSED_CACHE = 256
    FAILED_CACHE = 1024
    FAILED_CACHE_S = 10.0

    def __init__(self, users: Mapping[str, bytes], clock: Callable[[], float] = time.monotonic) -> None:
        self._users = dict(users)
        self._dummy = max(self._users.values(), key=_bcrypt_cost, default=b"")
        self._clock = clock
        self._lock = threading.Lock()  # guards the caches
        self._check = threading.Lock()  # one bcrypt at a time
        self._passed: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()  # digest -> when it expires

    def authorized(
        self, authorization: str | None, wait_s: float = 10.0, abandoned: Callable[[], bool] = lambda: False
    ) -> bool:
        """True when the header names a user and the right password. Raises :class:`AuthBusy`
        when no check could start within ``wait_s``."""
        user, password = _parse_basic(authorization)
        if user is None or password is None:
            return False
        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            return False  # no configured password can be this long
        hashed = self._users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), hashed or b"", secret])).digest()
        known = self._cached(key)
        if known is not None:
            return known
        if not self._check.acquire(timeout=wait_s):
            raise AuthBusy(f"no password check could start within {wait_s:g} s")
        try:
            known = self._cached(key)  # the same credentials may have been checked meanwhile
            if known is None:
                if abandoned():
                    return False
                known = bcrypt.checkpw(secret, hashed or self._dummy) and hashed is not None
                self._remember(key, known)
        finally:
            self._check.release()
        return known

    def _cached(self, key: bytes) -> bool | None:
        with self._lock:
            if key in self._passed:
                self._passed.move_to_end(key)
                return True
            expires = self._failed.get(key)
            if expires is None:
                return None
            if expires > self._clock():
                return False
            del self._failed[key]
            return None

    def _remember(self, key: bytes, ok: bool) -> None:
        with self._lock:
            if ok:
                self._passed[key] = None
                if len(self._passed) > self.PASSED_CACHE:
                    self._passed.popitem(last=False)
            else:
                self._failed[key] = self._clock() + self.FAILED_CACHE_S
                self._failed.move_to_end(key)
                if len(self._failed) > self.FAILED_CACHE:
                    self._failed.popitem(last=False)


def _bcrypt_cost(hashed: bytes) -> int:
    return int(hashed[4:6])


@dataclass(frozen=True)
class WebConfig:
    """A validated web config; ``ssl_context`` is None for plain HTTP."""

    path: Path | None = None
    files: tuple[Path, ...] = ()  # every file it was built from, to notice a change
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    empty: bool = False  # the file held no document at all (empty, or only comments)
    _auth: BasicAuth = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_auth", BasicAuth(self.users))

    @property
    def secured(self) -> bool:
        """TLS or basic auth is on."""
        return self.ssl_context is not None or bool(self.users)

    def authorized(
        self, authorization: str | None, wait_s: float = 10.0, abandoned: Callable[[], bool] = lambda: False
    ) -> bool:
        """Check an ``Authorization`` header against ``basic_auth_users``; always True without
        users. See :class:`BasicAuth` (which raises :class:`AuthBusy`)."""
        return not self.users or self._auth.authorized(authorization, wait_s, abandoned)


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


def load(path: str | Path, attempts: int = READ_ATTEMPTS) -> WebConfig:
    """Read, validate and build a web config; raises :class:`WebConfigError`.

    A file that changes while it is read is read again, ``attempts`` times in all."""
    path = Path(path)
    where = f"web config file {path}"
    data = _read_stable(path, where, attempts)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebConfigError(f"{where}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError:
        raise WebConfigError(f"{where}: not valid YAML: nested too deeply") from None
    if doc is None:
        return WebConfig(path=path, files=(path,), empty=True)
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
            key = f"http_server_config.headers.{name!r}"
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise WebConfigError(f"{where}: key {key}: not a header name (letters, digits and !#$%&'*+.^_`|~-)")
            if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
                raise _bad(where, key, value, "expected one line of printable ASCII (no CR, LF or NUL)")
            headers[name] = value
    users: dict[str, bytes] = {}
    for user, hashed in _mapping(top.get("basic_auth_users") or {}, where, "basic_auth_users").items():
        users[str(user)] = _bcrypt_hash(hashed, where, f"basic_auth_users.{user}")
    return WebConfig(path=path, files=_files(path, top), ssl_context=ssl_context, users=users, headers=headers)


def _read_stable(path: Path, where: str, attempts: int) -> bytes:
    """The file's bytes, read while it did not change (same inode, size and mtime before and after)."""
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(_REREAD_AFTER_S)
        try:
            # O_NONBLOCK: a FIFO put in the file's place must not hang the reader
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise WebConfigError(f"{where}: not a regular file")
                with os.fdopen(fd, "rb", closefd=False) as file:
                    data = file.read()
            finally:
                os.close(fd)
            after = os.stat(path)
        except OSError as exc:
            raise WebConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
        if _file_stamp(before) == _file_stamp(after) and len(data) == before.st_size:
            return data
    raise WebConfigError(f"{where}: it changed while being read ({attempts} times); not taken")


def _file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _bcrypt_hash(value: Any, where: str, key: str) -> bytes:
    """A hash bcrypt can check, at a cost from 4 to 16; the value itself is never echoed."""
    expected = "expected a bcrypt hash ($2y$…, e.g. from htpasswd -nBC 10)"
    match = _BCRYPT_HASH.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _bad(where, key, "<hidden>", expected)
    cost = int(match[1])
    if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        raise _bad(
            where,
            key,
            "<hidden>",
            f"bcrypt cost {cost} is outside {MIN_BCRYPT_COST}-{MAX_BCRYPT_COST} (a check at cost 17 takes seconds)",
        )
    hashed = str(value).encode()
    try:  # the same salt and hash at the lowest cost: bcrypt parses them as it will, in a millisecond
        bcrypt.checkpw(b"", hashed[:4] + b"04" + hashed[6:])
    except ValueError as exc:
        raise _bad(where, key, "<hidden>", f"{expected}: bcrypt cannot use it ({exc})") from None
    return hashed


def _files(path: Path, top: Mapping[str, Any]) -> tuple[Path, ...]:
    tls = top.get("tls_server_config") or {}
    named = [tls[k] for k in ("cert_file", "key_file", "client_ca_file") if tls.get(k)]
    return (path, *(_relative(path, str(v)) for v in named))


class WebConfigSource:
    """The web config in force, re-read when one of its files changes (so certificates can be
    rotated without a restart) or on :meth:`reload`. A file that turns bad, changes while it is
    read, or turns empty while TLS or users are on keeps the old config."""

    def __init__(self, path: str | Path | None) -> None:
        self._path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._config = WebConfig() if self._path is None else load(self._path)
        self._stamp = _signature(self._config.files)

    def current(self) -> WebConfig:
        """The config to use for the next connection (cheap: a few stat calls)."""
        with self._lock:
            if self._path is not None and _signature(self._config.files) != self._stamp:
                try:
                    self._take_locked(self._path)
                    log.info("web config %s changed; reloaded", self._path)
                except WebConfigError as exc:
                    log.error("%s; keeping the previous web config", exc)
            return self._config

    def reload(self, path: str | Path | None) -> None:
        """Read ``path`` (None: plain HTTP, no auth) now; raises :class:`WebConfigError` and keeps the old."""
        new = None if path is None else Path(path)
        with self._lock:
            if new is None:
                self._config, self._stamp = WebConfig(), ()
            else:
                self._take_locked(new)
            self._path = new

    def _take_locked(self, path: Path) -> None:
        # The stamp is taken before reading, so a change made during or after the read is seen
        # (and read) at the next connection, never mistaken for the version already read.
        self._stamp = _signature(self._config.files)
        config = load(path)
        if config.empty and self._config.secured:
            raise WebConfigError(
                f"web config file {path}: empty (half-way through being rewritten?) while TLS or basic auth "
                "is on; to turn them off, remove the file from the config rather than empty it"
            )
        if config.files != self._config.files:
            self._stamp = _signature(config.files)
        self._config = config


def _signature(files: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for file in files:
        try:
            st = file.stat()
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((-1, -1, -1))
    return tuple(stamps)


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
    for key in ("min_version", "max_version"):
        if key in tls and tls[key] not in _TLS_VERSIONS:
            raise _bad(where, prefix + key, tls[key], f"expected one of {', '.join(_TLS_VERSIONS)}")
    lowest = tls.get("min_version", "TLS12")  # exporter-toolkit's default
    if "max_version" in tls and _TLS_VERSIONS[lowest] > _TLS_VERSIONS[tls["max_version"]]:
        raise _bad(
            where, prefix + "min_version", lowest, f"above max_version {tls['max_version']}: no TLS version left"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[lowest]
    if "max_version" in tls:
        context.maximum_version = _TLS_VERSIONS[tls["max_version"]]
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
