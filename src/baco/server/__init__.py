"""`baco serve`: an OpenAI-compatible HTTP server on the engine (see docs/serve.md).

    from baco.server import ServerConfig, create_app, run
    run(Collaboration.from_pretrained(), ServerConfig(api_key="secret"), host="127.0.0.1", port=8000)
"""

from baco.server.app import ServerConfig, create_app
from baco.server.schemas import Limits

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def run(collab, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(collab, config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["LOOPBACK", "Limits", "ServerConfig", "create_app", "run"]
