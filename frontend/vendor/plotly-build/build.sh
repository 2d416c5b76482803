#!/usr/bin/env bash
# Builds missmod's plotly.js bundle (a developer's step, with Node.js and npm; nothing is fetched
# at run time): plotly.js's core and the heatmap and bar traces, minified, licences kept at the end.
set -euo pipefail
cd "$(dirname "$0")"
version=$(node -p "require('./package.json').dependencies['plotly.js']")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp package.json package-lock.json entry.js "$work"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts --silent)
out="../plotly-missmod-$version.min.js"
{
  printf '/* plotly.js %s (MIT, ../plotly-LICENSE.txt): its core (scatter), heatmap and bar traces, bundled for\n' "$version"
  printf '   missmod by frontend/vendor/plotly-build/build.sh; licences of the code it bundles at the end */\n'
  # maplibre-gl's stylesheet (for map traces, not bundled) is dropped; `stream` is the browser's.
  "$work/node_modules/.bin/esbuild" "$work/entry.js" --bundle --format=iife --global-name=Plotly --minify \
    --target=es2016 --define:global=window --define:define.amd=false --alias:stream=stream-browserify \
    --loader:.css=empty --legal-comments=eof --log-level=warning
} > "$out"
sha256sum "$out"
