"""Which pages exist, which permission opens each, and the check every page view makes.

The navigation in templates/base.html shows a link only when the user holds the page's
permission (the same table: tests/ui/test_navigation.py renders it for every role and compares
it with `links_for`). Every page view is wrapped in `page(...)`, so a link that is hidden is
also refused: signed out → the sign-in page, signed in without the permission → 403.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@dataclass(frozen=True)
class Page:
    label: str
    path: str
    permission: str | None  # None: staff only (the Django admin decides the rest)

    def allows(self, user) -> bool:
        if not user.is_authenticated:
            return False
        if self.permission is None:
            return user.is_staff
        return user.has_perm(self.permission)


PLANT = Page("Plant", "/", "mes.view_station")
ALERTS = Page("Alerts", "/alerts/", "foresight.view_defectalert")
WORK_ORDERS = Page("Work orders", "/work-orders/", "mes.view_workorder")
OEE = Page("OEE", "/oee/", "mes.view_oee")
MODELS = Page("Models", "/models/", "foresight.view_modelversion")
VIN_TRACE = Page("VIN trace", "/trace/", "mes.view_unit")
ADMINISTRATION = Page("Administration", "/admin/", None)

PAGES: tuple[Page, ...] = (PLANT, ALERTS, WORK_ORDERS, OEE, MODELS, VIN_TRACE, ADMINISTRATION)


def links_for(user) -> list[Page]:
    """The pages `user` may open, in navigation order."""
    return [page_ for page_ in PAGES if page_.allows(user)]


def forbidden(request: HttpRequest, permission: str) -> HttpResponse:
    """403 with the layout: who is signed in and what their role lacks."""
    return render(
        request, "home_forbidden.html", {"permission": permission, "path": request.path}, status=403
    )


def page(permission: str) -> Callable:
    """Decorator of a page view: sign-in first, then `permission` (403 without it)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not request.user.has_perm(permission):
                return forbidden(request, permission)
            return view(request, *args, **kwargs)

        checked.permission = permission
        return checked

    return decorate
