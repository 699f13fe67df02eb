#!/usr/bin/env bash
# queue-scale.sh -- the queue at scale (issue 11): N small messages queued for a held queue,
# then a restart (time until the listener answers, time until every message is back in
# the queue, RSS then), then the queue released (drain rate to a sink, peak RSS).
#
#   bench/queue-scale.sh [N]            # N messages [1000000]; results on stdout and in
#                                       # $WORK/result.txt
#
# Environment: WORK [/tmp/queue-scale] (the spool lives there: N × 4 KiB of disk),
# TIDEGATE_BIN [target/release/tidegate, built if missing], SIZE [1024] octets of body.
# Needs Postfix's smtp-source and smtp-sink (bench/relay-bench.sh setup postfix installs
# them) and python3.
#
# The messages are put in the spool by cloning one message that Tidegate itself accepted
# over SMTP (spool format version 1, see host/src/spool/mod.rs), each under its own queue
# ID, because sending a million messages over SMTP would take most of the run; what is
# measured starts with the restart.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
N="${1:-1000000}"
WORK="${WORK:-/tmp/queue-scale}"
SIZE="${SIZE:-1024}"
BIN="${TIDEGATE_BIN:-$ROOT/target/release/tidegate}"
PORT=2625
SINK_PORT=2626
ADMIN=127.0.0.1:9625

die() { echo "queue-scale: $*" >&2; exit 1; }
command -v smtp-source >/dev/null || die "smtp-source missing (bench/relay-bench.sh setup postfix)"
command -v smtp-sink >/dev/null || die "smtp-sink missing (bench/relay-bench.sh setup postfix)"
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release -p tidegate)
fi
pkill -f "$WORK/tidegate serve" 2>/dev/null || true
rm -rf "$WORK"
mkdir -p "$WORK"
cp "$BIN" "$WORK/tidegate"

config() { # $1 = hold (true|false)
    cat > "$WORK/tidegate.toml" <<TOML
hostname = "scale.bench.test"
shutdown_grace = "5s"

[[listener]]
name = "bench"
address = "127.0.0.1:$PORT"
protocol = "smtp"
verify = []

[spool]
path = "$WORK/spool"

[relay]
accept_domains = ["bench.test"]
relay_networks = ["127.0.0.0/8"]

[log]
level = "warn"

[admin]
address = "$ADMIN"

[queue]
hold = $1
max_concurrent_deliveries = 100
max_per_destination = 20

[delivery]
tls = "none"

[[route]]
name = "sink"
domains = ["bench.test"]
smarthost = "127.0.0.1:$SINK_PORT"
tls = "none"
TOML
}

now() { date +%s.%N; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
metric() { # the value of one metric from /metrics, 0 if absent
    curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2; found=1 } END { if (!found) print 0 }'
}
status() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # kB
start() {
    "$WORK/tidegate" serve -c "$WORK/tidegate.toml" >>"$WORK/tidegate.log" 2>&1 &
    PID=$!
}
stop() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}
mib() { echo $(( $1 / 1024 )); }

# 1. One real message, accepted and spooled by Tidegate, as the template.
config true
start
for _ in $(seq 100); do listening $PORT && break; sleep 0.1; done
smtp-source -s 1 -m 1 -l "$SIZE" -f sender@bench.test -t rcpt@bench.test "127.0.0.1:$PORT" \
    || die "the template message was not accepted"
stop
template="$(ls "$WORK/spool/msg" | head -1)"
[ -n "$template" ] || die "no template message in the spool"

# 2. N clones of it.
echo "queue-scale: writing $N messages into $WORK/spool/msg"
python3 - "$WORK/spool/msg" "$template" "$N" <<'PY'
import os, sys
msg_dir, template, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(os.path.join(msg_dir, template), "rb").read()
base = int(template, 16)
os.remove(os.path.join(msg_dir, template))
old = template.encode()
for i in range(n):
    name = "%016X" % (base + i)
    with open(os.path.join(msg_dir, name), "wb") as f:
        f.write(data.replace(old, name.encode()))
PY
sync

# 3. Restart with the queue held.
config true
t0=$(now)
start
until listening $PORT; do sleep 0.01; done
t_listen=$(now)
until [ "$(metric tidegate_queued_messages)" -ge "$N" ] 2>/dev/null; do sleep 0.05; done
t_recovered=$(now)
rss_held=$(status $PID VmRSS)
hwm_held=$(status $PID VmHWM)
stop

# 4. Released: every message to the sink.
timeout 3600 smtp-sink -4 -u nobody -m 512 -M "$N" "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
SINK=$!
for _ in $(seq 100); do listening $SINK_PORT && break; sleep 0.1; done
config false
t1=$(now)
start
peak=0
while kill -0 "$SINK" 2>/dev/null; do
    hwm=$(status $PID VmHWM || echo 0)
    [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
    sleep 0.5
done
t_drained=$(now)
peak=$(status $PID VmHWM)
left=$(ls "$WORK/spool/msg" | wc -l)
stop

python3 - "$N" "$t0" "$t_listen" "$t_recovered" "$rss_held" "$hwm_held" "$t1" "$t_drained" "$peak" "$left" <<'PY' | tee "$WORK/result.txt"
import sys
n, t0, tl, tr, rss, hwm, t1, td, peak, left = sys.argv[1:]
n, t0, tl, tr, t1, td = int(n), float(t0), float(tl), float(tr), float(t1), float(td)
print(f"messages                     {n}")
print(f"restart → listening          {tl - t0:.2f} s")
print(f"restart → all {n} queued  {tr - t0:.2f} s")
print(f"RSS with all queued (held)   {int(rss) // 1024} MiB (peak {int(hwm) // 1024} MiB)")
print(f"released → drained           {td - t1:.1f} s = {n / (td - t1):.0f} msg/s")
print(f"peak RSS while draining      {int(peak) // 1024} MiB")
print(f"left in the spool            {left}")
PY
