"""Bearer tokens for machines: issued once, stored as a SHA-256 digest, expiring, revocable.

This module must not import DRF views: DRF loads it while building `APIView` itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from mes.audit import audit_record, snapshot
from mes.models import ApiToken, AuditAction

TOKEN_PREFIX = "aegis_"  # noqa: S105 - marks a secret as an Aegis token (for secret scanners)
DEFAULT_LIFETIME = dt.timedelta(days=30)
MAX_LIFETIME = dt.timedelta(days=90)
# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# The two writes below belong in mes/services.py (not this package's file); they live here
# until they move, and follow the same rules: one transaction, audited.


@transaction.atomic
def api_token_issue(*, user, name: str = "", lifetime: dt.timedelta | None = None):
    """A new token for `user`; returns (the token row, the secret). The secret is shown once."""
    lifetime = min(lifetime or DEFAULT_LIFETIME, MAX_LIFETIME)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=secret[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + 8],
        digest=token_digest(secret),
        expires_at=timezone.now() + lifetime,
    )
    audit_record(action=AuditAction.CREATE, instance=token)  # the digest is fingerprinted
    return token, secret


@transaction.atomic
def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token (idempotent: an already revoked token keeps its revocation time)."""
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        before = snapshot(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(action=AuditAction.UPDATE, instance=token, before=before)
    return token


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`. Without that header the next class (session) decides."""

    keyword = "bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the header as 'Authorization: Bearer <token>'."
            )
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        return self.authenticate_token(secret)

    def authenticate_token(self, secret: str):
        now = timezone.now()
        token = ApiToken.objects.select_related("user").filter(digest=token_digest(secret)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token was revoked.")
        if token.expires_at <= now:
            raise exceptions.AuthenticationFailed("This token has expired; request a new one.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes DRF answer unauthenticated requests with 401 and this challenge, not 403.
        return 'Bearer realm="api"'
