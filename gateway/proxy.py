"""Pass-through of every service RPC, unchanged, with a signed principal.

Messages are forwarded as raw bytes (identity serializers), so the gateway
never parses a payload; each method's cardinality comes from the compiled
contracts. Only the principal token, the request id and the W3C trace
context are sent upstream: nothing else a caller sends is trusted. The
upstream's status and error details come back to the caller as they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor

from avgate.kernel.principal import TOKEN_METADATA_KEY, TokenSigner, current_principal
from avgate.kernel.telemetry import outgoing_trace_metadata
from gateway.upstreams import Upstream


class Proxy:
    def __init__(self, upstreams: list[Upstream], signer: TokenSigner, default_timeout_seconds: float):
        self._upstreams = upstreams
        self._signer = signer
        self._default_timeout = default_timeout_seconds

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

    def _handler(self, upstream: Upstream, method: str, descriptor: MethodDescriptor) -> grpc.RpcMethodHandler:
        def channel() -> grpc.aio.Channel:
            assert upstream.channel is not None, "upstream channels are created at start-up"
            return upstream.channel

        async def relay_error(exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
            await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))

        if not descriptor.client_streaming and not descriptor.server_streaming:

            async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> Any:
                timeout = context.time_remaining() or self._default_timeout
                call = channel().unary_unary(method)(
                    request, metadata=self._metadata(upstream, method), timeout=timeout
                )
                try:
                    return await call
                except grpc.aio.AioRpcError as exc:
                    await relay_error(exc, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        if descriptor.client_streaming and not descriptor.server_streaming:

            async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                call = channel().stream_unary(method)(
                    requests, metadata=self._metadata(upstream, method), timeout=context.time_remaining()
                )
                try:
                    return await call
                except grpc.aio.AioRpcError as exc:
                    await relay_error(exc, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        if not descriptor.client_streaming:

            async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call = channel().unary_stream(method)(
                    request, metadata=self._metadata(upstream, method), timeout=context.time_remaining()
                )
                try:
                    async for response in call:
                        yield response
                except grpc.aio.AioRpcError as exc:
                    await relay_error(exc, context)
                finally:
                    call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        async def stream_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            call = channel().stream_stream(method)(
                requests, metadata=self._metadata(upstream, method), timeout=context.time_remaining()
            )
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await relay_error(exc, context)
            finally:
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(stream_stream)
