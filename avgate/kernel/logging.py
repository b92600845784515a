"""Structured JSON logs carrying the trace id, span id and request id.

Personal data never goes into a log record: code logs ids and masked values
only, and error messages built from domain errors never echo input values.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from avgate.kernel.principal import bound_principal


class _ContextFilter(logging.Filter):
    """Adds trace_id, span_id and request_id of the current call to every record."""

    def __init__(self, process: str):
        super().__init__()
        self._process = process

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        principal = bound_principal()
        record.request_id = principal.request_id if principal is not None else ""
        record.process_name = self._process
        return True


def configure_logging(process: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(process_name)s %(trace_id)s %(span_id)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
