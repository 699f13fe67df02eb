#!/usr/bin/env bash
# bench-matrix.sh -- run relay-bench.sh over peers x variants, interleaving peers inside each
# repetition (so that noise on a shared machine hits all peers alike), then summarize.
#
#   bench/bench-matrix.sh [out.txt]                              # Tidegate's default matrix
#   REPS=3 PEERS="postfix haraka" VARIANTS="20:20000:5120" bench/bench-matrix.sh
#
# A variant is "sessions:msgs:size[:d]" (':d' = smtp-source -d, connection reuse).
# Peer names: postfix, postfix-dkim (Postfix signing through Debian's opendkim milter),
# haraka (smtp.ini nodes=1, Haraka's default), haraka-n2 (nodes=cpus),
# tidegate (bench/tidegate.toml), tidegate-plugins (bench/tidegate-plugins.toml: the five
# shipped plugins), tidegate-baseline (the same plugins under an earlier build:
# BASELINE_BIN=path/to/tidegate BASELINE_PLUGINS=dir/of/its/components, config
# bench/tidegate-plugins-baseline.toml), tidegate-auth (bench/tidegate-auth.toml: SPF/DKIM/
# DMARC/ARC verification on intake, RSA-2048 DKIM signing), and custom (CUSTOM_ARGS='--label mine --start ...').
# The first peer is the baseline of the ratios.
#
# Environment: REPS [3], PEERS [postfix tidegate tidegate-plugins haraka],
#   VARIANTS [20:20000:5120 1:1000:5120 20:2000:102400], TIMEOUT (per-run sink timeout, s) [300],
#   BUILD=0 skips building Tidegate and the plugins first (they are built outside the
#   measured runs: cargo build --release -p tidegate, ./scripts/build-plugins).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${1:-${BENCH_WORK:-/tmp/peerbench}/matrix-$(date +%Y%m%d-%H%M%S).txt}"
REPS="${REPS:-3}"
PEERS="${PEERS:-postfix tidegate tidegate-plugins haraka}"
VARIANTS="${VARIANTS:-20:20000:5120 1:1000:5120 20:2000:102400}"
TIMEOUT="${TIMEOUT:-300}"
RT="$HERE/run-tidegate.sh"
mkdir -p "$(dirname "$OUT")"

if [ "${BUILD:-1}" = 1 ]; then
    case " $PEERS " in
        *" tidegate-plugins "*) (cd "$ROOT" && ./scripts/build-plugins >&2) || exit 1 ;;
    esac
    case " $PEERS " in
        *" tidegate"*) "$RT" build || exit 1 ;;
    esac
fi

tidegate_args() {  # label config [environment for run-tidegate.sh]
    local env="${3:-}"
    args=(--peer custom --label "$1"
          --start "$env '$RT' start '$HERE/$2'"
          --stop "$env '$RT' stop '$HERE/$2'"
          --pids "$env '$RT' pids '$HERE/$2'")
}

echo "# $(date -Is) REPS=$REPS PEERS='$PEERS' VARIANTS='$VARIANTS' commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" >> "$OUT"
for rep in $(seq 1 "$REPS"); do
    for v in $VARIANTS; do
        IFS=: read -r s m l d <<<"$v"
        extra=(); [ "${d:-}" = d ] && extra=(-d)
        for p in $PEERS; do
            case "$p" in
                haraka-n2) args=(--peer haraka --haraka-nodes cpus --label haraka-n2) ;;
                tidegate) tidegate_args tidegate tidegate.toml ;;
                tidegate-plugins) tidegate_args tidegate-plugins tidegate-plugins.toml ;;
                tidegate-baseline) tidegate_args tidegate-baseline tidegate-plugins-baseline.toml \
                    "TIDEGATE_BIN='${BASELINE_BIN:?set BASELINE_BIN}' TIDEGATE_PLUGINS='${BASELINE_PLUGINS:?set BASELINE_PLUGINS}'" ;;
                tidegate-auth) tidegate_args tidegate-auth tidegate-auth.toml ;;
                tidegate=*) tidegate_args "${p#tidegate=}" "${p#tidegate=}.toml" ;;  # bench/NAME.toml
                custom) eval "args=(--peer custom ${CUSTOM_ARGS:-})" ;;  # shell-quoted
                *) args=(--peer "$p") ;;
            esac
            "$HERE/relay-bench.sh" run "${args[@]}" -s "$s" -m "$m" -l "$l" -r 1 --timeout "$TIMEOUT" "${extra[@]}" \
                | sed "s/\$/ rep=$rep variant=$v/" | tee -a "$OUT"
        done
    done
done
python3 "$HERE/summarize.py" "$OUT"
