"""Logs are JSON lines carrying the trace id and the request id."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from avgate.kernel.logging import configure_logging
from avgate.kernel.principal import Principal, Role, bind_principal, unbind_principal


def test_log_record_carries_trace_and_request_ids() -> None:
    configure_logging("identity", "INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    tracer = TracerProvider().get_tracer("test")
    bound = bind_principal(Principal(role=Role.PROVIDER, subject="k", tenant_id="t", request_id="req-7"))
    try:
        with tracer.start_as_current_span("op") as span:
            logging.getLogger("avgate.test").info("hello", extra={"tenant_id": "t"})
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        unbind_principal(bound)
    record = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert record["message"] == "hello"
    assert record["trace_id"] == trace_id
    assert record["request_id"] == "req-7"
    assert record["process_name"] == "identity"
    assert record["level"] == "INFO"
