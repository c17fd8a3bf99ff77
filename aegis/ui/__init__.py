"""The supervisor UI: server-rendered pages over the MES and Foresight.

Each page is a thin view that checks its permission (`navigation.page`), asks selectors for
what it shows and renders a template; live updates come over the `/ws/events/` websocket
(static/aegis/live.js). Writes go through the REST API with the session and its CSRF token.
"""
