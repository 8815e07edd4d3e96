"""``http.request``: one HTTP request per job, made with the process's shared client.

Payload (the envelope's ``payload``; on a pool bound to this handler, the body as JSON)::

    {"method": "POST",                         # default: POST with a body, else GET
     "url": "https://hooks.example/orders",    # http or https, required
     "headers": {"X-Event": "order.paid"},     # optional, strings
     "json": {"order": 42},                    # or "body": "raw text" (not both)
     "timeout": 10,                            # seconds, optional (the client's: 30)
     "follow_redirects": false}                # optional

The request goes through ``job.http``, so flow control counts it under the API its host
belongs to (``[api.NAME] hosts``, else the host name), and an API whose breaker is open
holds its jobs.

=====================================================  ====================================
the answer                                             the job
=====================================================  ====================================
2xx                                                    done (deleted)
408, 429, 5xx, or no answer (refused, reset, timed     retried: after ``Retry-After`` when
out, not HTTP)                                         the answer has one, else backoff
other 4xx; a 3xx not followed                          buried, with the status and the
                                                       start of the response's body (read
                                                       when its Content-Length is at most
                                                       64 KiB)
a payload that is not one of the above                 buried at once, saying what is wrong
=====================================================  ====================================

Reasons name the method and the URL without its query string or credentials (those may
hold tokens, and reasons are logged and kept with burials).

**Signing (webhooks).** When the daemon's config names a secret file::

    [settings."http.request"]
    signing_secret_file = "/etc/tubeworker/webhook.secret"
    signature_header = "X-Hub-Signature-256"     # default X-Tubeworker-Signature

(or the environment does: ``TUBEWORKER_HTTP_SIGNING_SECRET_FILE``,
``TUBEWORKER_HTTP_SIGNATURE_HEADER``; the config wins), every request carries
``X-Tubeworker-Signature: sha256=<hex>``, an HMAC-SHA256 of the exact body bytes sent (empty
for a request without a body) keyed with the file's content (one trailing newline is not
part of the secret). The receiver recomputes it over the raw body and compares in constant
time, e.g. ``hmac.compare_digest``, as for GitHub's ``X-Hub-Signature-256``. The file is
read for each job, so a rotated secret applies at once; a secret that cannot be read
fails the attempt (retried) rather than send unsigned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx
import trio

from tubeworker import Bury, Job, Retry, __version__, handler, parse_retry_after

__all__ = [
    "DEFAULT_SIGNATURE_HEADER",
    "SIGNATURE_HEADER_ENV",
    "SIGNING_SECRET_FILE_ENV",
    "request",
    "sign",
]

SIGNING_SECRET_FILE_ENV: Final = "TUBEWORKER_HTTP_SIGNING_SECRET_FILE"
SIGNATURE_HEADER_ENV: Final = "TUBEWORKER_HTTP_SIGNATURE_HEADER"
DEFAULT_SIGNATURE_HEADER: Final = "X-Tubeworker-Signature"

_KEYS: Final = ("method", "url", "headers", "json", "body", "timeout", "follow_redirects")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 field names
_READ_LIMIT: Final = 64 * 1024  # a body is read when its Content-Length is at most this
_SNIPPET_BYTES: Final = 1024  # a failure's body: the start kept...
_SNIPPET_CHARS: Final = 200  # ...and at most this much of it quoted


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: httpx.URL
    headers: list[tuple[str, str]]
    content: bytes | None
    timeout: float | None
    follow_redirects: bool

    @property
    def where(self) -> str:
        """Method and URL for reasons: no query string, no credentials."""
        shown = self.url.copy_with(query=None, fragment=None, username=None, password=None)
        return f"{self.method} {shown}"


@handler()
async def request(job: Job) -> None:
    """Make the payload's HTTP request; see the module's docstring."""
    wanted = _parse(_payload(job))
    headers = list(wanted.headers)
    signing = await _signing_key(job)
    if signing is not None:
        header, secret = signing
        headers = [(k, v) for k, v in headers if k.lower() != header.lower()]
        headers.append((header, sign(secret, wanted.content or b"")))
    status, answer, snippet = await _exchange(job, wanted, headers)
    if 200 <= status < 300:
        return
    if status in (408, 429) or status >= 500:
        retry_after = answer.get("retry-after")
        delay = None if retry_after is None else parse_retry_after(retry_after, _wall_clock())
        after = f" (Retry-After: {delay:g} s)" if delay is not None else ""
        raise Retry(delay=delay, reason=f"HTTP {status} from {wanted.where}{after}")
    if 300 <= status < 400:
        raise Bury(
            f"HTTP {status} from {wanted.where}: redirected to {answer.get('location', '?')} "
            '(not followed: set "follow_redirects": true to follow it)'
        )
    raise Bury(f"HTTP {status} from {wanted.where}: {snippet}")


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _wall_clock() -> float:
    """The wall clock a ``Retry-After`` HTTP-date is measured against."""
    return time.time()


# --------------------------------------------------------------------------- the payload


def _payload(job: Job) -> Any:
    try:
        return job.data()
    except ValueError:
        raise Bury(
            "http.request: the body is not JSON (a pool bound to it reads it as the payload)"
        ) from None


def _parse(data: Any) -> _Request:
    """The request a payload asks for, or Bury saying what is wrong with it."""
    if not isinstance(data, dict):
        raise Bury(f"http.request: payload must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise Bury(f"http.request: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    if "json" in data and "body" in data:
        raise Bury('http.request: give "json" or "body", not both')
    content, implied = _content(data)
    headers = _headers(data.get("headers"))
    given = {name.lower() for name, _ in headers}
    implied.append(("User-Agent", f"tubeworker/{__version__}"))
    headers += [(k, v) for k, v in implied if k.lower() not in given]  # the payload's win
    method = data.get("method", "POST" if content is not None else "GET")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise Bury(
            f"http.request: method must be one of {', '.join(sorted(_METHODS))}, got {method!r}"
        )
    follow = data.get("follow_redirects", False)
    if not isinstance(follow, bool):
        raise Bury(f'http.request: "follow_redirects" must be true or false, got {follow!r}')
    return _Request(
        method=method.upper(),
        url=_url(data.get("url")),
        headers=headers,
        content=content,
        timeout=_timeout(data.get("timeout")),
        follow_redirects=follow,
    )


def _url(value: Any) -> httpx.URL:
    if value is None:
        raise Bury('http.request: payload has no "url"')
    if not isinstance(value, str):
        raise Bury(f'http.request: "url" must be a string, got {type(value).__name__}')
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise Bury(f"http.request: invalid url: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Bury(f"http.request: url must be http:// or https:// with a host, got {value!r}")
    return url


def _content(data: dict[str, Any]) -> tuple[bytes | None, list[tuple[str, str]]]:
    """The body's exact bytes (what is signed) and the content type that goes with it."""
    if "json" in data:
        try:
            encoded = json.dumps(data["json"], separators=(",", ":"), allow_nan=False)
        except ValueError as exc:
            raise Bury(f'http.request: "json" cannot be sent as JSON: {exc}') from None
        return encoded.encode(), [("Content-Type", "application/json")]
    if "body" in data:
        body = data["body"]
        if not isinstance(body, str):
            raise Bury(f'http.request: "body" must be a string, got {type(body).__name__}')
        return body.encode(), []
    return None, []


