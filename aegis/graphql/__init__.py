"""GraphQL at `/graphql` (strawberry-django): the plant, work orders, units, telemetry, alerts,
models and OEE for apps and scripts, and a subscription to defect alerts over Channels.

`schema.schema` is the root schema; docs/graphql.md says how to use it and docs/schema.graphql
is its committed SDL.
"""
