#!/usr/bin/env bash
# idle-and-latency.sh -- memory per idle SMTP connection, and single-session end-of-DATA
# latency, for Tidegate (and Postfix when relay-bench.sh has configured it). Loopback only,
# inside a private network namespace (unshare --net, only lo up), like the other scripts.
#
#   bench/idle-and-latency.sh all     [options]   # both measurements
#   bench/idle-and-latency.sh idle    [options]   # bytes per idle connection
#   bench/idle-and-latency.sh latency [options]   # end-of-DATA latency in one session
#
# options (defaults in brackets):
#   -n N          idle connections per peer [1000]
#   -m M          messages in the latency session [1000]
#   -l BYTES      message size, headers + body [5120]
#   --peers LIST  any of: tidegate tidegate-plugins postfix ["tidegate tidegate-plugins postfix"]
#   --settle S    seconds idle before reading memory (and after closing) [2]
#
# idle: per peer, start the server (no sink), read the summed RSS and PSS
# (/proc/PID/smaps_rollup) of its process tree, open N connections to 127.0.0.1:2525 that
# each read the 220 greeting, send `EHLO probe.test` and read the reply, then stay idle;
# after S seconds read the memory again: (after - before) / idle connections, RSS and PSS.
# Tidegate gets 5 warm-up connections (EHLO, QUIT) before the first reading; Postfix none
# (a warm-up smtpd would stay alive, max_idle 100s, and be reused). Postfix runs one smtpd
# per connection and at most default_process_limit (100) of them, so only about 100 of the
# N connections get a greeting; the rest wait in the listen backlog (reported as "no
# greeting") and its per-connection cost is divided by the connections that got a reply.
# N must fit Tidegate's max_connections_per_ip (1000 in bench/tidegate.toml; the 1000th
# connection from one address is still admitted).
#
# latency: per peer, smtp-sink on 127.0.0.1:2526 (as in relay-bench.sh) and the server;
# one connection sends M messages sequentially (MAIL, RCPT, DATA, message, final dot);
# latency = from writing "\r\n.\r\n" until the 250 reply is read. Median, p90, p99, max (µs).
#
# Tidegate is started and stopped by bench/run-tidegate.sh, from a snapshot (taken when
# this script starts) of the binary and plugins pinned by `bench/run-tidegate.sh build`
# (BUILD=1 runs that first), with private copies of bench/tidegate.toml and
# bench/tidegate-plugins.toml that differ only in spool, plugin paths and plugin cache, so
# that a benchmark running at the same time is neither disturbed nor disturbs. Postfix is
# used as relay-bench.sh configures it (`bench/relay-bench.sh setup postfix`: smtpd on
# 127.0.0.1:2525, bench.test relayed to [127.0.0.1]:2526); it is skipped, with the reason,
# when it is not installed, not configured that way, or already running.
#
# Output: a markdown table per measurement; the raw lines are appended to
# $BENCH_WORK/idle-latency.txt [/tmp/peerbench]; logs in $BENCH_WORK/idle-latency/<time>/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
PROBE="$HERE/smtp-probe.py"
WORK="${BENCH_WORK:-/tmp/peerbench}"
STATE=/tmp/tidegate-bench
PINNED="$STATE/pinned"
PORT=2525 SINK_PORT=2526

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'; exit "${1:-2}"; }
die() { echo "idle-and-latency: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

MODE="${1:-}"
case "$MODE" in
    all|idle|latency) shift ;;
    -h|--help) usage 0 ;;
    *) usage 2 ;;
esac
N=1000 M=1000 SIZE=5120 PEERS="tidegate tidegate-plugins postfix" SETTLE=2
ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N=$2; shift ;;
        -m) M=$2; shift ;;
        -l) SIZE=$2; shift ;;
        --peers) PEERS=$2; shift ;;
        --settle) SETTLE=$2; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown option $1 (see: $0 -h)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "needs root (network namespace, Postfix)"

if [ "${IDLE_LATENCY_IN_NETNS:-0}" != 1 ]; then
    # Outside the namespace: build if asked (cargo may need the network), then re-enter.
    if [ "${BUILD:-0}" = 1 ]; then "$HERE/run-tidegate.sh" build; fi
    for t in unshare ip ss python3 smtp-sink; do
        command -v "$t" >/dev/null || die "$t not found (bench/relay-bench.sh setup postfix installs the tools)"
    done
    exec unshare --net -- env IDLE_LATENCY_IN_NETNS=1 \
        bash -c 'ip link set lo up && exec "$0" "$@"' "$SELF" "$MODE" "${ARGS[@]}"
fi

# ---------------------------------------------------------------- inside the namespace
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$WORK/idle-latency/$STAMP"
mkdir -p "$OUT"
RAW="$OUT/raw.txt"
: > "$RAW"

# shellcheck source=ports.sh
. "$HERE/ports.sh"

# What is running that we started (for the EXIT trap; nothing else is ever stopped).
TG_CONFIG=""       # the Tidegate config we started
PF_STARTED=0
SINK_PID=""

