"""What a service refuses, in terms an API can answer with: each error knows its HTTP status."""

from __future__ import annotations


class MesError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "detail": self.detail}
        if self.fields:
            body["fields"] = self.fields
        return body


class InvalidInput(MesError):
    status = 400
    code = "invalid"


class UnknownReference(MesError):
    """The request names something the MES does not know (a station, a unit)."""

    status = 422
    code = "unknown_reference"


class TransitionRefused(MesError):
    """The object's current state does not allow this step (e.g. completing a planned order)."""

    status = 409
    code = "transition_refused"


class Conflict(MesError):
    """The change contradicts recorded facts (e.g. overlaps a visit already at that station)."""

    status = 409
    code = "conflict"
