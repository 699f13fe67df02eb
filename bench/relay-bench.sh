#!/usr/bin/env bash
# relay-bench.sh -- SMTP relay throughput harness, loopback only.
#
#   smtp-source (load) --> relay under test (127.0.0.1:PORT) --> smtp-sink (127.0.0.1:SINK_PORT)
#
# Prints one line per run:
#   peer sessions msgs size accept_msgs_per_s e2e_msgs_per_s cpu_s peak_rss_kb [extra key=value ...]
#
# Usage:
#   relay-bench.sh setup [postfix|postfix-dkim|haraka|all]   # apt/npm install + write configs (needs registries)
#   relay-bench.sh run --peer postfix|postfix-dkim|haraka|custom [options]
#
# run options (defaults in brackets):
#   --port N          relay listen port on 127.0.0.1 [2525]
#   --sink-port N     smtp-sink port on 127.0.0.1 [2526]
#   -s N              parallel smtp-source sessions [20]
#   -m N              messages per run [20000]
#   -l BYTES          message body size [5120]
#   -r N              runs [3]
#   -d                smtp-source -d: reuse each connection for many messages (default: 1 msg/connection)
#   --label TEXT      label printed in the 'peer' column [peer name]
#   --timeout S       max seconds to wait for the sink to receive all messages [900]
#   --haraka-nodes N  Haraka smtp.ini nodes= (1 = Haraka default, 'cpus', 0 = no cluster) [1]
#   --start CMD       custom: command that starts the relay (must return; may background it)
#   --stop CMD        custom: command that stops it
#   --pids CMD        custom: command printing the PID(s) of the relay's top process(es); their whole
#                     process tree is measured (CPU incl. reaped children, summed RSS)
#   --dump DIR        smtp-sink -d: write every message the sink receives to DIR (for checking
#                     what the relay sends, e.g. its DKIM signatures; not for measured runs)
#   --no-netns        do not run inside a private network namespace (default: run inside
#                     'unshare --net' with only 'lo' up, so nothing can leave the machine)
#
# Environment: BENCH_WORK (state/logs/results dir) [/tmp/peerbench]
#
# Tidegate: bench/run-tidegate.sh provides the custom peer's --start/--stop/--pids, and
# bench/bench-matrix.sh knows the peers `tidegate` and `tidegate-plugins` (bench/README.md).
# A custom --start/--stop command runs with RUNDIR (this run's log directory) exported.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
WORK="${BENCH_WORK:-/tmp/peerbench}"
HARAKA_VERSION="${HARAKA_VERSION:-3.3.4}"
HARAKA_PKG="$WORK/haraka-pkg"
HARAKA_APP="$WORK/haraka-app"
HARAKA_BIN="$HARAKA_PKG/node_modules/Haraka/bin/haraka"
DOMAIN="bench.test"
# postfix-dkim: Debian's opendkim milter, its configuration, key and socket (the socket is
# inside Postfix's chroot, /var/spool/postfix, as Debian's README.Debian sets it up).
OPENDKIM_DIR=/etc/opendkim-bench
OPENDKIM_SOCKET=/var/spool/postfix/opendkim-bench/opendkim.sock
OPENDKIM_PID=""

