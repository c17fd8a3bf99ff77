"""The GraphQL contract is committed (docs/schema.graphql) and must be the schema served."""

from __future__ import annotations

import difflib
import os

import pytest

from aegis.graphql.schema import schema
from tests.support import REPO

SDL = REPO / "docs" / "schema.graphql"
UPDATE = "AEGIS_UPDATE_SDL"


def test_the_committed_sdl_is_the_schema_the_server_answers_with():
    current = schema.as_str() + "\n"
    if os.environ.get(UPDATE) == "1":
        SDL.write_text(current)
    committed = SDL.read_text() if SDL.exists() else ""
    if committed != current:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                current.splitlines(keepends=True),
                "docs/schema.graphql (committed)",
                "the schema aegis/graphql serves",
            )
        )
        pytest.fail(
            "The GraphQL schema changed, docs/schema.graphql did not. Clients rely on it: "
            "check that the change is intended (removing or renaming a field breaks them), then "
            f"run `{UPDATE}=1 .venv/bin/pytest tests/graphql/test_schema_sdl.py` and commit "
            f"docs/schema.graphql with the change.\n\n{diff}",
            pytrace=False,
        )