def _headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise Bury(f'http.request: "headers" must be an object, got {type(value).__name__}')
    found: list[tuple[str, str]] = []
    for name, text in value.items():
        if not _TOKEN.match(name):
            raise Bury(f"http.request: {name!r} is not a valid header name")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise Bury(f"http.request: header {name!r} must be a string on one line")
        found.append((name, text))
    return found


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bury(f'http.request: "timeout" must be a number of seconds, got {value!r}')
    if not (math.isfinite(value) and value > 0):
        raise Bury(f'http.request: "timeout" must be > 0 seconds, got {value!r}')
    return float(value)


# --------------------------------------------------------------------------- the exchange


def _setting(job: Job, key: str, env: str) -> tuple[str | None, str]:
    """A signing setting: ``[settings."http.request"] key`` first, else the environment
    variable ``env``; with where it came from, for messages."""
    value = job.settings.get(key)
    if value is not None:
        return (value if isinstance(value, str) else repr(value)), key
    return os.environ.get(env) or None, env


async def _signing_key(job: Job) -> tuple[str, bytes] | None:
    """(header name, secret) when signing is configured; a problem with it fails the
    attempt (an operator can fix it before the retries run out)."""
    path, path_source = _setting(job, "signing_secret_file", SIGNING_SECRET_FILE_ENV)
    if not path:
        return None
    header, header_source = _setting(job, "signature_header", SIGNATURE_HEADER_ENV)
    header = header or DEFAULT_SIGNATURE_HEADER
    if not _TOKEN.match(header):
        raise Retry(reason=f"{header_source}={header!r} is not a valid header name")
    try:
        secret = await trio.Path(path).read_bytes()
    except OSError as exc:
        raise Retry(
            reason=f"cannot read the signing secret ({path_source}={path}): {exc.strerror or exc}"
        ) from None
    secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    if not secret:
        raise Retry(reason=f"the signing secret ({path_source}={path}) is empty")
    return header, secret


async def _exchange(
    job: Job, wanted: _Request, headers: list[tuple[str, str]]
) -> tuple[int, httpx.Headers, str]:
    """Send it: (status, response headers, a snippet of a failure's body)."""
    try:
        async with job.http.stream(
            wanted.method,
            wanted.url,
            headers=headers,
            content=wanted.content,
            timeout=wanted.timeout if wanted.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            follow_redirects=wanted.follow_redirects,
        ) as response:
            return response.status_code, response.headers, await _read(response)
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        raise Bury(f"{wanted.where}: the request cannot be sent: {_describe(exc)}") from None
    except httpx.TooManyRedirects as exc:
        raise Bury(f"{wanted.where}: {_describe(exc)}") from None
    except httpx.RequestError as exc:  # no answer: refused, reset, timed out, not HTTP
        raise Retry(reason=f"{wanted.where}: {_describe(exc)}") from None


async def _read(response: httpx.Response) -> str:
    """Read a body that says it is small (so that the connection can serve the next
    request); of a failure's, the start, for the reason. A body of unknown or large size is
    left unread: the response is closed, and its connection with it.

    Never stopped part way: httpx's body iterators are nested async generators, and one
    left mid-way is only finalized by the garbage collector.
    """
    length = response.headers.get("content-length", "")
    if not (length.isdigit() and int(length) <= _READ_LIMIT):
        size = f"{length} bytes" if length.isdigit() else "unknown length"
        return f"(a body of {size}, not read)"
    if response.is_success:
        async for _ in response.aiter_raw():
            pass  # dropped: only its end matters (a body that stalls is a failure)
        return ""
    head = bytearray()
    async for chunk in response.aiter_bytes():  # decoded, kept only up to the snippet
        if len(head) < _SNIPPET_BYTES:
            head += chunk[: _SNIPPET_BYTES - len(head)]
    return _snippet(bytes(head))


def _snippet(head: bytes) -> str:
    text = " ".join(head.decode("utf-8", "replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def _describe(exc: Exception) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
