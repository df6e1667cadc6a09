"""Log output of the ``deswm`` command: lines for people, or JSON for log pipelines.

Both formats go to the current ``sys.stderr`` and pass every field through the one
secret scrubber (:func:`deswm._redact.redact`), tracebacks included. The JSON format
(``--log-format json``, ``pip install 'deswm[json-logs]'``) renders each record as one
object with stable keys: ``ts``, ``level``, ``logger``, ``event`` (``bucket_committed``,
``cycle_finished``, ``progress``, or ``log`` for any other line), ``message``, and, when
the record carries them, :data:`FIELDS` (``pipeline``, ``bucket``, ``files``, ``bytes``,
``shards``, ``duration``, ...). Library code adds those with ``extra=``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, Final, Literal

from deswm._errors import ConfigError
from deswm._redact import redact

__all__ = ["FIELDS", "LogFormat", "setup_logging", "skip_events"]

LogFormat = Literal["text", "json"]

FIELDS: Final = (
    "pipeline",
    "partition",
    "bucket",
    "window",
    "files",
    "unchanged",
    "replaced",
    "bytes",
    "bytes_out",
    "shards",
    "buckets",
    "failures",
    "watermark",
    "duration",
    "total",
    "rate",
)
"""Keys a record may carry besides ``ts``, ``level``, ``logger``, ``event``, ``message``."""

_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with URL secrets and known passwords masked.

    Without ``tracebacks`` (``--debug``) a record's traceback is left out: one line each.
    """

    def __init__(self, fmt: str, *, tracebacks: bool = True) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks and (record.exc_info or record.exc_text):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return redact(super().format(record))


def _json_formatter() -> logging.Formatter:
    try:
        import structlog
    except ImportError:
        raise ConfigError(
            "JSON logs need structlog",
            key="--log-format",
            hint="pip install 'deswm[json-logs]'",
        ) from None

    def fields(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        record: logging.LogRecord = event_dict["_record"]
        event_dict["message"] = event_dict.pop("event")
        event_dict["event"] = getattr(record, "event", "log")
        event_dict["logger"] = record.name
        return event_dict

    def scrub(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in event_dict.items():
            if isinstance(value, str):
                event_dict[name] = redact(value)
        return event_dict

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            fields,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.stdlib.ExtraAdder(allow=FIELDS),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )


def setup_logging(level: int, log_format: LogFormat = "text", *, tracebacks: bool = True) -> None:
    """Send the ``deswm`` loggers to stderr in ``log_format`` (replacing earlier setup);
    ``tracebacks=False`` leaves tracebacks out of text lines (one line per record)."""
    handler = _StderrHandler()
    if log_format == "json":
        handler.setFormatter(_json_formatter())
    elif log_format == "text":
        handler.setFormatter(_RedactingFormatter(_TEXT, tracebacks=tracebacks))
    else:
        raise ConfigError(
            f"unknown log format {log_format!r}", key="--log-format", hint="use text or json"
        )
    root = logging.getLogger("deswm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def skip_events(*events: str) -> Iterator[None]:
    """Leave records of these ``event`` kinds out of text logs while the block runs.

    For output the command prints itself (the cycle summary of a one-shot ``run``):
    a terminal would show it twice. JSON logs keep every record (they feed machines).
    """

    def keep(record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) not in events

    handlers = [
        handler
        for handler in logging.getLogger("deswm").handlers
        if isinstance(handler.formatter, _RedactingFormatter)
    ]
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
