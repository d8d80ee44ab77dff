"""The console at ``/console``: a tenant's spend and live resources, and the operator's view,
rendered on the server (see ``pages``). ``Console(app).routes()`` is what the HTTP server mounts."""

from runtime.console.pages import Console

__all__ = ["Console"]
