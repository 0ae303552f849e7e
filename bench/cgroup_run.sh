#!/usr/bin/env bash
# Runs a command in a fresh memory cgroup capped at LIMIT_GIB, then reports (one JSON line on
# stderr) the cgroup's peak usage and whether the OOM killer fired, and removes the cgroup.
#
#   sudo bash bench/cgroup_run.sh LIMIT_GIB -- CMD [ARGS...]    # exits with CMD's status
#
# Works with cgroup v1 (memory controller mounted at /sys/fs/cgroup/memory) and v2 (unified
# hierarchy at /sys/fs/cgroup). The new cgroup is made below the caller's own memory cgroup, so an
# outer limit still applies (v2 falls back to the root when the caller's cgroup does not delegate
# the memory controller). Swap is capped too where the kernel exposes it. Peak usage counts page
# cache (e.g. mmapped weights) as well as anonymous memory, but not pages already cached (charged
# elsewhere) before the run; only the OOM count means "did not fit".
set -uo pipefail
[ $# -ge 3 ] && [ "$2" = "--" ] || { echo "usage: $0 LIMIT_GIB -- CMD [ARGS...]" >&2; exit 2; }
LIMIT_GIB=$1; shift 2
bytes=$(awk -v g="$LIMIT_GIB" 'BEGIN { printf "%.0f", g * 1073741824 }')
name=bench-$$-$RANDOM

if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  ver=v1
  CG=/sys/fs/cgroup/memory$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' /proc/self/cgroup)/$name
  CG=${CG/\/\//\/}
  mkdir "$CG" || exit 1
  echo "$bytes" > "$CG/memory.limit_in_bytes" || { rmdir "$CG"; exit 1; }
  [ -f "$CG/memory.memsw.limit_in_bytes" ] && echo "$bytes" > "$CG/memory.memsw.limit_in_bytes" 2>/dev/null
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  ver=v2
  parent=/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
  grep -qw memory "$parent/cgroup.subtree_control" 2>/dev/null || parent=/sys/fs/cgroup
  CG=${parent%/}/$name
  mkdir "$CG" || exit 1
  echo "$bytes" > "$CG/memory.max" || { rmdir "$CG"; exit 1; }
  [ -f "$CG/memory.swap.max" ] && echo 0 > "$CG/memory.swap.max"
else
  echo "cgroup_run: no memory cgroup controller found" >&2; exit 1
fi
# Remove the cgroup however we leave (its tasks have exited by then; retry while they finish).
cleanup() { for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$CG" 2>/dev/null && return; sleep 0.2; done
            echo "cgroup_run: could not remove $CG" >&2; }
trap cleanup EXIT

# A subshell moves itself into the cgroup, then execs the command (children inherit it).
( echo "$BASHPID" > "$CG/cgroup.procs" && exec "$@" )
rc=$?

if [ $ver = v1 ]; then
  peak=$(cat "$CG/memory.max_usage_in_bytes")
  oom=$(awk '$1 == "oom_kill" { print $2 }' "$CG/memory.oom_control")
  failcnt=$(cat "$CG/memory.failcnt")
  # Kernels before 4.13 have no oom_kill counter: fall back to "hit the limit and died of SIGKILL".
  [ -n "$oom" ] || { [ "$failcnt" -gt 0 ] && [ $rc -eq 137 ] && oom=1 || oom=0; }
else
  peak=$(cat "$CG/memory.peak" 2>/dev/null || echo null)
  oom=$(awk '$1 == "oom_kill" { print $2 }' "$CG/memory.events")
fi
peak_mib=$([ "$peak" = null ] && echo null || awk -v b="$peak" 'BEGIN { printf "%.0f", b / 1048576 }')
echo "{\"cgroup\":\"$ver\",\"limit_gib\":$LIMIT_GIB,\"peak_mib\":$peak_mib,\"oom_kills\":${oom:-0},\"exit\":$rc}" >&2
[ "${oom:-0}" -gt 0 ] && echo "cgroup_run: OOM killer fired (limit $LIMIT_GIB GiB)" >&2
exit $rc