die() { echo "relay-bench: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- setup (network: package registries)
setup_base() {
    local need=()
    command -v smtp-source >/dev/null || need+=(postfix)
    command -v swaks >/dev/null || need+=(swaks)
    [ -x /usr/bin/time ] || need+=(time)
    command -v unshare >/dev/null || need+=(util-linux)
    command -v ip >/dev/null || need+=(iproute2)
    command -v ss >/dev/null || need+=(iproute2)
    command -v python3 >/dev/null || need+=(python3)
    if [ ${#need[@]} -gt 0 ]; then
        # 'No configuration': the package installs binaries only, never starts a daemon.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        echo "postfix postfix/mailname string relay.$DOMAIN" | debconf-set-selections
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
}

setup_haraka_pkg() {
    if ! command -v npm >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
    fi
    local major; major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || log "WARNING: node $major found; Haraka $HARAKA_VERSION wants node >= 20"
    if [ ! -x "$HARAKA_BIN" ]; then
        mkdir -p "$HARAKA_PKG"
        ( cd "$HARAKA_PKG" && { [ -f package.json ] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund "Haraka@$HARAKA_VERSION" )
    fi
}

setup_opendkim_pkg() {
    local need=()
    command -v opendkim >/dev/null || need+=(opendkim)
    command -v opendkim-genkey >/dev/null || need+=(opendkim-tools)
    /usr/bin/python3 -c 'import dkim' 2>/dev/null || need+=(python3-dkim)   # check-signing.py
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
}

cmd_setup() {
    local what="${1:-all}"
    mkdir -p "$WORK"
    setup_base
    case "$what" in
        postfix) configure_postfix 2525 2526 ;;
        postfix-dkim) setup_opendkim_pkg; configure_postfix 2525 2526; configure_opendkim ;;
        haraka)  setup_haraka_pkg; configure_haraka 2525 2526 1 ;;
        all)     configure_postfix 2525 2526; setup_opendkim_pkg; configure_opendkim
                 setup_haraka_pkg; configure_haraka 2525 2526 1 ;;
        *) die "setup: unknown peer $what" ;;
    esac
}

# ---------------------------------------------------------------- peer configs (no network needed)
configure_postfix() {
    local port=$1 sink=$2
    [ -f /etc/postfix/master.cf ] || die "postfix not installed (run: $0 setup postfix)"
    cat > /etc/postfix/main.cf <<EOF
# relay-bench: loopback-only relay. Accepts mail for $DOMAIN and relays
# everything to smtp-sink on 127.0.0.1:$sink. Nothing is delivered locally.
compatibility_level = 3.6
myhostname = relay.$DOMAIN
mydomain = $DOMAIN
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = $DOMAIN
smtpd_relay_restrictions = reject_unauth_destination
relayhost = [127.0.0.1]:$sink
default_transport = smtp:[127.0.0.1]:$sink
relay_transport = relay:[127.0.0.1]:$sink
local_transport = error:5.1.1 local delivery disabled
local_recipient_maps =
alias_maps =
alias_database =
smtp_dns_support_level = disabled
smtp_bind_address = 127.0.0.1
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
maillog_file = /var/log/postfix-bench.log
EOF
    # Listener: replace the stock 'smtp inet' line (or an earlier bench line) by 127.0.0.1:PORT.
    sed -i -E "s/^(smtp|127\.0\.0\.1:[0-9]+)([[:space:]]+inet[[:space:]].*smtpd)\$/127.0.0.1:$port\2/" /etc/postfix/master.cf
    grep -q "^127.0.0.1:$port[[:space:]]\+inet" /etc/postfix/master.cf || die "could not set smtpd listener in master.cf"
    /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true   # Debian: sync chroot files
    postfix check || die "postfix check failed"
}

# postfix-dkim: the same Postfix, every message passed through Debian's opendkim milter
# (OpenDKIM 2.11), which signs it with an RSA-2048 key for bench.test, relaxed/relaxed
# (smtp-source writes "From: <from@bench.test>"). Mode sv, as Debian ships it: opendkim
# signs mail from InternalHosts (default 127.0.0.1, the benchmark's client) and verifies
# the DKIM signatures of all other mail; per message it does one or the other, so here it
# signs. It needs no DNS for that (nor for verifying unsigned mail); its resolver
# (libunbound) is pointed at 127.0.0.1, where nothing answers in the namespace.
configure_postfix_milter() {
    cat >> /etc/postfix/main.cf <<EOF
# postfix-dkim: every message through opendkim (socket inside the chroot), as Debian's
# opendkim README.Debian sets it up; no message passes unsigned if the milter fails.
smtpd_milters = unix:opendkim-bench/opendkim.sock
non_smtpd_milters = \$smtpd_milters
milter_default_action = tempfail
EOF
    postfix check || die "postfix check failed"
}

