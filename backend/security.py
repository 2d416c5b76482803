"""Who may do what, at the edge of the app.

- Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) sent by a browser
  from another site is refused, token or not, so no web page a user visits can start or cancel
  runs on their dashboard. As Go's `http.CrossOriginProtection`: the browser's own
  `Sec-Fetch-Site` header, or failing that `Origin` against `Host`; a request with neither is
  not from a browser (curl, scripts) and has nothing to forge.
- API token (setting API_TOKEN): when set, every request needs it except /api/health (for
  health checks), the sign-in page and the static assets. Scripts send
  `Authorization: Bearer <token>`; a browser signs in once and holds a signed session cookie
  (HttpOnly, SameSite=Lax), which rotating the token invalidates. Without a token nothing is
  asked, as for `make run` on a laptop.
- Every response says: no MIME sniffing, no framing, no referrer to other sites; HTML pages
  also carry a Content-Security-Policy that allows only this server's scripts, so text a user
  typed (a run name) can never run as a script even if it were put into the page as markup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, TimestampSigner
from starlette.datastructures import Headers
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.problems import problem_response
from .settings import Settings

SESSION_COOKIE = "missmod_session"
SESSION_MAX_AGE_SECONDS = 14 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/api/health", "/login", "/api/session"})
OPEN_PREFIXES = ("/static/",)
# Our pages load only our own scripts; Plotly sets inline styles, and draws into data: images.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
# /docs and /redoc set a CSP of their own (backend/api/openapi.py): their pages start their
# scripts inline, which the dashboard's policy refuses.
PAGES_WITHOUT_CSP = ("/docs", "/redoc")
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                  (b"referrer-policy", b"same-origin")]


def is_cross_site(headers: Headers) -> bool:
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")  # "none": typed in the address bar, a bookmark
    origin = headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


class Sessions:
    """Signed, time-limited session cookies whose key derives from the API token."""

    def __init__(self, token: str):
        self._token = token.encode()
        key = hmac.new(self._token, b"missmod session cookie", hashlib.sha256).hexdigest()
        self._signer = TimestampSigner(key, salt="missmod-session")

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode(), self._token)

    def new_cookie_value(self) -> str:
        return self._signer.sign(secrets.token_hex(8)).decode()

    def cookie_is_valid(self, value: str | None) -> bool:
        if not value:
            return False
        try:
            self._signer.unsign(value, max_age=SESSION_MAX_AGE_SECONDS)
        except BadSignature:  # includes expired
            return False
        return True

    def request_is_authenticated(self, headers: Headers, cookies: dict[str, str]) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        return self.cookie_is_valid(cookies.get(SESSION_COOKIE))


def _cookies(headers: Headers) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header counts as no cookie
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def _wants_a_page(scope: Scope) -> bool:
    path = scope["path"]
    return scope["method"] == "GET" and not path.startswith("/api/") and path not in ("/openapi.json",)


class AccessGuard:
    """Pure ASGI middleware (streams like the live SSE pass straight through)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.sessions = Sessions(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = scope["path"]
        if scope["method"] not in SAFE_METHODS and is_cross_site(headers):
            await problem_response(403, "cross-site request refused")(scope, receive, send)
            return
        if self.sessions is not None and not self._is_open(path) \
                and not self.sessions.request_is_authenticated(headers, _cookies(headers)):
            await self._refuse(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = list(message.get("headers", []))
                response_headers += COMMON_HEADERS
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if content_type.startswith("text/html") and not path.startswith(PAGES_WITHOUT_CSP):
                    response_headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": response_headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _is_open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _wants_a_page(scope):
            target = scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope["query_string"] else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = problem_response(401, "authentication required: send 'Authorization: Bearer <API_TOKEN>'",
                                        headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def safe_next_path(candidate: str | None) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if not candidate or not candidate.startswith("/") or candidate.startswith("//") or "\\" in candidate:
        return "/"
    return candidate
