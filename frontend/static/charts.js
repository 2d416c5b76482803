// Charts shared by the sweep, compare and run pages. Every trace is SVG `scatter` (never
// `scattergl`): a page of many charts would otherwise run out of WebGL contexts (browsers
// allow about 16). Curves load once thinned by the server (extremes kept), then grow by
// appending points (Plotly.extendTraces), never by redrawing.
"use strict";

const missmodCharts = (() => {
  const CONFIG = { responsive: true, displaylogo: false };
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f",
                   "#7c3aed", "#b45309", "#0f766e", "#64748b"];
  const DISPLAY_POINTS = 1000;
  const colours = new Map();

  // plotly.js 4.1 resizes a responsive chart on window resizes only; a chart whose box
  // changes because the page around it changed (a second trend chart joining the grid) is
  // resized here.
  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      if (entry.target._fullLayout && entry.contentRect.width) Plotly.Plots.resize(entry.target);
    }
  });
  function watchSize(div) {
    if (!div.dataset.sizeWatched) { resizer.observe(div); div.dataset.sizeWatched = "true"; }
  }

  function colour(key) {
    if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
    return colours.get(key);
  }

  // A confusion matrix as GET /api/runs/{id}/confusion gives it: normalised per true class, the
  // counts (test samples, or videos when the run's accuracy is per video) shown and on hover.
  function confusion(div, matrix, title) {
    const totals = matrix.counts.map((row) => row.reduce((a, b) => a + b, 0));
    const normalised = matrix.counts.map((row, i) => row.map((c) => (totals[i] ? c / totals[i] : 0)));
    const small = matrix.classes.length > 6;
    const counted = matrix.counted === "groups" ? "videos (groups)" : "samples";
    Plotly.newPlot(div, [{
      type: "heatmap", z: normalised, x: matrix.classes, y: matrix.classes, customdata: matrix.counts,
      text: matrix.counts, colorscale: [[0, "#f7fbff"], [0.5, "#6baed6"], [1, "#08306b"]], zmin: 0, zmax: 1,
      showscale: false, texttemplate: small ? "%{z:.0%}" : "%{z:.0%}<br>(%{text})", textfont: { size: small ? 9 : 11 },
      hovertemplate: `true %{y}, predicted %{x}<br>%{customdata} ${counted} (%{z:.1%} of the row)<extra></extra>`,
    }], {
      title: title ? { text: title, font: { size: 13 }, x: 0.02, xanchor: "left" } : undefined,
      margin: { t: title ? 34 : 10, r: 10, b: 50, l: 60 },
      xaxis: { title: { text: "predicted" }, type: "category", tickfont: { size: 10 } },
      yaxis: { title: { text: "true" }, type: "category", autorange: "reversed", tickfont: { size: 10 } },
    }, CONFIG);
    watchSize(div);
    div.dataset.ready = "true";
  }

  // One chart of one metric, one trace per run; points are appended as they land.
  class CurveChart {
    constructor(div, { title, percent = false }) {
      this.div = div;
      this.traces = new Map(); // run id → trace index
      Plotly.newPlot(div, [], {
        title: { text: title, x: 0.02, xanchor: "left", font: { size: 14 } },
        margin: { t: 40, r: 10, b: 40, l: 55 },
        xaxis: { title: { text: "epoch" }, rangemode: "tozero", automargin: true },
        yaxis: percent ? { tickformat: ".0%" } : { rangemode: "tozero" },
        legend: { orientation: "h", y: -0.3, yanchor: "top" },
      }, CONFIG);
      watchSize(div);
    }

    ensure(runId, label) {
      if (!this.traces.has(runId)) {
        this.traces.set(runId, this.traces.size);
        Plotly.addTraces(this.div, { type: "scatter", mode: "lines", x: [], y: [], name: label,
                                     line: { color: colour(`run-${runId}`), width: 1.8 } });
      }
      return this.traces.get(runId);
    }

    append(runId, label, points) {
      const index = this.ensure(runId, label);
      if (points.length) {
        Plotly.extendTraces(this.div, { x: [points.map((p) => p.epoch)], y: [points.map((p) => p.value)] }, [index]);
      }
    }

    pointCount() {
      return (this.div.data || []).reduce((n, trace) => n + trace.x.length, 0);
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
  function trend(div, series, title) {
    const traces = series.map((s) => {
      const paper = s.source === "paper";
      const key = paper ? s.label.replace(/^paper: /, "") : s.label;
      // Ours and the paper's line of a row share a legend entry: one click hides both.
      return {
        type: "scatter", mode: "lines+markers", name: key, x: s.rates, y: s.means,
        customdata: s.counts, meta: s.source, legendgroup: key, showlegend: !paper,
        line: { color: colour(key), dash: paper ? "dot" : "solid", width: paper ? 1.5 : 2 },
        marker: { size: paper ? 8 : 7, symbol: paper ? "diamond-open" : "circle" },
        error_y: paper ? undefined : { type: "data", array: s.stds.map((v) => v ?? 0), visible: true, thickness: 1.2 },
        hovertemplate: paper
          ? `${s.label}<br>%{x:.0%} missing: %{y:.2%}<extra></extra>`
          : `${s.label}<br>%{x:.0%} missing: %{y:.2%} (n=%{customdata})<extra></extra>`,
      };
    });
    Plotly.react(div, traces, {
      title: { text: title, x: 0.02, xanchor: "left", font: { size: 14 } },
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
    div.dataset.ready = "true";
  }

  return { CONFIG, colour, confusion, CurveChart, runMetrics, byName, trend };
})();
