"""Strict readers for settings taken from environment variables.

A malformed value stops the process at import with a message naming the variable, instead of
turning into a silent default (`AEGIS_DEBUG=yes please` is an error, not False).
"""

from __future__ import annotations

import os
from urllib.parse import SplitResult, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingError(ImproperlyConfigured):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.variable = name


def raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def required(name: str, why: str) -> str:
    value = raw(name)
    if value is None:
        raise SettingError(name, f"is required ({why})")
    return value


def string(name: str, default: str) -> str:
    return raw(name) or default


def boolean(name: str, default: bool) -> bool:
    value = raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise SettingError(name, f"expected true/false, got {value!r}")


def integer(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(name, f"expected a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise SettingError(name, f"must be at most {maximum}, got {number}")
    return number


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (raw(name) or default).lower()
    if value not in choices:
        raise SettingError(name, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def string_list(name: str, default: list[str]) -> list[str]:
    value = raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def service_url(name: str, schemes: tuple[str, ...], value: str | None = None) -> SplitResult:
    """Parse a server URL; it must use one of `schemes` and name a host with a valid port."""
    value = value if value is not None else raw(name)
    if value is None:
        raise SettingError(name, "is not set")
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise SettingError(
            name, f"malformed URL: scheme must be one of {', '.join(schemes)}, got {value!r}"
        )
    if not parts.hostname:
        raise SettingError(name, "malformed URL: no host")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as error:
        raise SettingError(name, f"malformed URL: {error}") from None
    return parts


def database(name: str) -> dict:
    """Django DATABASES entry from a postgresql:// URL (PostgreSQL is the only engine)."""
    import environ

    parts = service_url(name, ("postgres", "postgresql", "postgis"))
    if not parts.path.strip("/"):
        raise SettingError(name, "malformed URL: no database name in the path")
    config = environ.Env.db_url_config(parts.geturl())
    config["ENGINE"] = "django.db.backends.postgresql"
    return config
