// Compare page (/compare?runs=1,2,3): the runs' curves overlaid (one chart per metric), the
// spec fields that differ, and their confusion matrices side by side. Unfinished runs are
// polled and their new points appended.
"use strict";

(() => {
  const page = document.getElementById("compare-page");
  const METRICS = [["test_accuracy", "test accuracy", true], ["val_accuracy", "validation accuracy", true],
                   ["train_loss", "training loss", false], ["val_loss", "validation loss", false]];
  const ids = [...new Set((new URLSearchParams(location.search).get("runs") || "").split(",")
    .map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0))].slice(0, 12);
  const runs = new Map();
  const cursors = new Map();
  const charts = new Map(METRICS.map(([name, title, percent]) =>
    [name, new missmodCharts.CurveChart(document.getElementById(`chart-${name}`), { title, percent })]));

  function label(run) { return `#${run.id} ${run.name}`; }

  function headRow(first) {
    const tr = document.createElement("tr");
    tr.append(missmod.el("th", first));
    for (const run of runs.values()) {
      const th = document.createElement("th");
      const swatch = missmod.el("span", null, { class: "swatch" });
      swatch.style.background = missmodCharts.colour(`run-${run.id}`);
      th.append(swatch, missmod.el("a", label(run), { href: `/runs/${run.id}` }));
      tr.append(th);
    }
    return tr;
  }

  function fill(table, first, rows) {
    table.querySelector("thead").replaceChildren(headRow(first));
    table.querySelector("tbody").replaceChildren(...rows.map(([name, values]) => {
      const tr = document.createElement("tr");
      tr.dataset.field = name;
      tr.append(missmod.el("th", name, { scope: "row" }), ...values.map((v) => missmod.el("td", v)));
      return tr;
    }));
  }

  function show(value) {
    return value === null || value === undefined ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // Each run against the first, test sample by test sample (McNemar, Holm over the runs), once finished.
  let pairs = new Map(); // run id → GET /api/runs/{first}/paired item
  let pairsFor = "";
  async function loadPairs() {
    const list = [...runs.values()];
    const finished = list.filter((r) => r.state === "succeeded" || r.state === "cancelled").map((r) => r.id);
    const key = finished.join(",");
    if (list.length < 2 || key === pairsFor || !finished.includes(list[0].id)) return;
    const others = list.slice(1).map((r) => r.id);
    const { ok, body } = await missmod.api(`/api/runs/${list[0].id}/paired?against=${others.join(",")}`);
    if (!ok) return;
    pairsFor = key;
    pairs = new Map(body.map((pair) => [pair.run_id, pair]));
  }

  function pairedText(run, index) {
    if (index === 0) return "reference";
    const pair = pairs.get(run.id);
    if (!pair) return "–";
    if (!pair.comparable) return `not comparable: ${pair.reason}`;
    const diff = `${pair.diff >= 0 ? "+" : "−"}${Math.abs(100 * pair.diff).toFixed(2)} points`;
    return `${diff} on ${pair.samples} samples (discordant ${pair.discordant.join(" vs ")}), McNemar p `
      + `${pair.p_value.toPrecision(2)}, Holm ${pair.p_adjusted.toPrecision(2)}`
      + (pair.significant ? (pair.diff > 0 ? " ▲ significant win" : " ▼ significant loss") : "");
  }

  function showResults() {
    const list = [...runs.values()];
    fill(document.getElementById("results-table"), "", [
      ["vs the first run, paired", list.map(pairedText)],
      ["state", list.map((r) => r.state)],
      ["test accuracy", list.map((r) => missmod.percent(r.test_accuracy))],
      ["validation accuracy", list.map((r) => missmod.percent(r.val_accuracy))],
      ["best epoch", list.map((r) => show(r.best_epoch))],
      ["epochs", list.map((r) => `${r.epochs_completed}/${r.spec.epochs}`)],
      ["sweep", list.map((r) => (r.sweep_id ? `#${r.sweep_id}` : "–"))],
      ["tags", list.map((r) => r.tags.join(", ") || "–")],
    ]);
  }

  function showSpecDiff() {
    const list = [...runs.values()];
    const fields = [...new Set(list.flatMap((r) => Object.keys(r.spec)))];
    const differing = fields.filter((f) => new Set(list.map((r) => JSON.stringify(r.spec[f]))).size > 1);
    fill(document.getElementById("spec-diff"), "field", differing.map((f) => [f, list.map((r) => show(r.spec[f]))]));
    document.getElementById("spec-same").hidden = differing.length > 0;
    document.getElementById("spec-diff").hidden = differing.length === 0;
  }

  async function showConfusion(run) {
    const div = document.querySelector(`#confusion-grid [data-run-id="${run.id}"]`);
    await missmodCharts.runConfusion(div, run.id, { title: `${label(run)}: ${missmod.percent(run.test_accuracy, 1)}` });
  }

  async function refresh(run) {
    const metrics = await missmodCharts.runMetrics(run.id, cursors.has(run.id) ? cursors.get(run.id) : null);
    cursors.set(run.id, metrics.cursor);
    const groups = missmodCharts.byName(metrics.points);
    for (const [name] of METRICS) charts.get(name).append(run.id, label(run), groups.get(name) || []);
    if (run.state === "succeeded" || run.state === "cancelled") await showConfusion(run);
  }

  // Every 2 s while a run is not ended; while the API is away the poll backs off and the page
  // says "reconnecting…" (common.js: missmod.livePoll).
  async function poll() {
    const live = [...runs.values()].filter((r) => !missmod.terminal(r.state));
    if (!live.length) return false;
    for (const run of live) {
      const { ok, status, body } = await missmod.api(`/api/runs/${run.id}`);
      if (status >= 500) return "retry";
      if (ok) runs.set(run.id, body);
      await refresh(runs.get(run.id));
    }
    await loadPairs();
    showResults();
    return true;
  }

  (async () => {
    if (ids.length < 2) {
      const error = document.getElementById("compare-error");
      error.textContent = "Choose at least two runs: /compare?runs=1,2,3 (or tick them in the runs table).";
      error.hidden = false;
    }
    const asked = Promise.all(ids.map((id) => missmod.api(`/api/runs/${id}`)));
    missmodCharts.load();  // parsed while the runs are fetched
    const fetched = await asked;
    const missing = ids.filter((id, i) => !fetched[i].ok);
    fetched.filter((r) => r.ok).forEach((r) => runs.set(r.body.id, r.body));
    if (missing.length) {
      const error = document.getElementById("compare-error");
      error.textContent = `Not found: run ${missing.join(", ")}.`;
      error.hidden = false;
    }
    showResults();
    showSpecDiff();
    // traces and matrices in the order the runs were given, whatever order they load in
    for (const run of runs.values()) for (const chart of charts.values()) chart.ensure(run.id, label(run));
    for (const run of runs.values()) {
      document.getElementById("confusion-grid").append(missmod.el("div", null, { class: "chart confusion", "data-run-id": run.id }));
    }
    await Promise.all([...runs.values()].map(refresh));
    await loadPairs();
    showResults();
    page.dataset.ready = "true";
    setTimeout(() => missmod.livePoll(poll, 2000), 2000);
  })();
})();
