#!/bin/sh
# Rebuilds the committed front-end builds from widget.js, widget.css, live.css and the modules here, with the
# npm libraries pinned in package-lock.json, and commit the result: installing and testing nbchat needs no npm,
# and Binder works offline.
#   ../static/         the ChatWidget's bundle (build.mjs, esbuild)
#   ../labextension/   the JupyterLab extension that renders a saved conversation (lab.js, with
#                      @jupyterlab/builder against the installed JupyterLab's core packages); the wheel,
#                      and `pip install -e .`, copy it into share/jupyter/labextensions/nbchat
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs
core=$("${PYTHON:-python3}" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')
rm -rf ../labextension
node node_modules/@jupyterlab/builder/lib/build-labextension.js --core-path "$core" . >/dev/null
# the sources it was built from: the widget bundle's first line, which names them and their digest
head -n 1 ../static/widget.js > ../labextension/sources.txt
