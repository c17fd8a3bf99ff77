"""Every error the API returns has one shape: {"code", "detail", "fields"?}.

A service's MesError keeps its own status and body; DRF's errors (validation, authentication,
permission, not found, throttling) are reshaped to match.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

from mes.errors import Conflict, MesError


def _constraint_conflict(error: IntegrityError) -> Conflict:
    """The database refused the change: a constraint a service did not translate itself."""
    constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)
    return Conflict(
        "refused by the database: it contradicts recorded facts",
        fields={"constraint": [constraint or "unknown"]},
    )


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, IntegrityError):
        exc = _constraint_conflict(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, MesError):
        set_rollback()
        return Response(exc.as_dict(), status=exc.status)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = {"code": "invalid", "detail": "Invalid input.", "fields": fields}
    else:
        code = exc.get_codes()
        response.data = {
            "code": code if isinstance(code, str) else exc.default_code,
            "detail": str(exc.detail),
        }
    return response
