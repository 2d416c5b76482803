"""Browser sign-in when API_TOKEN is set: the token, typed once, buys a signed session cookie."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from ..security import SESSION_COOKIE, SESSION_MAX_AGE_SECONDS, Sessions
from .deps import SettingsDep

router = APIRouter(tags=["session"])


class SignIn(BaseModel):
    token: str = Field(max_length=1000, description="The API_TOKEN the server was started with")


@router.post("/api/session", status_code=status.HTTP_204_NO_CONTENT,
             responses={401: {"description": "Wrong token"}, 404: {"description": "No API_TOKEN is set"}})
def sign_in(payload: SignIn, settings: SettingsDep, response: Response) -> None:
    """Sign a browser in: sets an HttpOnly session cookie valid for 14 days."""
    if settings.api_token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no API token is set: there is nothing to sign in to")
    sessions = Sessions(settings.api_token.get_secret_value())
    if not sessions.token_matches(payload.token):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token")
    response.set_cookie(SESSION_COOKIE, sessions.new_cookie_value(), max_age=SESSION_MAX_AGE_SECONDS, path="/",
                        httponly=True, samesite="lax", secure=settings.secure_cookies)


@router.delete("/api/session", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
