"""Wrapping every RPC handler, whatever its cardinality, in an async scope.

An interceptor here supplies one `scope(method, context)` async context
manager; the same scope surrounds unary and streaming handlers alike, so the
error mapping, principal binding and observability each live in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc


async def resolve_unary(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result


async def iterate_result(result: Any) -> AsyncIterator[Any]:
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item


class ScopedInterceptor(grpc.aio.ServerInterceptor):
    """Base: runs each call of each handler inside `self.scope(method, context)`.

    grpc asks every interceptor for the handler on every call; the wrapped
    handler is built once per method and handler below it, then reused.
    """

    _wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]]

    def applies_to(self, method: str) -> bool:
        return True

    def scope(self, method: str, context: grpc.aio.ServicerContext) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        try:
            wrapped = self._wrapped
        except AttributeError:  # subclasses need not call a base __init__
            wrapped = self._wrapped = {}
        known = wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        # Only methods that have a handler get here, so the cache holds the server's methods and no more.
        outer = wrap_handler(handler, method, self.scope) if self.applies_to(method) else handler
        wrapped[method] = (handler, outer)
        return outer


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    method: str,
    scope: Callable[[str, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]],
) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(method, context):
                return await resolve_unary(inner_uu(request, context))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(method, context):
                return await resolve_unary(inner_su(request_iterator, context))

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with scope(method, context):
                async for item in iterate_result(inner_us(request, context)):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with scope(method, context):
            async for item in iterate_result(inner_ss(request_iterator, context)):
                yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
