"""A real Prometheus and Alertmanager (Debian's packages) watching a running cluster.

Two replicas on SecantusDB + Redis behind nginx (tests/e2e/cluster.py); Prometheus
runs deploy/prometheus/prometheus.yml (targets templated) with the shipped rules,
Alertmanager runs deploy/alertmanager/alertmanager.yml with its webhooks sent to a
receiver this test serves. Timings are cut to seconds (tests/prometheus_server.py);
expressions, labels, routes and the inhibit rule are as shipped.

- the prometheus-adapter query behind the HPA's players metric returns each pod's value;
- one replica killed: LlamawoolReplicaDown fires for that pod and reaches the warning
  webhook, LlamawoolDown stays silent;
- both killed: LlamawoolDown fires, reaches the critical webhook, and inhibits the
  per-replica warnings;
- both restarted: the alerts resolve, and the webhook hears it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.e2e.cluster import Cluster
from tests.helpers import REPO
from tests.prometheus_server import (
    AlertmanagerServer,
    PrometheusServer,
    alertmanager_config,
    prometheus_config,
    rules_with_short_for,
)

pytestmark = pytest.mark.slow

API = "/api/v1"
NAMESPACE = "llamawool-development"  # what compose's scrape job labels its targets with
PLAYERS = 3


class Webhook:
    """The receiver Alertmanager's webhooks post to: every notification, by receiver name."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{receiver}", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}"

    async def receive(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["receiver"], await request.json()))
        return web.Response(status=200)

    def alerts(self, receiver: str, name: str, status: str, since: float) -> list[dict[str, Any]]:
        """Notifications about alerts that started at `since` (wall clock) or later: a freshly
        started Prometheus evaluates LlamawoolDown before its first scrape, and that early
        alert's messages must not stand in for the ones this test provokes."""
        return [
            a
            for r, body in self.received
            if r == receiver
            for a in body["alerts"]
            if a["labels"]["alertname"] == name and a["status"] == status and started(a) >= int(since)
        ]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def started(alert: dict[str, Any]) -> float:
    """An Alertmanager alert's startsAt (RFC 3339, nanoseconds) to the whole second."""
    return datetime.strptime(alert["startsAt"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Poll `check` every 0.25 s until it holds; fail after `within` seconds. Returns the time taken."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if await check():
            return time.monotonic() - t0
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {within}s: {what}")


async def get_json(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as r:
        assert r.status == 200, f"{url}: {r.status} {await r.text()}"
        return await r.json()


def adapter_query(pods: list[str]) -> str:
    """The players metric's query as prometheus-adapter renders it for the HPA (pods of one namespace)."""
    values = yaml.safe_load((REPO / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    [rule] = [r for r in values["rules"]["custom"] if r["name"]["as"] == "llamawool_players_online"]
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    query: str = rule["metricsQuery"]
    for placeholder, value in {
        "Series": "llamawool_players_online",
        "LabelMatchers": matchers,
        "GroupBy": "pod",
    }.items():
        query = query.replace(f"<<.{placeholder}>>", value)
    assert "<<" not in query, query
    return query


async def replica_players_online(s: aiohttp.ClientSession, url: str) -> float:
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("llamawool_players_online "))


async def test_prometheus_and_alertmanager_on_a_running_cluster(tmp_path: Path) -> None:
    # Replicas listen on every loopback address, so that each is scraped at its own
    # (127.0.0.2, 127.0.0.3): the shipped relabelling names the pod after the host.
    cluster = Cluster(tmp_path, replicas=2, env={"LLAMAWOOL_HOST": "0.0.0.0"})  # noqa: S104 - loopback use only
    webhook = Webhook()
    alertmanager = AlertmanagerServer(tmp_path / "alertmanager", alertmanager_config(await webhook.start()))
    prometheus = None
    try:
        await asyncio.gather(asyncio.to_thread(cluster.start), asyncio.to_thread(alertmanager.start))
        pods = [f"127.0.0.{i + 2}" for i in range(len(cluster.replicas))]
        targets = [f"{pod}:{r.port}" for pod, r in zip(pods, cluster.replicas, strict=True)]
        prometheus = PrometheusServer(tmp_path / "prometheus")
        rules_dir = prometheus.work / "rules"
        rules_dir.mkdir(parents=True)
        (rules_dir / "llamawool.rules.yml").write_text(yaml.safe_dump(rules_with_short_for(2)))
        prometheus.config = prometheus_config(targets, alertmanager.address, prometheus.address, rules_dir)
        await asyncio.to_thread(prometheus.start)
        prom = prometheus.url + "/api/v1"

        async with aiohttp.ClientSession() as s:

            async def query(expr: str) -> list[dict[str, Any]]:
                body = await get_json(s, prom + "/query", query=expr)
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            async def alerts(state: str = "firing") -> list[dict[str, Any]]:
                body = await get_json(s, prom + "/alerts")
                return [a for a in body["data"]["alerts"] if a["state"] == state]

            async def firing(name: str) -> list[dict[str, Any]]:
                return [a for a in await alerts() if a["labels"]["alertname"] == name]

            async def availability_alerts() -> set[str]:
                """Pending or firing LlamawoolDown / LlamawoolReplicaDown (on a loaded machine the
                latency alerts, with `for` cut to seconds, may come and go: not this test's subject)."""
                names = {a["labels"]["alertname"] for a in await alerts() + await alerts("pending")}
                return names & {"LlamawoolDown", "LlamawoolReplicaDown"}

            async def up_everywhere() -> bool:
                up = await query(f'up{{namespace="{NAMESPACE}", job="llamawool"}}')
                return sorted(r["metric"]["pod"] for r in up if r["value"][1] == "1") == pods

            # ---- the HPA's players metric, as prometheus-adapter asks for it ----
            sockets = []
            for i in range(PLAYERS):
                async with s.post(cluster.url + API + "/auth/guest", json={"device_id": f"monitoring-{i}"}) as r:
                    token = (await r.json())["access_token"]
                replica = cluster.replicas[i % len(cluster.replicas)]
                ws_url = replica.url.replace("http", "ws") + API + f"/ws?token={token}"
                sockets.append(await s.ws_connect(ws_url))
            await until("Prometheus scrapes both replicas", up_everywhere, 20)
            per_pod: dict[str, float] = {}

            async def adapter_agrees() -> bool:
                nonlocal per_pod
                own = [await replica_players_online(s, r.url) for r in cluster.replicas]
                per_pod = {r["metric"]["pod"]: float(r["value"][1]) for r in await query(adapter_query(pods))}
                return sum(own) == PLAYERS and per_pod == dict(zip(pods, own, strict=True))

            await until(f"the adapter's query returns each pod's players online ({per_pod})", adapter_agrees, 20)
            print(f"prometheus-adapter query {adapter_query(pods)!r} -> {per_pod}")
            for ws in sockets:
                await ws.close()

            async def all_clear() -> bool:
                return not await availability_alerts()

            # Before its first scrape Prometheus sees no target: LlamawoolDown may be pending
            # (or, with `for` cut to 2 s, fire) at start; with every replica up it must clear.
            await until("no availability alert while every replica serves", all_clear, 15)

            # ---- one replica down: a warning for that pod, no page ----
            killed_at = time.time()
            await asyncio.to_thread(cluster.replicas[0].kill)

            async def replica_down_fires() -> bool:
                return [a["labels"]["pod"] for a in await firing("LlamawoolReplicaDown")] == [pods[0]]

            took = await until("LlamawoolReplicaDown fires for the killed replica", replica_down_fires, 20)
            assert await firing("LlamawoolDown") == []

            async def warning_delivered() -> bool:
                return bool(webhook.alerts("llamawool-warning", "LlamawoolReplicaDown", "firing", killed_at))

            await until("LlamawoolReplicaDown reaches the warning webhook", warning_delivered, 15)
            print(f"one replica killed: LlamawoolReplicaDown firing after {took:.1f}s, delivered")

            # ---- every replica down: LlamawoolDown pages and inhibits the per-replica warnings ----
            await asyncio.to_thread(cluster.replicas[1].kill)
            took = await until("LlamawoolDown fires", lambda: _nonempty(firing("LlamawoolDown")), 20)
            assert [a["labels"]["namespace"] for a in await firing("LlamawoolDown")] == [NAMESPACE]

            async def page_delivered() -> bool:
                return bool(webhook.alerts("llamawool-critical", "LlamawoolDown", "firing", killed_at))

            await until("LlamawoolDown reaches the critical webhook", page_delivered, 15)

            async def replica_warnings_inhibited() -> bool:
                body = await get_json(s, alertmanager.url + "/api/v2/alerts", filter='alertname="LlamawoolReplicaDown"')
                return len(body) == len(pods) and all(a["status"]["inhibitedBy"] for a in body)

            await until("LlamawoolDown inhibits every LlamawoolReplicaDown", replica_warnings_inhibited, 15)
            print(f"every replica killed: LlamawoolDown firing after {took:.1f}s, paged, replica warnings inhibited")

            # ---- restarted: everything resolves ----
            await asyncio.gather(*(asyncio.to_thread(r.start, 30) for r in cluster.replicas))

            took = await until("LlamawoolDown and LlamawoolReplicaDown resolve", all_clear, 20)

            async def resolved_delivered() -> bool:
                return bool(webhook.alerts("llamawool-critical", "LlamawoolDown", "resolved", killed_at))

            await until("the critical webhook hears LlamawoolDown resolved", resolved_delivered, 15)
            print(f"replicas restarted: alerts resolved after {took:.1f}s, resolution delivered")
            assert not webhook.alerts("llamawool-critical", "LlamawoolReplicaDown", "firing", 0)
    finally:
        if prometheus is not None:
            prometheus.stop()
        alertmanager.stop()
        await webhook.stop()
        cluster.stop()


async def _nonempty(found: Awaitable[list[dict[str, Any]]]) -> bool:
    return bool(await found)
