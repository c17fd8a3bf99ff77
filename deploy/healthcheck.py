"""Container health probe: GET a URL of the web process; exit 0 on HTTP 200, 1 otherwise.

Docker runs it inside the container (the slim image has no curl). Django answers 400 to a Host
header it does not allow, and production settings rarely allow 127.0.0.1, so the request names
the first host in AEGIS_ALLOWED_HOSTS.

    python deploy/healthcheck.py http://127.0.0.1:8000/healthz
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000/healthz"
TIMEOUT_S = 5


def host_header(allowed_hosts: str) -> str | None:
    """A Host value Django accepts, from the comma-separated AEGIS_ALLOWED_HOSTS value."""
    for entry in allowed_hosts.split(","):
        host = entry.strip()
        if not host:
            continue
        if host == "*":
            return None  # any Host is allowed: keep the URL's own
        return host.lstrip(".")  # ".plant.example" also allows plant.example itself
    return None


def probe(url: str, allowed_hosts: str) -> tuple[bool, str]:
    if urlsplit(url).scheme not in ("http", "https"):
        return False, f"not an http(s) URL: {url!r}"
    # S310: the scheme is checked above, so no file: or custom-scheme URL gets opened.
    request = urllib.request.Request(url, method="GET")  # noqa: S310
    host = host_header(allowed_hosts)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        return False, f"{url}: {error}"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    healthy, detail = probe(url, os.environ.get("AEGIS_ALLOWED_HOSTS", ""))
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
