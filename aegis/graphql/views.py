"""`/graphql` over HTTP: strawberry's Django view behind Aegis's two ways of signing in.

- Scripts send `Authorization: Bearer <token>` (the REST API's tokens, mes/api/authentication.py);
  a bad, expired or revoked token is answered 401 before anything runs. Tokens are not sent by
  browsers on their own, so these requests need no CSRF token.
- Browsers use their session; a POST must carry the CSRF token (X-CSRFToken), as for the REST
  API. GET runs queries only (strawberry refuses mutations over GET).
- Without either the answer is 401 with a GraphQL error, and a browser asking for the GraphiQL
  page is sent to the sign-in page: the IDE and the schema are for signed-in users only.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.template import engines
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed
from strawberry.django.views import GraphQLView

from aegis.graphql.context import AegisContext, permissions_of
from aegis.graphql.permissions import FORBIDDEN, UNAUTHENTICATED
from aegis.graphql.schema import schema
from mes.api.authentication import BearerTokenAuthentication

IDE_DIR = Path(__file__).resolve().parent / "ide"
# The vendored GraphiQL files (ide/vendor/README.md): URL name → (file, content type).
GRAPHIQL_ASSETS = {
    "graphiql-3.8.3/graphiql.min.js": "text/javascript",
    "graphiql-3.8.3/graphiql.min.css": "text/css",
    "react-18.2.0/react.production.min.js": "text/javascript",
    "react-dom-18.2.0/react-dom.production.min.js": "text/javascript",
}
ONE_YEAR = 365 * 24 * 3600
EXAMPLE_QUERY = """# Aegis GraphQL: press Ctrl-Enter to run, Ctrl-Space to complete; the Docs
# button lists every field. docs/graphql.md has more examples.
query OpenAlerts {
  alerts(filter: {status: [OPEN]}, pagination: {limit: 10}) {
    totalCount
    results {
      id
      ts
      station { code name }
      vin
      score
      threshold
      triggerTorqueNm
      firmware { component version }
    }
  }
}
"""


def _error(status: int, code: str, message: str) -> JsonResponse:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="graphql"'
    return response


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    """Django's CSRF check of a session request, as the middleware would make it (the view
    itself is exempt so that token requests need none)."""
    check = _CsrfCheck(lambda _: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def _wants_html(request: HttpRequest) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


class AegisGraphQLView(GraphQLView):
    graphql_ide = "graphiql"
    allow_queries_via_get = True

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            authenticated = BearerTokenAuthentication().authenticate(request)
        except AuthenticationFailed as error:
            return _error(401, UNAUTHENTICATED, str(error.detail))
        if authenticated is not None:
            request.user = authenticated[0]
        else:
            user = request.user
            if not (user.is_authenticated and user.is_active):
                if _wants_html(request):
                    return redirect_to_login(request.get_full_path(), reverse("login"))
                return _error(
                    401,
                    UNAUTHENTICATED,
                    "Sign in, or send 'Authorization: Bearer <token>' (POST /api/v1/auth/token).",
                )
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                reason = _csrf_failure(request)
                if reason is not None:
                    return _error(403, FORBIDDEN, f"CSRF check failed: {reason}")
        return super().dispatch(request, *args, **kwargs)

    def get_context(self, request: HttpRequest, response: HttpResponse) -> AegisContext:
        return AegisContext(
            request=request,
            response=response,
            user=request.user,
            permissions=permissions_of(request.user),
        )

    def render_graphql_ide(self, request: HttpRequest) -> HttpResponse:
        page = engines["django"].from_string((IDE_DIR / "graphiql.html").read_text())

        def asset(name: str) -> str:
            return reverse("graphiql-asset", kwargs={"name": name})

        context = {
            "config": {
                "endpoint": request.path,
                "csrfToken": get_token(request),
                "exampleQuery": EXAMPLE_QUERY,
            },
            "graphiql_css": asset("graphiql-3.8.3/graphiql.min.css"),
            "graphiql_js": asset("graphiql-3.8.3/graphiql.min.js"),
            "react_js": asset("react-18.2.0/react.production.min.js"),
            "react_dom_js": asset("react-dom-18.2.0/react-dom.production.min.js"),
        }
        response = HttpResponse(page.render(context, request))
        response["Cache-Control"] = "no-store"
        return response


graphql_view = csrf_exempt(AegisGraphQLView.as_view(schema=schema))


def graphiql_asset(request: HttpRequest, name: str) -> FileResponse:
    """One of the vendored GraphiQL files; their paths carry the version, so they are cached
    for a year."""
    content_type = GRAPHIQL_ASSETS.get(name)
    if content_type is None:
        raise Http404(name)
    response = FileResponse((IDE_DIR / "vendor" / name).open("rb"), content_type=content_type)
    response["Cache-Control"] = f"public, max-age={ONE_YEAR}, immutable"
    if settings.DEBUG:
        response["Cache-Control"] = "no-cache"
    return response
