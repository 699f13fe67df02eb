#!/usr/bin/env python3
"""SMTP probes for bench/idle-and-latency.sh (standard library only).

usage:
  smtp-probe.py idle    --label L [--host H] [--port P] [-n N] [--settle S] [--warmup W]
                        [--batch B] [--stall S] [--deadline S] PID [PID...]
  smtp-probe.py latency --label L [--host H] [--port P] [-m M] [-l BYTES]
  smtp-probe.py table   FILE        # markdown tables of the raw lines in FILE

idle: memory per idle connection. PID... are the server's top processes; the whole
  process tree under them is measured (summed RSS, and PSS from /proc/PID/smaps_rollup).
  Opens W warm-up connections (greeting, EHLO, QUIT) first, then reads the tree's
  memory ("before"), opens N connections (non-blocking, at most B [100] of them between
  connect and EHLO reply at a time: a burst beyond the server's listen backlog would be
  dropped by TCP and retried only seconds later); each reads the 220 greeting, sends
  `EHLO probe.test` and reads the reply, then stays idle. When all are idle, or nothing
  has progressed for --stall seconds (a server out of processes leaves connections
  unanswered in its backlog; the connections not yet opened are then opened without
  waiting), it waits --settle seconds and reads the memory again ("after"); then it
  closes them all, waits --settle seconds and reads it a third time ("closed").
  Per-connection cost = (after - before) / the connections that got their EHLO reply.
  Raises its own RLIMIT_NOFILE.

latency: one connection, EHLO, then M messages of about BYTES bytes (headers + body)
  sequentially (MAIL, RCPT, DATA, message, final dot; no PIPELINING). End-of-DATA latency
  of a message = from just before the final "\\r\\n.\\r\\n" is written to the socket until
  the whole reply to it has been read; every reply must be 250. Prints median, p90,
  p99, max (nearest rank) in microseconds, the first message's latency separately (it
  may include one-time work in the server), and the transaction time (MAIL .. 250).

Both print one raw line: `idle key=value ...` or `latency key=value ...`.
"""
import argparse
import errno
import math
import os
import re
import resource
import selectors
import socket
import statistics
import sys
import time

REPLY_END = re.compile(rb"^(\d{3}) ", re.M)


# ------------------------------------------------------------------ memory of a process tree
def tree_of(roots):
    ppid = {}
    comm = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        pid = int(d)
        comm[pid] = s[s.find("(") + 1:s.rfind(")")]
        ppid[pid] = int(s[s.rfind(")") + 2:].split()[1])
    tree = {p for p in roots if p in ppid}
    changed = True
    while changed:
        changed = False
        for p, pp in ppid.items():
            if pp in tree and p not in tree:
                tree.add(p)
                changed = True
    return tree, comm


def memory(roots):
    """Summed Rss/Pss (kB) over the tree, process and thread counts, per-command PSS."""
    tree, comm = tree_of(roots)
    rss = pss = threads = 0
    by_comm = {}
    n = 0
    for p in tree:
        try:
            vals = {}
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("Rss", "Pss"):
                        vals[k] = int(v.split()[0])
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("Threads:"):
                        threads += int(line.split()[1])
        except (OSError, ValueError):
            continue  # exited meanwhile
        n += 1
        rss += vals.get("Rss", 0)
        pss += vals.get("Pss", 0)
        c = by_comm.setdefault(comm.get(p, "?"), [0, 0])
        c[0] += 1
        c[1] += vals.get("Pss", 0)
    return {"rss_kb": rss, "pss_kb": pss, "procs": n, "threads": threads, "by_comm": by_comm}


def server_nofile(pid):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    want_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, want_hard))
    except (ValueError, OSError):
        # Not allowed to raise the hard limit (not root): go as high as it allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ idle connections
CONNECTING, GREETING, EHLO, IDLE, REFUSED, FAILED = range(6)
STATE_NAMES = ["connecting", "no_greeting", "no_ehlo_reply", "idle", "refused", "failed"]


