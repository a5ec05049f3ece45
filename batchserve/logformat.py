"""How a log line looks, plain or JSON, for every process that writes them: the CLI, and a server's
worker processes (which start bare and must write what their parent writes, or a log pipeline reading
JSON gets plain lines from half the server). A leaf: the CLI's handlers and rich stay in ``cli``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

from batchserve.config.secrets import redact_text, redact_value

__all__ = ["PlainFormatter", "JsonFormatter", "one_line", "utc_text", "formatter"]


def utc_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """Control characters escaped (a newline as ``\\n``): a file named ``a\\nERROR batchserve forged.parquet``
    must not print a second, forged log line. JSON lines are escaped by the encoder already."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class PlainFormatter(logging.Formatter):
    """``2026-11-22T03:00:01.123Z INFO batchserve [run] message``: UTC, with its zone (Z); one record, one
    line (control characters in any value escaped; a traceback with ``--debug`` follows on its own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "run_id", None)
        text = f"{utc_text(record.created)} {record.levelname} {record.name}{f' [{run}]' if run else ''} " \
               f"{one_line(redact_text(record.getMessage()))}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, Z), ``level``, ``run_id``, ``event`` (a short name such as
    ``committed`` where the call gives one in ``extra={"fields": {"event": ...}}``, else the message),
    ``logger``, the human ``message``, and the record's other structured fields merged in."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact_text(record.getMessage())
        fields = getattr(record, "fields", None)
        fields = redact_value(dict(fields)) if isinstance(fields, dict) else {}
        data: dict[str, Any] = {
            "time": utc_text(record.created), "level": record.levelname.lower(),
            "run_id": getattr(record, "run_id", None), "event": fields.pop("event", message), "logger": record.name,
        }
        if data["event"] != message:
            data["message"] = message
        data.update({k: v for k, v in fields.items() if k not in data})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` ``plain`` or ``json``."""
    return JsonFormatter() if fmt == "json" else PlainFormatter()
