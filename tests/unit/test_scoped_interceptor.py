"""ScopedInterceptor: every call runs in the scope, and the wrapped handler is built once per method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from avgate.kernel.grpc.wrapping import ScopedInterceptor


class Details:
    def __init__(self, method: str):
        self.method = method


class Counting(ScopedInterceptor):
    def __init__(self) -> None:
        self.scoped: list[str] = []

    def applies_to(self, method: str) -> bool:
        return not method.startswith("/open.")

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        self.scoped.append(method)
        yield


async def echo(request: Any, context: Any) -> Any:
    return request


HANDLER = grpc.unary_unary_rpc_method_handler(echo)


async def resolve(interceptor: ScopedInterceptor, method: str, handler: Any = HANDLER) -> Any:
    async def continuation(details: Any) -> Any:
        return handler

    return await interceptor.intercept_service(continuation, Details(method))  # type: ignore[arg-type]


async def test_the_wrapped_handler_is_reused_and_every_call_runs_in_the_scope() -> None:
    interceptor = Counting()
    first = await resolve(interceptor, "/a.S/M")
    second = await resolve(interceptor, "/a.S/M")
    assert first is second and first is not HANDLER
    assert [await first.unary_unary(n, None) for n in (1, 2)] == [1, 2]
    assert interceptor.scoped == ["/a.S/M", "/a.S/M"]


async def test_another_handler_below_is_wrapped_afresh() -> None:
    interceptor = Counting()
    first = await resolve(interceptor, "/a.S/M")
    other = grpc.unary_unary_rpc_method_handler(echo)
    second = await resolve(interceptor, "/a.S/M", other)
    assert second is not first
    assert await second.unary_unary(3, None) == 3
    assert interceptor.scoped == ["/a.S/M"]


async def test_methods_outside_its_scope_and_unknown_methods_pass_through() -> None:
    interceptor = Counting()
    assert await resolve(interceptor, "/open.S/M") is HANDLER
    assert await resolve(interceptor, "/a.S/Unknown", None) is None
