#!/usr/bin/env bash
# The test command: set-up, then lint (ruff), formatting, types (mypy --strict) and every test,
# lab tests included (they need root and fail, never skip, without it). All steps run even when one
# fails, so one run shows everything; the exit status is non-zero if any failed. pytest's output
# and JUnit XML are kept in ./artifacts/ (with the lab logs of failing tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k knock -x`.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ARTIFACTS="$REPO/artifacts"
BIN="$REPO/.venv/bin"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "test: the lab tests need root (network namespaces, nftables, raw sockets):" >&2
  echo "      sudo bash scripts/test.sh" >&2
  exit 1
fi

bash "$REPO/scripts/setup.sh" || { echo "test: setup failed" >&2; exit 1; }
mkdir -p "$ARTIFACTS"

failed=()
step() {
  local name="$1"
  shift
  printf '\n== %s: %s\n' "$name" "$*"
  if "$@"; then
    printf '== %s: ok\n' "$name"
  else
    printf '== %s: FAILED\n' "$name"
    failed+=("$name")
  fi
}

step ruff "$BIN/ruff" check .
step format "$BIN/ruff" format --check .
step mypy "$BIN/mypy" --strict guardian/

# Some lab tests run a client as a real unprivileged user (peer-credential checks): that user
# must be able to reach this checkout. A clone in a 0700 directory (mktemp -d) would make them
# fail for a reason unrelated to the product: grant search permission (o+x, never read) on
# the checkout's ancestor directories that lack it, and say so.
dir="$(pwd)"
while [ "$dir" != "/" ]; do
  if [ "$(stat -c %A "$dir" | cut -c10)" = "-" ]; then
    chmod o+x "$dir" && echo "test.sh: granted o+x on $dir (unprivileged-user tests reach the checkout)"
  fi
  dir="$(dirname "$dir")"
done

printf '\n== pytest\n'
rm -f "$ARTIFACTS/junit.xml"
"$BIN/pytest" -ra --junitxml="$ARTIFACTS/junit.xml" "$@" 2>&1 | tee "$ARTIFACTS/pytest.log"
rc=${PIPESTATUS[0]}
summary="$(grep -E '^=+ .*( in [0-9.]+s).* =+$' "$ARTIFACTS/pytest.log" | tail -n 1)"
if ((rc == 5)); then
  failed+=("pytest (no tests collected)")
elif ((rc != 0)); then
  failed+=("pytest (exit $rc)")
fi

printf '\n== summary\n'
printf 'pytest: %s\n' "${summary:-no summary line (exit $rc)}"
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[*]}"
else
  echo "all checks passed"
fi
# The last line is the plain count CI reads ("N passed, N failed, N skipped"), taken from the
# JUnit XML so errors count as failures; a failed lint step with green tests still exits 1.
"$BIN/python" - "$ARTIFACTS/junit.xml" <<'PY' || echo "tests: 0 passed, 1 failed"
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
if ((${#failed[@]})); then
  exit 1
fi
