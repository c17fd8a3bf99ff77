"""Request rates per user, per anonymous address and for the token endpoint, counted in Redis.

Rates come from the environment (AEGIS_API_THROTTLE_*, see README) and are read from the
settings on each request rather than once at import, so a changed setting applies at once.
"""

from __future__ import annotations

import re

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from aegis.settings.environment import SettingError

RATE_VARIABLES = {
    "user": "AEGIS_API_THROTTLE_USER",
    "anon": "AEGIS_API_THROTTLE_ANON",
    "token": "AEGIS_API_THROTTLE_TOKEN",
}
_RATE = re.compile(r"^[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)$")


def check_rates(rates: dict[str, str]) -> None:
    """Fail with the variable's name when a rate is malformed, not with a 500 on first use."""
    for scope, variable in RATE_VARIABLES.items():
        value = rates.get(scope)
        if not isinstance(value, str) or not _RATE.match(value):
            raise SettingError(
                variable, f"expected requests per period such as 600/min or 20/s, got {value!r}"
            )


check_rates(api_settings.DEFAULT_THROTTLE_RATES)


class _CurrentRates:
    def get_rate(self) -> str:
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]


class UserThrottle(_CurrentRates, UserRateThrottle):
    """Per signed-in user, whichever way they authenticated."""


class AnonymousThrottle(_CurrentRates, AnonRateThrottle):
    """Per client address for requests without a user."""


class TokenEndpointThrottle(_CurrentRates, SimpleRateThrottle):
    """POST /api/v1/auth/token per client address: password guessing gets slow."""

    scope = "token"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
