"""Chaos tests: each scenario's one-line JSON summary is printed at the end of the run."""

from __future__ import annotations

from typing import Any

from .test_chaos import SUMMARIES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in SUMMARIES:
        terminalreporter.write_line(line)