# Tidegate runs from a snapshot of the pinned build taken when this script starts (others
# may re-pin in the middle of a run), with private copies of the bench configurations:
# the same except the spool (spool-idlelat*), the plugin paths (the snapshot) and the plugin
# cache. The copies are named idlelat-*.toml, so run-tidegate.sh keeps its own pidfile,
# run config and spool for them and never touches another benchmark's Tidegate.
SNAP="$STATE/idlelat-snapshot-$$"
TG_VERSION="-"
snapshot_tidegate() {
    local try
    for try in 1 2 3; do
        rm -rf "$SNAP"; mkdir -p "$SNAP/plugins"
        if cp "$PINNED/tidegate" "$PINNED/VERSION" "$SNAP/" 2>/dev/null; then
            cp "$PINNED"/plugins/*.wasm "$SNAP/plugins/" 2>/dev/null || true
            break
        fi
        sleep 2   # re-pinning in progress
    done
    [ -x "$SNAP/tidegate" ] || return 1
    TG_VERSION="$(sed -n 's/^commit //p' "$SNAP/VERSION")$(grep -q '^dirty' "$SNAP/VERSION" && echo +dirty)"
    TG_VERSION="$TG_VERSION,bin=$(sha256sum "$SNAP/tidegate" | cut -c1-12)"
    local name
    for name in tidegate tidegate-plugins; do
        sed -e "s|^path = \"/tmp/tidegate-bench/spool|path = \"/tmp/tidegate-bench/spool-idlelat|" \
            -e "s|\"\\.\\./plugins/dist/|\"$SNAP/plugins/|" \
            -e "s|^cache_dir = .*|cache_dir = \"$STATE/plugin-cache-idlelat\"|" \
            "$HERE/$name.toml" > "$SNAP/idlelat-$name.toml"
    done
}
config_of() { echo "$SNAP/idlelat-$1.toml"; }

peer_skip_reason() {  # prints why PEER cannot run here, or nothing
    case "$1" in
        tidegate|tidegate-plugins)
            [ -x "$SNAP/tidegate" ] || { echo "no pinned binary (run: bench/run-tidegate.sh build)"; return; }
            if [ "$1" = tidegate-plugins ] && ! ls "$SNAP"/plugins/*.wasm >/dev/null 2>&1; then
                echo "no pinned plugins (run ./scripts/build-plugins, then bench/run-tidegate.sh build)"; return
            fi
            local pidfile
            pidfile="$STATE/idlelat-$1.pid"
            if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "already running (pid $(cat "$pidfile")): another idle-and-latency.sh in progress?"; return
            fi
            "$SNAP/tidegate" check -c "$(config_of "$1")" >/dev/null 2>&1 \
                || { echo "tidegate check -c $(config_of "$1") failed"; return; }
            local per_ip
            per_ip=$(awk '/^\[/ { s = ($0 == "[limits]") } s && /^max_connections_per_ip/ { print $3; exit }' "$(config_of "$1")")
            if [ "$MODE" != latency ] && [ -n "$per_ip" ] && [ "$N" -gt "$per_ip" ]; then
                echo "-n $N exceeds max_connections_per_ip = $per_ip in bench/$1.toml"; return
            fi ;;
        postfix)
            command -v postfix >/dev/null || { echo "postfix not installed"; return; }
            grep -q '^# relay-bench:' /etc/postfix/main.cf 2>/dev/null \
                || { echo "/etc/postfix/main.cf not written by relay-bench.sh (run: bench/relay-bench.sh setup postfix)"; return; }
            grep -q "^relayhost = \[127.0.0.1\]:$SINK_PORT" /etc/postfix/main.cf \
                || { echo "main.cf does not relay to [127.0.0.1]:$SINK_PORT"; return; }
            grep -q "^127.0.0.1:$PORT[[:space:]]\+inet" /etc/postfix/master.cf \
                || { echo "master.cf has no smtpd listener on 127.0.0.1:$PORT"; return; }
            if postfix status >/dev/null 2>&1; then
                echo "Postfix is already running (another benchmark in progress?)"; return
            fi ;;
        *) echo "unknown peer" ;;
    esac
}

PEER_PIDS=""       # the top process(es) of the running peer, set by peer_start
peer_start() {  # peer (not in a subshell: it sets the globals above)
    case "$1" in
        tidegate|tidegate-plugins)
            TG_CONFIG=$(config_of "$1")
            PEER_PIDS=$(RUNDIR="$RUNDIR" TIDEGATE_BIN="$SNAP/tidegate" "$HERE/run-tidegate.sh" start "$TG_CONFIG")
            cp "$SNAP/VERSION" "$RUNDIR/tidegate-version.txt"   # the build actually run
            cp "$TG_CONFIG" "$RUNDIR/"
            wait_listen "$PORT" 60 || die "$1 not listening on $PORT (see $RUNDIR/tidegate.log)" ;;
        postfix)
            postsuper -d ALL >/dev/null 2>&1 || true   # empty queue, as relay-bench.sh does
            PF_STARTED=1
            postfix start >/dev/null 2>&1 || die "postfix start failed"
            wait_listen "$PORT" 20 || die "postfix not listening on $PORT"
            PEER_PIDS=$(tr -d ' ' < /var/spool/postfix/pid/master.pid) ;;
    esac
    [ -n "$PEER_PIDS" ] || die "no PID for $1"
}

peer_stop() {
    local i
    if [ -n "$TG_CONFIG" ]; then
        RUNDIR="$RUNDIR" TIDEGATE_BIN="$SNAP/tidegate" "$HERE/run-tidegate.sh" stop "$TG_CONFIG" >&2 || true
        TG_CONFIG=""
    fi
    if [ "$PF_STARTED" = 1 ]; then
        local m
        m=$(tr -d ' ' < /var/spool/postfix/pid/master.pid 2>/dev/null || true)
        postfix stop >/dev/null 2>&1 || true
        for ((i = 0; i < 100; i++)); do
            [ -n "$m" ] && kill -0 "$m" 2>/dev/null || break
            sleep 0.1
        done
        PF_STARTED=0
    fi
    wait_free "$PORT" || log "WARNING: port $PORT still in use after stop"
}

sink_start() {
    wait_free "$SINK_PORT" || die "sink port $SINK_PORT busy"
    # As relay-bench.sh, but without -M: it runs until we stop it.
    smtp-sink -4 -u nobody -m 512 "127.0.0.1:$SINK_PORT" 1024 > "$RUNDIR/sink.out" 2>&1 &
    SINK_PID=$!
    wait_listen "$SINK_PORT" 10 || die "smtp-sink not listening"
}

sink_stop() {
    if [ -n "$SINK_PID" ]; then
        kill -TERM "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
        SINK_PID=""
    fi
}

cleanup() {
    set +e
    peer_stop >/dev/null 2>&1
    sink_stop
    rm -rf "$SNAP"
}
trap 'exit 130' INT TERM
trap cleanup EXIT

record() {  # raw line -> stdout, run file, shared results file
    local line="$1 load1=$(cut -d' ' -f1 /proc/loadavg) time=$(date -Is) dir=$STAMP"
    case "$1" in *peer=tidegate*) line="$line tidegate=$TG_VERSION" ;; esac
    echo "$line"
    echo "$line" >> "$RAW"
    echo "$line" >> "$WORK/idle-latency.txt"
}

run_idle() {  # peer
    local peer=$1 line warm=0
    RUNDIR="$OUT/idle-$peer"; mkdir -p "$RUNDIR"
    peer_start "$peer"
    case "$peer" in tidegate*) warm=5 ;; esac
    sleep 1
    # shellcheck disable=SC2086
    line=$(python3 "$PROBE" idle --label "$peer" --port "$PORT" -n "$N" --settle "$SETTLE" \
        --warmup "$warm" $PEER_PIDS) || { peer_stop; die "idle probe failed for $peer"; }
    peer_stop
    record "$line"
}

run_latency() {  # peer
    local peer=$1 line rc=0
    RUNDIR="$OUT/latency-$peer"; mkdir -p "$RUNDIR"
    sink_start
    peer_start "$peer"
    sleep 1
    line=$(python3 "$PROBE" latency --label "$peer" --port "$PORT" -m "$M" -l "$SIZE") || rc=$?
    [ -n "$line" ] || line="latency peer=$peer m=$M size=$SIZE ok=0 error=probe_failed_rc$rc"
    peer_stop
    sink_stop
    record "$line"
    [ "$rc" = 0 ] || log "WARNING: $peer: not every message got 250 (see error= above)"
}

log "idle-and-latency: mode=$MODE N=$N M=$M size=$SIZE peers=\"$PEERS\" settle=${SETTLE}s; $(uptime)"
if snapshot_tidegate; then
    log "tidegate: snapshot of $PINNED: $TG_VERSION, $(grep '^built' "$SNAP/VERSION")"
fi
RUN_PEERS=""
for p in $PEERS; do
    reason=$(peer_skip_reason "$p")
    if [ -n "$reason" ]; then
        log "skipping $p: $reason"
        echo "skipped peer=$p mode=$MODE reason=\"$reason\" time=$(date -Is) dir=$STAMP" >> "$WORK/idle-latency.txt"
    else
        RUN_PEERS="$RUN_PEERS $p"
    fi
done
[ -n "$RUN_PEERS" ] || die "no peer can run"
wait_free "$PORT" || die "port $PORT in use"

if [ "$MODE" = all ] || [ "$MODE" = idle ]; then
    for p in $RUN_PEERS; do log "idle: $p"; run_idle "$p"; done
fi
if [ "$MODE" = all ] || [ "$MODE" = latency ]; then
    for p in $RUN_PEERS; do log "latency: $p"; run_latency "$p"; done
fi

echo
python3 "$PROBE" table "$RAW"
log "raw lines appended to $WORK/idle-latency.txt; logs in $OUT; $(uptime)"