configure_opendkim() {
    command -v opendkim >/dev/null || die "opendkim not installed (run: $0 setup postfix-dkim)"
    mkdir -p "$OPENDKIM_DIR/keys" "$(dirname "$OPENDKIM_SOCKET")"
    if [ ! -f "$OPENDKIM_DIR/keys/bench.private" ]; then
        opendkim-genkey -b 2048 -h sha256 -d "$DOMAIN" -s bench -D "$OPENDKIM_DIR/keys" \
            || die "opendkim-genkey failed"
    fi
    chown -R opendkim:opendkim "$OPENDKIM_DIR/keys"
    chmod 700 "$OPENDKIM_DIR/keys"; chmod 600 "$OPENDKIM_DIR/keys/bench.private"
    # Socket directory: the milter's user, Postfix's group (smtpd and cleanup run as
    # postfix:postfix and drop supplementary groups).
    chown opendkim:postfix "$(dirname "$OPENDKIM_SOCKET")"
    chmod 750 "$(dirname "$OPENDKIM_SOCKET")"
    cat > "$OPENDKIM_DIR/opendkim.conf" <<EOF
# relay-bench postfix-dkim: Debian's /etc/opendkim.conf with a key for $DOMAIN, the
# socket in Postfix's chroot and relaxed/relaxed (as Tidegate signs).
Syslog                  yes
SyslogSuccess           no
Mode                    sv
Canonicalization        relaxed/relaxed
OversignHeaders         From
Domain                  $DOMAIN
Selector                bench
KeyFile                 $OPENDKIM_DIR/keys/bench.private
UserID                  opendkim:postfix
UMask                   007
Socket                  local:$OPENDKIM_SOCKET
PidFile                 $WORK/opendkim-bench.pid
Nameservers             127.0.0.1
EOF
    opendkim -n -x "$OPENDKIM_DIR/opendkim.conf" || die "opendkim configuration check failed"
}

configure_haraka() {
    local port=$1 sink=$2 nodes=$3 c="$HARAKA_APP/config"
    [ -x "$HARAKA_BIN" ] || die "Haraka not installed (run: $0 setup haraka)"
    [ -d "$c" ] || node "$HARAKA_BIN" -i "$HARAKA_APP" >/dev/null
    mkdir -p "$HARAKA_APP/plugins"
    cat > "$c/smtp.ini" <<EOF
[main]
listen=127.0.0.1:$port
nodes=$nodes
force_shutdown_timeout=5
EOF
    echo "relay.$DOMAIN" > "$c/me"
    printf '%s\n' bench_no_rdns relay > "$c/plugins"
    cat > "$c/relay.ini" <<EOF
[relay]
acl=false
force_routing=true
dest_domains=true
EOF
    cat > "$c/relay_dest_domains.ini" <<EOF
[domains]
$DOMAIN = { "action": "continue", "nexthop": "smtp://127.0.0.1:$sink" }
any = { "action": "deny", "nexthop": "smtp://127.0.0.1:$sink" }
EOF
    cat > "$c/outbound.ini" <<EOF
[main]
enable_tls=false
EOF
    cat > "$HARAKA_APP/plugins/bench_no_rdns.js" <<'EOF'
// relay-bench: answer lookup_rdns locally, so Haraka does not send a PTR query
// to the system resolver for every connection (clients are all 127.0.0.1).
exports.hook_lookup_rdns = (next, connection) => next(OK, 'localhost')
EOF
}

# ---------------------------------------------------------------- peer start/stop
ROOT_PIDS=""
HARAKA_PID=""
STARTED=0      # 1 while the relay under test is running (for the EXIT trap)
SINK_PID=""
SAMP_PID=""

# shellcheck source=ports.sh
. "$HERE/ports.sh"

