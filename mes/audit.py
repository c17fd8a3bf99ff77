"""The audit trail: who changed what, when, from where, with before and after.

Entry points (API views, admin, webhook, commands) declare the actor and source once with
`audit_context`; services call `audit_record` inside their transaction, so an entry exists
exactly when the change was committed.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.forms.models import model_to_dict
from django.utils.crypto import salted_hmac

from mes.models import AuditAction, AuditEntry


@dataclass(frozen=True)
class AuditActor:
    user: object | None
    source: str

    @property
    def name(self) -> str:
        if self.user is not None and getattr(self.user, "is_authenticated", False):
            return self.user.get_username()
        return self.source


SYSTEM = AuditActor(user=None, source="system")
_current: contextvars.ContextVar[AuditActor | None] = contextvars.ContextVar(
    "audit_actor", default=None
)


@contextmanager
def audit_context(*, user, source: str) -> Iterator[None]:
    token = _current.set(AuditActor(user=user, source=source))
    try:
        yield
    finally:
        _current.reset(token)


# Secrets never enter the append-only trail: a keyed fingerprint shows that a value changed
# without revealing it (an HMAC under SECRET_KEY cannot be brute-forced from the trail alone).
SECRET_FIELDS = frozenset({"digest", "secret", "previous_secret", "password"})
REDACTED_PREFIX = "redacted:"


def fingerprint(value: object) -> str:
    if not value:
        return ""
    digest = salted_hmac("mes.admin.audit-redaction", str(value)).hexdigest()
    return f"{REDACTED_PREFIX}{digest[:12]}"


def snapshot(instance: models.Model) -> dict:
    """The instance's field values as JSON-safe data, secrets fingerprinted."""
    data = model_to_dict(instance, fields=[field.name for field in instance._meta.concrete_fields])
    for field in SECRET_FIELDS & data.keys():
        data[field] = fingerprint(data[field])
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def audit_record(
    *,
    action: str,
    instance: models.Model,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEntry:
    actor = _current.get() or SYSTEM
    user = actor.user if getattr(actor.user, "is_authenticated", False) else None
    if after is None and action != AuditAction.DELETE:
        after = snapshot(instance)
    return AuditEntry.objects.create(
        actor=user,
        actor_name=actor.name,
        source=actor.source,
        action=action,
        model=instance._meta.label_lower,
        object_id=str(instance.pk),
        object_repr=str(instance)[:200],
        before=before,
        after=after,
        request_id=str(structlog.contextvars.get_contextvars().get("request_id", ""))[:64],
    )
