"""GraphiQL in a real headless Chromium on a real daphne: a signed-in supervisor's browser
loads it from Aegis alone (no request leaves the server's origin), and runs the example query
with the session and the CSRF token."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.test import Client
from websockets.sync.client import connect

from aegis.embedded.servers import free_port
from tests.factories import UserFactory
from tests.graphql.plant import T0, alert, line_with_stations
from tests.support import daphne, http_get

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


class DevTools:
    """The Chrome DevTools protocol of one page, over its websocket."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"never true in the page: {expression}")


def _chromium(port: int, profile: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _page_socket_url(port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, body = http_get(f"http://127.0.0.1:{port}/json/list")
        except OSError:
            time.sleep(0.2)
            continue
        pages = [target for target in json.loads(body) if target["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
    raise AssertionError("chromium did not open its debugging port")


def test_a_supervisor_runs_a_query_in_graphiql_served_by_aegis_alone(tmp_path):
    _, (station,) = line_with_stations(1)
    raised = alert(station, ts=T0)
    client = Client()
    client.force_login(UserFactory(role="supervisor"))
    session = client.cookies["sessionid"].value
    port = free_port()
    with daphne() as base_url, tempfile.TemporaryDirectory() as profile:
        browser = _chromium(port, profile)
        try:
            with connect(_page_socket_url(port), max_size=2**26) as socket:
                page = DevTools(socket)
                page.call("Network.enable")
                page.call("Network.setCookie", name="sessionid", value=session, url=base_url)
                page.call("Page.navigate", url=f"{base_url}/graphql")
                page.wait_for("!!document.querySelector('.graphiql-execute-button')")
                page.evaluate("document.querySelector('.graphiql-execute-button').click()")
                result = page.wait_for(
                    "(document.querySelector('.graphiql-response') || {}).innerText"
                    " && document.querySelector('.graphiql-response').innerText"
                    ".includes('totalCount') && document.querySelector('.graphiql-response')"
                    ".innerText"
                )
                shot = page.call("Page.captureScreenshot", format="png")
                (tmp_path / "graphiql.png").write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.terminate()
            browser.wait(20)
    shown = result.replace("\xa0", " ")  # the result pane as displayed (its first lines)
    assert '"totalCount": 1' in shown
    assert f'"id": "{raised.pk}"' in shown
    requested = [
        event["params"]["request"]["url"]
        for event in page.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert any(url.endswith("/graphiql.min.js") for url in requested)
    outside = [url for url in requested if not url.startswith((base_url, "data:"))]
    assert outside == []
