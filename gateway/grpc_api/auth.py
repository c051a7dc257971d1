"""Authentication of gRPC calls: a server interceptor that refuses a call before its handler runs.

Every call but the health service's (orchestrators probe it without credentials) must carry one
``authorization: Bearer <token>`` metadata entry that :class:`gateway.auth.TokenAuthenticator` accepts.
Otherwise the call ends with ``UNAUTHENTICATED`` before the servicer sees a single request: no stream is
opened and no audio is read. Each refusal is counted in ``xlgate_auth_failures_total{protocol="grpc"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from grpc_health.v1 import health

from gateway.auth import AuthError, TokenAuthenticator
from gateway.metrics import Metrics

__all__ = ["AuthInterceptor"]

log = logging.getLogger("xlgate.grpc")

PROTOCOL: Final = "grpc"
METADATA_KEY: Final = "authorization"
_OPEN_SERVICES: Final = (f"/{health.SERVICE_NAME}/",)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through to its handler only with valid credentials (see the module docstring)."""

    def __init__(self, authenticator: TokenAuthenticator, metrics: Metrics) -> None:
        self.authenticator = authenticator
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The call's own handler when it is authenticated, else one that ends it with UNAUTHENTICATED."""
        method: str = handler_call_details.method
        if method.startswith(_OPEN_SERVICES):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        values = [str(value) for key, value in metadata if key == METADATA_KEY]
        try:
            principal = self.authenticator.authenticate(authorization=values)
        except AuthError as exc:
            self.metrics.auth_failures.labels(PROTOCOL, exc.reason.value).inc()
            log.info("call %s refused: %s credentials", method[:80], exc.reason.value)
            handler = await continuation(handler_call_details)
            return None if handler is None else _refusal(handler, exc)
        log.debug("call %s authenticated: %s", method[:80], principal)
        return await continuation(handler_call_details)


def _refusal(handler: grpc.RpcMethodHandler, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts at once, reading no request."""
    status = grpc.StatusCode[error.grpc_status]

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(status, str(error))

    shapes: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = shapes[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
