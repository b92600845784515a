"""Rules every request message obeys, whatever its service: checked once, by descriptor.

Before a handler runs, the request (each message of a client stream) is
walked field by field through its descriptor, nested messages, repeated
fields and maps included:

- no string holds a NUL character (PostgreSQL's text cannot store one, and no
  identifier or free text needs it);
- every `google.protobuf.Timestamp` lies in years 0001-9999 with nanos in
  range, and every `google.protobuf.Duration` within ±10,000 years, as their
  definitions require (Python's datetime cannot represent the rest).

A violation is INVALID_ARGUMENT with a BadRequest naming each field path
(`filter.created_from`, `content[2].content_id`, `labels["k"]`), raised
before the handler sees the message, so bad input changes nothing and never
reaches INTERNAL. The gateway stays a byte pass-through: its generic
handlers receive bytes, which this interceptor lets by; each service checks
what it receives. Field rules that depend on meaning (ids, free text) stay
with the use cases (`avgate.kernel.errors.FieldChecker`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from avgate.kernel import convert
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.grpc.wrapping import iterate_result, resolve_unary

NUL = "must not contain the NUL character"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_MAX_VIOLATIONS = 20


def _map_key(key: object) -> str:
    return f'["{key}"]' if isinstance(key, str) else f"[{key}]"


def _check_string(value: str, path: str, out: list[FieldViolation]) -> None:
    if "\x00" in value:
        out.append(FieldViolation(path, NUL))


def _check_value(field: FieldDescriptor, value: Any, path: str, out: list[FieldViolation]) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        _check_string(value, path, out)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        _check_message(value, f"{path}.", out)


def _check_message(message: Message, prefix: str, out: list[FieldViolation]) -> None:
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        if not convert.timestamp_in_range(message):  # type: ignore[arg-type]
            out.append(FieldViolation(prefix.rstrip("."), convert.TIMESTAMP_RANGE))
        return
    if name == _DURATION:
        if not convert.duration_in_range(message):  # type: ignore[arg-type]
            out.append(FieldViolation(prefix.rstrip("."), convert.DURATION_RANGE))
        return
    for field, value in message.ListFields():
        if len(out) >= _MAX_VIOLATIONS:
            return
        path = f"{prefix}{field.name}"
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                item_path = f"{path}{_map_key(key)}"
                if isinstance(key, str):
                    _check_string(key, f"{path} key", out)
                _check_value(value_field, item, item_path, out)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _check_value(field, item, f"{path}[{i}]", out)
        else:
            _check_value(field, value, path, out)


def request_violations(message: Message) -> list[FieldViolation]:
    """What in `message` breaks the rules every request obeys (at most twenty, in field order)."""
    out: list[FieldViolation] = []
    _check_message(message, "", out)
    return out


def check_request(message: object) -> None:
    """Raises InvalidArgument for a message that breaks the rules; lets bytes (pass-through) by."""
    if isinstance(message, Message):
        violations = request_violations(message)
        if violations:
            raise InvalidArgument(violations)


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        check_request(message)
        yield message


class RequestValidationInterceptor(grpc.aio.ServerInterceptor):
    """Checks each request message before the handler runs.

    It sits inside the error mapping (which turns InvalidArgument into a
    BadRequest) and inside authentication, so an unauthenticated caller learns
    nothing about the rules.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            # Not a parsed message (the gateway's byte pass-through): the receiving service checks it.
            return handler
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check_request(request)
                return await resolve_unary(inner_uu(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                check_request(request)
                async for item in iterate_result(inner_us(request, context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await resolve_unary(inner_su(_checked_stream(requests), context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in iterate_result(inner_ss(_checked_stream(requests), context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
