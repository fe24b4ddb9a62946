"""Security and robustness tests: the figures they measure are printed at the end of the run."""

from __future__ import annotations

from typing import Any

from .support import FUZZ_STATS, MATRIX, REPORT_LINES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MATRIX.cells:
        terminalreporter.write_line(MATRIX.summary())
    if FUZZ_STATS.cases:
        terminalreporter.write_line(FUZZ_STATS.summary())
    for line in REPORT_LINES:
        terminalreporter.write_line(line)
