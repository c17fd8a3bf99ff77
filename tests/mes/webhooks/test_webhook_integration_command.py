"""`manage.py webhook_integration` creates, rotates, retires and deactivates integrations, shows
each secret once, and the documented rotation procedure never interrupts a sender."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from mes.models import AuditEntry, WebhookIntegration
from tests.factories import UserFactory
from tests.mes.webhooks.conftest import VIN

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.mes.webhooks.urls")]


def _run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("webhook_integration", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _secret(output: str) -> str:
    found = re.findall(r"^secret: ([0-9a-f]{64})$", output, flags=re.MULTILINE)
    assert len(found) == 1, output
    return found[0]


def test_create_prints_the_secret_once_and_keeps_it_out_of_the_audit_trail():
    UserFactory(username="integrator-1", role="integrator")

    out, err = _run("create", "legacy-mes", "--user", "integrator-1")

    secret = _secret(out)
    integration = WebhookIntegration.objects.get(name="legacy-mes")
    assert (integration.secret, integration.previous_secret) == (secret, "")
    assert integration.user.username == "integrator-1"
    assert integration.is_active
    assert err == ""
    entry = AuditEntry.objects.get(model="mes.webhookintegration")
    assert (entry.source, entry.action) == ("command", "create")
    assert entry.after["secret"].startswith("redacted:")
    assert secret not in json.dumps(entry.after)

    again, _ = _run("create", "legacy-mes", "--user", "integrator-1")
    assert "unchanged" in again
    assert secret not in again
    assert WebhookIntegration.objects.get().secret == secret


def test_create_refuses_unknown_user_other_user_and_bad_name():
    UserFactory(username="integrator-1", role="integrator")
    UserFactory(username="integrator-2", role="integrator")
    with pytest.raises(CommandError, match="no user 'ghost'"):
        _run("create", "legacy-mes", "--user", "ghost")
    with pytest.raises(CommandError, match="invalid name"):
        _run("create", "legacy mes!", "--user", "integrator-1")
    _run("create", "legacy-mes", "--user", "integrator-1")
    with pytest.raises(CommandError, match="exists with user 'integrator-1'"):
        _run("create", "legacy-mes", "--user", "integrator-2")


def test_create_warns_when_the_account_may_not_post():
    UserFactory(username="op", role="operator")

    _out, err = _run("create", "legacy-mes", "--user", "op")

    assert "lacks mes.post_mes_webhook" in err


def test_unknown_integration_is_an_error():
    with pytest.raises(CommandError, match="no webhook integration 'nope'"):
        _run("rotate", "nope")


def test_rotation_procedure_keeps_the_sender_working(send, plant, integrator):
    out, _ = _run("create", "line-mes", "--user", integrator.username)
    first = _secret(out)
    arrival = {"type": "unit.arrived", "station_id": "5", "vin": VIN}

    def status(event_id: str, secret: str) -> int:
        payload = {**arrival, "event_id": event_id}
        return send(payload, integration="line-mes", secret=secret).status_code

    assert status("e-1", first) == 201
    out, _ = _run("rotate", "line-mes")
    second = _secret(out)
    assert second != first
    assert status("e-2", first) == 201  # the sender has not switched yet
    assert status("e-3", second) == 201  # the sender has switched
    _run("retire-previous", "line-mes")
    assert status("e-4", first) == 401
    assert status("e-5", second) == 201
    again, _ = _run("retire-previous", "line-mes")
    assert "unchanged" in again

    _run("deactivate", "line-mes")
    assert status("e-6", second) == 401
    _run("activate", "line-mes")
    assert status("e-7", second) == 201

    actions = AuditEntry.objects.filter(model="mes.webhookintegration", source="command")
    assert actions.count() == 5  # create, rotate, retire-previous, deactivate, activate
    trail = json.dumps(list(actions.values("before", "after")))
    assert first not in trail
    assert second not in trail


def test_rotating_twice_drops_the_oldest_secret_with_a_warning(integration):
    oldest = integration.previous_secret
    current = integration.secret

    out, err = _run("rotate", integration.name)

    integration.refresh_from_db()
    assert "no longer accepted" in err
    assert integration.previous_secret == current
    assert oldest not in (integration.secret, integration.previous_secret)
    assert integration.secret == _secret(out)


def test_list_shows_integrations_without_secrets(send, plant, integration):
    send({"station_id": "5", "vin": VIN})

    out, _ = _run("list")

    header, row = out.splitlines()
    assert header.split()[:3] == ["name", "user", "active"]
    name, user, active, previous, events, last_event = row.split()
    assert [name, user, active, previous, events] == [
        "legacy-mes",
        "legacy-mes-account",
        "yes",
        "accepted",
        "1",
    ]
    assert last_event != "-"
    assert integration.secret not in out
    assert integration.previous_secret not in out
