#!/bin/sh
# Rebuilds the ChatWidget's committed front-end bundle (nbchat/notebook/static/)
# from widget.js, widget.css and the modules here, with the npm libraries pinned
# in package-lock.json. Run it after changing any of them, and commit the result:
# installing and testing nbchat needs no npm, and Binder works offline.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs
