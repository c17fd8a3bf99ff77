"""psqlODBC as the tests and the measurement use it: registered in a private odbcinst.ini, and
the DSN-less connection string docs/reporting.md gives integrators."""

from __future__ import annotations

import os
from pathlib import Path


def register_psqlodbc(directory: Path) -> None:
    """Point unixODBC at an odbcinst.ini of our own in `directory`. Debian registers psqlODBC
    with CommLog=1, which leaves a /tmp/psqlodbc_*.log behind for every process that connects."""
    libraries = sorted(Path("/usr/lib").glob("*/odbc/psqlodbcw.so"))
    if not libraries:
        raise FileNotFoundError("no psqlodbcw.so: is odbc-postgresql installed?")
    (directory / "odbcinst.ini").write_text(
        f"[PostgreSQL Unicode]\nDriver={libraries[0]}\nCommLog=0\nDebug=0\n", encoding="utf-8"
    )
    os.environ["ODBCSYSINI"] = str(directory)


def connection_string(
    *, host: str, port: int, database: str, user: str, password: str, time_zone: str = "UTC"
) -> str:
    escaped = password.replace("}", "}}")  # inside braces, so ';' is safe too
    return (
        "Driver={PostgreSQL Unicode};"
        f"Server={host};Port={port};Database={database};Uid={user};Pwd={{{escaped}}};"
        f"BoolsAsChar=0;ConnSettings=SET TIME ZONE '{time_zone}'"
    )
