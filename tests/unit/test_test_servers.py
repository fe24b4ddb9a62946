"""The helpers that point the suites at their servers: the test MongoDB URI, the local
base image's mirror and cache key, the pip settings mounted into the image build.

A mistake here would not fail loudly: a suite would quietly run on the wrong server or
a stale base, so each rule is pinned down on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import containers, image_base, mongo_server


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/game_1"),
        ("mongodb://127.0.0.1:27017/?replicaSet=rs0", "mongodb://127.0.0.1:27017/game_1?replicaSet=rs0"),
        ("mongodb://u:p@a:1,b:2/old?directConnection=true", "mongodb://u:p@a:1,b:2/game_1?directConnection=true"),
    ],
)
def test_a_database_goes_into_the_path_and_keeps_the_options(uri: str, expected: str) -> None:
    assert mongo_server.with_database(uri, "game_1") == expected


def test_a_cluster_takes_its_own_database_on_the_test_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(mongo_server.TEST_URI_VARIABLE, "mongodb://db:27017/?replicaSet=rs0")
    first, second = mongo_server.cluster_mongo(tmp_path), mongo_server.cluster_mongo(tmp_path)
    assert isinstance(first, mongo_server.ExternalMongo) and isinstance(second, mongo_server.ExternalMongo)
    assert first.uri.startswith("mongodb://db:27017/cluster_") and first.uri.endswith("?replicaSet=rs0")
    assert first.uri != second.uri
    monkeypatch.delenv(mongo_server.TEST_URI_VARIABLE)
    assert isinstance(mongo_server.cluster_mongo(tmp_path), mongo_server.SecantusServer)


def test_the_mirror_is_read_from_either_sources_format(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert image_base.debian_mirror(tmp_path) == image_base.DEFAULT_MIRROR
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert image_base.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert image_base.debian_mirror(tmp_path) == "http://old.example/debian"


def test_the_base_is_rebuilt_when_its_recipe_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = image_base.base_tag("http://a.example/debian")
    assert tag == image_base.base_tag("http://a.example/debian")
    assert tag != image_base.base_tag("http://b.example/debian")
    monkeypatch.setattr(image_base, "DEBOOTSTRAP_ARGS", (*image_base.DEBOOTSTRAP_ARGS, "--include=curl"))
    assert tag != image_base.base_tag("http://a.example/debian")


def test_the_build_mounts_every_local_path_pip_names(tmp_path: Path) -> None:
    (tmp_path / "index" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "ca.pem").write_text("")
    settings = {
        "extra-index-url": f"https://pypi.example/simple file://{tmp_path}/index/simple",
        "find-links": f"{tmp_path}/wheels {tmp_path}/missing",
        "cert": f"{tmp_path}/ca.pem",
    }
    # a local index links to files beside simple/: its parent is mounted
    assert containers.local_paths(settings) == [tmp_path / "index", tmp_path / "wheels", tmp_path / "ca.pem"]