peer_start() {
    local i
    STARTED=1
    case "$PEER" in
        postfix)
            postsuper -d ALL >/dev/null 2>&1 || true
            : > /var/log/postfix-bench.log
            postfix start >/dev/null 2>&1 || die "postfix start failed"
            wait_listen "$PORT" 20 || die "postfix not listening on $PORT"
            ROOT_PIDS=$(tr -d ' ' < /var/spool/postfix/pid/master.pid) ;;
        postfix-dkim)
            # opendkim first, in the foreground of its own process: measured with Postfix.
            rm -f "$OPENDKIM_SOCKET"
            opendkim -f -x "$OPENDKIM_DIR/opendkim.conf" > "$RUNDIR/opendkim.log" 2>&1 < /dev/null &
            OPENDKIM_PID=$!
            for ((i = 0; i < 100; i++)); do [ -S "$OPENDKIM_SOCKET" ] && break; sleep 0.1; done
            [ -S "$OPENDKIM_SOCKET" ] || die "opendkim did not open $OPENDKIM_SOCKET (see $RUNDIR/opendkim.log)"
            postsuper -d ALL >/dev/null 2>&1 || true
            : > /var/log/postfix-bench.log
            postfix start >/dev/null 2>&1 || die "postfix start failed"
            wait_listen "$PORT" 20 || die "postfix not listening on $PORT"
            ROOT_PIDS="$(tr -d ' ' < /var/spool/postfix/pid/master.pid) $OPENDKIM_PID" ;;
        haraka)
            rm -rf "$HARAKA_APP/queue"
            node "$HARAKA_BIN" -c "$HARAKA_APP" > "$RUNDIR/haraka.log" 2>&1 &
            HARAKA_PID=$!
            wait_listen "$PORT" 30 || die "haraka not listening on $PORT (see $RUNDIR/haraka.log)"
            ROOT_PIDS=$HARAKA_PID ;;
        custom)
            # RUNDIR is exported so the start command can keep its log with the run;
            # its stdout goes to stderr so it cannot mix with the result lines.
            RUNDIR="$RUNDIR" bash -c "$START_CMD" >&2 || die "custom start failed"
            wait_listen "$PORT" 30 || die "custom relay not listening on $PORT"
            ROOT_PIDS=$(bash -c "$PIDS_CMD" | tr '\n' ' ') ;;
    esac
    [ -n "$ROOT_PIDS" ] || die "no relay PID found"
}

