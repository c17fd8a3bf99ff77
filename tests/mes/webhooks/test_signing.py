"""The signature covers the exact timestamp text and body bytes, accepts either secret of a
rotation, and refuses anything else, including a stale timestamp."""

from __future__ import annotations

import pytest

from mes.webhooks.signing import SignatureRefused, new_secret, sign, verify

NOW = 1_777_274_567
BODY = b'{"station_id": "5", "vin": "1HGBH41J1MN100005", "firmware": "v2.1.4"}'


def _verify(signature: str, *, timestamp: str = str(NOW), body: bytes = BODY, now=NOW, **kw):
    return verify(
        accepted_secrets=kw.get("accepted", ("current", "previous")),
        timestamp_header=timestamp,
        signature_header=signature,
        body=body,
        now=now,
    )


def test_signature_matches_openssl_hmac():
    # printf '%s.%s' 1714234567 '{"station_id": "5"}' | openssl dgst -sha256 -hmac s3cret
    assert sign("s3cret", 1714234567, b'{"station_id": "5"}') == (
        "sha256=f3b0723ad6d48718dfdac7f2fe8862ec711dfe2c932d880603cbd913b0bc2fd3"
    )


@pytest.mark.parametrize(("secret", "position"), [("current", 0), ("previous", 1)])
def test_either_secret_of_a_rotation_verifies_and_is_told_apart(secret, position):
    assert _verify(sign(secret, NOW, BODY)) == position


def test_upper_case_hex_verifies():
    _verify("sha256=" + sign("current", NOW, BODY).removeprefix("sha256=").upper())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": BODY.replace(b"v2.1.4", b"v2.1.5")}, "signature mismatch"),
        ({"timestamp": str(NOW + 1), "now": NOW + 1}, "signature mismatch"),
        ({"timestamp": f"0{NOW}"}, "signature mismatch"),  # the header text is what is signed
        ({"accepted": ("other",)}, "signature mismatch"),
        ({"now": NOW + 301}, "stale timestamp"),
        ({"now": NOW - 301}, "stale timestamp"),
        ({"timestamp": None}, "missing timestamp"),
        ({"timestamp": "1.5"}, "malformed timestamp"),
    ],
)
def test_anything_else_is_refused(change, reason):
    with pytest.raises(SignatureRefused, match=reason):
        _verify(sign("current", NOW, BODY), **change)


def test_an_empty_previous_secret_never_verifies():
    """No previous secret is stored as "": a signature keyed with "" must not pass."""
    with pytest.raises(SignatureRefused, match="signature mismatch"):
        _verify(sign("", NOW, BODY), accepted=("current", ""))


@pytest.mark.parametrize("header", [None, "", "sha256=abc", "sha1=" + "0" * 40, "0" * 64])
def test_missing_or_malformed_signature_is_refused(header):
    with pytest.raises(SignatureRefused):
        _verify(header)


def test_five_minutes_either_way_is_fresh():
    signature = sign("current", NOW, BODY)
    _verify(signature, now=NOW + 300)
    _verify(signature, now=NOW - 300)


def test_stale_timestamp_is_told_only_to_a_holder_of_the_secret():
    with pytest.raises(SignatureRefused) as refused:
        _verify(sign("stranger", NOW, BODY), now=NOW + 3600)
    assert refused.value.detail == "invalid signature"
    with pytest.raises(SignatureRefused) as refused:
        _verify(sign("current", NOW, BODY), now=NOW + 3600)
    assert refused.value.detail.startswith("stale timestamp")


def test_new_secrets_are_random_hex():
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(len(secret) == 64 and int(secret, 16) >= 0 for secret in secrets)
