"""Browser sign-in when API_TOKEN is set: the token, typed once, buys a signed session cookie."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import Field

from .. import browser_sessions
from ..security import SESSION_COOKIE, SESSION_MAX_AGE_SECONDS, Sessions, SignInThrottle
from .deps import SessionDep, SettingsDep
from .params import CleanInput

router = APIRouter(tags=["session"])


class SignIn(CleanInput):
    token: str = Field(max_length=1000, description="The API_TOKEN the server was started with")


@router.post("/api/session", status_code=status.HTTP_204_NO_CONTENT,
             responses={401: {"description": "Wrong token"}, 404: {"description": "No API_TOKEN is set"},
                        429: {"description": "Too many wrong tokens from this client; see Retry-After"}})
def sign_in(payload: SignIn, request: Request, settings: SettingsDep, session: SessionDep,
            response: Response) -> None:
    """Sign a browser in: sets an HttpOnly session cookie valid for 14 days."""
    if settings.api_token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no API token is set: there is nothing to sign in to")
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, f"too many wrong tokens: try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    sessions = Sessions(settings.api_token.get_secret_value())
    if not sessions.token_matches(payload.token):
        throttle.failed(client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token")
    session_id = browser_sessions.open_session(session, SESSION_MAX_AGE_SECONDS)
    response.set_cookie(SESSION_COOKIE, sessions.cookie_value(session_id), max_age=SESSION_MAX_AGE_SECONDS,
                        path="/", httponly=True, samesite="lax", secure=settings.secure_cookies)


@router.delete("/api/session", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(request: Request, settings: SettingsDep, session: SessionDep, response: Response) -> None:
    """Sign out: the session ends on the server too, so a copy of the cookie stops working."""
    if settings.api_token is not None:
        session_id = Sessions(settings.api_token.get_secret_value()).session_id(request.cookies.get(SESSION_COOKIE))
        if session_id is not None:
            browser_sessions.close_session(session, session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
