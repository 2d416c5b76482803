// Sign-in form: trades the API token for a session cookie, then goes where the user was headed.
"use strict";

(() => {
  const form = document.getElementById("sign-in");
  if (!form) return;
  const error = document.getElementById("form-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const { ok, status, body } = await missmod.api("/api/session", {
      method: "POST", body: JSON.stringify({ token: form.token.value }),
    }, { redirectOnUnauthorized: false });
    if (ok) { window.location.assign(form.dataset.next || "/"); return; }
    error.textContent = status === 401 ? "Wrong token." : (body && body.detail) || `Sign-in failed (${status}).`;
    error.hidden = false;
  });
})();
