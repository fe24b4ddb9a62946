"""The cloud-save document and its signature.

A save is a server snapshot rendered for clients, signed with HMAC-SHA256
over its canonical JSON (sorted keys) with a server key. An upload sends the
claimed farm together with the revision and signature of the base save it was
played from: the signature proves the base is a genuine server save, so a
hand-edited download is recognised.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from ..game import FarmState, Rules
from ..store import Snapshot

SAVE_FORMAT = "llamawool-save"
SAVE_VERSION = 1


def save_content(rules: Rules, snap: Snapshot) -> dict[str, Any]:
    state = FarmState.from_doc(snap.doc, snap.revision)
    return {
        "format": SAVE_FORMAT,
        "version": SAVE_VERSION,
        "player_id": snap.player_id,
        "revision": snap.revision,
        "taken_at": snap.taken_at,
        "farm": {
            "balances": dict(zip(rules.tier_keys, state.balances, strict=True)),
            "buildings": {k: state.buildings.get(k, 0) for k in rules.buildings},
            "upgrades": list(state.upgrades),
            "soul_shears": state.soul_shears,
            "prestige_count": state.prestige_count,
        },
    }


def sign(key: bytes, content: dict[str, Any]) -> str:
    body = orjson.dumps({k: v for k, v in content.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signed_save(rules: Rules, key: bytes, snap: Snapshot) -> dict[str, Any]:
    content = save_content(rules, snap)
    content["farm_value"] = snap.farm_value
    content["signature"] = sign(key, save_content(rules, snap))
    return content


def verify(rules: Rules, key: bytes, snap: Snapshot, signature: str) -> bool:
    return hmac.compare_digest(sign(key, save_content(rules, snap)), signature)
