#!/usr/bin/env python3
"""Smoke test a running llamawool: the checks a release must pass before it takes traffic.

Standard library only, so it runs anywhere Python does (CI, an operator's
laptop, the blue-green script). Two surfaces:

  internal (default)  a Service reached by port-forward or from inside the
                      cluster: /health, /ready and /metrics as well
  --public            through the Ingress, where only /api, /static and / are routed

Each run creates one guest player whose device id starts with "smoke-".

    python deploy/scripts/smoke.py --url http://127.0.0.1:3000
    python deploy/scripts/smoke.py --url https://api-staging.llamawool.com --public
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

API = "/api/v1"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
REQUIRED_METRICS = ("http_requests_total", "websocket_connections_active", "llamawool_players_online")


class SmokeFailure(Exception):
    pass


class Smoke:
    def __init__(self, url: str, timeout: float, host: str | None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.host = host

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - operator-given URL
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.host:
            req.add_header("Host", self.host)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - operator-given URL
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SmokeFailure(f"{method} {path}: {exc}") from None

    def expect(self, method: str, path: str, statuses: tuple[int, ...] = (200,), **kw: Any) -> bytes:
        status, body = self.request(method, path, **kw)
        if status not in statuses:
            raise SmokeFailure(f"{method} {path}: HTTP {status}, expected {statuses}: {body[:300]!r}")
        return body

    def websocket_handshake(self, token: str) -> None:
        """Upgrade /api/v1/ws and check the accept key; proves the proxy path carries WebSockets."""
        parts = urllib.parse.urlsplit(self.url)
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname or "localhost", parts.port, timeout=self.timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Host": self.host or parts.netloc,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
            "Authorization": f"Bearer {token}",
        }
        try:
            conn.request("GET", parts.path.rstrip("/") + API + "/ws", headers=headers)
            resp = conn.getresponse()
            if resp.status != 101:
                raise SmokeFailure(f"GET {API}/ws: HTTP {resp.status}, expected 101 Switching Protocols")
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()  # noqa: S324 - RFC 6455
            if resp.getheader("Sec-WebSocket-Accept") != accept:
                raise SmokeFailure(f"GET {API}/ws: wrong Sec-WebSocket-Accept")
        except OSError as exc:
            raise SmokeFailure(f"GET {API}/ws: {exc}") from None
        finally:
            conn.close()


def run(url: str, public: bool = False, timeout: float = 10.0, host: str | None = None) -> list[str]:
    """Every check in order; raises SmokeFailure at the first that fails. Returns what passed."""
    s = Smoke(url, timeout, host)
    passed: list[str] = []
    if not public:
        health = json.loads(s.expect("GET", "/health"))
        if health.get("status") != "ok":
            raise SmokeFailure(f"/health: {health}")
        passed.append("/health ok")
        s.expect("GET", "/ready")
        passed.append("/ready ok")
    config = json.loads(s.expect("GET", API + "/config"))
    if not config.get("tiers"):
        raise SmokeFailure(f"{API}/config has no tiers")
    passed.append(f"{API}/config: {len(config['tiers'])} tiers")
    auth = json.loads(
        s.expect("POST", API + "/auth/guest", (200, 201), body={"device_id": f"smoke-{uuid.uuid4().hex}"})
    )
    token = auth["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    passed.append(f"{API}/auth/guest: player {auth['player']['id']}")
    farm = json.loads(s.expect("GET", API + "/farm", headers=bearer))
    acted = json.loads(
        s.expect(
            "POST",
            API + "/farm/shear",
            body={"count": 1},
            headers={**bearer, "Idempotency-Key": f"smoke-{uuid.uuid4().hex}"},
        )
    )
    if acted["farm"]["revision"] <= farm["revision"]:
        raise SmokeFailure(f"shear did not advance the farm's revision ({farm['revision']})")
    passed.append(f"{API}/farm/shear: revision {farm['revision']} -> {acted['farm']['revision']}")
    s.websocket_handshake(token)
    passed.append(f"{API}/ws: 101 Switching Protocols")
    if not public:
        text = s.expect("GET", "/metrics").decode()
        missing = [m for m in REQUIRED_METRICS if m not in text]
        if missing:
            raise SmokeFailure(f"/metrics lacks {missing}")
        passed.append("/metrics ok")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--public", action="store_true", help="only the paths the Ingress routes")
    parser.add_argument("--host", help="Host header to send (reach an Ingress by IP)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=0, help="retry the whole run this many times")
    parser.add_argument("--retry-delay", type=float, default=5.0, help="seconds between tries")
    args = parser.parse_args(argv)
    for attempt in range(args.retries + 1):
        try:
            for line in run(args.url, args.public, args.timeout, args.host):
                print(f"ok  {line}")
            print(f"smoke test passed: {args.url}")
            return 0
        except SmokeFailure as exc:
            print(f"FAIL {exc}", file=sys.stderr)
            if attempt < args.retries:
                time.sleep(args.retry_delay)
    return 1


if __name__ == "__main__":
    sys.exit(main())
