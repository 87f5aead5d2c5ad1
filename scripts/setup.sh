#!/usr/bin/env bash
# Set-up for the demo and the tests on Debian 12, as root: installs the Debian packages the lab
# needs (apt-get update only when something is missing), keeps knockd's own service off (we only
# use its `knock` client and, in benchmarks, its binary), and makes ./.venv from Debian's
# /usr/bin/python3 with --system-site-packages so Debian's python3-nftables and python3-systemd
# import. Idempotent: a re-run with everything in place only checks and exits in about a second.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY=/usr/bin/python3  # NOT the first python3 on PATH: a pyenv build cannot import Debian's nftables

PACKAGES=(
  ca-certificates           # pip over https on a minimal system
  python3 python3-venv python3-nftables python3-systemd
  nftables iproute2 procps conntrack
  openssh-server openssh-client
  knockd nmap tmux rsyslog sshpass
  fwknop-client fwknop-server    # SPA: the real client opens access; our client meets the real fwknopd
  systemd-container debootstrap  # tests/test_nspawn.py: the units under a real systemd
)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

missing_packages() {
  local pkg status
  for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || printf '%s\n' "$pkg"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  [[ "$(id -u)" -eq 0 ]] || die "missing Debian packages (${missing[*]}); run as root: sudo bash $0"
  command -v apt-get >/dev/null || die "apt-get not found: this set-up is for Debian 12"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # knockd's package enables knockd.service, which would sniff the host's interface with Debian's
  # sample config: the lab runs its own knockd when it needs one, never the host's.
  if [[ " ${missing[*]} " == *" knockd "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now knockd.service >/dev/null 2>&1 || true
    log "disabled knockd.service (only the knock client and binary are used)"
  fi
  # fwknop-server's package ships fwknop-server.service; the lab runs its own fwknopd when needed.
  if [[ " ${missing[*]} " == *" fwknop-server "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now fwknop-server.service >/dev/null 2>&1 || true
  fi
  if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
    log "note: openssh-server was installed; Debian enables the host's ssh.service (the lab runs its own sshd)"
  fi
}

venv_is_ours() {
  # A venv made from Debian's interpreter with system site-packages; anything else is rebuilt.
  [[ -x "$VENV/bin/python" && -f "$VENV/pyvenv.cfg" ]] || return 1
  grep -Eq '^home = /usr/bin/?$' "$VENV/pyvenv.cfg" || return 1
  grep -Eq '^include-system-site-packages = true$' "$VENV/pyvenv.cfg" || return 1
}

venv_complete() {
  # Everything the demo and the tests import, and the editable install pointing at this checkout.
  local stamp="$VENV/.guardian-setup"
  [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)" ]] || return 1
  (cd / && "$VENV/bin/python" - "$REPO" <<'EOF'
import pathlib, sys
import nftables, systemd.journal, pyroute2, psutil, inotify_simple, rich, pytest, hypothesis, mypy
import guardian
assert pathlib.Path(guardian.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve())
EOF
  ) >/dev/null 2>&1 && [[ -x "$VENV/bin/ruff" && -x "$VENV/bin/guardian" ]]
}

make_venv() {
  if ! venv_is_ours; then
    [[ -e "$VENV" ]] && log "replacing $VENV (not made from $PY with system site-packages)"
    rm -rf "$VENV"
    log "creating $VENV"
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  if venv_complete; then
    return 0
  fi
  log "installing ssh-guardian (editable) and dev tools into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[dev]"
  (cd / && "$VENV/bin/python" -c 'import nftables, systemd.journal') \
    || die "the venv cannot import Debian's nftables/systemd modules"
  sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1 >"$VENV/.guardian-setup"
  venv_complete || die "the venv is incomplete after pip install"
}

main() {
  [[ -r /etc/debian_version ]] || log "warning: not Debian; continuing anyway"
  install_packages
  [[ -x "$PY" ]] || die "$PY not found"
  make_venv
  log "ready ($VENV)"
}

main "$@"
