// Sign-in form: trades the API token for a session cookie, then goes where the user was headed.
"use strict";

(() => {
  const form = document.getElementById("sign-in");
  if (!form) return;
  const error = document.getElementById("form-error");
  // The server sends only a path of this site; checked again as the browser parses it.
  const sameOriginPath = (next) => {
    try {
      const url = new URL(next || "/", window.location.origin);
      if (url.origin === window.location.origin) return url.pathname + url.search + url.hash;
    } catch (_) { /* not a URL: go home */ }
    return "/";
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const { ok, status, body } = await missmod.api("/api/session", {
      method: "POST", body: JSON.stringify({ token: form.token.value }),
    }, { redirectOnUnauthorized: false });
    if (ok) { window.location.assign(sameOriginPath(form.dataset.next)); return; }
    error.textContent = status === 401 ? "Wrong token." : (body && body.detail) || `Sign-in failed (${status}).`;
    error.hidden = false;
  });
})();
