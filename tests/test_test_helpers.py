"""The tests' own helpers that decide whether a test may skip."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import require_or_skip, require_ray


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


def test_a_missing_ray_fails_the_ray_tests_under_ci_and_skips_them_elsewhere(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed: find_spec("ray") is None
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"Ray \(pip install 'clipadapt\[ray\]'\) is missing, and CI="):
        require_ray()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Ray .* is missing on this machine"):
        require_ray()
