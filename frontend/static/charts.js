// Charts shared by the sweep, compare and run pages. Every trace is SVG `scatter` (never
// `scattergl`): a page of many charts would otherwise run out of WebGL contexts (browsers
// allow about 16). Curves load once thinned by the server (extremes kept), then grow by
// appending points (Plotly.extendTraces), never by redrawing.
//
// Drawing fast: the page's head only preloads plotly.js (<link rel="preload" id="plotly-js">):
// it downloads at once but is run — a long task for the browser — only when the page calls
// load(), which the sweep page does once its first data is on screen and its next requests are
// sent, so the server answers while the browser parses plotly.js. A chart is drawn once
// plotly.js is there — at once when it is in the window, the others one at a time when the
// browser is idle, so what is on screen comes first and the rest never holds it up. A chart's
// div gets data-ready="true" once drawn.
"use strict";

const missmodCharts = (() => {
  const CONFIG = { responsive: true, displaylogo: false };

  // Plotly renders a subset of HTML in trace names, titles, tick labels and hover text (<a href>
  // links, <b>, <br>, <span style>) and fills %{…} in hover templates. Names from users and data
  // files (runs, methods, metrics, classes) go in as text: their markup characters as entities,
  // which Plotly shows as the characters they are.
  function asText(value) {
    return String(value ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/%/g, "&#37;");
  }

  let startLoading;
  const plotlyReady = new Promise((resolve, reject) => {
    startLoading = () => {
      if (window.Plotly) { resolve(); return; }
      const script = document.createElement("script");
      script.src = document.getElementById("plotly-js").href;
      performance.mark("plotly-asked");  // these marks say where a page's time goes (devtools, bench)
      script.addEventListener("load", () => { performance.mark("plotly-ready"); resolve(); });
      script.addEventListener("error", () => reject(new Error("plotly.js could not be loaded")));
      document.head.append(script);
    };
  });
  let loadAsked = false;
  // Run plotly.js now (once); charts scheduled before wait for it.
  function load() {
    if (!loadAsked) { loadAsked = true; startLoading(); }
    return plotlyReady;
  }

  const pending = new Map(); // div → the latest draw asked for it, not yet run
  const inView = new Set();
  const waiting = new Map(); // div → resolvers of drawn(div)
  const viewport = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) { inView.add(entry.target); plotlyReady.then(() => run(entry.target)); }
      else inView.delete(entry.target);
    }
  });
  let idleQueued = false;

  function run(div) {
    const draw = pending.get(div);
    if (!draw) return;
    pending.delete(div);
    draw();
    div.dataset.ready = "true";
    for (const resolve of waiting.get(div) || []) resolve();
    waiting.delete(div);
    // When the last chart waiting was drawn (bench/sweep_views.py reads it).
    if (!pending.size) document.body.dataset.chartsDrawnAt = String(performance.now());
  }

  // Off-screen charts, one per idle period, in the order they were asked for.
  function drawWhenIdle() {
    if (idleQueued || !pending.size) return;
    idleQueued = true;
    const next = window.requestIdleCallback || ((callback) => setTimeout(callback, 16));
    next(() => {
      idleQueued = false;
      const first = [...pending.keys()].find((div) => inView.has(div)) || pending.keys().next().value;
      if (first) run(first);
      drawWhenIdle();
    }, { timeout: 500 });
  }

  // Draw `div` with `draw` (a function calling Plotly) as soon as it is worth it; a later call
  // for the same div replaces a draw not yet run. Returns a promise of it being drawn.
  function schedule(div, draw) {
    pending.set(div, draw);
    viewport.observe(div);
    const done = new Promise((resolve) => waiting.set(div, [...(waiting.get(div) || []), resolve]));
    plotlyReady.then(() => (inView.has(div) || nearView(div) ? run(div) : drawWhenIdle()));
    return done;
  }

  // Forget a chart (and any draw of it still waiting).
  function purge(div) {
    pending.delete(div);
    for (const resolve of waiting.get(div) || []) resolve();
    waiting.delete(div);
    if (window.Plotly && div._fullLayout) Plotly.purge(div);
    delete div.dataset.ready;
  }

  // Whether a chart is in the window, measured now (the observer says so only a frame later).
  function nearView(div) {
    const box = div.getBoundingClientRect();
    return box.width > 0 && box.bottom > 0 && box.top < window.innerHeight;
  }

  // Resolves once no chart in the window is waiting to be drawn.
  async function inViewDrawn() {
    load();
    for (;;) {
      const near = [...pending.keys()].filter(nearView);
      if (!near.length) return;
      await Promise.all(near.map((div) => new Promise((resolve) => waiting.set(div, [...(waiting.get(div) || []), resolve]))));
    }
  }
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f",
                   "#7c3aed", "#b45309", "#0f766e", "#64748b"];
  const DISPLAY_POINTS = 1000;
  const colours = new Map();

  // plotly.js 4.1 resizes a responsive chart on window resizes only; a chart whose box
  // changes because the page around it changed (a second trend chart joining the grid) is
  // resized here.
  // An observer reports every box once when it starts watching it: a chart just drawn at that
  // size is not laid out again (a second layout pass per chart, on the critical path).
  const sizes = new WeakMap(); // div → "width×height" it was last drawn or resized at
  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const size = `${Math.round(entry.contentRect.width)}×${Math.round(entry.contentRect.height)}`;
      if (!entry.target._fullLayout || !entry.contentRect.width || sizes.get(entry.target) === size) continue;
      sizes.set(entry.target, size);
      Plotly.Plots.resize(entry.target);
    }
  });
  function watchSize(div) {
    sizes.set(div, `${div.clientWidth}×${div.clientHeight}`); // the content box: .chart has no padding
    if (!div.dataset.sizeWatched) { resizer.observe(div); div.dataset.sizeWatched = "true"; }
  }

  function colour(key) {
    if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
    return colours.get(key);
  }

  // A confusion matrix as GET /api/runs/{id}/confusion gives it: normalised per true class, the
  // counts (test samples, or videos when the run's accuracy is per video) shown and on hover.
  // `cells`: write each cell's share and count in it (one big matrix); a grid of small ones
  // shows them on hover only — Plotly measures every cell's text, which doubled a matrix's cost.
  function confusion(div, matrix, title, { cells = true } = {}) {
    return schedule(div, () => drawConfusion(div, matrix, title, cells));
  }

  // A finished run's confusion matrix fetched and drawn into `div`, once per div: the run page,
  // the sweep page's chosen runs and the compare page all show it so. `wanted()` is asked when
  // the answer is in (the run may have been unchosen meanwhile). False when nothing is drawn
  // (no matrix yet, or no longer wanted): a later call tries again.
  async function runConfusion(div, runId, { title = undefined, wanted = () => true, cells = true } = {}) {
    if (div.dataset.confusion) return true;
    div.dataset.confusion = "loading";
    const { ok, body } = await missmod.api(`/api/runs/${runId}/confusion`);
    if (!ok || !wanted()) { delete div.dataset.confusion; return false; }
    div.dataset.confusion = "drawn";
    confusion(div, body, title, { cells });
    return true;
  }

  function drawConfusion(div, matrix, title, cells) {
    const totals = matrix.counts.map((row) => row.reduce((a, b) => a + b, 0));
    const normalised = matrix.counts.map((row, i) => row.map((c) => (totals[i] ? c / totals[i] : 0)));
    const small = matrix.classes.length > 6;
    const counted = matrix.counted === "groups" ? "videos (groups)" : "samples";
    Plotly.newPlot(div, [{
      type: "heatmap", z: normalised, x: matrix.classes.map(asText), y: matrix.classes.map(asText), customdata: matrix.counts,
      text: matrix.counts, colorscale: [[0, "#f7fbff"], [0.5, "#6baed6"], [1, "#08306b"]], zmin: 0, zmax: 1,
      showscale: false, texttemplate: !cells ? undefined : small ? "%{z:.0%}" : "%{z:.0%}<br>(%{text})",
      textfont: cells ? { size: small ? 9 : 11 } : undefined,
      hovertemplate: `true %{y}, predicted %{x}<br>%{customdata} ${counted} (%{z:.1%} of the row)<extra></extra>`,
    }], {
      title: title ? { text: asText(title), font: { size: 13 }, x: 0.02, xanchor: "left" } : undefined,
      margin: { t: title ? 34 : 10, r: 10, b: 50, l: 60 },
      xaxis: { title: { text: "predicted" }, type: "category", tickfont: { size: 10 } },
      yaxis: { title: { text: "true" }, type: "category", autorange: "reversed", tickfont: { size: 10 } },
    }, CONFIG);
    watchSize(div);
  }

  // One chart of one metric, one trace per run; points are appended as they land. Until the
  // chart is drawn (plotly.js still loading, or the chart off-screen) traces and points are
  // kept here and drawn at once.
  class CurveChart {
    constructor(div, { title, percent = false }) {
      this.div = div;
      this.traces = new Map(); // run id → trace index
      this.held = []; // the traces, while not drawn
      this.drawn = false;
      this.layout = {
        title: { text: asText(title), x: 0.02, xanchor: "left", font: { size: 14 } },
        margin: { t: 40, r: 10, b: 40, l: 55 },
        xaxis: { title: { text: "epoch" }, rangemode: "tozero", automargin: true },
        yaxis: percent ? { tickformat: ".0%" } : { rangemode: "tozero" },
        legend: { orientation: "h", y: -0.3, yanchor: "top" },
      };
      this.whenDrawn = schedule(div, () => {
        Plotly.newPlot(div, this.held, this.layout, CONFIG);
        this.held = [];
        this.drawn = true;
        watchSize(div);
      });
    }

    ensure(runId, label) {
      if (!this.traces.has(runId)) {
        this.traces.set(runId, this.traces.size);
        const trace = { type: "scatter", mode: "lines", x: [], y: [], name: asText(label),
                        line: { color: colour(`run-${runId}`), width: 1.8 } };
        if (this.drawn) Plotly.addTraces(this.div, trace); else this.held.push(trace);
      }
      return this.traces.get(runId);
    }

    // Points that land between two frames (several runs' fetches, a live run's batches) are
    // drawn together at the next animation frame: one extendTraces for every trace that grew.
    append(runId, label, points) {
      const index = this.ensure(runId, label);
      if (!points.length) return;
      if (!this.drawn) {
        for (const p of points) { this.held[index].x.push(p.epoch); this.held[index].y.push(p.value); }
        return;
      }
      if (!this.incoming) {
        this.incoming = new Map(); // trace index → { x, y }
        requestAnimationFrame(() => this.drawIncoming());
      }
      if (!this.incoming.has(index)) this.incoming.set(index, { x: [], y: [] });
      const waiting = this.incoming.get(index);
      for (const p of points) { waiting.x.push(p.epoch); waiting.y.push(p.value); }
    }

    drawIncoming() {
      const incoming = this.incoming;
      this.incoming = null;
      if (!incoming || !this.div._fullLayout) return; // purged meanwhile
      const indices = [...incoming.keys()];
      Plotly.extendTraces(this.div, { x: indices.map((i) => incoming.get(i).x), y: indices.map((i) => incoming.get(i).y) },
                          indices);
    }

    pointCount() {
      const traces = this.drawn ? this.div.data || [] : this.held;
      const waiting = [...(this.incoming || new Map()).values()].reduce((n, w) => n + w.x.length, 0);
      return traces.reduce((n, trace) => n + trace.x.length, 0) + waiting;
    }
  }

  // The metric history of a run for display, then only what is new since `cursor`.
  async function runMetrics(runId, cursor = null) {
    const path = cursor === null
      ? `/api/runs/${runId}/metrics?max_points=${DISPLAY_POINTS}`
      : `/api/runs/${runId}/metrics?after=${cursor}`;
    const { ok, body } = await missmod.api(path);
    if (!ok) return { points: [], cursor: cursor || 0, state: null };
    if (cursor === null) body.points.sort((a, b) => a.epoch - b.epoch);
    return body;
  }

  function byName(points) {
    const groups = new Map();
    for (const p of points) {
      if (!groups.has(p.name)) groups.set(p.name, []);
      groups.get(p.name).push(p);
    }
    return groups;
  }

  // Accuracy against missing rate: one line per row of the table and missing modality, with
  // error bars (std over seeds); the paper's numbers dotted in the same colour.
  // A point's paired comparison with its column's reference (see the table): its marker and hover line.
  const MARK_SYMBOLS = { win: "triangle-up", loss: "triangle-down", reference: "circle-open" };
  function pairedLine(s, i) {
    const mark = (s.marks || [])[i];
    if (mark === "reference") return "<br>the reference of this column";
    const diff = (s.diffs || [])[i];
    if (diff === null || diff === undefined) return "";
    const p = s.p_adjusted[i];
    return `<br>vs reference: ${diff >= 0 ? "+" : ""}${(100 * diff).toFixed(2)} points, Holm p ${p.toPrecision(2)}`
      + (mark ? ` — significant ${mark}` : "");
  }

  function trend(div, series, title) {
    return schedule(div, () => drawTrend(div, series, title));
  }

  function drawTrend(div, series, title) {
    const traces = series.map((s) => {
      const paper = s.source === "paper";
      const key = asText(paper ? s.label.replace(/^paper: /, "") : s.label);
      const marks = paper ? [] : s.marks || [];
      // Ours and the paper's line of a row share a legend entry: one click hides both.
      return {
        type: "scatter", mode: "lines+markers", name: key, x: s.rates, y: s.means,
        customdata: s.counts, meta: s.source, legendgroup: key, showlegend: !paper,
        text: paper ? undefined : s.rates.map((_, i) => pairedLine(s, i)),
        line: { color: colour(key), dash: paper ? "dot" : "solid", width: paper ? 1.5 : 2 },
        marker: {
          size: paper ? 8 : s.rates.map((_, i) => (marks[i] === "win" || marks[i] === "loss" ? 12 : 7)),
          symbol: paper ? "diamond-open" : s.rates.map((_, i) => MARK_SYMBOLS[marks[i]] || "circle"),
        },
        error_y: paper ? undefined : { type: "data", array: s.stds.map((v) => v ?? 0), visible: true, thickness: 1.2 },
        hovertemplate: paper
          ? `${asText(s.label)}<br>%{x:.0%} missing: %{y:.2%}<extra></extra>`
          : `${asText(s.label)}<br>%{x:.0%} missing: %{y:.2%} (n=%{customdata})%{text}<extra></extra>`,
      };
    });
    Plotly.react(div, traces, {
      title: { text: asText(title), x: 0.02, xanchor: "left", font: { size: 14 } },
      margin: { t: 40, r: 10, b: 40, l: 60 },
      xaxis: { title: { text: "missing rate" }, tickformat: ".0%" },
      yaxis: { title: { text: "test accuracy" }, tickformat: ".0%" },
      legend: { font: { size: 11 }, orientation: "h", y: -0.22 },
      annotations: series.some((s) => s.source === "paper") ? [{
        text: "dotted ◇: the paper's numbers", showarrow: false, xref: "paper", yref: "paper", x: 1, y: 1.07,
        xanchor: "right", font: { size: 11, color: "#92400e" },
      }] : [],
      uirevision: "keep", // keep the user's zoom and hidden traces across live updates
    }, CONFIG);
    watchSize(div);
  }

  return { CONFIG, asText, colour, confusion, runConfusion, CurveChart, runMetrics, byName, trend, plotlyReady, load, schedule, purge,
           inViewDrawn };
})();
