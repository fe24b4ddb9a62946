"""The README documents every setting (a new one cannot slip in undocumented)."""

from __future__ import annotations

from llamawool.settings import Settings
from tests.helpers import REPO


def test_every_setting_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [name for name in Settings.model_fields if name.upper() not in readme]
    assert missing == []
