"""How much one GraphQL document may ask for, checked before anything runs (docs/graphql.md).

- depth: at most MAX_DEPTH nested selections (strawberry's QueryDepthLimiter; introspection
  does not count);
- aliases: at most MAX_ALIASES (MaxAliasesLimiter), so one request cannot repeat a field a
  thousand times under different names;
- tokens: at most MAX_TOKENS in the document (MaxTokensLimiter, enforced by the parser);
- cost: the number of values the result could hold, at most MAX_COST (`QueryCostRule`). Each
  selected field costs 1 for every object it is selected on; a list multiplies what is selected
  under it by its size: the `limit` (or `pagination: {limit}`) asked for, the largest one allowed
  when it comes from a variable, the cap of a list with one, the size LIST_SIZES expects of a
  plant object's lists (a line's stations, a unit's visits), NOMINAL_LIST_SIZE otherwise.

Pages have hard caps besides: telemetry at most TELEMETRY_MAX_LIMIT readings, buckets at most
MAX_BUCKETS rows, other lists PAGE_MAX_LIMIT objects (strawberry-django's pagination cap).
"""

from __future__ import annotations

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    InlineFragmentNode,
    IntValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry_django.settings import strawberry_django_settings

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 5_000
MAX_COST = 250_000
NOMINAL_LIST_SIZE = 20

TELEMETRY_DEFAULT_LIMIT = 1_000
TELEMETRY_MAX_LIMIT = 10_000
MAX_BUCKETS = 10_000


def page_max_limit() -> int:
    """The most objects one page of a paginated list returns (strawberry-django's cap)."""
    return strawberry_django_settings()["PAGINATION_MAX_LIMIT"] or TELEMETRY_MAX_LIMIT


def page_default_limit() -> int:
    default = strawberry_django_settings()["PAGINATION_DEFAULT_LIMIT"] or page_max_limit()
    return min(default, page_max_limit())


# Lists with a hard cap of their own, by "Type.field".
CAPPED_LISTS = {"Query.telemetryBuckets": MAX_BUCKETS}
# What a plant's lists usually hold (a generous guess): the equipment tree is small.
LIST_SIZES = {
    "Query.plant": 2,
    "Site.areas": 5,
    "Area.lines": 5,
    "Line.stations": 20,
    "Station.signals": 10,
    "Query.stations": 200,
    "WorkOrder.units": 20,
    "Unit.visits": 10,
    "Unit.firmwareFlashes": 5,
    "Unit.firmware": 5,
    "Unit.qualityEvents": 5,
    "Unit.defectAlerts": 5,
    "TelemetryReading.firmware": 5,
    "TelemetryReading.signals": 10,
    "DefectAlert.firmware": 5,
    "DefectAlert.triggering": 10,
    "DefectAlert.explanation": 10,
}
# Fields whose `limit` sizes the first list below them, and the largest limit they accept.
LIMITED_FIELDS = {"Query.telemetry": TELEMETRY_MAX_LIMIT}


def _unwrap(graphql_type):
    while isinstance(graphql_type, GraphQLNonNull):
        graphql_type = graphql_type.of_type
    return graphql_type


def _is_list(graphql_type) -> bool:
    return isinstance(_unwrap(graphql_type), GraphQLList)


class QueryCostRule(ValidationRule):
    """Refuses an operation whose result could hold more than MAX_COST values."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args) -> None:
        schema = self.context.schema
        root = {
            OperationType.QUERY: schema.query_type,
            OperationType.MUTATION: schema.mutation_type,
            OperationType.SUBSCRIPTION: schema.subscription_type,
        }[node.operation]
        if root is None:
            return
        cost = self._cost(node.selection_set, root, pending=None, seen=frozenset())
        if cost > MAX_COST:
            self.report_error(
                GraphQLError(
                    f"This query could return about {cost:,} values; the limit is "
                    f"{MAX_COST:,}. Ask for smaller pages (limit) or fewer nested lists.",
                    [node],
                    extensions={"code": "QUERY_TOO_EXPENSIVE", "cost": cost, "limit": MAX_COST},
                )
            )

    def _cost(
        self,
        selection_set: SelectionSetNode | None,
        parent: GraphQLObjectType,
        *,
        pending: int | None,
        seen: frozenset[str],
    ) -> int:
        if selection_set is None:
            return 0
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field_cost(selection, parent, pending=pending, seen=seen)
            elif isinstance(selection, InlineFragmentNode):
                target = parent
                if selection.type_condition is not None:
                    target = self.context.schema.get_type(selection.type_condition.name.value)
                if isinstance(target, GraphQLObjectType):
                    total += self._cost(selection.selection_set, target, pending=pending, seen=seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.context.get_fragment(name)
                if fragment is None or name in seen:
                    continue  # unknown or cyclic fragments are other rules' errors
                target = self.context.schema.get_type(fragment.type_condition.name.value)
                if isinstance(target, GraphQLObjectType):
                    total += self._cost(
                        fragment.selection_set, target, pending=pending, seen=seen | {name}
                    )
        return total

    def _field_cost(
        self, node: FieldNode, parent: GraphQLObjectType, *, pending: int | None, seen
    ) -> int:
        name = node.name.value
        if name.startswith("__"):
            return 0  # introspection
        definition = parent.fields.get(name)
        if definition is None:
            return 0  # an unknown field is FieldsOnCorrectTypeRule's error
        key = f"{parent.name}.{name}"
        limit = self._limit(node, key, definition)
        child = get_named_type(definition.type)
        below = 0
        if isinstance(child, GraphQLObjectType):
            below = self._cost(
                node.selection_set,
                child,
                pending=limit if not _is_list(definition.type) else None,
                seen=seen,
            )
        if not _is_list(definition.type):
            return 1 + below
        size = limit or pending or CAPPED_LISTS.get(key) or LIST_SIZES.get(key, NOMINAL_LIST_SIZE)
        return size * (1 + below)

    def _limit(self, node: FieldNode, key: str, definition) -> int | None:
        """The page size a paginated field asks for (its `limit` or `pagination.limit`), its
        default when it asks for none, the largest allowed when a variable gives it."""
        if "pagination" in definition.args:
            name, largest, default = "pagination", page_max_limit(), page_default_limit()
        elif key in LIMITED_FIELDS:
            name, largest, default = "limit", LIMITED_FIELDS[key], TELEMETRY_DEFAULT_LIMIT
        else:
            return None
        value = next((a.value for a in node.arguments or () if a.name.value == name), None)
        if name == "pagination" and isinstance(value, ObjectValueNode):
            value = next((f.value for f in value.fields if f.name.value == "limit"), None)
        if value is None:
            return default
        if isinstance(value, IntValueNode):
            return max(0, min(int(value.value), largest))
        return largest  # a variable: the worst case


def extensions() -> list:
    """The schema extensions enforcing these limits (factories: one instance per request)."""
    return [
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: AddValidationRules([QueryCostRule]),
    ]
