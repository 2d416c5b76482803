'use strict';
// missmod's plotly.js bundle: plotly.js's core (which holds the scatter trace) and the heatmap
// trace, the only two trace types the pages draw. Built by ./build.sh (frontend/vendor/README.md).
var Plotly = require('plotly.js/lib/core');

Plotly.register([require('plotly.js/lib/heatmap')]);

module.exports = Plotly;
