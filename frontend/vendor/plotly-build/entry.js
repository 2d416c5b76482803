'use strict';
// missmod's plotly.js bundle: plotly.js's core (which holds the scatter trace), the heatmap trace
// (confusion matrices) and the bar trace (the study page's parameter importances, from Optuna):
// the trace types the pages draw. Built by ./build.sh (frontend/vendor/README.md).
var Plotly = require('plotly.js/lib/core');

Plotly.register([require('plotly.js/lib/heatmap'), require('plotly.js/lib/bar')]);

module.exports = Plotly;
