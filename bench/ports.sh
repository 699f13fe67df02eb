# ports.sh -- waiting for a TCP listener to appear or go away; sourced by relay-bench.sh
# and idle-and-latency.sh (inside their network namespace).

wait_listen() {  # port timeout_s
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    return 1
}
wait_free() {  # port
    local i
    for ((i = 0; i < 100; i++)); do
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . || return 0
        sleep 0.1
    done
    return 1
}
