"""What the HTTP server serves besides MCP: ``/metrics`` (runtime/metrics.py) and the console
(runtime/console/), and the separate listener for ``/metrics`` alone (``metrics_address``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from runtime.console import Console
from runtime.tenants import tenant_of_key

if TYPE_CHECKING:
    from runtime.app import App


def web_routes(app: App, base_url: str = "") -> list[BaseRoute]:
    """``/metrics`` for the operator's key, the console, and the routes services serve
    themselves (a sandbox's exposed ports), which learn whose a bearer key is."""
    routes: list[BaseRoute] = [Route("/metrics", app.telemetry.metrics.endpoint()), *Console(app).routes()]
    for service in app.services.all():
        serves = getattr(service, "web_routes", None)
        if serves is not None:
            routes += serves(base_url, lambda key: tenant_of_key(app.store, key))
    return routes


def metrics_app(app: App) -> Starlette:
    """``/metrics`` without a key, for a listener on a private address only."""
    return Starlette(routes=[Route("/metrics", app.telemetry.metrics.endpoint(open_=True))])


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` too) as a host and a port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"metrics_address {address!r} is not host:port, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)
