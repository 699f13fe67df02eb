#!/usr/bin/env bash
# check-signing.sh -- outside the measured matrix: does the peer really sign? One short run
# (5 sessions x 200 messages of 5 KB) of postfix-dkim or tidegate-auth with smtp-sink
# writing every message it receives to a directory, then check-signing.py verifies each
# message's DKIM-Signature (dkimpy) against the peer's own key record.
#
#   bench/check-signing.sh postfix-dkim     # key: /etc/opendkim-bench/keys/bench.txt
#   bench/check-signing.sh tidegate-auth    # key: /tmp/tidegate-bench/pinned/dkim-bench.record
#                                           # (run bench/run-tidegate.sh build first)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER="${1:-}" MSGS="${MSGS:-200}"
DUMP="${BENCH_WORK:-/tmp/peerbench}/dump-$PEER"
RT="$HERE/run-tidegate.sh"
case "$PEER" in
    postfix-dkim) args=(--peer postfix-dkim); record=/etc/opendkim-bench/keys/bench.txt ;;
    tidegate-auth)
        cfg="$HERE/tidegate-auth.toml"
        args=(--peer custom --label tidegate-auth --start "'$RT' start '$cfg'"
              --stop "'$RT' stop '$cfg'" --pids "'$RT' pids '$cfg'")
        record=/tmp/tidegate-bench/pinned/dkim-bench.record ;;
    *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
rm -rf "$DUMP"
"$HERE/relay-bench.sh" run "${args[@]}" -s 5 -m "$MSGS" -l 5120 -r 1 --timeout 60 --dump "$DUMP"
/usr/bin/python3 "$HERE/check-signing.py" "$DUMP" "$record"
