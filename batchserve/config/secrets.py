"""What must never reach a manifest, a log line or an error in clear: credentials, found by structure
as well as by key name. A key that looks like a credential (``secret``, ``token``, ``AccountKey``...)
is masked at any depth of nested options; a connection string (``a=b;AccountKey=...``) keeps its
harmless parts and loses its secret ones, whatever the key holding it is called; a URL's userinfo
password (``http://user:PASS@host``) is masked wherever a URL appears, in settings and in free text
(error lines, log lines), since cron mails what a job prints.

    >>> redact({"client_kwargs": {"aws_secret_access_key": "X", "region_name": "eu"}})
    {'client_kwargs': {'aws_secret_access_key': '***', 'region_name': 'eu'}}
    >>> redact_text("error: cannot reach http://ops:hunter2@gw:9091/metrics")
    'error: cannot reach http://ops:***@gw:9091/metrics'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact", "redact_text", "redact_value", "MASK"]

MASK = "***"
_SECRET_RE = re.compile(r"(secret|password|passwd|pwd|token|credential|session|private|key|signature|sig$)", re.I)
# Keys that match _SECRET_RE but hold no secret: keep them readable in manifests.
_NOT_SECRET = {"key_id", "anon", "endpoint_url", "region_name", "keep", "metrics_job"}
#: scheme://user:password@ (the password part only; a bare user name stays readable).
_USERINFO_RE = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)@")
#: One part of a connection string: ``;AccountKey=...`` up to the next ``;``.
_CONN_PART_RE = re.compile(r"(?P<key>(?:^|(?<=;))\s*[A-Za-z][\w .-]*?)=(?P<value>[^;]*)")


def _secret_key(key: str) -> bool:
    return bool(_SECRET_RE.search(key)) and key not in _NOT_SECRET


def redact_text(text: str) -> str:
    """Free text with every URL's userinfo password masked (error and log lines)."""
    return _USERINFO_RE.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def _redact_connection_string(text: str) -> str:
    if ";" not in text or "=" not in text:
        return text
    return _CONN_PART_RE.sub(
        lambda m: f"{m.group('key')}={MASK}" if _secret_key(m.group("key").strip()) else m.group(0), text)


def redact_value(value: Any) -> Any:
    """A value with its credentials masked by structure: nested mappings and lists, connection strings,
    URL userinfo. Keys decide inside mappings (see :func:`redact`)."""
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return redact_text(_redact_connection_string(value))
    return value


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """Mask values whose key looks like a credential, at any depth, and secrets inside the others."""
    return {k: (MASK if _secret_key(str(k)) else redact_value(v)) for k, v in options.items()}
