"""Who may do what, at the edge of the app.

- Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) sent by a browser
  from another site is refused, token or not, so no web page a user visits can start or cancel
  runs on their dashboard. As Go's `http.CrossOriginProtection`: the browser's own
  `Sec-Fetch-Site` header, or failing that `Origin` against `Host`; a request with neither is
  not from a browser (curl, scripts) and has nothing to forge.
- Host names (setting TRUSTED_HOSTS, plus the loopback names): a request naming another host is
  refused (400) by Starlette's TrustedHostMiddleware (backend/main.py), which stops DNS rebinding.
- API token (setting API_TOKEN): when set, every request needs it except /api/health (for
  health checks), the sign-in page and the static assets. Scripts send
  `Authorization: Bearer <token>`; a browser signs in once and holds a signed session cookie
  (HttpOnly, SameSite=Lax) naming a server-side session, which signing out ends and rotating
  the token invalidates. Wrong tokens are throttled per client. Without a token nothing is
  asked, as for `make run` on a laptop.
- Every response says: no MIME sniffing, no framing, no referrer to other sites; HTML pages
  also carry a Content-Security-Policy that allows only this server's scripts, so text a user
  typed (a run name) can never run as a script even if it were put into the page as markup.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, TimestampSigner
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.problems import problem_response
from .browser_sessions import session_is_open
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
    """Signed, time-limited session cookies whose key derives from the API token. A cookie
    carries a session id; the session is open while its row exists (backend/browser_sessions.py),
    so signing out ends it even if the cookie was copied."""

    def __init__(self, token: str):
        self._token = token.encode()
        key = hmac.new(self._token, b"missmod session cookie", hashlib.sha256).hexdigest()
        self._signer = TimestampSigner(key, salt="missmod-session")

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode(), self._token)

    def cookie_value(self, session_id: str) -> str:
        return self._signer.sign(session_id).decode()

    def session_id(self, cookie: str | None) -> str | None:
        """The session id a genuine, unexpired cookie carries; None for any other."""
        if not cookie:
            return None
        try:
            return self._signer.unsign(cookie, max_age=SESSION_MAX_AGE_SECONDS).decode()
        except (BadSignature, UnicodeDecodeError):  # BadSignature includes expired
            return None

    def bearer_matches(self, headers: Headers) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(credentials.strip())


class SignInThrottle:
    """Wrong tokens per client address in a sliding minute; past the limit sign-in answers 429."""

    WINDOW_SECONDS = 60.0
    MAX_CLIENTS = 10_000  # the oldest are forgotten first, so the table cannot grow without bound

    def __init__(self, attempts_per_minute: int):
        self.limit = attempts_per_minute
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.WINDOW_SECONDS:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until this client may try again; None when it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) < self.limit:
                return None
            return max(1, math.ceil(failures[0] + self.WINDOW_SECONDS - now))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            failures.append(now)
            self._failures.pop(client, None)
            self._failures[client] = failures
            while len(self._failures) > self.MAX_CLIENTS:
                self._failures.pop(next(iter(self._failures)))


def _wants_a_page(scope: Scope) -> bool:
    path = scope["path"]
    return scope["method"] == "GET" and not path.startswith("/api/") and path not in ("/openapi.json",)


class AccessGuard:
    """Pure ASGI middleware (streams like the live SSE pass straight through)."""

    def __init__(self, app: ASGIApp, settings: Settings, database: sessionmaker):
        self.app = app
        self.database = database
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.sessions = Sessions(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] not in SAFE_METHODS and is_cross_site(headers):
            await problem_response(403, "cross-site request refused")(scope, receive, send)
            return
        if self.sessions is not None and not self._is_open(path) and not await self._authenticated(headers):
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

    async def _authenticated(self, headers: Headers) -> bool:
        if self.sessions.bearer_matches(headers):
            return True
        session_id = self.sessions.session_id(cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE))
        if session_id is None:
            return False

        def is_open() -> bool:
            with self.database() as session:
                return session_is_open(session, session_id)

        return await run_in_threadpool(is_open)

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
    """Where to go after signing in: a path on this site only (no open redirect).

    Judged as the browser will read it: the URL parser drops tabs and line breaks anywhere and
    trims spaces and control characters at the ends, and takes a backslash for a slash, so
    "/<tab>/evil.example" is "//evil.example" to it. A candidate holding any of them is refused
    rather than cleaned up."""
    if not candidate or any(ord(c) < 0x21 or ord(c) == 0x7F for c in candidate) or "\\" in candidate:
        return "/"
    if not candidate.startswith("/") or candidate.startswith("//"):
        return "/"
    parts = urlsplit(candidate)
    if parts.scheme or parts.netloc:
        return "/"
    return candidate
