#!/usr/bin/env bash
# The demo command: set-up, then a narrated scenario in a network-namespace lab (scan: closed;
# knock with the real `knock` client; ssh in; close sequence; closed again). Needs root for the
# namespaces; the lab is removed when the demo ends, on Ctrl-C too. Arguments go to `guardian demo`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "demo: needs root (network namespaces, nftables): sudo bash scripts/demo.sh" >&2
  exit 1
fi

bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec "$REPO/.venv/bin/python" -m guardian demo "$@"
