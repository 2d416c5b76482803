// Sweep page: one Server-Sent Events stream feeds everything. `runs` updates the run list
// and pulls new points for the chosen runs' curves (appended, not redrawn); `summary` brings
// the comparison table and the trend, recomputed by the server when a run finishes.
"use strict";

(() => {
  const page = document.getElementById("sweep-page");
  const sweepId = page.dataset.sweepId;
  const MAX_CHOSEN = 12;
  const runs = new Map(); // id → run as the stream sends it
  const rows = new Map(); // id → <tr>
  const chosen = new Set((location.hash.match(/runs=([\d,]+)/) || [, ""])[1].split(",").filter(Boolean).map(Number));
  let choiceMade = chosen.size > 0;
  let curves = null;
  const cursors = new Map(); // run id → metric cursor of the curves chart
  const loading = new Map(); // run id → promise of a metrics fetch in flight
  const confusionShown = new Set();
  let progress = null;
  let summaryShown = false;
  let runsShown = false;

  // --- progress and run list ---------------------------------------------------------------

  function showProgress(p) {
    progress = p;
    const parts = ["queued", "running", "succeeded", "failed", "cancelled"].filter((s) => p[s] || s !== "cancelled");
    document.getElementById("sweep-progress").textContent =
      `${p.total} runs: ` + parts.map((s) => `${p[s]} ${s}`).join(" · ") + (p.done ? " — finished" : "");
    const bar = document.getElementById("progress-bar");
    bar.replaceChildren(...["succeeded", "failed", "cancelled", "running", "queued"].filter((s) => p[s]).map((s) => {
      const segment = missmod.el("span", null, { class: "segment", "data-state": s, title: `${p[s]} ${s}` });
      segment.style.flexGrow = String(p[s]);
      return segment;
    }));
    for (const state of ["queued", "running", "succeeded", "failed", "cancelled"]) page.dataset[state] = String(p[state]);
    document.getElementById("retry-sweep").hidden = !(p.failed + p.cancelled);
  }

  function runRow(run) {
    const tr = rows.get(run.id) || document.createElement("tr");
    tr.dataset.runId = run.id;
    tr.dataset.state = run.state;
    const box = missmod.el("input", null, { type: "checkbox", "aria-label": `choose run ${run.id}`, class: "choose" });
    box.checked = chosen.has(run.id);
    box.addEventListener("change", () => toggleChosen(run.id, box.checked, box));
    const cells = [
      box, run.id, missmod.el("a", run.name, { href: `/runs/${run.id}` }),
      run.awaiting_broker
        ? missmod.el("span", "waiting for the broker", { class: "state", "data-state": "awaiting-broker" })
        : missmod.el("span", run.state, { class: "state", "data-state": run.state }),
      run.method, run.fusion, `${run.missing_modality} ${(100 * run.missing_rate).toFixed(0)}%`, run.seed,
      `${run.epochs_completed}/${run.epochs ?? "?"}`, missmod.percent(run.test_accuracy),
    ];
    tr.replaceChildren(...cells.map((cell) => {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      return td;
    }));
    return tr;
  }

  function showRuns(data) {
    const body = document.querySelector("#sweep-runs tbody");
    for (const id of data.removed) {
      runs.delete(id);
      rows.get(id)?.remove();
      rows.delete(id);
    }
    const fresh = [];
    for (const run of data.runs) {
      const before = runs.get(run.id);
      runs.set(run.id, run);
      const isNew = !rows.has(run.id);
      rows.set(run.id, runRow(run));
      if (isNew) fresh.push(rows.get(run.id));
      if (chosen.has(run.id) && (!before || before.epochs_completed !== run.epochs_completed || before.state !== run.state)) {
        refreshChosen(run.id);
      }
    }
    if (fresh.length) body.append(...fresh);
    if (!choiceMade && runs.size) chooseDefaults();
    if (!runsShown) performance.mark("runs-shown");
    runsShown = true;
  }

  // --- chosen runs: curves and confusion matrices --------------------------------------------

  // At the highest missing rate of the first modality (where methods differ most), lowest
  // seed: one run per method (fusion), or per method (its first fusion) when that is too many.
  // Fig. 5 and Fig. 6 choose exactly these.
  function chooseDefaults() {
    choiceMade = true;
    const all = [...runs.values()].sort((a, b) => a.id - b.id);
    const modality = all[0].missing_modality;
    const rate = Math.max(...all.filter((r) => r.missing_modality === modality).map((r) => r.missing_rate));
    const candidates = all.filter((r) => r.missing_modality === modality && r.missing_rate === rate);
    const lowestSeed = (runsToPick, key) => {
      const picked = new Map();
      for (const run of runsToPick) {
        if (!picked.has(key(run)) || picked.get(key(run)).seed > run.seed) picked.set(key(run), run);
      }
      return [...picked.values()];
    };
    let picked = lowestSeed(candidates, (r) => `${r.method} ${r.fusion}`);
    if (picked.length > 6) {
      const firstFusion = new Map();
      for (const run of candidates) if (!firstFusion.has(run.method)) firstFusion.set(run.method, run.fusion);
      picked = lowestSeed(candidates.filter((r) => r.fusion === firstFusion.get(r.method)), (r) => r.method);
    }
    for (const run of picked.slice(0, 6)) chosen.add(run.id);
    for (const id of chosen) {
      const box = rows.get(id)?.querySelector("input.choose");
      if (box) box.checked = true;
    }
    resetCurves();
  }

  function toggleChosen(id, on, box) {
    if (on && chosen.size >= MAX_CHOSEN) { box.checked = false; return; }
    if (on) chosen.add(id); else chosen.delete(id);
    history.replaceState(null, "", chosen.size ? `#runs=${[...chosen].join(",")}` : location.pathname);
    if (on) { refreshChosen(id); } else {
      document.querySelector(`#confusion-grid [data-run-id="${id}"]`)?.remove();
      confusionShown.delete(id);
      resetCurves();
    }
  }

  function resetCurves() {
    const div = document.getElementById("chart-curves");
    missmodCharts.purge(div);
    const metric = document.getElementById("curve-metric").value;
    curves = new missmodCharts.CurveChart(div, { title: metric.replace("_", " "), percent: metric.endsWith("accuracy") });
    cursors.clear();
    const ordered = [...chosen].sort((a, b) => a - b);
    for (const id of ordered) if (runs.has(id)) curves.ensure(id, `#${id} ${runs.get(id).name}`);
    return Promise.all(ordered.map((id) => refreshChosen(id)));
  }

  // Appends the run's new points to the curves and draws its matrix once it has one.
  function refreshChosen(id) {
    if (loading.has(id)) { loading.get(id).again = true; return loading.get(id).promise; }
    const entry = { again: false };
    entry.promise = (async () => {
      do {
        entry.again = false;
        const run = runs.get(id);
        if (!run || !chosen.has(id)) break;
        const metric = document.getElementById("curve-metric").value;
        // Not awaited, and asked for beside the points (not after them): the matrices sit below
        // the fold and are drawn when the browser is idle.
        if (run.state === "succeeded" || run.state === "cancelled") showConfusion(run);
        const page = await missmodCharts.runMetrics(id, cursors.has(id) ? cursors.get(id) : null);
        if (!chosen.has(id)) break;
        cursors.set(id, page.cursor);
        curves.append(id, `#${id} ${run.name}`, page.points.filter((p) => p.name === metric));
      } while (entry.again);
      loading.delete(id);
    })();
    loading.set(id, entry);
    return entry.promise;
  }

  async function showConfusion(run) {
    if (confusionShown.has(run.id)) return;
    confusionShown.add(run.id);
    const grid = document.getElementById("confusion-grid");
    const div = missmod.el("div", null, { class: "chart confusion", "data-run-id": run.id });
    const after = [...grid.children].find((other) => Number(other.dataset.runId) > run.id);
    grid.insertBefore(div, after || null);  // in run order, whatever order they load in
    const title = `#${run.id} ${run.method} (${run.fusion}), ${run.missing_modality} ` +
                  `${(100 * run.missing_rate).toFixed(0)}%, seed ${run.seed}: ${missmod.percent(run.test_accuracy, 1)}`;
    if (!await missmodCharts.runConfusion(div, run.id, { title, wanted: () => chosen.has(run.id), cells: false })) {
      confusionShown.delete(run.id);
      div.remove();
    }
  }

  // --- table and trend ---------------------------------------------------------------------

  const referenceChoice = document.getElementById("paired-reference");
  const testChoice = document.getElementById("paired-test");
  let choicesFor = "";

  // The reference can be any row, or any method (its best row in each column).
  function fillReferenceChoices(table) {
    const labels = table.rows.map((r) => r.label);
    const methods = [...new Set(table.rows.map((r) => r.method))].filter((m) => !labels.includes(m));
    const key = JSON.stringify([labels, methods]);
    if (key === choicesFor) return;
    choicesFor = key;
    const current = referenceChoice.value;
    referenceChoice.replaceChildren(
      missmod.el("option", "the best baseline of each column", { value: "" }),
      ...methods.map((m) => missmod.el("option", `${m} (its best row per column)`, { value: m })),
      ...labels.map((label) => missmod.el("option", label, { value: label })));
    referenceChoice.value = [...referenceChoice.options].some((o) => o.value === current) ? current : "";
  }

  function comparisonQuery() {
    const params = new URLSearchParams();
    if (referenceChoice.value) params.set("reference", referenceChoice.value);
    if (testChoice.value !== "seeds") params.set("test", testChoice.value);
    return params.toString();
  }

  function signed(value, digits = 2) {
    return `${value >= 0 ? "+" : "−"}${Math.abs(100 * value).toFixed(digits)}`;
  }

  // The cell against its column's reference: Δ mean [95% interval], wins/ties/losses, the mark.
  function pairedLine(cell, td) {
    if (cell.is_reference) {
      td.classList.add("reference");
      td.dataset.mark = "reference";
      return missmod.el("div", "reference", { class: "paired", title: "the reference of this column's comparisons" });
    }
    if (cell.pairing_verified === false) {
      return missmod.el("div", "pairing not verified", {
        class: "paired", title: "a run trained elsewhere that declared no split shown to be missmod's: not paired by seed" });
    }
    const p = cell.paired;
    if (!p) return null;
    td.dataset.diff = String(p.diff);
    td.dataset.wins = String(p.wins);
    td.dataset.ties = String(p.ties);
    td.dataset.losses = String(p.losses);
    td.dataset.pAdjusted = String(p.p_adjusted);
    if (p.mark) { td.dataset.mark = p.mark; td.classList.add(`significant-${p.mark}`); }
    const interval = p.ci_low === null ? "" : ` [${signed(p.ci_low, 1)}, ${signed(p.ci_high, 1)}]`;
    const line = missmod.el("div", null, { class: "paired" });
    line.append(missmod.el("span", `Δ ${signed(p.diff)}${interval}`, { class: "diff" }),
                missmod.el("span", ` ${p.wins}/${p.ties}/${p.losses}`, { class: "wtl", title: "wins/ties/losses over seeds" }));
    if (p.mark) line.append(missmod.el("span", p.mark === "win" ? " ▲" : " ▼", { class: "mark", title: `significant ${p.mark}` }));
    const tests = [`seeds: exact sign-flip p ${p.p_seeds.toPrecision(2)}`];
    if (p.p_samples !== null) tests.push(`test samples: McNemar p ${p.p_samples.toPrecision(2)} (discordant ${p.discordant.join(" vs ")})`);
    const adjusted = p.p_adjusted === null ? "outside Holm's family (trained elsewhere)"
      : `Holm-adjusted p ${p.p_adjusted.toPrecision(2)}`;
    line.title = `vs ${p.reference} over ${p.n} seeds — ${tests.join("; ")}; ${adjusted}`
      + (p.seeds_needed ? `; about ${p.seeds_needed} seeds would detect this difference` : "");
    return line;
  }

  function showComparison(comparison) {
    const note = document.getElementById("paired-note");
    note.textContent = comparison ? comparison.note : "";
    page.dataset.pairedTests = comparison ? String(comparison.tests) : "0";
    const query = comparisonQuery();
    for (const [id, format] of [["export-csv", "csv"], ["export-latex", "latex"]]) {
      document.getElementById(id).href = `/api/sweeps/${sweepId}/table?format=${format}${query ? `&${query}` : ""}`;
    }
  }

  function showTable(table) {
    const head = document.querySelector("#sweep-table thead");
    const body = document.querySelector("#sweep-table tbody");
    const groups = [];
    for (const column of table.columns) {
      const label = column.missing_modality + (column.role ? ` (${column.role})` : "") + " missing";
      if (groups.length && groups[groups.length - 1].label === label) groups[groups.length - 1].span += 1;
      else groups.push({ label, span: 1 });
    }
    const top = document.createElement("tr");
    top.append(missmod.el("th", "Method (fusion)", { rowspan: "2" }),
               ...groups.map((g) => missmod.el("th", g.label, { colspan: String(g.span), class: "group" })));
    const rates = document.createElement("tr");
    rates.append(...table.columns.map((c) => missmod.el("th", `${+(100 * c.missing_rate).toFixed(2)}%`)));
    head.replaceChildren(top, rates);
    body.replaceChildren(...table.rows.map((row) => {
      const tr = document.createElement("tr");
      tr.append(missmod.el("th", row.label, { scope: "row" }));
      row.cells.forEach((cell, i) => {
        const td = missmod.el("td", null, { "data-column": table.columns[i].label, "data-n": String(cell.n) });
        if (cell.n) {
          td.append(missmod.el("span", missmod.meanStd(cell.mean, cell.std), { class: "value" }));
          td.append(missmod.el("span", ` n=${cell.n}`, { class: "n" }));
          td.dataset.mean = String(cell.mean);
        } else {
          td.append(missmod.el("span", cell.pending ? "…" : "–", { class: "value muted" }));
        }
        if (cell.pending && cell.n) td.append(missmod.el("span", ` +${cell.pending}`, { class: "n", title: "runs still to finish" }));
        const paired = pairedLine(cell, td);
        if (paired) td.append(paired);
        if (cell.best) td.classList.add("best");
        if (cell.paper !== null) {
          td.append(missmod.el("div", `paper ${(100 * cell.paper).toFixed(2)}`, { class: "paper" }));
          td.dataset.paper = String(cell.paper);
        }
        tr.append(td);
      });
      return tr;
    }));
    if (table.paper) document.getElementById("paper-context").textContent = table.paper.note;
    fillReferenceChoices(table);
    showComparison(table.comparison);
  }

  function showTrend(trend) {
    const container = document.getElementById("trend-charts");
    const modalities = [...new Set(trend.series.map((s) => s.missing_modality))];
    // every chart's box first, so none is drawn at a width the next one takes away
    for (const modality of modalities) {
      if (!container.querySelector(`[data-modality="${CSS.escape(modality)}"]`)) {
        container.append(missmod.el("div", null, { class: "chart trend", "data-modality": modality }));
      }
    }
    for (const modality of modalities) {
      const div = container.querySelector(`[data-modality="${CSS.escape(modality)}"]`);
      const series = trend.series.filter((s) => s.missing_modality === modality);
      const role = series[0].role;
      missmodCharts.trend(div, series, `${modality}${role ? ` (${role})` : ""} missing`);
    }
  }

  function showSummary(summary) {
    showTable(summary.table);
    showTrend(summary.trend);
    if (!summaryShown) performance.mark("summary-shown");
    summaryShown = true;
  }

  // The stream's summaries compare with the default reference by the seed-level test; another
  // choice is one request for the table and the trend together.
  let summaryRequest = 0;
  async function summaryFor(streamed) {
    const query = comparisonQuery();
    if (!query && streamed) { showSummary(streamed); return; }
    const request = ++summaryRequest;
    const { ok, body } = await missmod.api(`/api/sweeps/${sweepId}/summary${query ? `?${query}` : ""}`);
    if (ok && request === summaryRequest) showSummary(body);
  }
  referenceChoice.addEventListener("change", () => summaryFor(null));
  testChoice.addEventListener("change", () => summaryFor(null));

  // --- actions -----------------------------------------------------------------------------

  document.getElementById("curve-metric").addEventListener("change", () => resetCurves());

  document.getElementById("delete-sweep").addEventListener("click", async () => {
    const total = progress ? progress.total : runs.size;
    const name = document.getElementById("sweep-name").textContent;
    if (!window.confirm(`Delete the sweep “${name}” and its ${total} runs, with their metrics? This cannot be undone.`)) return;
    const { ok, status } = await missmod.api(`/api/sweeps/${sweepId}`, { method: "DELETE" });
    if (ok || status === 404) window.location.assign("/sweeps");
  });

  document.getElementById("retry-sweep").addEventListener("click", async () => {
    const failed = progress ? progress.failed + progress.cancelled : 0;
    if (!window.confirm(`Queue the ${failed} failed or cancelled runs of this sweep again?`)) return;
    const { ok } = await missmod.api(`/api/sweeps/${sweepId}/retry`, { method: "POST" });
    if (ok) window.location.reload();
  });

  // --- the stream --------------------------------------------------------------------------

  // Drawn: the table, the run list, the chosen runs' data, and every chart in view (the charts
  // further down are drawn when the browser is idle, or when scrolled to).
  async function markDrawn() {
    if (page.dataset.drawn || !summaryShown || !runsShown) return;
    missmodCharts.load();
    await Promise.all([...loading.values()].map((entry) => entry.promise));
    await missmodCharts.inViewDrawn();
    if (page.dataset.drawn) return;
    page.dataset.drawn = "true";
    page.dataset.drawnAt = String(performance.now());
  }

  resetCurves();
  // Reopened with backoff when the API goes away (restarting, a 503), "reconnecting…" shown
  // meanwhile (common.js): each opening sends the whole state again (the runs, the progress and
  // the summary), and the chosen runs' curves resume from their cursors.
  missmod.liveStream(`/api/sweeps/${sweepId}/stream`, {
    runs(data) { showRuns(data); markDrawn(); },
    progress: showProgress,
    async summary(data) { await summaryFor(data); markDrawn(); },
    end() { page.dataset.streamEnded = "true"; },
    gone() { document.getElementById("sweep-progress").textContent = "This sweep was deleted."; },
  }, {
    beforeReopen: () => missmod.api(`/api/sweeps/${sweepId}`),  // a signed-out browser: to sign in
    onOpen: (connections) => { page.dataset.streamConnections = String(connections); },
  });
  // plotly.js runs once the table and the run list are shown and the chosen runs' points are
  // asked for (markDrawn), or after a second, whatever comes first: the points arrive while the
  // browser parses it.
  setTimeout(() => missmodCharts.load(), 1000);
})();
