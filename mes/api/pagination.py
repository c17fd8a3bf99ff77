"""Lists are pages of `limit` rows (default 50, at most 1000) from `offset`."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class LimitOffsetPages(LimitOffsetPagination):
    max_limit = 1000
