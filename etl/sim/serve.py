"""Serve a simulator on loopback with uvicorn, in a background thread (demo, process tests).

`python -m etl.sim.serve` is `etl sim`: all four simulators, kept running, and a config for them.
"""

from __future__ import annotations

import sys
import threading
import time

import uvicorn
from starlette.types import ASGIApp

KEEP_ALIVE = 75  # seconds


class SimServer:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0):
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # as a venue behind nginx (its default): idle connections live 75 s, not
            # uvicorn's 5 s, so a client polling every minute can keep its connection
            timeout_keep_alive=KEEP_ALIVE,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="sim-server")
        self.host = host

    def start(self, timeout: float = 10.0) -> SimServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("simulator server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


if __name__ == "__main__":
    from etl.cli import app

    app(["sim", *sys.argv[1:]])
