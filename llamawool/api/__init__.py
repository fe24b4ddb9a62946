"""aiohttp: app factory, routes per resource, the WebSocket session, middleware, OpenAPI."""

from .app import create_app, drain

__all__ = ["create_app", "drain"]
