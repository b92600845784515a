"""Pass-through of every service RPC, unchanged, with a signed principal.

Messages are forwarded as raw bytes (identity serializers), so the gateway
never parses a payload; each method's cardinality comes from the compiled
contracts. Only the principal token, the request id and the W3C trace
context are sent upstream: nothing else a caller sends is trusted. The
upstream's status and error details come back to the caller as they were.
Between the two sit the method's limits, the upstream's guards and the
retries of gateway.guards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor

from avgate.kernel.principal import TOKEN_METADATA_KEY, TokenSigner, current_principal
from avgate.kernel.resilience import backoff_delays
from avgate.kernel.telemetry import outgoing_trace_metadata
from gateway.addresses import caller_key
from gateway.guards import (
    Guards,
    MethodLimitDefaults,
    MethodLimits,
    StreamTimedOut,
    UpstreamGuard,
    check_size,
    method_limits,
    sized_stream,
    timed_stream,
)
from gateway.upstreams import Upstream

# Transport failures: the upstream did not answer (down, unreachable, overloaded). Anything else is an answer.
TRANSPORT_FAILURES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


async def pump(call: Any, messages: AsyncIterator[bytes]) -> None:
    """Writes the caller's messages to the upstream call, then half-closes it; a failure cancels the call."""
    try:
        async for message in messages:
            await call.write(message)
        await call.done_writing()
    except BaseException:
        call.cancel()
        raise


