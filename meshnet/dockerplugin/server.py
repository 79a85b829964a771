"""The plugin front: dockerd's HTTP calls -> :class:`~meshnet.dockerplugin.driver.Driver`.

Served on ``docker-plugin-socket`` (default ``/run/docker/plugins/meshnet.sock``, where
dockerd looks for a plugin named ``meshnet``), or on the socket systemd passes
(``meshnet-plugin.socket``: ``LISTEN_FDS``, so the socket exists before dockerd starts and
dockerd's calls queue until the agent accepts them). Started with the other fronts as soon
as the tables are loaded, before the cluster join: dockerd never waits for meshnet's
cluster to answer the handshake; calls that need the data plane wait for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from meshnet.api.http import HttpServer, Request, Response, Router
from meshnet.dockerplugin.driver import DockerHost, Driver
from meshnet.dockerplugin.names import DockerNames
from meshnet.dockerplugin.protocol import METHODS
from meshnet.dockerplugin.state import StateFile
from meshnet.runtime.docker import DockerClient

log = logging.getLogger("meshnet.docker")
SD_LISTEN_FDS_START = 3


def listen_fd_socket(path: str, env: dict[str, str] | None = None) -> socket.socket | None:
    """The unix socket systemd passed for ``path`` (LISTEN_PID/LISTEN_FDS), if any."""
    env = os.environ if env is None else env
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return None
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            s = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        if s.family == socket.AF_UNIX and s.getsockname() == path:
            return s
        s.close()
    return None


class PluginServer:
    def __init__(self, host: DockerHost, path: str, state_dir: str,
                 docker_socket: str | None = None) -> None:
        self.path = path
        self.driver = Driver(host, StateFile(Path(state_dir) / "docker.json"))
        self.names = (DockerNames(self.driver, DockerClient(docker_socket))
                      if docker_socket else None)
        router = Router()
        for method in METHODS:
            router.add("POST", "/" + method, self._handler(method))
        self._http = HttpServer(router, idle_timeout=None, error_key="Err")

    def _handler(self, method: str):
        async def handle(request: Request) -> Response:
            t0 = time.monotonic()
            status, answer = await self.driver.handle(method, request.body)
            log.debug("plugin %s: %d in %.1f ms", method, status, (time.monotonic() - t0) * 1e3)
            return Response(status, json.dumps(answer).encode(),
                            content_type="application/vnd.docker.plugins.v1.2+json")
        return handle

    async def start(self) -> None:
        if self.names is not None:
            self.names.start()
        sock = listen_fd_socket(self.path)
        if sock is not None:
            await self._http.start_sock(sock)
            log.info("docker plugin on %s (from systemd)", self.path)
            return
        await self._http.start_unix(self.path)
        os.chmod(self.path, 0o660)  # dockerd runs as root; nobody else needs it
        log.info("docker plugin listening on %s", self.path)

    async def stop(self) -> None:
        if self.names is not None:
            await self.names.stop()
        await self.driver.close()
        await self._http.stop()