class Conn:
    __slots__ = ("sock", "state", "buf", "code")

    def __init__(self, sock):
        self.sock = sock
        self.state = CONNECTING
        self.buf = b""
        self.code = None


def open_idle(host, port, n, batch, stall, deadline_s):
    """Opens n connections, at most `batch` of them between connect and EHLO reply at a
    time (a burst larger than the server's listen backlog would be dropped and retried by
    TCP after seconds), until all are idle or nothing has progressed for `stall` seconds
    (a server out of processes leaves them in its backlog). The rest are then opened
    without waiting, so that n connections are always attempted."""
    sel = selectors.DefaultSelector()
    conns = []
    inflight = 0
    last = time.monotonic()
    deadline = last + deadline_s

    def open_one(register=True):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c = Conn(s)
        rc = s.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            c.state = FAILED
            s.close()
        elif register:
            sel.register(s, selectors.EVENT_WRITE, c)
        conns.append(c)
        return c.state != FAILED

    def done(c, state, code=None):
        nonlocal inflight, last
        c.state, c.code = state, code
        sel.unregister(c.sock)
        inflight -= 1
        last = time.monotonic()

    while True:
        while inflight < batch and len(conns) < n:
            if open_one():
                inflight += 1
        now = time.monotonic()
        if inflight == 0 or now - last > stall or now > deadline:
            break
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            s = c.sock
            if c.state == CONNECTING:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    done(c, FAILED)
                else:
                    c.state = GREETING
                    sel.modify(s, selectors.EVENT_READ, c)
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                done(c, FAILED)
                continue
            c.buf += data
            m = REPLY_END.search(c.buf)
            if not m or not c.buf.endswith(b"\n"):
                continue
            code = int(m.group(1))
            c.buf = b""
            if c.state == GREETING:
                if code != 220:
                    done(c, REFUSED, code)
                    continue
                s.send(b"EHLO probe.test\r\n")  # 17 bytes into an empty socket buffer
                c.state = EHLO
                last = time.monotonic()
            elif c.state == EHLO:
                done(c, IDLE if code == 250 else REFUSED, code)
    not_waited = n - len(conns)
    while len(conns) < n:
        open_one(register=False)
    sel.close()
    return conns, not_waited


def late_greetings(conns):
    """Connections without a greeting when the opening stopped that have one now."""
    n = 0
    for c in conns:
        if c.state in (CONNECTING, GREETING):
            try:
                if c.sock.recv(4, socket.MSG_PEEK | socket.MSG_DONTWAIT).startswith(b"220"):
                    n += 1
            except OSError:
                pass
    return n


def still_open(conns):
    """Idle connections the server has not closed (nothing readable, or data but no EOF)."""
    n = 0
    for c in conns:
        if c.state != IDLE:
            continue
        try:
            data = c.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                n += 1  # the server said something (e.g. a timeout notice) but kept it open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def warmup(host, port, w):
    for _ in range(w):
        with socket.create_connection((host, port), timeout=10) as s:
            f = s.makefile("rb")
            read_reply(f)
            s.sendall(b"EHLO probe.test\r\n")
            read_reply(f)
            s.sendall(b"QUIT\r\n")
            read_reply(f)


