// Runs list: the filters, sort and search are GET /api/runs query parameters (and the page's
// own URL, so a filtered view can be bookmarked); pages follow the API's keyset cursor, so a
// deep page costs what the first does. The table refreshes itself while a shown run is live.
// With no run at all, the page says how to start instead.
"use strict";

(() => {
  const PAGE = 50;
  const FILTERS = ["q", "state", "dataset", "method", "fusion", "missing_modality", "missing_rate", "sweep", "tag"];
  const ASCENDING_FIRST = new Set(["name", "state", "dataset", "method", "fusion"]);
  const form = document.getElementById("run-filters");
  const body = document.querySelector("#runs-table tbody");
  const selected = new Map(); // id → run
  let sort = "-id";
  let cursors = [null]; // cursor of each page visited; the last is the current page's
  let nextCursor = null;
  let shown = [];
  let timer = null;

  function fromUrl() {
    const params = new URLSearchParams(location.search);
    for (const name of FILTERS) if (params.has(name) && form.elements[name]) form.elements[name].value = params.get(name);
    if (params.get("sort")) sort = params.get("sort");
  }

  function queryParams() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    if (sort !== "-id") params.set("sort", sort);
    return params;
  }

  async function fillFilterChoices() {
    const [methods, datasets] = await Promise.all([missmod.api("/api/methods"), missmod.api("/api/datasets")]);
    for (const m of methods.body || []) form.method.append(missmod.el("option", m.name));
    for (const d of datasets.body || []) form.dataset.append(missmod.el("option", d.name));
  }

  function row(run) {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    const box = missmod.el("input", null, { type: "checkbox", class: "select", "aria-label": `select run ${run.id}` });
    box.checked = selected.has(run.id);
    box.addEventListener("change", () => {
      if (box.checked) selected.set(run.id, run); else selected.delete(run.id);
      showSelection();
    });
    const first = document.createElement("span");
    first.append(box, document.createTextNode(` ${run.id}`));
    const link = missmod.el("a", run.name, { href: `/runs/${run.id}` });
    const state = run.awaiting_broker
      ? missmod.el("span", "waiting for the broker", { class: "state", "data-state": "awaiting-broker",
                                                       title: run.broker_error || "" })
      : missmod.el("span", run.state, { class: "state", "data-state": run.state });
    const tags = document.createElement("span");
    // A run trained elsewhere (POST /api/runs/external) is marked wherever it is listed.
    if (run.external) tags.append(missmod.el("span", "external", { class: "tag external", title: "trained elsewhere" }));
    tags.append(...run.tags.map((t) => missmod.el("span", t, { class: "tag" })));
    const cells = [
      first, link, state, run.dataset, run.method, run.fusion,
      `${run.missing_modality} ${(100 * run.missing_rate).toFixed(0)}%`, run.seed,
      epochsCell(run), missmod.percent(run.test_accuracy), tags, missmod.when(run.created_at),
    ];
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }

  // Epochs done, and for a running run a thin bar of how far it is, steps inside the epoch included.
  function epochsCell(run) {
    const text = `${run.epochs_completed}/${run.spec.epochs ?? run.epochs_completed}`;
    const p = run.progress;
    if (run.state !== "running" || !p || !p.steps || !p.epochs) return text;
    const cell = document.createElement("span");
    const done = Math.min(1, ((p.epoch - 1) + p.step / p.steps) / p.epochs);
    const bar = missmod.el("div", null, { class: "run-bar", title: `epoch ${p.epoch}, step ${p.step} of ${p.steps}` });
    const fill = document.createElement("span");
    fill.style.width = `${(100 * done).toFixed(1)}%`;
    bar.append(fill);
    cell.append(document.createTextNode(text), bar);
    return cell;
  }

  function showSelection() {
    const runs = [...selected.values()];
    const retryable = runs.filter((r) => r.state === "failed" || r.state === "cancelled");
    document.getElementById("selection-info").textContent = runs.length
      ? `${runs.length} selected` : "Tick runs to compare, retry or delete them.";
    document.getElementById("compare-selected").disabled = runs.length < 2 || runs.length > 12;
    document.getElementById("delete-selected").disabled = runs.length === 0;
    document.getElementById("retry-selected").disabled = retryable.length === 0;
    document.getElementById("select-page").checked = shown.length > 0 && shown.every((r) => selected.has(r.id));
  }

  function showSort() {
    const key = sort.replace(/^-/, "");
    for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
      const active = th.dataset.sort === key;
      th.setAttribute("aria-sort", active ? (sort.startsWith("-") ? "descending" : "ascending") : "none");
    }
  }

  async function load() {
    clearTimeout(timer);
    const params = queryParams();
    history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
    params.set("limit", PAGE);
    const cursor = cursors[cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    const { ok, body: page } = await missmod.api(`/api/runs?${params}`);
    const error = document.getElementById("runs-error");
    if (!ok) {
      missmod.showErrors(form, error, page ? page.detail : "could not load the runs");
      return;
    }
    error.hidden = true;
    shown = page.items;
    for (const run of shown) if (selected.has(run.id)) selected.set(run.id, run);
    body.replaceChildren(...shown.map(row));
    nextCursor = page.next_cursor;
    // A fresh install (no run at all, no filter) says how to start instead of showing an empty table.
    const fresh = page.total === 0 && !params.has("cursor") && [...queryParams().keys()].length === 0;
    document.getElementById("runs-start").hidden = !fresh;
    document.getElementById("runs-list").hidden = fresh;
    document.getElementById("runs-empty").hidden = page.total > 0 || fresh;
    const first = (cursors.length - 1) * PAGE + 1;
    document.getElementById("page-info").textContent =
      page.total ? `${first.toLocaleString()}–${(first + shown.length - 1).toLocaleString()} of ${page.total.toLocaleString()}` : "";
    document.getElementById("prev-page").disabled = cursors.length === 1;
    document.getElementById("next-page").disabled = !nextCursor;
    showSort();
    showSelection();
    // …and keeps looking, so a run started from a script or the CLI shows up by itself.
    if (fresh || shown.some((r) => !missmod.terminal(r.state))) timer = setTimeout(load, 2000);
  }

  function restart() { cursors = [null]; load(); }

  const onFilter = missmod.debounce(restart, 250);
  form.addEventListener("input", onFilter);
  form.addEventListener("change", onFilter);
  form.addEventListener("reset", () => setTimeout(restart, 0));
  form.addEventListener("submit", (event) => { event.preventDefault(); restart(); });

  for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
    th.classList.add("sortable");
    th.addEventListener("click", (event) => {
      if (event.target instanceof HTMLInputElement) return;
      const key = th.dataset.sort;
      if (sort.replace(/^-/, "") === key) sort = sort.startsWith("-") ? key : `-${key}`;
      else sort = ASCENDING_FIRST.has(key) ? key : `-${key}`;
      restart();
    });
  }

  document.getElementById("select-page").addEventListener("change", (event) => {
    for (const run of shown) if (event.target.checked) selected.set(run.id, run); else selected.delete(run.id);
    for (const box of body.querySelectorAll("input.select")) box.checked = event.target.checked;
    showSelection();
  });
  document.getElementById("prev-page").addEventListener("click", () => { cursors.pop(); load(); });
  document.getElementById("next-page").addEventListener("click", () => { cursors.push(nextCursor); load(); });

  document.getElementById("compare-selected").addEventListener("click", () => {
    window.location.assign(`/compare?runs=${[...selected.keys()].join(",")}`);
  });
  document.getElementById("delete-selected").addEventListener("click", async () => {
    const ids = [...selected.keys()];
    const live = [...selected.values()].filter((r) => !missmod.terminal(r.state)).length;
    if (!window.confirm(`Delete ${ids.length} run${ids.length === 1 ? "" : "s"} with their metrics?` +
                        (live ? ` ${live} still queued or running will be stopped.` : "") + " This cannot be undone.")) return;
    await missmod.api("/api/runs/bulk-delete", { method: "POST", body: JSON.stringify({ ids }) });
    selected.clear();
    load();
  });
  document.getElementById("retry-selected").addEventListener("click", async () => {
    const retryable = [...selected.values()].filter((r) => r.state === "failed" || r.state === "cancelled");
    if (!window.confirm(`Queue ${retryable.length} failed or cancelled run(s) again? Their old metrics are cleared.`)) return;
    // One request for them all (POST /api/runs/bulk-retry).
    const ids = retryable.map((run) => run.id);
    if (ids.length) await missmod.api("/api/runs/bulk-retry", { method: "POST", body: JSON.stringify({ ids }) });
    selected.clear();
    load();
  });

  fromUrl();
  fillFilterChoices().then(() => { fromUrl(); load(); });
})();
