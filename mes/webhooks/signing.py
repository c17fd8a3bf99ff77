"""Signatures of legacy-MES webhooks.

A sender signs `<timestamp>.<raw body>` with HMAC-SHA256 and its integration's secret and
sends `X-Aegis-Timestamp: <unix seconds>` and `X-Aegis-Signature: sha256=<hex>`. The timestamp
is inside the signed bytes, so a captured request cannot be given a fresh timestamp, and one more
than 5 minutes older or newer than the server's clock is refused: that is the replay window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

SIGNATURE_PREFIX = "sha256="
TOLERANCE_SECONDS = 300

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


class SignatureRefused(Exception):
    """The request is not proven to come from the integration now. `reason` is for the log;
    `detail` is what the caller is told (the same for an unknown sender and a bad signature)."""

    def __init__(self, reason: str, detail: str = "invalid signature") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def new_secret() -> str:
    """256 random bits as hex: easy to paste into a legacy system's config and into openssl."""
    return secrets.token_hex(32)


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-Aegis-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    message = f"{timestamp}.".encode() + body
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def parse_timestamp(header: str | None) -> int:
    if not header:
        raise SignatureRefused("missing timestamp", "missing X-Aegis-Timestamp header")
    if not _TIMESTAMP.match(header):
        raise SignatureRefused(
            "malformed timestamp", "X-Aegis-Timestamp must be unix seconds (digits only)"
        )
    return int(header)


def verify(
    *,
    accepted_secrets: Iterable[str],
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> int:
    """Which of `accepted_secrets` (by position) signed `body` at a timestamp within
    `tolerance_seconds` of `now`; SignatureRefused when none did, or the timestamp is stale.
    Both secrets of a rotation are tried, each compared in constant time.

    The signature is checked before the clock, so only a holder of the secret learns that its
    timestamp was stale (and can fix its clock); anyone else hears "invalid signature".
    """
    timestamp = parse_timestamp(timestamp_header)
    if not signature_header:
        raise SignatureRefused("missing signature", "missing X-Aegis-Signature header")
    match = _SIGNATURE.match(signature_header.strip())
    if match is None:
        raise SignatureRefused("malformed signature")
    presented = SIGNATURE_PREFIX + match.group(1).lower()
    # The exact header text is signed (not int(header)), as the sender computed it.
    matched = None
    for index, secret in enumerate(accepted_secrets):
        if secret and hmac.compare_digest(sign(secret, timestamp_header, body), presented):
            matched = index if matched is None else matched
    if matched is None:
        raise SignatureRefused("signature mismatch")
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureRefused(
            f"stale timestamp ({now - timestamp:+.0f} s)",
            f"stale timestamp: X-Aegis-Timestamp must be within {tolerance_seconds} s of now",
        )
    return matched
