"""`POST /api/v1/webhooks/mes`: the legacy MES pushes shop-floor facts, signed.

Authenticated by the request's signature alone: no session, no cookie, so CSRF does not apply.
Every refusal happens before anything is written, in this order: size (413), signature and
clock (401), the integration account's permission (403), the body (400); then the event is
applied in one transaction (`events.receive_event`), whose refusals (409, 422) roll back too.
"""

from __future__ import annotations

import time

import structlog
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from mes.errors import MesError
from mes.models import WebhookIntegration
from mes.webhooks.events import parse_event, receive_event
from mes.webhooks.signing import TOLERANCE_SECONDS, SignatureRefused, new_secret, sign, verify

logger = structlog.get_logger(__name__)

MAX_BODY_BYTES = 256 * 1024
PERMISSION = "mes.post_mes_webhook"
REPLAY_HEADER = "X-Aegis-Idempotent-Replay"
SECRET_NAMES = ("current", "previous")  # the order `verify` is given them in
# Signed against for unknown or inactive integrations, so response time does not tell which
# integration names exist.
_DECOY_SECRET = new_secret()


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


def _authenticate(request: HttpRequest, body: bytes) -> tuple[WebhookIntegration, str]:
    """The integration that signed the request, and which of its secrets it used."""
    name = request.headers.get("X-Aegis-Integration", "").strip()
    if not name:
        raise SignatureRefused("missing integration", "missing X-Aegis-Integration header")
    integration = WebhookIntegration.objects.select_related("user").filter(name=name).first()
    timestamp = request.headers.get("X-Aegis-Timestamp")
    if integration is None or not integration.is_active:
        sign(_DECOY_SECRET, timestamp or "", body)
        raise SignatureRefused("unknown integration" if integration is None else "inactive")
    used = verify(
        accepted_secrets=(integration.secret, integration.previous_secret),
        timestamp_header=timestamp,
        signature_header=request.headers.get("X-Aegis-Signature"),
        body=body,
        now=time.time(),
        tolerance_seconds=getattr(settings, "WEBHOOK_TOLERANCE_SECONDS", TOLERANCE_SECONDS),
    )
    return integration, SECRET_NAMES[used]


@csrf_exempt
@require_POST
def mes_webhook(request: HttpRequest) -> JsonResponse:
    max_bytes = getattr(settings, "WEBHOOK_MAX_BODY_BYTES", MAX_BODY_BYTES)
    too_big = f"the body is limited to {max_bytes} bytes"
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_bytes:  # refused unread
        return _error(413, "too_large", too_big)
    body = request.body
    if len(body) > max_bytes:
        return _error(413, "too_large", too_big)

    log = logger.bind(integration=request.headers.get("X-Aegis-Integration", "")[:100])
    try:
        integration, secret_used = _authenticate(request, body)
    except SignatureRefused as refusal:
        log.warning("webhook_refused", status=401, reason=refusal.reason)
        return _error(401, "unauthorized", refusal.detail)
    # Shows when a sender has switched to a rotated secret (then `retire-previous`).
    log = log.bind(secret=secret_used)
    account = integration.user
    if not (account.is_active and account.has_perm(PERMISSION)):
        log.warning(
            "webhook_refused", status=403, reason=f"{account} is inactive or lacks {PERMISSION}"
        )
        return _error(
            403, "forbidden", f"the integration's account may not post webhooks ({PERMISSION})"
        )

    try:
        event = parse_event(body, event_id_header=request.headers.get("X-Aegis-Event-Id"))
    except MesError as error:
        log.info("webhook_refused", status=error.status, reason=error.detail)
        return JsonResponse(error.as_dict(), status=error.status)

    outcome = receive_event(integration=integration, event=event)
    log.info(
        "webhook_event",
        event_id=event.event_id,
        event_type=event.event_type,
        status=outcome.status,
        replayed=outcome.replayed,
    )
    response = JsonResponse(outcome.body, status=outcome.status)
    if outcome.replayed:
        response[REPLAY_HEADER] = "true"
    return response
