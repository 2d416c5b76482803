// Run page: curves grow live from the run's Server-Sent Events stream (points are appended,
// never redrawn), against the epoch or the optimiser step (a switch); progress inside the epoch
// (step, samples/s, ETA) while it runs; the confusion matrix appears when the run ends.
"use strict";

(() => {
  const page = document.getElementById("run-page");
  const runId = page.dataset.runId;
  const charts = {
    accuracy: { div: document.getElementById("chart-accuracy"), traces: new Map(), title: "Accuracy", range: [0, 1] },
    loss: { div: document.getElementById("chart-loss"), traces: new Map(), title: "Loss" },
    rate: { div: document.getElementById("chart-rate"), traces: new Map(), title: "Learning rate and samples/s",
            y2: "samples/s" },
  };
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  // Per series, its points as columns ({epoch, step, value}), as GET …/metrics?format=columns gives
  // them; the traces' x is derived from them for the chosen axis.
  const series = new Map();
  let axis = "epoch";
  let stepsPerEpoch = Number(page.dataset.stepsPerEpoch) || null;
  let bestEpoch = null;

  // Per-step series are named step/…; the learning rate and throughput get their own chart.
  const isStepSeries = (name) => name.startsWith("step/");
  function chartFor(name) {
    if (name === "step/lr" || name === "step/samples_per_second") return charts.rate;
    return name.endsWith("accuracy") ? charts.accuracy : charts.loss;
  }

  // On the epoch axis a per-step point sits at its fraction of the epochs (step / steps per
  // epoch), so the step curve and the per-epoch points line up.
  function xOf(name, s) {
    if (axis === "step") return s.step;
    if (isStepSeries(name) && stepsPerEpoch) return s.step.map((step) => step / stepsPerEpoch);
    return s.epoch;
  }

  // The learning rate gets a scale of its own, from its span (Plotly's autorange puts a constant
  // 0.001 on −1…1, a flat line at 0), logarithmic once it spans a decade; samples/s has the
  // right-hand axis. The span grows with the points, so a live run's axis follows its schedule.
  const LR = "step/lr";
  let lrSpan = null; // [lowest, highest] finite value of step/lr
  function widenLrSpan(values) {
    for (const v of values) {
      if (v === null || !Number.isFinite(v)) continue;
      lrSpan = lrSpan ? [Math.min(lrSpan[0], v), Math.max(lrSpan[1], v)] : [v, v];
    }
  }
  function lrAxis() {
    const axis = { title: { text: "learning rate" }, exponentformat: "e" };
    if (!lrSpan) return axis;
    const [lo, hi] = lrSpan;
    if (lo > 0 && hi / lo >= 10) return { ...axis, type: "log", range: [Math.log10(lo) - 0.1, Math.log10(hi) + 0.1] };
    const pad = hi > lo ? (hi - lo) * 0.1 : Math.abs(hi) * 0.5 || 1;
    return { ...axis, type: "linear", range: [lo >= 0 ? Math.max(0, lo - pad) : lo - pad, hi + pad] };
  }
  let lrAxisShown = null;
  function followLrSpan() {
    const axis = lrAxis();
    if (JSON.stringify(axis) === lrAxisShown) return;
    lrAxisShown = JSON.stringify(axis);
    Plotly.relayout(charts.rate.div, { yaxis: axis });
  }

  function layout(chart) {
    const x = axis === "step" ? bestEpoch && stepsPerEpoch ? bestEpoch * stepsPerEpoch : null : bestEpoch;
    const result = {
      margin: { t: 40, r: chart.y2 ? 60 : 10, b: chart.y2 ? 85 : 45, l: 55 },
      xaxis: { title: { text: axis === "step" ? "step" : "epoch" }, rangemode: "tozero" },
      yaxis: chart.range ? { range: chart.range, tickformat: ".0%" } : chart.y2 ? lrAxis() : { rangemode: "tozero" },
      yaxis2: chart.y2 ? { title: { text: chart.y2 }, overlaying: "y", side: "right", rangemode: "tozero" } : undefined,
      // Two axes' legends would cover the title above the plot: below it instead.
      legend: chart.y2 ? { orientation: "h", x: 0, y: -0.3, yanchor: "top" }
        : { orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom" },
      title: { text: chart.title, x: 0.02, xanchor: "left" },
      shapes: x === null ? [] : [{ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1,
                                   line: { dash: "dot", width: 1, color: "#888" } }],
      uirevision: axis, // keep the user's zoom until the axis changes
    };
    if (!chart.y2) delete result.yaxis2;
    return result;
  }

  // SVG up to a few thousand points per series (the history comes thinned to 1,500: SVG draws
  // that faster than WebGL starts, above all on a machine without a GPU); a series that grows
  // longer while the page is open is redrawn with WebGL (scattergl), which draws 100,000 points
  // at once. Three charts stay far below the browser's limit of WebGL contexts.
  const WEBGL_ABOVE = 8000;
  // A marker per point only for a short run's per-epoch curves: each SVG marker is an element
  // Plotly styles one at a time, and 1,000 epochs × 5 series of them took 8× as long to draw
  // as their lines (bench/long_curves.py). Decided by the run's epochs, so a live curve keeps
  // its look as it grows.
  const MARKERS_UP_TO = 100;
  const markers = (Number(page.dataset.epochs) || 0) <= MARKERS_UP_TO;
  function trace(name) {
    const s = series.get(name);
    const step = isStepSeries(name);
    return {
      type: s.value.length > WEBGL_ABOVE ? "scattergl" : "scatter",
      mode: step || !markers || s.value.length > MARKERS_UP_TO ? "lines" : "lines+markers",
      // Copies: the series keep growing by push, and Plotly's extendTraces grows the trace's own arrays.
      name: missmodCharts.asText(name), x: xOf(name, s).slice(), y: s.value.slice(),
      marker: { size: 4 }, line: { width: step ? 1.2 : 2 },
      yaxis: name === "step/samples_per_second" ? "y2" : "y",
    };
  }

  // Each chart drawn once with all its traces (a chart redraws whole on every trace added).
  // plotly.js is loaded once the run's history is asked for (charts.js): the charts are made
  // with the history, and nothing is drawn before.
  let chartsMade = false;
  function redraw() {
    if (!chartsMade) return Promise.resolve();
    lrAxisShown = JSON.stringify(lrAxis());
    const drawn = Object.values(charts).map((chart) => {
      const names = [...chart.traces.keys()];
      return Plotly.react(chart.div, names.map(trace), layout(chart), PLOT_CONFIG);
    });
    page.dataset.axis = axis;
    return Promise.all(drawn);
  }

  function setHistory(columnsByName) {
    for (const [name, columns] of columnsByName) {
      const chart = chartFor(name);
      series.set(name, columns);
      chart.traces.set(name, chart.traces.size);
      if (name === LR) widenLrSpan(columns.value);
    }
    chartsMade = true;
    return redraw();
  }

  // New points (a stream's batch): appended to their series, then to the traces (never
  // redrawn): one extendTraces (and at most one addTraces) per chart.
  function addColumns(columnsByName) {
    let switchToWebgl = false;
    const perChart = new Map(); // chart → { indices, x, y } of the traces it extends
    const added = new Map(); // chart → new traces
    for (const [name, columns] of columnsByName) {
      const chart = chartFor(name);
      if (name === LR) widenLrSpan(columns.value);
      if (!series.has(name)) {
        series.set(name, columns);
        chart.traces.set(name, chart.traces.size);
        if (!added.has(chart)) added.set(chart, []);
        added.get(chart).push(trace(name));
        continue;
      }
      const s = series.get(name);
      const before = s.value.length;
      for (let i = 0; i < columns.value.length; i++) {  // push(...x) would overflow the stack on big batches
        s.epoch.push(columns.epoch[i]);
        s.step.push(columns.step[i]);
        s.value.push(columns.value[i]);
      }
      if (before <= WEBGL_ABOVE && s.value.length > WEBGL_ABOVE) { switchToWebgl = true; continue; }
      if (!perChart.has(chart)) perChart.set(chart, { indices: [], x: [], y: [] });
      const update = perChart.get(chart);
      update.indices.push(chart.traces.get(name));
      update.x.push(xOf(name, columns));
      update.y.push(columns.value);
    }
    if (switchToWebgl) { redraw(); return; }
    for (const [chart, update] of perChart) Plotly.extendTraces(chart.div, { x: update.x, y: update.y }, update.indices);
    for (const [chart, traces] of added) Plotly.addTraces(chart.div, traces);
    if (columnsByName.has(LR)) followLrSpan();
  }

  // A fast run's stream sends batches faster than charts can be redrawn (a digits epoch takes
  // milliseconds): what arrives is gathered here and drawn at animation frames, so the main
  // thread never queues redraws the screen would not show. A frame redraws one chart (the one
  // waiting longest; each extendTraces or addTraces redraws its whole chart), so no frame's task
  // grows with the number of charts. Until the history is drawn, points wait here in order.
  let historyDrawn = false;
  let historyIsShown;
  const historyShown = new Promise((resolve) => { historyIsShown = resolve; });
  const incoming = [];
  const waiting = new Map(); // chart → Map(series name → columns) not drawn yet, in arrival order
  let frameAsked = false;
  function addPoints(points) {
    for (const p of points) incoming.push(p);
    askFrame();
  }
  function askFrame() {
    if (frameAsked || !historyDrawn) return;
    frameAsked = true;
    requestAnimationFrame(() => drawFrame());
  }
  let latestRun = null; // the newest `run` event not yet shown
  // `everything`: draw every chart now (the stream's end), not one per frame.
  function drawFrame(everything = false) {
    frameAsked = false;
    for (const p of incoming.splice(0)) {
      const chart = chartFor(p.name);
      if (!waiting.has(chart)) waiting.set(chart, new Map());
      const byName = waiting.get(chart);
      if (!byName.has(p.name)) byName.set(p.name, { epoch: [], step: [], value: [] });
      const s = byName.get(p.name);
      s.epoch.push(p.epoch);
      s.step.push(p.step || 0);
      s.value.push(p.value);
    }
    for (const [chart, byName] of waiting) {
      waiting.delete(chart);
      addColumns(byName);
      if (!everything) break;
    }
    if (latestRun) { const run = latestRun; latestRun = null; showRun(run); }
    page.dataset.framesDrawn = String(Number(page.dataset.framesDrawn || 0) + 1);
    if (waiting.size) askFrame();
  }

  function markBestEpoch(epoch) {
    if (bestEpoch === epoch) return;
    bestEpoch = epoch;
    for (const chart of Object.values(charts)) {
      if (chart.div.data) Plotly.relayout(chart.div, { shapes: layout(chart).shapes });
    }
  }

  for (const radio of document.querySelectorAll('input[name="x-axis"]')) {
    radio.addEventListener("change", () => {
      if (radio.checked && radio.value !== axis) {
        axis = radio.value;
        redraw();
      }
    });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h} h ${String(m).padStart(2, "0")} min` : m ? `${m} min ${String(r).padStart(2, "0")} s` : `${r} s`;
  }

  // Inside an epoch: step k of n, samples/s, and the time left in the epoch and in the run.
  function showStepProgress(run) {
    const box = document.getElementById("run-step-progress");
    const p = run.progress;
    box.hidden = !(run.state === "running" && p);
    if (box.hidden) return;
    document.getElementById("run-step").textContent = `step ${p.step} of ${p.steps} (epoch ${p.epoch} of ${p.epochs})`;
    document.getElementById("run-speed").textContent = p.samples_per_second === null || p.samples_per_second === undefined
      ? "–" : `${Math.round(p.samples_per_second).toLocaleString()} samples/s`;
    document.getElementById("run-eta-epoch").textContent = duration(p.eta_seconds);
    document.getElementById("run-eta-run").textContent = duration(p.run_eta_seconds);
    const done = p.epochs ? ((p.epoch - 1) + p.step / p.steps) / p.epochs : 0;
    document.getElementById("run-step-bar").style.width = `${(100 * Math.min(1, done)).toFixed(1)}%`;
  }

  async function showConfusion() {
    if (await missmodCharts.runConfusion(document.getElementById("chart-confusion"), runId)) {
      document.getElementById("confusion-waiting")?.remove();
    }
  }

  function showInfo(info, run) {
    const list = document.getElementById("run-info");
    if (!info) return;
    const rows = [];
    if (run.attempts > 1) {
      // Started more than once: its worker died (worker_losses) or was stopped for a redeploy.
      const resumed = info.resumed_from_epoch !== undefined ? `, resumed from epoch ${info.resumed_from_epoch}` : "";
      rows.push(["Restarts", `${run.attempts - 1} (worker lost ${run.worker_losses}×${resumed})`]);
    }
    if (info.n_train !== undefined)
      rows.push(["Training samples", `${info.n_train} (${info.n_train_complete} complete, ${info.n_train_missing} missing ${info.y_modality})`]);
    if (info.preprocessing) {
      const p = info.preprocessing;
      rows.push(["Preprocessing", `${p.videos} videos, ${p.segments} segments` + (p.failed ? `, ${p.failed} clip(s) skipped` : "")
        + (p.decoded_now ? ` (${p.decoded_now} decoded by this run, ${p.seconds.toFixed(1)} s)` : " (cached)")]);
    }
    if (info.accuracy_level === "group")
      rows.push(["Accuracy", `per video (${info.n_test_groups} test videos; segment probabilities averaged)`]);
    if (info.reference_set) rows.push(["Reference set S", info.reference_set_size ? `${info.reference_set} (${info.reference_set_size})` : info.reference_set]);
    if (info.bayes_test_accuracy) {
      const b = info.bayes_test_accuracy;
      rows.push(["Bayes-optimal (test)", `both ${missmod.percent(b.xy)}, ${info.x_modality} ${missmod.percent(b.x)}, ${info.y_modality} ${missmod.percent(b.y)}`]);
    }
    const options = Object.entries((run.spec && run.spec.method_options) || {});
    if (options.length) rows.push(["Method options", options.map(([k, v]) => `${k}=${v}`).join(", ")]);
    const pkg = info.method_package;
    if (pkg && pkg.distribution && pkg.distribution !== "missmod")
      rows.push(["Method package", `${pkg.distribution} ${pkg.version || ""}`.trim()]);
    if (info.device) rows.push(["Device", info.device]);
    if (info.precision) rows.push(["Precision", info.precision]);
    if (info.seconds !== undefined) rows.push(["Training time", `${info.seconds.toFixed(1)} s`]);
    list.replaceChildren(...rows.flatMap(([k, v]) => [missmod.el("dt", k), missmod.el("dd", v)]));
  }

  // The reproducibility record (training/reproducibility.py), in the order the server renders it.
  const ENVIRONMENT_LABELS = JSON.parse(document.getElementById("run-environment").dataset.labels || "[]");
  function showEnvironment(environment) {
    if (!environment || typeof environment !== "object") return;  // "not recorded", as rendered
    const rows = ENVIRONMENT_LABELS.map(([key, label]) => {
      const value = environment[key];
      return [label, value === null || value === undefined ? "–" : String(value)];
    });
    document.getElementById("run-environment").replaceChildren(
      ...rows.flatMap(([k, v]) => [missmod.el("dt", k), missmod.el("dd", v)]));
  }

  function showRun(run) {
    const state = document.getElementById("run-state");
    // Saved and queued while the broker was down: it is sent as soon as the broker is back.
    // Queued for a method no live worker can train (a plugin not installed on any worker).
    const noWorker = run.state === "queued" && run.waiting_for_worker;
    state.textContent = run.awaiting_broker ? "waiting for the broker" : noWorker ? "waiting for a worker" : run.state;
    state.dataset.state = run.awaiting_broker ? "awaiting-broker" : noWorker ? "awaiting-worker" : run.state;
    state.title = run.awaiting_broker ? run.broker_error || "" : noWorker ? run.waiting_for_worker : "";
    const stage = run.info && run.info.stage;
    document.getElementById("run-progress").textContent = stage && run.state === "running"
      ? `${stage}: ${run.info.stage_done} of ${run.info.stage_total} clips`
        + (run.info.failed_clips ? ` (${run.info.failed_clips} skipped)` : "")
      : run.awaiting_broker
        ? "saved and queued; waiting for the broker, it is sent as soon as the broker is back"
        : noWorker ? `queued: ${run.waiting_for_worker}` : `epoch ${run.epochs_completed} of ${run.spec.epochs}`;
    document.getElementById("run-test-accuracy").textContent = run.test_accuracy === null
      ? "–" : `${missmod.percent(run.test_accuracy)} (epoch ${run.best_epoch}, validation ${missmod.percent(run.val_accuracy)})`;
    document.getElementById("cancel-run").hidden = missmod.terminal(run.state) || run.cancel_requested;
    document.getElementById("retry-run").hidden = !(run.state === "failed" || run.state === "cancelled");
    const errorBox = document.getElementById("run-error");
    errorBox.hidden = !run.error;
    if (run.error) {
      document.getElementById("run-error-text").textContent = run.error;
      document.getElementById("run-error-detail").textContent = run.error_detail || "";
    }
    showInfo(run.info, run);
    showEnvironment(run.environment);
    showStepProgress(run);
    const steps = run.info && run.info.steps_per_epoch;
    if (steps && steps !== stepsPerEpoch) {
      stepsPerEpoch = steps;
      page.dataset.stepsPerEpoch = String(steps);  // as the server renders it for a run that has begun
      if (axis === "epoch" && [...series.keys()].some(isStepSeries)) redraw();
    }
    if (run.best_epoch && missmod.terminal(run.state)) markBestEpoch(run.best_epoch);
    if (run.state === "succeeded" || run.state === "cancelled") showConfusion();
  }

  // System metrics (GPU utilisation and memory, CPU, memory, samples/s): one figure per epoch,
  // read again when an epoch's points arrive (at most once a second).
  const SYSTEM_LABELS = {
    gpu_utilization: "GPU utilisation", gpu_memory_used: "GPU memory", gpu_memory_total: "GPU memory total",
    cpu_percent: "CPU", rss: "Memory (RSS)", samples_per_second: "Samples/s", threads: "CPU threads",
  };
  let systemLoadedAt = 0;
  async function showSystem() {
    if (Date.now() - systemLoadedAt < 1000) return;
    systemLoadedAt = Date.now();
    let answer;
    try {
      answer = await missmod.api(`/api/runs/${runId}/system`);
    } catch (_) {
      return; // the API is away (restarting): the next epoch's points bring the panel up to date
    }
    const { ok, body } = answer;
    if (!ok || !body || !Array.isArray(body.metrics) || !body.metrics.length) return;
    const rows = body.metrics.map((m) => {
      const value = body.latest[m.name];
      const shown = m.unit === "MiB" ? `${(value / 1024).toFixed(2)} GiB` : m.unit === "%" ? `${value.toFixed(0)}%`
        : `${value >= 100 ? value.toFixed(0) : value.toPrecision(3)} ${m.unit === "threads" ? "" : m.unit}`.trim();
      return [SYSTEM_LABELS[m.name] || m.name, shown, m.description];
    });
    const list = document.getElementById("run-system-figures");
    list.replaceChildren(...rows.flatMap(([k, v, title]) => [missmod.el("dt", k, { title }),
                                                             missmod.el("dd", v, { "data-metric": k })]));
    document.getElementById("run-system").hidden = false;
  }

  document.getElementById("cancel-run").addEventListener("click", async () => {
    if (!window.confirm("Stop this run at the end of its current epoch? Its metrics are kept.")) return;
    const { ok, body } = await missmod.api(`/api/runs/${runId}/cancel`, { method: "POST" });
    if (ok) showRun(body);
  });

  document.getElementById("retry-run").addEventListener("click", async () => {
    if (!window.confirm("Queue this run again with the same spec? Its current metrics and confusion matrix are cleared.")) return;
    const { ok } = await missmod.api(`/api/runs/${runId}/retry`, { method: "POST" });
    if (ok) window.location.reload();
  });

  document.getElementById("delete-run").addEventListener("click", async () => {
    const name = document.getElementById("run-name").textContent;
    if (!window.confirm(`Delete the run “${name}” with its metrics? This cannot be undone.`)) return;
    const { ok, status } = await missmod.api(`/api/runs/${runId}`, { method: "DELETE" });
    if (ok || status === 404) window.location.assign("/");
  });

  const annotations = document.getElementById("annotations");
  annotations.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = document.getElementById("annotations-status");
    missmod.clearErrors(annotations, null);
    const tags = annotations.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    const { ok, body } = await missmod.api(`/api/runs/${runId}`, {
      method: "PATCH", body: JSON.stringify({ tags, note: annotations.note.value }),
    });
    if (ok) {
      annotations.tags.value = body.tags.join(", ");
      status.textContent = "Saved.";
    } else {
      // Errors on one tag come as ["body", "tags", 2]: show them by the tags field.
      const detail = (body && Array.isArray(body.detail) ? body.detail : []).map((e) => ({ ...e, loc: e.loc.slice(0, 2) }));
      missmod.showErrors(annotations, null, detail);
      status.textContent = "Not saved.";
    }
  });

  // History first, thinned by the server for long runs; then the stream appends from its cursor.
  // The stream resumes after its cursor whenever it is reopened, so no point is missed or drawn
  // twice. A dropped connection (the API restarting) or an error answer (503 while the database
  // is down, a proxy's 502) shows "reconnecting…" and reopens it from the cursor, with backoff
  // (common.js: missmod.liveStream).
  let cursor = 0;
  function openStream() {
    missmod.liveStream(() => `/api/runs/${runId}/stream?after=${cursor}`, {
      metrics(data) {
        cursor = Math.max(cursor, data.cursor);
        addPoints(data.points);
        showSystem();
      },
      run(data) {
        // Shown with the next frame's points; until the charts are drawn, at once.
        if (historyDrawn) { latestRun = data; askFrame(); } else showRun(data);
      },
      end() {
        // Everything it sent is drawn before the page says it has ended.
        historyShown.then(() => { drawFrame(true); page.dataset.streamEnded = "true"; });
      },
      gone() {},
    }, {
      beforeReopen: () => missmod.api(`/api/runs/${runId}`),  // sends a signed-out browser to the sign-in page
      onOpen: (connections) => { page.dataset.streamConnections = String(connections); },
    });
  }
  // About two points per pixel of a chart's width: min/max thinning keeps every stretch's extremes.
  const HISTORY_POINTS = 1500;
  // The history as columns, each series thinned by the server to what a chart can show (its
  // extremes kept); a finished run's answer is cached by the browser (ETag) and by the server.
  (async () => {
    const history = missmod.api(`/api/runs/${runId}/metrics?format=columns&max_points=${HISTORY_POINTS}`);
    missmodCharts.load();
    const { ok, body } = await history;
    if (ok) cursor = body.cursor;
    openStream();  // at once: what it sends before the charts are drawn waits in `incoming`
    await missmodCharts.plotlyReady;
    await setHistory(ok ? Object.entries(body.series) : []);
    historyDrawn = true;
    askFrame();
    historyIsShown();
    page.dataset.historyLoaded = "true";  // and drawn
    showSystem();
  })();
})();
