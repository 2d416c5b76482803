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

  // A table row of cells: a node is appended as it is, anything else set as text.
  row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    }
    return tr;
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

  debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  },

  // mean ± std of accuracies (fractions) as percentages, the way the paper prints them.
  meanStd(mean, std, digits = 2) {
    if (mean === null || mean === undefined) return "–";
    const m = (100 * mean).toFixed(digits);
    return std === null || std === undefined ? m : `${m} ± ${(100 * std).toFixed(digits)}`;
  },

  // FastAPI 422 errors shown next to their field (`[data-error-for=field]` in `form`), the
  // rest in `loose`. Returns the fields that had an error.
  showErrors(form, loose, detail) {
    const unplaced = [];
    const fields = [];
    for (const error of Array.isArray(detail) ? detail : [{ msg: String(detail) }]) {
      const field = (error.loc || []).filter((part) => part !== "body" && part !== "query").join(".");
      const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
      if (slot) {
        slot.textContent = slot.textContent ? `${slot.textContent}; ${error.msg}` : error.msg;
        const input = form.elements[field];
        if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
        fields.push(field);
      } else {
        unplaced.push(field && field !== "path.name" ? `${field}: ${error.msg}` : error.msg);
      }
    }
    if (loose) { loose.textContent = unplaced.join("; "); loose.hidden = unplaced.length === 0; }
    return fields;
  },

  // A method's own options (GET /api/methods: `options`, a JSON schema) as form fields named
  // `<prefix><option>`, each holding its default; read back with optionValues.
  optionFields(method, prefix) {
    const properties = (method && method.options && method.options.properties) || {};
    return Object.entries(properties).map(([name, schema]) => {
      const id = `${prefix}${name}`.replace(/[^a-zA-Z0-9_-]/g, "-");
      const value = (method.default_options || {})[name];
      let input;
      if (schema.type === "boolean" || Array.isArray(schema.enum)) {
        const values = schema.type === "boolean" ? ["false", "true"] : schema.enum.map(String);
        input = missmod.el("select", null, { id, name: `${prefix}${name}` });
        input.replaceChildren(...values.map((v) => missmod.el("option", v, { value: v })));
        input.value = String(value);
      } else {
        const numeric = schema.type === "number" || schema.type === "integer";
        input = missmod.el("input", null, { id, name: `${prefix}${name}`, type: numeric ? "number" : "text",
                                            value: value === undefined || value === null ? "" : String(value) });
        if (numeric) input.setAttribute("step", schema.type === "integer" ? "1" : "any");
      }
      input.dataset.kind = schema.type || "string";
      const field = missmod.el("div", null, { class: "field" });
      field.append(missmod.el("label", schema.title || name, { for: id }), input);
      if (schema.description) field.append(missmod.el("div", schema.description, { class: "hint" }));
      return field;
    });
  },

  // The options of the fields optionFields made under `container`: name → typed value.
  optionValues(container, prefix) {
    const values = {};
    for (const input of container.querySelectorAll("[data-kind]")) {
      const name = input.name.slice(prefix.length);
      const kind = input.dataset.kind;
      const text = input.value.trim();
      values[name] = kind === "boolean" ? text === "true"
        : (kind === "number" || kind === "integer") && text !== "" ? Number(text) : text;
    }
    return values;
  },

  clearErrors(form, loose) {
    if (loose) { loose.hidden = true; loose.textContent = ""; }
    for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  },
};

// --- live pages: streams and polls that come back by themselves ---------------------------
//
// Every live page (run, sweep, workers, study, a dataset job) follows the server through one of
// these. When the server goes away (restarting, a 503 while the database is down, a proxy's 502)
// the page says "reconnecting…" (#live-status, data-live="reconnecting" on <body>), tries again
// after 0.5 s, 1 s, 2 s… up to 15 s (with jitter, so a restarted API is not hit by every page at
// once), and clears the notice by itself once the server answers again.
missmod.liveStatus = (() => {
  const away = new Set(); // the live sources of this page now reconnecting
  let banner = null;
  function show() {
    banner = banner || document.getElementById("live-status");
    const reconnecting = away.size > 0;
    document.body.dataset.live = reconnecting ? "reconnecting" : "live";
    if (banner) banner.hidden = !reconnecting;
  }
  return {
    lost(source) { away.add(source); show(); },
    back(source) { if (away.delete(source) || !document.body.dataset.live) show(); },
  };
})();

