// Study page: reads GET /api/studies/{id} (arms, counts), its trials, its figures (optuna.visualization's,
// Plotly JSON drawn as they come: `scatter` and `bar` traces, which the pages' plotly.js bundle holds),
// the final table and the selection rules; polls while the study is not ended.
"use strict";

(() => {
  const page = document.getElementById("study-page");
  const studyId = page.dataset.studyId;
  const armChoice = document.getElementById("arm-choice");
  let study = null;
  let figuresFor = "";  // arm and trial counts the figures were drawn for
  let finalShown = "";
  let rulesShown = false;

  const percent = (value) => missmod.percent(value);
  const params = (p) => (p ? Object.entries(p).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toPrecision(3) : v}`).join(", ") : "–");

  const cellsRow = missmod.row;

  // --- the study and its arms ------------------------------------------------------------------

  function showStudy(s) {
    study = s;
    const t = s.trials;
    const state = document.getElementById("study-state");
    state.textContent = s.state;
    state.dataset.state = s.state;
    page.dataset.state = s.state;
    for (const key of ["complete", "pruned", "failed", "running"]) page.dataset[key] = String(t[key]);
    document.getElementById("study-progress").textContent =
      `${t.total} of ${t.budget} trials asked (${s.trials_per_arm} per arm, ${s.arms.length} arms): ${t.complete} complete · ` +
      `${t.pruned} pruned · ${t.failed} failed · ${t.running} running — ${s.state}` +
      ` · the study's own overhead ${s.overhead_seconds.toFixed(2)} s`;
    const bar = document.getElementById("trials-bar");
    const segments = [["succeeded", t.complete], ["cancelled", t.pruned], ["failed", t.failed], ["running", t.running],
                      ["queued", t.budget - t.total]];
    bar.replaceChildren(...segments.filter(([, n]) => n > 0).map(([cls, n]) => {
      const segment = missmod.el("span", null, { class: "segment", "data-state": cls });
      segment.style.flexGrow = String(n);
      return segment;
    }));
    const pruner = s.pruner.name === "none" ? "no pruning" : `${s.pruner.name} pruner`;
    document.getElementById("study-setup").textContent =
      `${s.dataset}; ${s.sampler.name.toUpperCase()} sampler (seed ${s.sampler.seed}), ${pruner}, ` +
      `${s.parallel_trials} trials at a time, trials with seed ${s.trial_seed}, final runs over ${s.final_seeds} seeds; ` +
      `selection rule ${s.selection_rule}; fixed: ${params(s.base_spec)}`;
    const sweep = document.getElementById("final-sweep");
    sweep.hidden = s.final_sweep_id === null;
    if (s.final_sweep_id !== null) sweep.href = `/sweeps/${s.final_sweep_id}`;
    document.getElementById("cancel-study").hidden = !(s.state === "searching" || s.state === "final");

    document.querySelector("#arms-table tbody").replaceChildren(...s.arms.map((arm) => {
      const tr = cellsRow([arm.index, arm.label, `${arm.missing_modality} ${+(100 * arm.missing_rate).toFixed(2)}%`,
                           `${arm.asked}/${s.trials_per_arm}`, arm.complete, arm.pruned, arm.failed,
                           arm.best_value === null ? "–" : `${percent(arm.best_value)} (trial ${arm.best_trial})`,
                           params(arm.best_params)]);
      tr.dataset.arm = String(arm.index);
      return tr;
    }));
    if (armChoice.options.length !== s.arms.length) {
      const current = armChoice.value || "0";
      armChoice.replaceChildren(...s.arms.map((arm) => missmod.el("option",
        `${arm.label}, ${arm.missing_modality} ${+(100 * arm.missing_rate).toFixed(2)}%`, { value: String(arm.index) })));
      armChoice.value = current;
    }
  }

  // --- one arm: its figures and its trials --------------------------------------------------------

  async function showTrials() {
    const arm = armChoice.value || "0";
    const { ok, body } = await missmod.api(`/api/studies/${studyId}/trials?arm=${arm}`);
    if (!ok) return;
    document.querySelector("#trials-table tbody").replaceChildren(...body.map((trial) => {
      const run = trial.run_id === null ? "–" : missmod.el("a", `#${trial.run_id}`, { href: `/runs/${trial.run_id}` });
      const state = missmod.el("span", trial.state, { class: "state", "data-state": { complete: "succeeded",
        pruned: "cancelled", failed: "failed", running: "running" }[trial.state] });
      const test = trial.test_hidden ? missmod.el("span", "hidden until finished", { class: "muted small test-hidden" })
                                     : percent(trial.test_accuracy);
      const tr = cellsRow([trial.number, state, run, percent(trial.value), trial.epochs,
                           trial.pruned_epoch ?? "–", test, params(trial.params)]);
      tr.dataset.trial = String(trial.number);
      tr.dataset.state = trial.state;
      return tr;
    }));
  }

  async function showFigures(force = false) {
    const arm = armChoice.value || "0";
    const armInfo = study && study.arms[Number(arm)];
    const key = armInfo ? `${arm}:${armInfo.asked}:${armInfo.complete}:${armInfo.pruned}:${armInfo.failed}:${study.trials.running}` : arm;
    if (!force && key === figuresFor) return;
    figuresFor = key;
    const { ok, body } = await missmod.api(`/api/studies/${studyId}/plots?arm=${arm}`);
    if (!ok) return;
    await missmodCharts.load();
    for (const div of document.querySelectorAll("#study-charts .chart")) {
      const figure = body.figures[div.dataset.figure];
      div.dataset.figureState = typeof figure === "string" ? "empty" : "drawn";
      if (typeof figure === "string") {
        missmodCharts.purge(div);
        div.replaceChildren(missmod.el("p", `${div.dataset.figure}: ${figure}`, { class: "muted chart-note" }));
        continue;
      }
      div.querySelector(".chart-note")?.remove();
      const layout = { ...figure.layout, margin: { t: 40, r: 20, b: 50, l: 60 }, font: { size: 11 },
                       paper_bgcolor: "#fff", plot_bgcolor: "#fafbfc", uirevision: "keep" };
      Plotly.react(div, figure.data, layout, missmodCharts.CONFIG);
      div.dataset.traces = figure.data.map((t) => t.type || "scatter").join(",");
      // As plotly.js drew them: a type its bundle lacks would be drawn as scatter.
      div.dataset.drawnTraces = (div._fullData || []).map((t) => t.type).join(",");
    }
    page.dataset.figuresDrawn = key;
  }

  armChoice.addEventListener("change", () => { showTrials(); showFigures(true); });

  // --- the final table and the selection rules --------------------------------------------------

  function signed(value) {
    return `${value >= 0 ? "+" : "−"}${Math.abs(100 * value).toFixed(2)}`;
  }

  async function showFinal() {
    if (!study || study.final_sweep_id === null) return;
    const { ok, body } = await missmod.api(`/api/studies/${studyId}/table`);
    if (!ok) return;
    document.getElementById("final-note").hidden = true;
    document.getElementById("paired-note").textContent = body.comparison ? body.comparison.note : "";
    const head = document.querySelector("#final-table thead");
    head.replaceChildren(cellsRow(["Candidate", ...body.columns.map((c) => c.label)]));
    document.querySelector("#final-table tbody").replaceChildren(...body.rows.map((row) => {
      const tr = document.createElement("tr");
      tr.append(missmod.el("th", row.label, { scope: "row" }));
      row.cells.forEach((cell, i) => {
        const td = missmod.el("td", null, { "data-n": String(cell.n) });
        td.append(missmod.el("span", cell.n ? missmod.meanStd(cell.mean, cell.std) : (cell.pending ? "…" : "–"), { class: "value" }));
        if (cell.n) td.append(missmod.el("span", ` n=${cell.n}`, { class: "n" }));
        if (cell.best) td.classList.add("best");
        if (cell.is_reference) td.append(missmod.el("div", "reference", { class: "paired" }));
        else if (cell.paired) {
          const p = cell.paired;
          const interval = p.ci_low === null ? "" : ` [${signed(p.ci_low)}, ${signed(p.ci_high)}]`;
          td.append(missmod.el("div", `Δ ${signed(p.diff)}${interval} ${p.wins}/${p.ties}/${p.losses}` +
                               (p.mark ? (p.mark === "win" ? " ▲" : " ▼") : ""), { class: "paired" }));
        }
        const h = row.hyperparameters[i];
        td.append(missmod.el("div", h.trial === null ? "no completed trial" :
          `trial ${h.trial}, val. ${percent(h.value)}: ${params(h.params)}`, { class: "hyperparameters muted small" }));
        tr.append(td);
      });
      return tr;
    }));
    page.dataset.finalTable = String(body.rows.length);
    finalShown = study.state;
  }

  async function showRules() {
    if (!study || study.state !== "finished" || rulesShown) return;
    rulesShown = await missmodRules.show(document.getElementById("section-rules"),
                                         `/api/studies/${studyId}/selection-rules`);
  }

  // --- actions -------------------------------------------------------------------------------

  document.getElementById("cancel-study").addEventListener("click", async () => {
    if (!window.confirm("Cancel this study? No more trials are asked; the runs not ended are cancelled.")) return;
    await missmod.api(`/api/studies/${studyId}/cancel`, { method: "POST" });
    poll.now();
  });

  document.getElementById("delete-study").addEventListener("click", async () => {
    if (!window.confirm("Delete this study with all its trials' runs and its final runs? This cannot be undone.")) return;
    const { ok, status } = await missmod.api(`/api/studies/${studyId}`, { method: "DELETE" });
    if (ok || status === 404) window.location.assign("/studies");
  });

  // --- polling -------------------------------------------------------------------------------

  // Every 2 s while the study is not ended; while the API is away (restarting, a 5xx) the poll
  // backs off and the page says "reconnecting…" (common.js: missmod.livePoll).
  async function refresh() {
    const { ok, status, body } = await missmod.api(`/api/studies/${studyId}`);
    if (status >= 500) return "retry";
    if (!ok) {
      if (status === 404) document.getElementById("study-progress").textContent = "This study was deleted.";
      return false;
    }
    showStudy(body);
    // The final table while its runs train, then once more when the study is finished.
    const finalDue = body.final_sweep_id !== null && (body.state === "final" || finalShown !== body.state);
    await Promise.all([showTrials(), showFigures(), finalDue ? showFinal() : null, showRules()]);
    page.dataset.loaded = "true";
    return body.state === "searching" || body.state === "final";
  }
  const poll = missmod.livePoll(refresh, 2000);
})();
