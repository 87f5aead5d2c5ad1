#!/usr/bin/env bash
# The demo command: set-up, then the whole product narrated in a network-namespace lab (knock,
# sessions that hold access, close sequence, SPA and its replay, a brute force banned, the
# status dashboard; guardian/lab/demo.py). Needs root for the namespaces; the lab is removed when
# the demo ends, on Ctrl-C too. Arguments go to `guardian demo` (--fast: no pauses).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "demo: needs root (network namespaces, nftables): sudo bash scripts/demo.sh" >&2
  exit 1
fi

bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec "$REPO/.venv/bin/python" -m guardian demo "$@"
