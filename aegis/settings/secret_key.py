from __future__ import annotations

import secrets
from pathlib import Path


def persistent_secret_key(data_dir: Path) -> str:
    """A key generated once per data directory, so sessions survive restarts of `make run`."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.touch(mode=0o600)
    path.write_text(key)
    return key
