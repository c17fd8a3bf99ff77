"""What every resolver knows about the caller: the user and the permissions they hold.

The permissions are read once per request (or once per websocket), so checking a field costs a
set lookup, in the HTTP view's thread as well as on the websocket's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strawberry.django.context import StrawberryDjangoContext


@dataclass
class AegisContext(StrawberryDjangoContext):
    user: Any = None
    permissions: frozenset[str] = frozenset()
    # The websocket consumer of a subscription (None over HTTP).
    ws: Any = None
    # Decided once: every field of a result asks (request.user is a lazy object, slow to ask).
    authenticated: bool = field(init=False)

    def __post_init__(self) -> None:
        user = self.user
        self.authenticated = bool(user is not None and user.is_authenticated and user.is_active)

    def allowed(self, permissions: tuple[str, ...]) -> bool:
        return self.authenticated and self.permissions.issuperset(permissions)


def permissions_of(user) -> frozenset[str]:
    """Every permission the user holds through their roles (all of them for a superuser)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    return frozenset(user.get_all_permissions())
