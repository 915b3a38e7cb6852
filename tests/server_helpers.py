"""A live `baco serve` app on 127.0.0.1 (a free port), run by uvicorn in a thread, for the server tests."""

import socket
import threading
import time

from baco.server import create_app
from baco.server.shutdown import GRACE, server


class LiveServer:
    """`baco serve`'s app and server; `grace`: the seconds its shutdown gives the running requests."""

    def __init__(self, collab, config, *, grace: float = GRACE):
        self.app = create_app(collab, config)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = server(self.app, host="127.0.0.1", port=self.port, log_level="warning", grace=grace)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker(self):
        return self.app.app.state.worker

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def shut_down(self) -> None:
        """Begin the shutdown, as SIGTERM or Ctrl-C do (uvicorn's signal handler sets the same flag)."""
        self.server.should_exit = True

    def __exit__(self, *exc):
        self.shut_down()
        self.thread.join(timeout=30)


def wait_for(condition, timeout: float = 30.0) -> bool:
    """Poll until `condition()` holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
