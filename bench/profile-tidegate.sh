#!/usr/bin/env bash
# profile-tidegate.sh -- a diagnostic run of Tidegate outside the measured matrix: the same
# loopback topology (smtp-source -> Tidegate -> smtp-sink, private network namespace),
# with either `perf record -g` on the server or its log at RUST_LOG=info.
#
#   bench/profile-tidegate.sh perf bench/tidegate-plugins.toml 5000   # -> /tmp/tidegate-bench/profile-<name>.perf.data
#   bench/profile-tidegate.sh info bench/tidegate.toml 2000           # -> /tmp/tidegate-bench/profile-<name>-info.log
#
# Uses the binary and plugins pinned by `bench/run-tidegate.sh build`. 20 sessions, 5 KB.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -eq 3 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
MODE=$1 CONFIG=$2 MSGS=$3
case "$MODE" in perf|info) ;; *) echo "mode must be perf or info" >&2; exit 2 ;; esac
if [ "${IN_NETNS:-0}" != 1 ]; then
    exec unshare --net -- env IN_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
NAME=$(basename "$CONFIG" .toml)
OUT=/tmp/tidegate-bench
export RUNDIR="$OUT/profile-$NAME-$MODE"
rm -rf "$RUNDIR"; mkdir -p "$RUNDIR"
smtp-sink -4 -u nobody -m 512 -M "$MSGS" 127.0.0.1:2526 1024 > "$RUNDIR/sink.out" 2>&1 &
sink=$!
[ "$MODE" = info ] && export RUST_LOG=info
pid=$("$HERE/run-tidegate.sh" start "$CONFIG")
unset RUST_LOG
sleep 2
if [ "$MODE" = perf ]; then
    perf record -F ${PERF_FREQ:-999} ${PERF_CALLGRAPH:--g} -p "$pid" -o "$OUT/profile-$NAME.perf.data" > "$RUNDIR/perf.out" 2>&1 &
    perfpid=$!
    sleep 0.5
fi
smtp-source -4 -s 20 -m "$MSGS" -l 5120 -M client.bench.test -f from@bench.test -t to@bench.test 127.0.0.1:2525
wait "$sink"
if [ "$MODE" = perf ]; then kill -INT "$perfpid"; wait "$perfpid" || true; fi
"$HERE/run-tidegate.sh" stop "$CONFIG"
if [ "$MODE" = perf ]; then
    echo "perf report -i $OUT/profile-$NAME.perf.data --no-children --sort sym"
else
    cp "$RUNDIR/tidegate.log" "$OUT/profile-$NAME-info.log"
    echo "$OUT/profile-$NAME-info.log"
fi