def cmd_idle(a):
    roots = [int(p) for p in a.pids]
    nofile = raise_nofile(a.n + 64)
    if nofile < a.n + 16:
        sys.exit(f"smtp-probe: RLIMIT_NOFILE {nofile} too small for {a.n} connections")
    if a.warmup:
        warmup(a.host, a.port, a.warmup)
        time.sleep(0.5)
    before = memory(roots)
    t0 = time.monotonic()
    conns, not_waited = open_idle(a.host, a.port, a.n, a.batch, a.stall, a.deadline)
    setup_s = time.monotonic() - t0
    time.sleep(a.settle)
    after = memory(roots)
    open_after = still_open(conns)
    late = late_greetings(conns)
    counts = [0] * len(STATE_NAMES)
    for c in conns:
        counts[c.state] += 1
    refused_codes = sorted({c.code for c in conns if c.state == REFUSED and c.code})
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
    time.sleep(a.settle)
    closed = memory(roots)
    idle = counts[IDLE]
    per = lambda k: round((after[k] - before[k]) * 1024 / idle) if idle else 0  # noqa: E731
    top = sorted(after["by_comm"].items(), key=lambda kv: -kv[1][1])[:4]
    fields = {
        "peer": a.label,
        "n": a.n,
        "idle": idle,
        **{STATE_NAMES[i]: counts[i] for i in (CONNECTING, GREETING, EHLO, REFUSED, FAILED)},
        "refused_codes": ",".join(map(str, refused_codes)) or "-",
        "opened_unwaited": not_waited,
        "late_greetings": late,
        "open_after_settle": open_after,
        "rss_before_kb": before["rss_kb"],
        "rss_after_kb": after["rss_kb"],
        "rss_closed_kb": closed["rss_kb"],
        "pss_before_kb": before["pss_kb"],
        "pss_after_kb": after["pss_kb"],
        "pss_closed_kb": closed["pss_kb"],
        "rss_per_conn_b": per("rss_kb"),
        "pss_per_conn_b": per("pss_kb"),
        "procs_before": before["procs"],
        "procs_after": after["procs"],
        "threads_before": before["threads"],
        "threads_after": after["threads"],
        "pss_by_cmd_after": ";".join(f"{k}:{v[0]}x{v[1]}kB" for k, v in top),
        "warmup": a.warmup,
        "settle_s": a.settle,
        "batch": a.batch,
        "setup_s": f"{setup_s:.2f}",
        "nofile": nofile,
        "server_nofile": server_nofile(roots[0]),
    }
    print("idle " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


# ------------------------------------------------------------------ single-session latency
def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        lines.append(line)
        if len(line) >= 4 and line[3:4] == b" ":
            return int(line[:3]), b"".join(lines)


def expect(f, code, what):
    got, text = read_reply(f)
    if got != code:
        raise RuntimeError(f"{what}: expected {code}, got {text.decode(errors='replace').strip()!r}")


def message_parts(i, size):
    head = (
        f"From: <from@bench.test>\r\nTo: <to@bench.test>\r\n"
        f"Subject: latency probe {i}\r\n"
        f"Message-ID: <{i}.{os.getpid()}.{time.time_ns()}@probe.test>\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body_len = max(0, size - len(head))
    body = (line * (body_len // len(line) + 1))[:body_len]
    body = body.rstrip(b"\r\n")  # the final "\r\n.\r\n" ends the last line
    return head + body


def pct(sorted_vals, p):
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def cmd_latency(a):
    lat, txn = [], []
    ok = 0
    error = "-"
    s = None
    t_start = time.perf_counter_ns()
    try:
        s = socket.create_connection((a.host, a.port), timeout=a.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        expect(f, 220, "greeting")
        s.sendall(b"EHLO probe.test\r\n")
        expect(f, 250, "EHLO")
        t_start = time.perf_counter_ns()
        for i in range(a.m):
            data = message_parts(i, a.l)
            t_txn = time.perf_counter_ns()
            s.sendall(b"MAIL FROM:<from@bench.test>\r\n")
            expect(f, 250, "MAIL")
            s.sendall(b"RCPT TO:<to@bench.test>\r\n")
            expect(f, 250, "RCPT")
            s.sendall(b"DATA\r\n")
            expect(f, 354, "DATA")
            s.sendall(data)
            t0 = time.perf_counter_ns()
            s.sendall(b"\r\n.\r\n")
            expect(f, 250, "end of DATA")
            t1 = time.perf_counter_ns()
            lat.append((t1 - t0) / 1000)
            txn.append((t1 - t_txn) / 1000)
            ok += 1
        s.sendall(b"QUIT\r\n")
        read_reply(f)
    except (OSError, RuntimeError, ConnectionError) as e:
        error = re.sub(r"\s+", "_", str(e))[:120]
    total_s = (time.perf_counter_ns() - t_start) / 1e9
    if s is not None:
        s.close()
    v = sorted(lat)
    us = lambda x: f"{x:.0f}"  # noqa: E731
    fields = {"peer": a.label, "m": a.m, "size": a.l, "ok": ok}
    if v:
        fields.update({
            "median_us": us(statistics.median(v)),
            "p90_us": us(pct(v, 90)),
            "p99_us": us(pct(v, 99)),
            "max_us": us(v[-1]),
            "min_us": us(v[0]),
            "mean_us": us(statistics.fmean(v)),
            "first_us": us(lat[0]),
            "txn_median_us": us(statistics.median(txn)),
            "msgs_per_s": f"{ok / total_s:.1f}",
        })
    fields["total_s"] = f"{total_s:.2f}"
    fields["error"] = error
    print("latency " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    if ok != a.m:
        sys.exit(1)


# ------------------------------------------------------------------ markdown tables
def parse(line):
    kind, _, rest = line.strip().partition(" ")
    return kind, dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)


def kib_to_mib(x):
    return f"{int(x) / 1024:.1f}"


def cmd_table(a):
    rows = [parse(l) for l in open(a.file) if l.strip()]
    idle = [r for k, r in rows if k == "idle"]
    lat = [r for k, r in rows if k == "latency"]
    if idle:
        print("Idle connections (EHLO done, then idle; per connection = (after - before) / idle)\n")
        print("| peer | opened | idle (EHLO ok) | no greeting | refused | RSS before → after MiB "
              "| PSS before → after MiB | **RSS B/conn** | **PSS B/conn** | procs | threads | PSS after close MiB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in idle:
            no_greet = int(r["no_greeting"]) + int(r["connecting"])
            print(f"| {r['peer']} | {r['n']} | {r['idle']} | {no_greet} | {r['refused']} "
                  f"| {kib_to_mib(r['rss_before_kb'])} → {kib_to_mib(r['rss_after_kb'])} "
                  f"| {kib_to_mib(r['pss_before_kb'])} → {kib_to_mib(r['pss_after_kb'])} "
                  f"| {int(r['rss_per_conn_b']):,} | {int(r['pss_per_conn_b']):,} "
                  f"| {r['procs_before']} → {r['procs_after']} | {r['threads_before']} → {r['threads_after']} "
                  f"| {kib_to_mib(r['pss_closed_kb'])} |")
        print()
    if lat:
        print("End-of-DATA latency, one session, sequential messages (µs, final dot → 250)\n")
        print("| peer | messages ok | size | median | p90 | p99 | max | first | txn median | msg/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in lat:
            g = lambda k: r.get(k, "-")  # noqa: E731
            print(f"| {r['peer']} | {r['ok']}/{r['m']} | {r['size']} | {g('median_us')} | {g('p90_us')} "
                  f"| {g('p99_us')} | {g('max_us')} | {g('first_us')} | {g('txn_median_us')} | {g('msgs_per_s')} |")
        print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--label", required=True)
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, default=2525)
    i.add_argument("-n", type=int, default=1000)
    i.add_argument("--settle", type=float, default=2.0)
    i.add_argument("--batch", type=int, default=100)
    i.add_argument("--stall", type=float, default=3.0)
    i.add_argument("--deadline", type=float, default=120.0)
    i.add_argument("--warmup", type=int, default=0)
    i.add_argument("pids", nargs="+")
    i.set_defaults(func=cmd_idle)
    l = sub.add_parser("latency")
    l.add_argument("--label", required=True)
    l.add_argument("--host", default="127.0.0.1")
    l.add_argument("--port", type=int, default=2525)
    l.add_argument("-m", type=int, default=1000)
    l.add_argument("-l", type=int, default=5120)
    l.add_argument("--timeout", type=float, default=60.0)
    l.set_defaults(func=cmd_latency)
    t = sub.add_parser("table")
    t.add_argument("file")
    t.set_defaults(func=cmd_table)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
