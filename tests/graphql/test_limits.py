"""Depth, alias, token and cost limits refuse a document before anything runs."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from graphql import get_introspection_query

from aegis.graphql import limits
from tests.graphql.conftest import codes
from tests.graphql.plant import line_with_stations

pytestmark = pytest.mark.django_db


def refused(caller, document: str, **variables) -> dict:
    """The errors of a refused document; nothing but the session was read."""
    with CaptureQueriesContext(connection) as captured:
        body = caller.query(document, **variables)
    assert body["data"] is None, body
    tables = " ".join(query["sql"] for query in captured.captured_queries)
    for table in ("mes_", "telemetry_", "foresight_"):
        assert table not in tables
    return body


def test_a_query_deeper_than_the_limit_is_refused(signed_in):
    line_with_stations()
    caller = signed_in()
    # 11 nested selections: workOrders results units workOrder line area site areas lines
    # stations line
    deep = """{ workOrders(pagination: {limit: 1}) { results { units { workOrder { line { area {
        site { areas { lines { stations { line { code } } } } } } } } } } } }"""
    body = refused(caller, deep)
    assert "exceeds maximum operation depth of 10" in body["errors"][0]["message"]
    # the same path one level shorter is served
    assert "errors" not in caller.query(
        """{ workOrders(pagination: {limit: 1}) { results { units { workOrder { line { area {
        site { areas { lines { stations { code } } } } } } } } } } }"""
    )


def test_too_many_aliases_are_refused(signed_in):
    aliases = " ".join(f"s{n}: stations {{ code }}" for n in range(limits.MAX_ALIASES + 1))
    body = refused(signed_in(), f"{{ {aliases} }}")
    assert "aliases" in body["errors"][0]["message"].lower()


def test_a_document_of_too_many_tokens_is_refused(signed_in):
    fields = " ".join("code" for _ in range(limits.MAX_TOKENS))
    body = refused(signed_in(), f"{{ stations {{ {fields} }} }}")
    assert "token" in body["errors"][0]["message"].lower()


def test_an_expensive_query_is_refused_with_its_estimated_cost(signed_in):
    # 10,000 readings, each with its unit's visits and their stations' signals
    expensive = """{ telemetry(filter: {}, limit: 10000) { readings { ts unit {
        visits { station { signals { name } } } } } } }"""
    body = refused(signed_in(), expensive)
    [error] = body["errors"]
    assert codes(body) == ["QUERY_TOO_EXPENSIVE"]
    assert error["extensions"]["cost"] > limits.MAX_COST
    assert error["extensions"]["limit"] == limits.MAX_COST


def test_a_page_size_given_by_a_variable_is_costed_at_its_largest(signed_in):
    document = """query ($limit: Int) { telemetry(filter: {}, limit: $limit) { readings {
        ts unit { visits { station { code } } } } } }"""
    body = refused(signed_in(), document, limit=1)
    assert codes(body) == ["QUERY_TOO_EXPENSIVE"]


def test_the_largest_telemetry_page_of_plain_values_is_allowed(signed_in):
    document = """{ telemetry(filter: {signal: "torque"}, limit: 10000) { totalCount readings {
        ts seq vin serial value station { code } firmware { component version } } } }"""
    assert "errors" not in signed_in().query(document)


def test_fragments_are_costed_like_the_fields_they_spread(signed_in):
    document = """
    fragment Deep on Unit { visits { station { signals { name unit } } } }
    { telemetry(filter: {}, limit: 10000) { readings { unit { ...Deep } } } }"""
    assert codes(refused(signed_in(), document)) == ["QUERY_TOO_EXPENSIVE"]


def test_graphiqls_introspection_query_is_within_the_limits(signed_in):
    body = signed_in().query(get_introspection_query(descriptions=True))
    assert "errors" not in body
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


@pytest.mark.parametrize(
    ("document", "cost"),
    [
        # a list costs its size times (1 + what is selected on each item)
        ("{ stations { code } }", 200 * (1 + 1)),  # the nominal 200 stations
        ("{ telemetry(filter: {}, limit: 5) { readings { ts vin } } }", 1 + 5 * (1 + 2)),
        # the default page of 100 work orders, and the total count
        ("{ workOrders { totalCount results { externalId } } }", 1 + 1 + 100 * (1 + 1)),
    ],
)
def test_the_cost_of_simple_queries(document, cost):
    from graphql import parse, validate

    from aegis.graphql.schema import schema

    seen = {}

    class Recording(limits.QueryCostRule):
        def enter_operation_definition(self, node, *args):
            seen["cost"] = self._cost(
                node.selection_set, self.context.schema.query_type, pending=None, seen=frozenset()
            )

    assert validate(schema._schema, parse(document), [Recording]) == []
    assert seen["cost"] == cost


def test_a_page_of_work_orders_units_alerts_or_models_holds_at_most_100(signed_in):
    data = signed_in().data(
        """{ workOrders(pagination: {limit: 1000}) { pageInfo { limit } }
             units(pagination: {limit: 1000}) { pageInfo { limit } }
             alerts(pagination: {limit: 1000}) { pageInfo { limit } }
             models(pagination: {limit: 1000}) { pageInfo { limit } } }"""
    )
    assert {field: page["pageInfo"]["limit"] for field, page in data.items()} == dict.fromkeys(
        ("workOrders", "units", "alerts", "models"), limits.page_max_limit()
    )
    assert limits.page_max_limit() == 100
