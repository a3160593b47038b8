#!/usr/bin/env bash
# Fetch the widget manager the rendered book serves from book/static/widgets (see its README.md).
# Needs npm and the npm registry; the files are committed, so building the book needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 >/dev/null)
tar -xzf "$tmp"/jupyter-widgets-html-manager-1.0.15.tgz -C "$tmp"
cp "$tmp"/package/dist/embed-amd.js "$tmp"/package/dist/embed.js.LICENSE.txt "$tmp"/package/dist/*.woff2 book/static/widgets/
tar -xzf "$tmp"/requirejs-2.3.8.tgz -C "$tmp" package/require.js --transform 's|package/|requirejs/|'
cp "$tmp"/requirejs/require.js book/static/widgets/
echo "updated book/static/widgets"
