// Run page: curves grow live from the run's Server-Sent Events stream (points are appended,
// never redrawn); the confusion matrix appears when the run ends.
"use strict";

(() => {
  const page = document.getElementById("run-page");
  const runId = page.dataset.runId;
  const charts = {
    accuracy: { div: document.getElementById("chart-accuracy"), traces: new Map(), title: "Accuracy", range: [0, 1] },
    loss: { div: document.getElementById("chart-loss"), traces: new Map(), title: "Loss" },
  };
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  let confusionShown = false;

  function chartFor(name) {
    return name.endsWith("accuracy") ? charts.accuracy : charts.loss;
  }

  function layout(chart) {
    return {
      margin: { t: 40, r: 10, b: 45, l: 50 },
      xaxis: { title: { text: "epoch" }, rangemode: "tozero" },
      yaxis: chart.range ? { range: chart.range, tickformat: ".0%" } : { rangemode: "tozero" },
      legend: { orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom" },
      title: { text: chart.title, x: 0.02, xanchor: "left" },
      shapes: [],
    };
  }

  // plotly.js runs once the run's history is asked for (see charts.js); the charts are made once
  // it is there. Until then points and the best epoch wait here.
  let chartsMade = false;
  let heldPoints = [];
  let heldBestEpoch = null;
  missmodCharts.plotlyReady.then(() => {
    for (const chart of Object.values(charts)) Plotly.newPlot(chart.div, [], layout(chart), PLOT_CONFIG);
    chartsMade = true;
    addPoints(heldPoints);
    heldPoints = [];
    if (heldBestEpoch !== null) markBestEpoch(heldBestEpoch);
  });

  function addPoints(points) {
    if (!chartsMade) { heldPoints.push(...points); return; }
    const byName = new Map();
    for (const p of points) {
      if (!byName.has(p.name)) byName.set(p.name, { x: [], y: [] });
      byName.get(p.name).x.push(p.epoch);
      byName.get(p.name).y.push(p.value);
    }
    for (const [name, series] of byName) {
      const chart = chartFor(name);
      if (!chart.traces.has(name)) {
        chart.traces.set(name, chart.traces.size);
        Plotly.addTraces(chart.div, { x: [], y: [], name, mode: "lines+markers", type: "scatter", marker: { size: 4 } });
      }
      Plotly.extendTraces(chart.div, { x: [series.x], y: [series.y] }, [chart.traces.get(name)]);
    }
  }

  function markBestEpoch(epoch) {
    if (!chartsMade) { heldBestEpoch = epoch; return; }
    for (const chart of Object.values(charts)) {
      Plotly.relayout(chart.div, {
        shapes: [{ type: "line", x0: epoch, x1: epoch, yref: "paper", y0: 0, y1: 1,
                   line: { dash: "dot", width: 1, color: "#888" } }],
      });
    }
  }

  async function showConfusion() {
    if (confusionShown) return;
    const { ok, body } = await missmod.api(`/api/runs/${runId}/confusion`);
    if (!ok) return;
    confusionShown = true;
    document.getElementById("confusion-waiting")?.remove();
    missmodCharts.confusion(document.getElementById("chart-confusion"), body);
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
    if (info.device) rows.push(["Device", info.device]);
    if (info.precision) rows.push(["Precision", info.precision]);
    if (info.seconds !== undefined) rows.push(["Training time", `${info.seconds.toFixed(1)} s`]);
    list.replaceChildren(...rows.flatMap(([k, v]) => [missmod.el("dt", k), missmod.el("dd", v)]));
  }

  function showRun(run) {
    const state = document.getElementById("run-state");
    // Saved and queued while the broker was down: it is sent as soon as the broker is back.
    state.textContent = run.awaiting_broker ? "waiting for the broker" : run.state;
    state.dataset.state = run.awaiting_broker ? "awaiting-broker" : run.state;
    state.title = run.awaiting_broker ? run.broker_error || "" : "";
    const stage = run.info && run.info.stage;
    document.getElementById("run-progress").textContent = stage && run.state === "running"
      ? `${stage}: ${run.info.stage_done} of ${run.info.stage_total} clips`
        + (run.info.failed_clips ? ` (${run.info.failed_clips} skipped)` : "")
      : run.awaiting_broker
        ? "saved and queued; waiting for the broker, it is sent as soon as the broker is back"
        : `epoch ${run.epochs_completed} of ${run.spec.epochs}`;
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
  // twice. After a dropped connection (the API restarting) the browser reconnects by itself,
  // sending the last event id; an error answer (503 while the database is down, a proxy's 502)
  // closes an EventSource for good, so then a new one is opened from the cursor.
  let cursor = 0;
  let connections = 0;
  function openStream() {
    const stream = new EventSource(`/api/runs/${runId}/stream?after=${cursor}`);
    stream.addEventListener("open", () => { page.dataset.streamConnections = String(++connections); });
    stream.addEventListener("metrics", (event) => {
      const data = JSON.parse(event.data);
      cursor = Math.max(cursor, data.cursor);
      addPoints(data.points);
      showSystem();
    });
    stream.addEventListener("run", (event) => showRun(JSON.parse(event.data)));
    stream.addEventListener("end", () => { stream.close(); page.dataset.streamEnded = "true"; });
    stream.addEventListener("gone", () => stream.close());
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED && !page.dataset.streamEnded) {
        setTimeout(async () => {
          await missmod.api(`/api/runs/${runId}`);  // sends a signed-out browser to the sign-in page
          openStream();
        }, 2000);
      }
    });
  }
  (async () => {
    const history = missmod.api(`/api/runs/${runId}/metrics?max_points=2000`);
    missmodCharts.load();
    const { ok, body } = await history;
    if (ok) {
      cursor = body.cursor;
      addPoints(body.points.sort((a, b) => a.epoch - b.epoch));
    }
    openStream();
    showSystem();
  })();
})();
