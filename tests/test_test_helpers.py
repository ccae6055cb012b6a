"""The tests' own helpers that decide whether a test may skip."""

from __future__ import annotations

import pytest

from tests.helpers import require_or_skip


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_tool_fails_under_ci(ci, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="Chromium is missing, and CI=.* runs every test"):
        require_or_skip(False, "Chromium")
    require_or_skip(True, "Chromium")  # present: nothing happens


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_missing_tool_skips_outside_ci(ci, monkeypatch):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="Java is missing on this machine"):
        require_or_skip(False, "Java")
    require_or_skip(True, "Java")