peer_stop() {
    local i
    STARTED=0
    case "$PEER" in
        postfix|postfix-dkim)
            local m; m=$(tr -d ' ' < /var/spool/postfix/pid/master.pid 2>/dev/null)
            postfix stop >/dev/null 2>&1
            for ((i = 0; i < 100; i++)); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
            if [ -n "$OPENDKIM_PID" ]; then
                kill -TERM "$OPENDKIM_PID" 2>/dev/null
                for ((i = 0; i < 100; i++)); do kill -0 "$OPENDKIM_PID" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$OPENDKIM_PID" 2>/dev/null
                wait "$OPENDKIM_PID" 2>/dev/null
                OPENDKIM_PID=""
            fi ;;
        haraka)
            kill -TERM "$HARAKA_PID" 2>/dev/null
            for ((i = 0; i < 100; i++)); do kill -0 "$HARAKA_PID" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$HARAKA_PID" 2>/dev/null
            wait "$HARAKA_PID" 2>/dev/null ;;
        custom)
            RUNDIR="$RUNDIR" bash -c "$STOP_CMD" >&2
            local p
            for p in $ROOT_PIDS; do   # wait (max 15 s each) until the measured roots are gone
                for ((i = 0; i < 150; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            done ;;
    esac
    wait_free "$PORT" || log "WARNING: port $PORT still in use after stop"
}

# ---------------------------------------------------------------- one run
one_run() {
    local n=$1
    RUNDIR="$WORK/runs/$(date +%Y%m%d-%H%M%S)-$LABEL-s$SESSIONS-m$MSGS-l$SIZE-$n"
    mkdir -p "$RUNDIR"
    wait_free "$SINK_PORT" || die "sink port $SINK_PORT busy"

    # Sink: accept and discard; exits after exactly MSGS messages (-M), or after the timeout.
    local dump=()
    if [ -n "$DUMP" ]; then mkdir -p "$DUMP"; chmod 777 "$DUMP"; dump=(-d "$DUMP/%H%M%S."); fi
    /usr/bin/time -f "%e %U %S %M" -o "$RUNDIR/sink.time" \
        timeout "$TIMEOUT" smtp-sink -4 -u nobody -m 512 "${dump[@]}" -M "$MSGS" "127.0.0.1:$SINK_PORT" 1024 \
        > "$RUNDIR/sink.out" 2>&1 &
    local sink_pid=$!
    SINK_PID=$sink_pid
    wait_listen "$SINK_PORT" 10 || die "smtp-sink not listening"

    peer_start
    sleep 1
    # shellcheck disable=SC2086
    python3 "$HERE/relay-sample.py" "$RUNDIR/sample" $ROOT_PIDS &
    local samp=$!
    SAMP_PID=$samp
    sleep 0.3

    local t0 t1 t2 src_rc sink_rc load0
    load0=$(cut -d' ' -f1 /proc/loadavg)   # machine load when the run starts (shared hosts)
    t0=$(now)
    /usr/bin/time -f "%e %U %S %M" -o "$RUNDIR/source.time" \
        smtp-source -4 $REUSE -s "$SESSIONS" -m "$MSGS" -l "$SIZE" -M "client.$DOMAIN" \
        -f "from@$DOMAIN" -t "to@$DOMAIN" "127.0.0.1:$PORT" > "$RUNDIR/source.out" 2>&1
    src_rc=$?
    t1=$(now)
    wait "$sink_pid"; sink_rc=$?
    SINK_PID=""
    t2=$(now)
    kill -TERM "$samp"; wait "$samp"; SAMP_PID=""
    peer_stop

    local pss sample src_cpu sink_cpu accept_s e2e_s accept_rate e2e_rate cpu rss procs
    sample=$(cat "$RUNDIR/sample" 2>/dev/null)
    cpu=$(sed -n 's/.*cpu_s=\([0-9.]*\).*/\1/p' <<<"$sample")
    rss=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' <<<"$sample")
    procs=$(sed -n 's/.*procs=\([0-9]*\).*/\1/p' <<<"$sample")
    pss=$(sed -n 's/.*peak_pss_kb=\([0-9]*\).*/\1/p' <<<"$sample")
    src_cpu=$(awk 'END{printf "%.2f", $2+$3}' "$RUNDIR/source.time")
    sink_cpu=$(awk 'END{printf "%.2f", $2+$3}' "$RUNDIR/sink.time")
    accept_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
    e2e_s=$(awk -v a="$t0" -v b="$t2" 'BEGIN{print b-a}')
    accept_rate=0; e2e_rate=0
    [ "$src_rc" -eq 0 ] && accept_rate=$(awk -v n="$MSGS" -v t="$accept_s" 'BEGIN{print n/t}')
    [ "$src_rc" -eq 0 ] && [ "$sink_rc" -eq 0 ] && e2e_rate=$(awk -v n="$MSGS" -v t="$e2e_s" 'BEGIN{print n/t}')
    local line
    line=$(printf "%-14s %4d %6d %7d %10.1f %10.1f %8.2f %9d  peak_pss_kb=%s accept_s=%.2f e2e_s=%.2f src_cpu_s=%s sink_cpu_s=%s relay_procs=%s src_rc=%d sink_rc=%d load1=%s run=%s" \
        "$LABEL" "$SESSIONS" "$MSGS" "$SIZE" "$accept_rate" "$e2e_rate" "${cpu:-0}" "${rss:-0}" \
        "${pss:-0}" "$accept_s" "$e2e_s" "$src_cpu" "$sink_cpu" "${procs:-0}" "$src_rc" "$sink_rc" \
        "$load0" "$(basename "$RUNDIR")")
    echo "$line"
    echo "$line" >> "$WORK/results.txt"
    [ "$src_rc" -eq 0 ] || log "smtp-source failed: $(tail -3 "$RUNDIR/source.out")"
    [ "$sink_rc" -eq 0 ] || log "sink did not get all $MSGS messages (rc=$sink_rc, timeout ${TIMEOUT}s)"
}

cleanup() {  # on any exit: leave nothing running
    [ -n "$SAMP_PID" ] && kill -TERM "$SAMP_PID" 2>/dev/null
    [ "$STARTED" = 1 ] && peer_stop >/dev/null 2>&1
    if [ -n "$SINK_PID" ]; then
        pkill -TERM -P "$SINK_PID" 2>/dev/null   # children of our own time/timeout wrapper only
        kill -TERM "$SINK_PID" 2>/dev/null
    fi
}

cmd_run() {
    PEER=custom PORT=2525 SINK_PORT=2526 SESSIONS=20 MSGS=20000 SIZE=5120 RUNS=3 REUSE=""
    LABEL="" TIMEOUT=900 HARAKA_NODES=1 START_CMD="" STOP_CMD="" PIDS_CMD="" NETNS=1 INNS=0 DUMP=""
    local args=("$@")
    while [ $# -gt 0 ]; do
        case "$1" in
            --peer) PEER=$2; shift ;;
            --port) PORT=$2; shift ;;
            --sink-port) SINK_PORT=$2; shift ;;
            -s) SESSIONS=$2; shift ;;
            -m) MSGS=$2; shift ;;
            -l) SIZE=$2; shift ;;
            -r) RUNS=$2; shift ;;
            -d) REUSE="-d" ;;
            --label) LABEL=$2; shift ;;
            --timeout) TIMEOUT=$2; shift ;;
            --haraka-nodes) HARAKA_NODES=$2; shift ;;
            --start) START_CMD=$2; shift ;;
            --stop) STOP_CMD=$2; shift ;;
            --pids) PIDS_CMD=$2; shift ;;
            --dump) DUMP=$2; shift ;;
            --no-netns) NETNS=0 ;;
            --in-netns) INNS=1 ;;
            *) die "unknown option $1" ;;
        esac
        shift
    done
    [ -n "$LABEL" ] || LABEL=$PEER
    case "$PEER" in
        postfix|postfix-dkim|haraka) ;;
        custom) [ -n "$START_CMD" ] && [ -n "$STOP_CMD" ] && [ -n "$PIDS_CMD" ] \
                    || die "custom peer needs --start, --stop and --pids" ;;
        *) die "unknown peer $PEER" ;;
    esac

    if [ "$NETNS" = 1 ] && [ "$INNS" = 0 ]; then
        # Install what is missing while the registries are reachable, then re-enter in a
        # private network namespace where only loopback exists.
        setup_base >&2
        [ "$PEER" = haraka ] && setup_haraka_pkg >&2
        [ "$PEER" = postfix-dkim ] && setup_opendkim_pkg >&2
        exec unshare --net -- bash -c 'ip link set lo up && exec "$0" run --in-netns "$@"' "$SELF" "${args[@]}"
    fi

    mkdir -p "$WORK/runs"
    case "$PEER" in
        postfix) configure_postfix "$PORT" "$SINK_PORT" ;;
        postfix-dkim) configure_postfix "$PORT" "$SINK_PORT"; configure_postfix_milter; configure_opendkim ;;
        haraka)  configure_haraka "$PORT" "$SINK_PORT" "$HARAKA_NODES" ;;
    esac
    wait_free "$PORT" || die "port $PORT already in use"
    trap 'exit 130' INT TERM
    trap cleanup EXIT
    log "peer sessions msgs size accept_msgs_per_s e2e_msgs_per_s cpu_s peak_rss_kb  [extras]"
    local i
    for ((i = 1; i <= RUNS; i++)); do one_run "$i"; done
}

case "${1:-}" in
    setup) shift; cmd_setup "$@" ;;
    run) shift; cmd_run "$@" ;;
    *) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^set -uo'; exit 2 ;;
esac
