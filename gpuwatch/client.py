"""How `gpuwatch status` reads a running daemon: its ``/status`` document over HTTP or HTTPS, with
a CA to trust, a client certificate and basic auth where the daemon's web config asks for them.

Nothing here trusts the other end: the body is read up to :data:`MAX_DOCUMENT_BYTES`, must be a
JSON object, and every text in it is cleaned for the terminal (:func:`gpuwatch.status.clean`); no
redirect is followed (credentials stay with the host they were given for) and no proxy is used. A
``user:password@`` in the URL is taken out of it and sent as basic auth; :attr:`Daemon.url` and
every error name the URL without it. The caller bounds the whole exchange in time (`status`
reads on a thread and stops waiting at ``--timeout``); each socket operation is bounded here too.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from gpuwatch.status import clean, clean_text

MAX_DOCUMENT_BYTES = 8 * 2**20  # a /status of 64 GPUs with their processes is well under 1 MiB


class ClientError(Exception):
    """The daemon could not be read as asked (the message is clean and names no secret)."""


class Unreachable(ClientError):
    """Nothing answered HTTP there: not listening, refused, no route, the TLS handshake failed."""


class Refused(ClientError):
    """The daemon answered with an HTTP error status (401 without the right credentials, say)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NotAStatus(ClientError):
    """What answered is not a gpuwatch ``/status`` document."""


@dataclass(frozen=True)
class Credentials:
    """Basic-auth credentials; the password is never part of a repr or a message."""

    user: str
    password: bytes = field(repr=False)

    def header(self) -> str:
        return "Basic " + base64.b64encode(self.user.encode() + b":" + self.password).decode("ascii")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError, and reported as such


class Daemon:
    """A daemon's ``/status`` at ``url`` (http or https)."""

    def __init__(
        self,
        url: str,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{clean_text(url)}: not an http:// or https:// URL")
        if parts.username is not None:
            if credentials is not None:
                raise ClientError("credentials both in the URL and from --user: give one")
            credentials = Credentials(urllib.parse.unquote(parts.username), _url_password(parts))
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = urllib.parse.urlunsplit(parts).rstrip("/")
        self.status_url = self.url + "/status"
        self.credentials = credentials
        context = None
        if parts.scheme == "https":
            context = _tls_context(ca_file, cert_file, key_file)
        elif ca_file or cert_file:
            raise ClientError(f"{self.url}: --ca-file and --cert-file need an https:// URL")
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), _NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def fetch(self, timeout_s: float) -> dict[str, Any]:
        """The ``/status`` document, cleaned; raises a :class:`ClientError`."""
        request = urllib.request.Request(self.status_url, headers={"Accept": "application/json"})
        if self.credentials is not None:
            request.add_unredirected_header("Authorization", self.credentials.header())
        try:
            with self._opener.open(request, timeout=max(timeout_s, 0.001)) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise Refused(f"{self.status_url} answered {exc.code} {clean_text(str(exc.reason))}", exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: http.client.InvalidURL
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"no daemon at {self.status_url} ({clean_text(str(reason))})") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise NotAStatus(f"{self.status_url} answered more than {MAX_DOCUMENT_BYTES // 2**20} MiB")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise NotAStatus(f"{self.status_url} answered no JSON ({clean_text(str(exc))})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("gpus", []), list):
            raise NotAStatus(f"{self.status_url} answered JSON that is not a gpuwatch /status document")
        try:
            cleaned: dict[str, Any] = clean(doc)
        except RecursionError:  # JSON nested deeper than cleaning it may recurse
            raise NotAStatus(f"{self.status_url} answered JSON that is not a gpuwatch /status document") from None
        return cleaned


def _url_password(parts: urllib.parse.SplitResult) -> bytes:
    return urllib.parse.unquote_to_bytes(parts.password or "")


def _tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Verify the daemon against ``ca_file`` (else the system's CAs); present ``cert_file``."""
    if key_file and not cert_file:
        raise ClientError("--key-file needs --cert-file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ClientError(f"--ca-file {ca_file}: {clean_text(str(exc))}") from None
    if cert_file:
        try:
            # no password: OpenSSL would otherwise ask for an encrypted key's on the terminal
            context.load_cert_chain(cert_file, key_file, password=lambda: b"")
        except (OSError, ValueError) as exc:
            raise ClientError(f"--cert-file {cert_file}: {clean_text(str(exc))}") from None
    return context
