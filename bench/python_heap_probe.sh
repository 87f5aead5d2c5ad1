#!/bin/bash
# Look inside a running guardian's Python heap (soak diagnosis, BENCHMARKS.md "Soak", run 16):
#   bench/python_heap_probe.sh stats PID OUT   sys._debugmallocstats() into OUT: pymalloc's
#                                              arenas and pools, and CPython's free lists
#   bench/python_heap_probe.sh collect PID     one full garbage collection; prints how many
#                                              unreachable objects it found
# Through gdb, with the GIL taken (PyGILState_Ensure): the daemon waits in epoll_wait with the
# GIL released, and is paused for about a second. Needs root and gdb; a diagnosis tool, never
# used by the product or the tests.
set -euo pipefail
what=${1:?stats|collect}; pid=${2:?PID}
[[ $pid =~ ^[0-9]+$ ]] || { echo "not a PID: $pid" >&2; exit 2; }
case $what in
  collect)
    call='print (long)PyGC_Collect()' ;;
  stats)
    out=${3:?OUT}
    # OUT goes into Python source: refuse anything that could end the string literal.
    [[ $out =~ ^[A-Za-z0-9_./-]+$ ]] || { echo "use a plain path for OUT: $out" >&2; exit 2; }
    code="import os, sys; f = os.open('$out', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600);"
    code+=" s = os.dup(2); os.dup2(f, 2); sys._debugmallocstats(); os.dup2(s, 2);"
    code+=" os.close(f); os.close(s)"
    call="print (int)PyRun_SimpleString(\"$code\")" ;;
  *) echo "stats or collect, not $what" >&2; exit 2 ;;
esac
timeout 60 gdb -p "$pid" -batch -ex 'set $g = (int)PyGILState_Ensure()' -ex "$call" \
  -ex 'call (void)PyGILState_Release($g)' 2>&1 | grep '^\$'
