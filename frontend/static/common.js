// Small helpers shared by the pages. Text from the server is always set with textContent,
// never parsed as HTML.
"use strict";

const missmod = {
  async api(path, options = {}, { redirectOnUnauthorized = true } = {}) {
    const response = await fetch(path, {
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      ...options,
    });
    if (response.status === 401 && redirectOnUnauthorized) {
      // API_TOKEN is set and this browser's session is missing or expired.
      window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
    }
    let body = null;
    try { body = await response.json(); } catch (_) { /* empty or not JSON */ }
    return { ok: response.ok, status: response.status, body };
  },

  el(tag, text, attrs = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  },

  percent(value, digits = 2) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(digits) + "%";
  },

  when(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  },

  async signOut() {
    await missmod.api("/api/session", { method: "DELETE" }, { redirectOnUnauthorized: false });
    window.location.assign("/login");
  },

  terminal(state) {
    return state === "succeeded" || state === "failed" || state === "cancelled";
  },
};

document.getElementById("sign-out")?.addEventListener("click", () => missmod.signOut());
