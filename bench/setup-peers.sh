#!/usr/bin/env bash
# The peers the benchmarks compare against, as Debian packages: knockd (already installed by
# scripts/setup.sh for its `knock` client), fwknop-server/client, fail2ban and sshguard. They are
# not installed by the test command because on a real machine their packages enable services
# (fail2ban and sshguard start banning from the host's logs); this script disables those again
# when systemd runs. Benchmarks call only their binaries, inside the lab or on files.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "setup-peers.sh: run as root" >&2; exit 1; }
packages=(knockd fail2ban sshguard python3-pyinotify)  # pyinotify: fail2ban follows auth.log with inotify
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ -d /run/systemd/system ]; then
  for unit in fail2ban.service sshguard.service knockd.service; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi
echo "peers installed: ${packages[*]}"
