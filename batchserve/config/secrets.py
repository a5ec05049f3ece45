"""What must never reach a manifest, a log line or an error in clear: storage credentials."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact"]

_SECRET_RE = re.compile(r"(secret|password|passwd|token|credential|session|private|key)", re.I)
# Keys that match _SECRET_RE but hold no secret: keep them readable in manifests.
_NOT_SECRET = {"key_id", "anon", "endpoint_url", "region_name"}


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """Mask values whose key looks like a credential; manifests and logs are shared."""
    return {
        k: ("***" if _SECRET_RE.search(k) and k not in _NOT_SECRET else v)
        for k, v in options.items()
    }
