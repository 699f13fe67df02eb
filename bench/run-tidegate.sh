#!/usr/bin/env bash
# run-tidegate.sh -- start/stop Tidegate for relay-bench.sh's custom peer.
#
#   bench/run-tidegate.sh build                 # cargo build --release -p tidegate, check the
#                                               # configs, pin the binary and plugin components
#   bench/run-tidegate.sh start CONFIG          # fresh spool, serve in the background, print PID
#   bench/run-tidegate.sh pids  CONFIG          # the PID of the running server (for the sampler)
#   bench/run-tidegate.sh stop  CONFIG          # SIGTERM, wait until it has exited
#
# CONFIG is bench/tidegate.toml or bench/tidegate-plugins.toml (any path). The spool
# directory named in its [spool] table is deleted and recreated before every start.
#
# The target directory and plugins/dist are shared with other developers, who may rebuild
# them in the middle of a matrix. So `build` copies target/release/tidegate and
# plugins/dist/*.wasm to /tmp/tidegate-bench/pinned/ (with the commit in VERSION), and
# `start` runs that copy, with a copy of CONFIG whose `../plugins/dist/` paths point at
# the pinned components. `start` never compiles. TIDEGATE_BIN overrides the binary and
# TIDEGATE_PLUGINS the directory of components (a baseline build, for before/after runs).
#
# The server's output goes to $RUNDIR/tidegate.log when relay-bench.sh sets RUNDIR (one
# directory per run), else to /tmp/tidegate-bench/<config name>.log; `stop` also leaves
# metrics.txt (the admin /metrics, read before the SIGTERM) and spool-after.txt there.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
STATE=/tmp/tidegate-bench
PINNED="$STATE/pinned"
BIN="${TIDEGATE_BIN:-$PINNED/tidegate}"
PLUGINS="${TIDEGATE_PLUGINS:-$PINNED/plugins}"

die() { echo "run-tidegate: $*" >&2; exit 1; }

