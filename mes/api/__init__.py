"""The REST API of the MES under /api/v1/: reads with filters, writes as operations.

See docs/api.md for authentication, roles, pagination, filters and errors.
"""
