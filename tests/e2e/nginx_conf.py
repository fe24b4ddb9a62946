"""The nginx config the tests run: deploy/nginx/llamawool.conf, as shipped, on this machine's replicas.

The shipped file is a site config (compose mounts it into nginx's conf.d, inside
`http {}`). Tests must run that file, not a copy of its ideas, so a change to it
(a retry rule, a timeout, an upstream's balancing) is what the cluster tests
exercise. Only what differs between a compose network and a test's temporary
prefix is rewritten: the `server` lines between the upstream markers (one per
replica, each keeping its group's parameters) and the `listen` port. Around it
goes the least a main config needs to run unprivileged in a temporary prefix
(pid, logs, temp paths).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers import REPO

SHIPPED = REPO / "deploy" / "nginx" / "llamawool.conf"
BEGIN = "# ---- upstreams: begin ----"
END = "# ---- upstreams: end ----"

_UPSTREAM = re.compile(r"(upstream\s+[\w.-]+\s*\{)([^}]*)\}")
_SERVER = re.compile(r"^([ \t]*)server[ \t]+\S+?((?:[ \t]+[^;\s]+)*)[ \t]*;[ \t]*\n", re.M)
_LISTEN = re.compile(r"^([ \t]*)listen[ \t]+80[ \t]*;", re.M)


class ShippedConfigError(ValueError):
    """The shipped file no longer has the shape the tests rewrite (markers, servers, listen 80)."""


def _with_servers(block: re.Match[str], ports: list[int]) -> str:
    head, body = block.group(1), block.group(2)
    servers = list(_SERVER.finditer(body))
    if not servers:
        raise ShippedConfigError(f"{head!r} in {SHIPPED.name} lists no `server`")
    indent, params = servers[0].group(1), servers[0].group(2)
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in ports)
    body = body[: servers[0].start()] + lines + _SERVER.sub("", body[servers[0].start() :])
    return head + body + "}"


def site(ports: list[int], listen_port: int, shipped: str | None = None) -> str:
    """The shipped site config with its upstreams on these loopback ports, listening on `listen_port`."""
    text = SHIPPED.read_text() if shipped is None else shipped
    head, begin, rest = text.partition(BEGIN)
    region, end, tail = rest.partition(END)
    if not begin or not end:
        raise ShippedConfigError(f"{SHIPPED} lost its markers {BEGIN!r} ... {END!r}")
    region, groups = _UPSTREAM.subn(lambda m: _with_servers(m, ports), region)
    if not groups:
        raise ShippedConfigError(f"no upstream block between the markers of {SHIPPED}")
    tail, listens = _LISTEN.subn(rf"\1listen 127.0.0.1:{listen_port};", tail)
    if listens != 1:
        raise ShippedConfigError(f"{SHIPPED} should have one `listen 80;`, has {listens}")
    return head + begin + region + end + tail


def main_config(work: Path, site_text: str, worker_connections: int = 4096, http_extra: str = "") -> str:
    """A whole nginx.conf for a temporary prefix with the site inside `http {}`, as conf.d is.
    `http_extra` goes into `http {}` before the site (the shipped locations set no
    `add_header`, so a header added there reaches every answer)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would switch to nobody
    return f"""{user}worker_processes 1;
worker_rlimit_nofile {2 * worker_connections};
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  {http_extra}

# ---- {SHIPPED.relative_to(REPO)} ----
{site_text}
}}
"""