config_arg() {
    [ $# -ge 1 ] || die "missing CONFIG"
    [ -f "$1" ] || die "no such config: $1"
    CONFIG="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    NAME="$(basename "$CONFIG" .toml)"
    PIDFILE="$STATE/$NAME.pid"
}

spool_path() {  # the `path` of the [spool] table (an absolute path in the bench configs)
    awk '/^\[/ { s = ($0 == "[spool]") } s && /^path[[:space:]]*=/ { gsub(/^[^"]*"|".*$/, ""); print; exit }' "$CONFIG"
}

case "${1:-}" in
    build)
        cd "$ROOT"
        cargo build --release -p tidegate >&2
        rm -rf "$PINNED.new"
        mkdir -p "$PINNED.new/plugins"
        cp target/release/tidegate "$PINNED.new/tidegate"
        if ls plugins/dist/*.wasm >/dev/null 2>&1; then
            cp plugins/dist/*.wasm "$PINNED.new/plugins/"
        else
            echo "run-tidegate: plugins/dist is empty; run ./scripts/build-plugins for tidegate-plugins.toml" >&2
        fi
        {
            echo "commit $(git rev-parse --short HEAD)"
            git status --porcelain -- host plugin-sdk plugins Cargo.toml Cargo.lock | sed 's/^/dirty /'
            echo "built $(date -Is)"
            # (Without plugins the glob matches nothing: no sha256sum of it, or `set -e`
            # would end the build here, silently, and leave the previous pinned build.)
            sha256sum "$PINNED.new/tidegate" | sed "s|$PINNED.new/||"
            if ls "$PINNED.new"/plugins/*.wasm >/dev/null 2>&1; then
                sha256sum "$PINNED.new"/plugins/*.wasm | sed "s|$PINNED.new/||"
            fi
        } > "$PINNED.new/VERSION"
        # The DKIM key of tidegate-auth.toml, and its record for the dnsmasq beside it.
        "$PINNED.new/tidegate" dkim keygen --domain bench.test --selector bench \
            --out "$PINNED.new/dkim-bench.pem" 2>/dev/null \
            | sed 's/^[^"]*"//; s/"$//; s/" "/,/g' > "$PINNED.new/dkim-bench.record"
        rm -rf "$PINNED"
        mv "$PINNED.new" "$PINNED"
        "$PINNED/tidegate" check -c "$HERE/tidegate.toml" >&2
        ls "$PINNED"/plugins/*.wasm >/dev/null 2>&1 && "$PINNED/tidegate" check -c "$HERE/tidegate-plugins.toml" >&2
        "$PINNED/tidegate" check -c "$HERE/tidegate-auth.toml" >&2
        sed -n 1p "$PINNED/VERSION" >&2 ;;
    start)
        shift; config_arg "$@"
        [ -x "$BIN" ] || die "$BIN not built (run: $0 build)"
        if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            die "already running: pid $(cat "$PIDFILE")"
        fi
        spool=$(spool_path)
        case "$spool" in
            /tmp/*) ;;
            *) die "refusing to wipe spool '$spool' (expected an absolute path under /tmp)" ;;
        esac
        rm -rf "$spool"
        mkdir -p "$spool" "$STATE"
        log="$STATE/$NAME.log"
        [ -z "${RUNDIR:-}" ] || log="$RUNDIR/tidegate.log"
        # The configuration actually served: CONFIG with its plugins at the pinned copies.
        sed "s|\"\\.\\./plugins/dist/|\"$PLUGINS/|" "$CONFIG" > "$STATE/$NAME.run.toml"
        cp "$PINNED/VERSION" "${RUNDIR:-$STATE}/tidegate-version.txt" 2>/dev/null || true
        # A configuration that wants DNS records (bench/NAME.dnsmasq) gets a dnsmasq on
        # 127.0.0.1:5399 serving them, beside the relay (inside the benchmark's namespace).
        if [ -f "$HERE/$NAME.dnsmasq" ]; then
            record=$(cat "$PINNED/dkim-bench.record" 2>/dev/null || true)
            mapfile -t dns_args < <(grep -v '^#' "$HERE/$NAME.dnsmasq" | sed "s|@DKIM@|$record|")
            dnsmasq --no-daemon --keep-in-foreground --conf-file=/dev/null --no-resolv \
                --no-hosts --pid-file= --listen-address=127.0.0.1 --bind-interfaces \
                --port=5399 "${dns_args[@]}" > "$STATE/$NAME.dnsmasq.log" 2>&1 < /dev/null &
            echo $! > "$STATE/$NAME.dnsmasq.pid"
            sleep 0.3
        fi
        nohup "$BIN" serve -c "$STATE/$NAME.run.toml" > "$log" 2>&1 < /dev/null &
        pid=$!
        echo "$pid" > "$PIDFILE"
        echo "$pid" ;;
    pids)
        shift; config_arg "$@"
        cat "$PIDFILE" ;;
    stop)
        shift; config_arg "$@"
        [ -f "$PIDFILE" ] || exit 0
        pid=$(cat "$PIDFILE")
        out="${RUNDIR:-$STATE}"
        # After the measurement: the server's own counters, then (once it has stopped) what
        # is left in its spool. Neither is part of the measured window.
        python3 - "$CONFIG" > "$out/metrics.txt" 2>&1 <<'PY' || true
import re, sys, urllib.request
addr = None
section = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("["):
        section = line
    elif section == "[admin]" and line.startswith("address"):
        addr = re.search(r'"([^"]+)"', line).group(1)
if addr:
    print(urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode(), end="")
PY
        if kill -TERM "$pid" 2>/dev/null; then
            for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "run-tidegate: pid $pid still running 15 s after SIGTERM; SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$PIDFILE"
        if [ -f "$STATE/$NAME.dnsmasq.pid" ]; then
            kill "$(cat "$STATE/$NAME.dnsmasq.pid")" 2>/dev/null || true
            rm -f "$STATE/$NAME.dnsmasq.pid"
        fi
        "$BIN" spool list -c "$STATE/$NAME.run.toml" > "$out/spool-after.txt" 2>&1 || true ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -euo'; exit 2 ;;
esac
