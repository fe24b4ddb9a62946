"""deploy/nginx/llamawool.conf is the config the cluster tests run, and nginx accepts it.

`nginx -t` checks the shipped file as the tests render it (its upstreams on
loopback ports, which nginx resolves; the compose names `app-1`/`app-2` resolve
only on the compose network). The rendering is checked to change nothing but
the `server` lines and the `listen` port, so the cluster, outage, rebalance and
blue-green tests exercise every other line as shipped.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e import nginx_conf
from tests.e2e.cluster import nginx_command, unavailable
from tests.helpers import free_port


def nginx_t(work: Path, text: str) -> subprocess.CompletedProcess[str]:
    exe = nginx_command()
    if exe is None:
        unavailable("nginx is not installed: `make test` installs it (apt-get install nginx-light)")
    assert exe is not None
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(text)
    return subprocess.run([exe, "-t", "-p", str(work), "-c", str(conf)], capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    site = nginx_conf.site([free_port(), free_port()], free_port())
    checked = nginx_t(tmp_path, nginx_conf.main_config(tmp_path, site))
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_nginx_refuses_a_broken_one(tmp_path: Path) -> None:
    """The check above can fail: the same file with one directive misspelt does not pass."""
    broken = nginx_conf.SHIPPED.read_text().replace("proxy_next_upstream_tries 3;", "proxy_next_upstream_tries three;")
    site = nginx_conf.site([free_port()], free_port(), shipped=broken)
    checked = nginx_t(tmp_path, nginx_conf.main_config(tmp_path, site))
    assert checked.returncode != 0
    assert "proxy_next_upstream_tries" in checked.stderr


def test_rendering_changes_only_the_servers_and_the_listen_port() -> None:
    shipped = nginx_conf.SHIPPED.read_text()
    rendered = nginx_conf.site([4101, 4102, 4103], 4200)
    diff = [
        line
        for line in difflib.unified_diff(shipped.splitlines(), rendered.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    removed = [line[1:].strip() for line in diff if line.startswith("-")]
    added = [line[1:].strip() for line in diff if line.startswith("+")]
    assert all(re.fullmatch(r"server app-\d+:3000( \S+)*;|listen 80;", line) for line in removed), removed
    assert all(re.fullmatch(r"server 127\.0\.0\.1:41\d\d( \S+)*;|listen 127\.0\.0\.1:4200;", line) for line in added)
    # each group keeps its parameters, one server line per replica
    for group in ("llamawool", "llamawool_ws"):
        block = rendered[rendered.index(f"upstream {group} {{") :].split("}", 1)[0]
        shipped_params = set(
            re.findall(
                r"server app-\d+:3000([^;]*);", shipped[shipped.index(f"upstream {group} {{") :].split("}", 1)[0]
            )
        )
        assert len(shipped_params) == 1
        assert re.findall(r"server 127\.0\.0\.1:(\d+)([^;]*);", block) == [
            (str(p), *shipped_params) for p in (4101, 4102, 4103)
        ]


def test_a_shipped_file_without_its_markers_is_refused() -> None:
    without = nginx_conf.SHIPPED.read_text().replace(nginx_conf.BEGIN, "")
    with pytest.raises(nginx_conf.ShippedConfigError, match="markers"):
        nginx_conf.site([4101], 4200, shipped=without)
