"""The curl and Python examples of docs/webhooks.md work as printed, against a real HTTP
server: whoever copies them gets the station state applied, not a 401."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from mes.models import FirmwareFlash, StationVisit
from mes.webhooks.events import EVENT_TYPES, parse_event
from mes.webhooks.signing import verify
from tests.factories import UnitFactory
from tests.mes.webhooks.conftest import SECRET, URL
from tests.support import REPO

DOCS = (REPO / "docs" / "webhooks.md").read_text()
DOCUMENTED_VIN = "1HGBH41J0MN010005"  # demo unit SEDAN-A-010005


def _block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS, flags=re.DOTALL)
    matching = [block for block in blocks if containing in block]
    assert len(matching) == 1, f"one {language} block with {containing!r} in docs/webhooks.md"
    return matching[0]


def _python_example() -> dict:
    namespace = {"__name__": "documented_example"}
    exec(compile(_block("python", "def signed_headers"), "docs/webhooks.md", "exec"), namespace)  # noqa: S102
    return namespace


def _documented_bodies() -> list[dict]:
    """Every JSON object in the ```json blocks that is a request (responses carry `result`)."""
    decoder, bodies = json.JSONDecoder(), []
    for block in re.findall(r"```json\n(.*?)```", DOCS, flags=re.DOTALL):
        position = 0
        while block[position:].strip():
            position += len(block[position:]) - len(block[position:].lstrip())
            value, position = decoder.raw_decode(block, position)
            if "result" not in value:
                bodies.append(value)
    return bodies


def test_every_documented_event_body_is_accepted_and_every_type_documented():
    bodies = _documented_bodies()

    events = [parse_event(json.dumps(body).encode()) for body in bodies]

    assert {event.event_type for event in events} == set(EVENT_TYPES)


@pytest.fixture
def documented_unit(plant):
    return UnitFactory(work_order=plant.work_order, serial="SEDAN-A-010005", vin=DOCUMENTED_VIN)


def test_python_example_signs_what_the_server_verifies():
    example = _python_example()
    body = json.dumps({"station_id": "5", "vin": DOCUMENTED_VIN}).encode()

    headers = example["signed_headers"](body, "legacy-mes", SECRET)

    verify(
        accepted_secrets=(SECRET,),
        timestamp_header=headers["X-Aegis-Timestamp"],
        signature_header=headers["X-Aegis-Signature"],
        body=body,
        now=int(headers["X-Aegis-Timestamp"]),
    )
    assert headers["X-Aegis-Integration"] == "legacy-mes"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_python_example_posts_an_event_over_http(live_server, integration, documented_unit):
    example = _python_example()
    example.update(AEGIS_URL=live_server.url + URL, INTEGRATION=integration.name, SECRET=SECRET)

    answer = example["post_event"](
        {
            "event_id": "legacy-0002",
            "type": "unit.arrived",
            "station_id": "6",
            "vin": DOCUMENTED_VIN,
        }
    )

    assert answer["result"]["station_id"] == "6"
    assert StationVisit.objects.get(unit=documented_unit).station.code == "6"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.urls("tests.mes.webhooks.urls")
def test_curl_example_applies_the_original_payload(live_server, integration, documented_unit):
    script = _block("sh", "openssl dgst")
    # The reader fills in these three lines; the test passes them in the environment.
    script = re.sub(r"^(AEGIS_URL|INTEGRATION|SECRET)=.*\n", "", script, flags=re.MULTILINE)
    environment = {
        **os.environ,
        "AEGIS_URL": live_server.url + URL,
        "INTEGRATION": integration.name,
        "SECRET": SECRET,
    }

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["event_id"] == "legacy-0001", answer
    assert answer["result"]["arrived"] is True
    assert StationVisit.objects.get(unit=documented_unit).station.code == "5"
    flash = FirmwareFlash.objects.get(unit=documented_unit)
    assert (flash.component, flash.version) == ("MAIN", "v2.1.4")
