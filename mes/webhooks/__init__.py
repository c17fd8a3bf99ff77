"""The legacy-MES webhook: `POST /api/v1/webhooks/mes`, signed, fresh and idempotent.

`signing` checks who sent a request and when, `events` turns its body into one MES service
call inside the inbox transaction, `views` is the HTTP entry point. See docs/webhooks.md.
"""
