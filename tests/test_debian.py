"""The Debian package helper the driver tests install their drivers with."""

from __future__ import annotations

import shutil

import pytest

from tests import debian

pytestmark = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")


def test_installed_packages_are_not_missing_and_unknown_ones_are():
    assert debian.missing(["dpkg", "aegis-no-such-package"]) == ["aegis-no-such-package"]


def test_installing_what_is_there_runs_no_apt_get(monkeypatch):
    def no_apt(*arguments):
        raise AssertionError(f"apt-get {arguments} ran")

    monkeypatch.setattr(debian, "_apt_get", no_apt)
    assert debian.apt_install(["dpkg"]) == []


def test_without_root_or_sudo_the_test_fails_with_the_command_to_run(monkeypatch):
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    real_which = shutil.which
    monkeypatch.setattr(
        debian.shutil, "which", lambda name: None if name == "sudo" else real_which(name)
    )
    with pytest.raises(pytest.fail.Exception, match="sudo apt-get install aegis-no-such-package"):
        debian.require_packages("aegis-no-such-package")