missmod.Backoff = class {
  constructor({ first = 500, most = 15000 } = {}) { this.first = first; this.most = most; this.next = first; }
  // The wait before the next try (ms): doubles each time, ±20% jitter.
  delay() {
    const base = this.next;
    this.next = Math.min(this.most, this.next * 2);
    return base * (0.8 + 0.4 * Math.random());
  }
  reset() { this.next = this.first; }
};

// A Server-Sent Events stream that reopens itself. `url`: a string or a function giving the URL
// to (re)open, e.g. with the cursor of the last point seen. `events`: name → handler(data, event),
// the data already parsed from JSON. An `end` or `gone` event closes it for good (handlers for
// them still run). `beforeReopen`: awaited before each reopen (e.g. a plain GET that sends a
// signed-out browser to the sign-in page). `onOpen(connections)`: each time it opens.
// Any error closes the EventSource and reopens it after the backoff: the browser's own retry
// would reopen the same URL (a stale cursor) and gives up for good on an HTTP error.
missmod.liveStream = (url, events, { beforeReopen = null, onOpen = null } = {}) => {
  const source = {};
  const backoff = new missmod.Backoff();
  let stream = null;
  let ended = false;
  let connections = 0;
  let timer = null;
  function open() {
    stream = new EventSource(typeof url === "function" ? url() : url);
    const mine = stream;
    stream.addEventListener("open", () => {
      missmod.liveStatus.back(source);
      if (onOpen) onOpen(++connections);
    });
    for (const [name, handler] of Object.entries(events)) {
      stream.addEventListener(name, (event) => {
        if (mine !== stream) return;
        backoff.reset(); // the server talks: the next loss starts again from the shortest wait
        if (name === "end" || name === "gone") close();
        handler(event.data ? JSON.parse(event.data) : null, event);
      });
    }
    for (const name of ["end", "gone"]) {
      if (!(name in events)) stream.addEventListener(name, () => { if (mine === stream) close(); });
    }
    stream.addEventListener("error", () => {
      if (mine !== stream || ended) return;
      stream.close();
      missmod.liveStatus.lost(source);
      timer = setTimeout(async () => {
        try { if (beforeReopen) await beforeReopen(); } catch (_) { /* still away: the stream's error says so */ }
        if (!ended) open();
      }, backoff.delay());
    });
  }
  function close() {
    ended = true;
    clearTimeout(timer);
    if (stream) stream.close();
    missmod.liveStatus.back(source);
  }
  open();
  return { close, get connections() { return connections; } };
};

// A poll that backs off while the server is away: `poll()` is called now and then every
// `interval` ms after each answer, until it returns false; a poll that throws (no answer) or
// returns "retry" (a 5xx) is tried again after the backoff, with "reconnecting…" shown.
missmod.livePoll = (poll, interval) => {
  const source = {};
  const backoff = new missmod.Backoff();
  let timer = null;
  let stopped = false;
  async function tick() {
    clearTimeout(timer);
    let outcome;
    try { outcome = await poll(); } catch (_) { outcome = "retry"; }
    if (stopped) return;
    if (outcome === "retry") {
      missmod.liveStatus.lost(source);
      timer = setTimeout(tick, backoff.delay());
      return;
    }
    backoff.reset();
    missmod.liveStatus.back(source);
    if (outcome !== false) timer = setTimeout(tick, interval);
  }
  tick();
  return { now: tick, stop() { stopped = true; clearTimeout(timer); missmod.liveStatus.back(source); } };
};

document.getElementById("sign-out")?.addEventListener("click", () => missmod.signOut());
