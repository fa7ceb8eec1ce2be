"""Plain ASGI middleware for HTTP requests (the guard, the security headers).

Starlette's ``BaseHTTPMiddleware`` runs every request's route in a task of its own behind memory
streams, a cost per request on the inference path; :class:`HttpMiddleware` wraps the application
directly and lets other scopes (lifespan) pass untouched.
"""
from __future__ import annotations


class HttpMiddleware:
    """ASGI middleware whose :meth:`handle` sees each HTTP request; other scopes go straight through."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        raise NotImplementedError
