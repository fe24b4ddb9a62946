"""Databases as release 376f2b0 left them (tests/fixtures/schema_v1), on either store.

SQLite: a copy of the file that release wrote. MongoDB: the collections and
indexes that release wrote, loaded raw into a fresh database (not through our
store, whose `open` would migrate them).
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import json_util
from pymongo import AsyncMongoClient

from llamawool.store import MongoStore, SQLiteStore, Store
from llamawool.store.migrations import SchemaPolicy
from llamawool.store.migrations import mongo as mongo_schema
from tests.mongo_server import shared_server

FIXTURES = Path(__file__).parent.parent / "fixtures" / "schema_v1"
BACKENDS = ["sqlite", "mongo"]


@dataclass
class OldDatabase:
    """One database written by release 376f2b0, and how to reach it raw."""

    backend: str
    where: str  # the SQLite file, or the MongoDB database name
    uri: str = ""

    @property
    def export(self) -> Path:
        """That release's own backup of the same data: every record it held."""
        return FIXTURES / f"{self.backend}-export.jsonl.gz"

    def store(self, schema: SchemaPolicy = "apply") -> Store:
        if self.backend == "sqlite":
            return SQLiteStore(Path(self.where), schema=schema)
        return MongoStore(self.uri, database=self.where, timeout_s=5.0, schema=schema)

    async def raw_version(self) -> tuple[int, int | None]:
        """(version, min_code) as stored, read without our store."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.where) as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                has_meta = conn.execute("SELECT name FROM sqlite_master WHERE name = 'schema_meta'").fetchone()
                row = conn.execute("SELECT value FROM schema_meta").fetchone() if has_meta else None
            return version, row[0] if row else None
        async with _client(self.uri) as client:
            doc = await client[self.where][mongo_schema.COLLECTION].find_one({"_id": mongo_schema.DOC_ID})
        return (doc["version"], doc["min_code"]) if doc else (0, None)

    async def set_version(self, version: int, min_code: int) -> None:
        """What a newer release would leave behind."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.where, isolation_level=None)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            conn.execute("INSERT OR REPLACE INTO schema_meta VALUES ('min_code', ?)", (min_code,))
            conn.close()
            return
        async with _client(self.uri) as client:
            await client[self.where][mongo_schema.COLLECTION].update_one(
                {"_id": mongo_schema.DOC_ID}, {"$set": {"version": version, "min_code": min_code}}, upsert=True
            )

    async def mongo_docs(self, collection: str) -> list[dict[str, Any]]:
        async with _client(self.uri) as client:
            return [d async for d in client[self.where][collection].find().sort("_id", 1)]

    async def mongo_index_names(self, collection: str) -> set[str]:
        async with _client(self.uri) as client:
            return {spec["name"] async for spec in await client[self.where][collection].list_indexes()}


@asynccontextmanager
async def _client(uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=False)
    try:
        yield client
    finally:
        await client.close()


async def load_mongo_dump(uri: str, database: str) -> None:
    """mongo.jsonl (collections, their indexes and documents) into `database`, raw."""
    docs: dict[str, list[dict[str, Any]]] = {}
    async with _client(uri) as client:
        db = client[database]
        for line in (FIXTURES / "mongo.jsonl").read_text().splitlines():
            item = json_util.loads(line)
            if "index" in item:
                spec = {k: v for k, v in item["index"].items() if k != "v"}
                if spec["name"] != "_id_":
                    await db.command({"createIndexes": item["collection"], "indexes": [spec]})
            else:
                docs.setdefault(item["collection"], []).append(item["doc"])
        for name, batch in docs.items():
            await db[name].insert_many(batch)


@asynccontextmanager
async def old_database(backend: str, tmp_path: Path) -> AsyncIterator[OldDatabase]:
    if backend == "sqlite":
        path = tmp_path / "llamawool.sqlite3"
        shutil.copyfile(FIXTURES / "llamawool.sqlite3", path)
        yield OldDatabase("sqlite", str(path))
        return
    uri = shared_server().uri
    database = f"schema_{uuid.uuid4().hex[:12]}"
    await load_mongo_dump(uri, database)
    try:
        yield OldDatabase("mongo", database, uri)
    finally:
        await drop_database(uri, database)


async def drop_database(uri: str, database: str) -> None:
    async with _client(uri) as client:
        await client.drop_database(database)
