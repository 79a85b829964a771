"""Synchronous API client used by the CLI (stdlib only, so the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from meshnet.errors import UserError


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (stdlib)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()  # not ours to leave to the GC (close() only sees self.sock)
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, url: str, body: Any = None) -> Any:
        conn = UnixConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(
                f"no agent is listening on {self.path} (start one with 'meshnet agent', "
                "or pick another with --api / MESHNET_API)"
            ) from None
        except PermissionError:
            raise UserError(f"permission denied on {self.path}: the API is for root only") from None
        except (OSError, http.client.HTTPException) as exc:
            raise UserError(f"agent at {self.path} did not answer: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise UserError(f"agent at {self.path} sent a response that is not JSON") from None
        if resp.status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            raise UserError(msg or f"agent answered HTTP {resp.status}")
        return data

    def get(self, url: str) -> Any:
        return self.request("GET", url)

    def post(self, url: str, body: Any) -> Any:
        return self.request("POST", url, body)

    def delete(self, url: str) -> Any:
        return self.request("DELETE", url)
