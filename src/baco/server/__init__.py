"""`baco serve`: an OpenAI-compatible HTTP server on the engine (see docs/serve.md).

    from baco.server import ServerConfig, create_app, run
    run(Collaboration.from_pretrained(), ServerConfig(api_key="secret"), host="127.0.0.1", port=8000)
"""

import sys

from baco.server.app import ServerConfig, create_app
from baco.server.schemas import Limits

LOOPBACK = ("127.0.0.1", "::1", "localhost")
STARTUP_FAILURE = 3  # uvicorn.run's exit status when the server could not start


def run(collab, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn, with the shutdown of `baco.server.shutdown`)."""
    from baco.server.shutdown import server

    served = server(create_app(collab, config), host=host, port=port, log_level=log_level)
    try:
        served.run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it caught again once it has shut down
        pass
    if not served.started:
        sys.exit(STARTUP_FAILURE)


__all__ = ["LOOPBACK", "Limits", "ServerConfig", "create_app", "run"]
