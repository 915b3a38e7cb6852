"""Graceful shutdown that ends every request with an answer a client can read.

uvicorn's own graceful shutdown closes the listening socket, waits for the running requests and then
cancels them: a request cut off that way gets a plain 500 or a stream that just stops, and the app
hears of the shutdown only afterwards. `Server` lets the app drain first (`Drain`): new requests get a
503 error, the running ones the grace period to finish, and each still running then ends with a 503
error (a stream: a final error event, then `data: [DONE]`); then uvicorn's shutdown follows.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import uvicorn

GRACE = 5.0  # seconds the running requests get to finish
MESSAGE = "the server is shutting down; retry later"
POLL = 0.05  # seconds between looks at the running requests (uvicorn itself looks every 0.1 s)

log = logging.getLogger("uvicorn.error")  # where uvicorn tells of its own shutdown


class Drain:
    """The app's side of a shutdown: whether it has begun, and the requests still running (their streams)."""

    def __init__(self):
        self.closing = False
        self.running: set = set()  # JobStreams of requests that have not answered yet

    async def __call__(self, grace: float | None, hurry: Callable[[], bool] = lambda: False) -> None:
        """Refuse new requests from now on; wait up to `grace` seconds (None: for ever) for the running ones, or
        until `hurry()` (a second Ctrl-C); then end each that is left with the shutdown error."""
        self.closing = True
        if self.running:
            log.info("Refusing new requests; %d running get %s s to finish", len(self.running), grace)
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        while self.running and not hurry() and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(POLL)
        if self.running:
            log.warning("Ending %d requests still running with a 503", len(self.running))
        for stream in list(self.running):
            stream.shut(MESSAGE)


class Server(uvicorn.Server):
    """uvicorn's server, whose shutdown lets the app (create_app's, with its `drain`) drain before uvicorn's own:
    the listening socket stays open meanwhile, so that a new client gets the 503, not a refused connection."""

    async def shutdown(self, sockets=None) -> None:
        await self.config.app.drain(self.config.timeout_graceful_shutdown, lambda: self.force_exit)
        await super().shutdown(sockets)


def server(app, *, host: str, port: int, log_level: str, grace: float = GRACE) -> Server:
    return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace))
