"""Install the Debian packages a test needs (real drivers, docker-compose), once per machine.

`.ci/run` installs them before the suite; on a developer's machine the first test that needs
them installs them with apt-get: as root directly, otherwise with `sudo -n` (never a password
prompt in the middle of a test run). Several test sessions may start at once, so installs are
serialised by a file lock, and apt's own lock is waited for instead of failing on it.

A machine without apt-get, or a user who may not use sudo without a password, cannot install:
the test fails with the command that would install the packages: what it proves needs them,
so it is never skipped or silently passed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

LOCK_FILE = Path("/tmp/aegis-apt-install.lock")
APT_LOCK_TIMEOUT_S = 600


class CannotInstall(Exception):
    """This machine has no way to install Debian packages without a person."""


def installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "install ok installed"


def missing(packages: Iterable[str]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        return list(packages)
    return [package for package in packages if not installed(package)]


def _privileged() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is None:
        raise CannotInstall("not root and no sudo")
    # -n: fail rather than wait for a password nobody will type.
    if subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode != 0:
        raise CannotInstall("sudo asks for a password")
    return ["sudo", "-n", "--preserve-env=DEBIAN_FRONTEND"]


def _apt_get(*arguments: str) -> subprocess.CompletedProcess:
    command = [
        *_privileged(),
        "apt-get",
        "-q",
        "-y",
        "-o",
        f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}",
        *arguments,
    ]
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, check=False)


def apt_install(packages: Iterable[str]) -> list[str]:
    """Install whichever of `packages` are missing; returns the ones installed now."""
    packages = list(packages)
    if not missing(packages):
        return []
    if shutil.which("apt-get") is None:
        raise CannotInstall("no apt-get on this machine")
    # Read-only is enough for flock, and works on a lock file another user created (.ci/run).
    lock = os.open(LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing the same ones
        wanted = missing(packages)
        if not wanted:
            return []
        arguments = ("install", "--no-install-recommends", *wanted)
        result = _apt_get(*arguments)
        if result.returncode != 0:
            # Package lists may be stale or absent (fresh containers ship none).
            _apt_get("update")
            result = _apt_get(*arguments)
        if result.returncode != 0:
            raise RuntimeError(
                f"apt-get install {' '.join(wanted)} failed:\n{result.stderr[-3000:]}"
            )
        return wanted
    finally:
        os.close(lock)  # releases the lock


def require_packages(*packages: str) -> None:
    """Install `packages` if needed, or fail the calling test saying how to install them."""
    try:
        apt_install(packages)
    except CannotInstall as reason:
        pytest.fail(
            f"needs the Debian packages {', '.join(packages)} ({reason}): "
            f"run `sudo apt-get install {' '.join(packages)}` or .ci/run",
            pytrace=False,
        )
