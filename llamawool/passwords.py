"""Which new passwords are refused (OWASP ASVS 5.0 6.2.1, 6.2.4, 6.2.5, 6.2.11).

Length is the only composition rule: at least `password_min_length` characters
(8 by default), at most MAX_LENGTH, any characters. When the blocklist is on
(by default in staging and production), a password is also refused when it is
one of the most common passwords (those of zxcvbn's ranked list of 30,000 that
are long enough to pass the length rule: 11,611 at 8 characters), compared
without regard to case, or when it is the account's own username or email.
The password is checked as sent: never trimmed, truncated or case-folded
before hashing.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

MAX_LENGTH = 256


@functools.cache
def common_passwords(min_length: int) -> frozenset[str]:
    """The ranked list's entries a user could choose under the length rule, lowercased.

    Read from zxcvbn's data file without importing the package, which would build
    every one of its dictionaries (about 14 MiB) when only this list is needed."""
    spec = importlib.util.find_spec("zxcvbn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("zxcvbn is not installed: its common-password list is needed")
    source = (Path(next(iter(spec.submodule_search_locations))) / "frequency_lists.py").read_text()
    # FREQUENCY_LISTS = {"passwords": "123456,password,...".split(","), ...}: take the string, run nothing
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "passwords":
                    strings = [
                        n.value for n in ast.walk(value) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    ]
                    words = max(strings, key=len)  # (the other string is split's ",")
                    return frozenset(w.lower() for w in words.split(",") if len(w) >= min_length)
    raise RuntimeError("zxcvbn's frequency_lists.py has no passwords list")


def password_problem(
    password: str, *, min_length: int, blocklist: bool, username: str | None = None, email: str | None = None
) -> str | None:
    """Why this new password is refused, or None."""
    if len(password) < min_length:
        return f"must be at least {min_length} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if blocklist:
        folded = password.lower()
        if folded in common_passwords(min_length):
            return "is one of the most common passwords; choose another"
        if folded in {(username or "").lower(), (email or "").lower()}:
            return "must not be the account's username or email"
    return None
