"""`manage.py webhook_integration`: the legacy MES integrations allowed to post webhooks.

Secrets are printed once, when created or rotated, and never again (not by `list`, not in the
audit trail). Each change is recorded in the audit trail with source "command".
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Count, Max

from mes.audit import audit_context, audit_record, snapshot
from mes.models import AuditAction, WebhookIntegration, code_validator
from mes.webhooks.signing import new_secret
from mes.webhooks.views import PERMISSION


def _described(integration: WebhookIntegration) -> dict:
    """The audit trail's view of an integration (snapshot fingerprints its secrets)."""
    return snapshot(integration)


def _locked(name: str) -> WebhookIntegration:
    integration = (
        WebhookIntegration.objects.select_for_update().select_related("user").filter(name=name)
    ).first()
    if integration is None:
        raise CommandError(f"no webhook integration {name!r} (see `webhook_integration list`)")
    return integration


def _save(integration: WebhookIntegration, before: dict, fields: list[str]) -> None:
    integration.save(update_fields=fields)
    audit_record(
        action=AuditAction.UPDATE,
        instance=integration,
        before=before,
        after=_described(integration),
    )


class Command(BaseCommand):
    help = (
        "Manage legacy-MES webhook integrations (POST /api/v1/webhooks/mes). "
        "`create NAME --user USERNAME` makes one whose writes are recorded under that machine "
        "account (it needs the mes.post_mes_webhook permission, e.g. the integrator group) and "
        "prints its secret once. `rotate NAME` makes a new secret and keeps the current one as "
        "the previous secret, so both are accepted while the sender switches; `retire-previous "
        "NAME` then stops accepting the old one. `deactivate NAME` refuses all its requests "
        "(401) until `activate NAME`. `list` shows integrations without secrets. Running a step "
        "again changes nothing, except `rotate`, which makes another new secret. "
        "See docs/webhooks.md."
    )

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser("create", help="create an integration and print its secret")
        create.add_argument("name", help="integration name (the X-Aegis-Integration header)")
        create.add_argument(
            "--user", required=True, help="username of the machine account its writes run as"
        )
        for action, text in (
            ("rotate", "new secret (printed once); the current one stays valid as previous"),
            ("retire-previous", "stop accepting the previous secret"),
            ("deactivate", "refuse every request of the integration"),
            ("activate", "accept the integration's requests again"),
        ):
            actions.add_parser(action, help=text).add_argument("name")
        actions.add_parser("list", help="integrations, accounts and last event (no secrets)")

    def handle(self, *args, action: str, **options):
        with audit_context(user=None, source="command"):
            if action == "create":
                self.create(options["name"], options["user"])
            elif action == "rotate":
                self.rotate(options["name"])
            elif action == "retire-previous":
                self.retire_previous(options["name"])
            elif action in ("deactivate", "activate"):
                self.set_active(options["name"], active=action == "activate")
            else:
                self.list()

    @transaction.atomic
    def create(self, name: str, username: str) -> None:
        try:
            code_validator(name)
        except ValidationError as error:
            raise CommandError(f"invalid name {name!r}: {error.messages[0]}") from None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}: create the machine account first")
        existing = WebhookIntegration.objects.select_related("user").filter(name=name).first()
        if existing is not None:
            if existing.user_id != user.pk:
                raise CommandError(
                    f"integration {name!r} exists with user {existing.user.get_username()!r}"
                )
            self.stdout.write(
                f"integration {name!r} exists already; unchanged (its secret is not shown "
                f"again: `webhook_integration rotate {name}` makes a new one)"
            )
            return
        integration = WebhookIntegration.objects.create(name=name, user=user, secret=new_secret())
        audit_record(action=AuditAction.CREATE, instance=integration, after=_described(integration))
        self.stdout.write(f"integration {name!r} created; its writes run as {username!r}")
        self._warn_if_unauthorised(user)
        self._print_secret(integration.secret)

    @transaction.atomic
    def rotate(self, name: str) -> None:
        integration = _locked(name)
        before = _described(integration)
        if integration.previous_secret:
            self.stderr.write(
                self.style.WARNING(
                    "the previous secret (from the rotation before) is no longer accepted"
                )
            )
        integration.previous_secret = integration.secret
        integration.secret = new_secret()
        _save(integration, before, ["secret", "previous_secret"])
        self.stdout.write(
            f"integration {name!r}: new secret; the old one is still accepted until "
            f"`webhook_integration retire-previous {name}`"
        )
        self._print_secret(integration.secret)

    @transaction.atomic
    def retire_previous(self, name: str) -> None:
        integration = _locked(name)
        if not integration.previous_secret:
            self.stdout.write(f"integration {name!r} has no previous secret; unchanged")
            return
        before = _described(integration)
        integration.previous_secret = ""
        _save(integration, before, ["previous_secret"])
        self.stdout.write(f"integration {name!r}: only the current secret is accepted now")

    @transaction.atomic
    def set_active(self, name: str, *, active: bool) -> None:
        integration = _locked(name)
        state = "active" if active else "inactive"
        if integration.is_active == active:
            self.stdout.write(f"integration {name!r} is {state} already; unchanged")
            return
        before = _described(integration)
        integration.is_active = active
        _save(integration, before, ["is_active"])
        self.stdout.write(f"integration {name!r} is {state} now")
        if active:
            self._warn_if_unauthorised(integration.user)

    def list(self) -> None:
        integrations = WebhookIntegration.objects.select_related("user").annotate(
            received=Count("events"), last_event=Max("events__received_at")
        )
        rows = [("name", "user", "active", "previous secret", "events", "last event")]
        for integration in integrations:
            rows.append(
                (
                    integration.name,
                    integration.user.get_username(),
                    "yes" if integration.is_active else "no",
                    "accepted" if integration.previous_secret else "-",
                    str(integration.received),
                    integration.last_event.isoformat(timespec="seconds")
                    if integration.last_event
                    else "-",
                )
            )
        if len(rows) == 1:
            self.stdout.write("no webhook integrations")
            return
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )

    def _print_secret(self, secret: str) -> None:
        self.stdout.write(f"secret: {secret}")
        self.stdout.write("  (shown only now: put it in the sender's configuration)")

    def _warn_if_unauthorised(self, user) -> None:
        if not user.is_active or not user.has_perm(PERMISSION):
            self.stderr.write(
                self.style.WARNING(
                    f"user {user.get_username()!r} is inactive or lacks {PERMISSION}: its "
                    "requests will be refused (403) until it is active and in the integrator "
                    "group"
                )
            )