class Proxy:
    def __init__(
        self,
        upstreams: list[Upstream],
        signer: TokenSigner,
        default_timeout_seconds: float,
        guards: Guards,
        limit_defaults: MethodLimitDefaults,
        limit_overrides: Mapping[str, Mapping[str, float]] | None = None,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._upstreams = upstreams
        self._signer = signer
        self._default_timeout = default_timeout_seconds
        self._guards = guards
        self._defaults = limit_defaults
        self._overrides = limit_overrides or {}
        self._max_attempts = max_attempts
        self._clock = clock

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        for upstream in self._upstreams:
            for service in upstream.descriptors:
                methods = {
                    m.name: self._handler(upstream, f"/{service.full_name}/{m.name}", m) for m in service.methods
                }
                handlers.append(grpc.method_handlers_generic_handler(service.full_name, methods))
        return handlers

    def _metadata(self, upstream: Upstream, method: str) -> list[tuple[str, str]]:
        principal = current_principal()
        token = self._signer.sign(principal, audience=upstream.name, method=method)
        return [(TOKEN_METADATA_KEY, token), ("x-request-id", principal.request_id), *outgoing_trace_metadata()]

    async def _unary(
        self,
        upstream: Upstream,
        guard: UpstreamGuard,
        method: str,
        limits: MethodLimits,
        request: bytes,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """One unary call, retried on UNAVAILABLE within the budget and the deadline when the method allows."""
        assert upstream.channel is not None, "upstream channels are created at start-up"
        remaining = context.time_remaining()
        deadline = self._clock() + (remaining if remaining is not None else self._default_timeout)
        delays = backoff_delays()
        attempt = 1
        with self._guards.budget.request():
            while True:
                self._guards.breaker_allows(guard)
                call = upstream.unary_unary(method)(
                    request, metadata=self._metadata(upstream, method), timeout=max(0.0, deadline - self._clock())
                )
                try:
                    answer = await call
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in TRANSPORT_FAILURES:
                        guard.breaker.record_failure()
                    else:
                        guard.breaker.record_success()  # it answered: the upstream is up
                    delay = next(delays)
                    retry = (
                        limits.retryable
                        and exc.code() is grpc.StatusCode.UNAVAILABLE
                        and attempt < self._max_attempts
                        and deadline - self._clock() > delay
                    )
                    if not retry:
                        raise
                    with self._guards.budget.retry() as granted:
                        if not granted:
                            raise
                        await asyncio.sleep(delay)
                        attempt += 1
                        continue
                except BaseException:
                    guard.breaker.record_abandoned()  # cancelled, or failed in here: no verdict on the upstream
                    raise
                guard.breaker.record_success()
                return answer

    def _handler(self, upstream: Upstream, method: str, descriptor: MethodDescriptor) -> grpc.RpcMethodHandler:
        limits = method_limits(descriptor, self._defaults, self._overrides)

        def channel() -> grpc.aio.Channel:
            assert upstream.channel is not None, "upstream channels are created at start-up"
            return upstream.channel

        async def relay_error(exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
            await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))

        async def timed_out(exc: StreamTimedOut, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: {exc}")

        def stream_timeout(context: grpc.aio.ServicerContext) -> float | None:
            remaining = context.time_remaining()
            if limits.max_seconds is None:
                return remaining
            return limits.max_seconds if remaining is None else min(remaining, limits.max_seconds)

        def settle(guard: UpstreamGuard, exc: grpc.aio.AioRpcError | None) -> None:
            if exc is not None and exc.code() in TRANSPORT_FAILURES:
                guard.breaker.record_failure()
            else:
                guard.breaker.record_success()

        if not descriptor.client_streaming and not descriptor.server_streaming:

            async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> Any:
                check_size(request, limits)
                with self._guards.admitted(upstream.name, caller_key(current_principal())) as guard:
                    try:
                        return await self._unary(upstream, guard, method, limits, request, context)
                    except grpc.aio.AioRpcError as exc:
                        await relay_error(exc, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        if descriptor.client_streaming and not descriptor.server_streaming:

            async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                with self._guards.admitted(upstream.name, caller_key(current_principal())) as guard:
                    self._guards.breaker_allows(guard)
                    started = self._clock()
                    call = channel().stream_unary(method)(
                        metadata=self._metadata(upstream, method), timeout=stream_timeout(context)
                    )
                    try:
                        # Written here, not handed to grpc as an iterator: a refused message or a timed-out
                        # stream must end this handler with its own status, not stall the upstream call.
                        await pump(call, timed_stream(sized_stream(requests, limits), limits, started, self._clock))
                        answer = await call
                    except grpc.aio.AioRpcError as exc:
                        settle(guard, exc)
                        await relay_error(exc, context)
                    except StreamTimedOut as exc:
                        guard.breaker.record_abandoned()
                        await timed_out(exc, context)
                    except BaseException:
                        guard.breaker.record_abandoned()
                        raise
                    finally:
                        call.cancel()
                    settle(guard, None)
                    return answer

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        if not descriptor.client_streaming:

            async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                check_size(request, limits)
                with self._guards.admitted(upstream.name, caller_key(current_principal())) as guard:
                    self._guards.breaker_allows(guard)
                    call = channel().unary_stream(method)(
                        request, metadata=self._metadata(upstream, method), timeout=stream_timeout(context)
                    )
                    try:
                        async for response in timed_stream(call, limits, self._clock(), self._clock):
                            yield response
                        settle(guard, None)
                    except grpc.aio.AioRpcError as exc:
                        settle(guard, exc)
                        await relay_error(exc, context)
                    except StreamTimedOut as exc:
                        guard.breaker.record_abandoned()
                        await timed_out(exc, context)
                    finally:
                        call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        async def stream_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            with self._guards.admitted(upstream.name, caller_key(current_principal())) as guard:
                self._guards.breaker_allows(guard)
                started = self._clock()
                call = channel().stream_stream(method)(
                    metadata=self._metadata(upstream, method), timeout=stream_timeout(context)
                )
                writer = asyncio.create_task(pump(call, sized_stream(requests, limits)))
                try:
                    async for response in timed_stream(call, limits, started, self._clock):
                        yield response
                    await writer  # a refused message surfaces here
                    settle(guard, None)
                except grpc.aio.AioRpcError as exc:
                    if writer.done() and writer.exception() is not None:
                        raise writer.exception() from None  # type: ignore[misc]
                    settle(guard, exc)
                    await relay_error(exc, context)
                except StreamTimedOut as exc:
                    guard.breaker.record_abandoned()
                    await timed_out(exc, context)
                finally:
                    writer.cancel()
                    call.cancel()

        return grpc.stream_stream_rpc_method_handler(stream_stream)
