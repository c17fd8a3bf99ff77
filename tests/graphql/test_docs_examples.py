"""Every GraphQL example in docs/graphql.md is valid against the schema Aegis serves."""

from __future__ import annotations

import re

import pytest
from graphql import parse, specified_rules, validate

from aegis.graphql import limits
from aegis.graphql.schema import schema
from tests.support import REPO

EXAMPLES = re.findall(r"```graphql\n(.*?)```", (REPO / "docs" / "graphql.md").read_text(), re.S)


def test_the_guide_has_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.split("{")[0].strip() or "query")
def test_each_example_is_valid_and_within_the_limits(example):
    errors = validate(schema._schema, parse(example), [*specified_rules, limits.QueryCostRule])
    assert errors == []
