#!/usr/bin/env python3
"""What Tidegate said during each benchmark run: its log, its counters, its leftover spool.

usage: tidegate-report.py MATRIX.txt [--runs DIR]   (DIR default: $BENCH_WORK/runs or /tmp/peerbench/runs)

For every run of a peer whose label starts with `tidegate`, reads the run directory that
run-tidegate.sh filled (tidegate.log, metrics.txt scraped after the measurement,
spool-after.txt listed after the stop) and prints one line: log lines by level, delivery
outcomes, refusals, plugin failures, messages left in the spool. Then the distinct log
messages (timestamps and queue IDs stripped) with their counts, so anything odd stands out.
smtp-sink -M N never answers its N-th message, so 1 deferral and 1 message left queued per
run are expected."""
import collections, os, re, sys

args = sys.argv[1:]
runs_dir = os.path.join(os.environ.get("BENCH_WORK", "/tmp/peerbench"), "runs")
if "--runs" in args:
    i = args.index("--runs")
    runs_dir = args[i + 1]
    del args[i:i + 2]
matrix = args[0]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LEVEL = re.compile(r"\b(TRACE|DEBUG|INFO|WARN|ERROR)\b")
distinct = collections.Counter()
print(f"{'run':58} {'log W/E/other':>13} {'delivered':>9} {'deferred':>8} {'bounced':>7} "
      f"{'accepted':>8} {'refused':>7} {'conn_refused':>12} {'plugin_fail':>11} {'left':>4}")
for line in open(matrix):
    f = line.split()
    if len(f) < 8 or f[0].startswith("#") or not f[0].startswith("tidegate"):
        continue
    kv = dict(x.split("=", 1) for x in f[8:] if "=" in x)
    run = kv.get("run")
    if not run:
        continue
    d = os.path.join(runs_dir, run)
    levels = collections.Counter()
    try:
        for raw in open(os.path.join(d, "tidegate.log"), errors="replace"):
            text = ANSI.sub("", raw).rstrip("\n")
            if not text.strip():
                continue
            m = LEVEL.search(text)
            lvl = m.group(1) if m else "other"
            levels[lvl] += 1
            key = re.sub(r"^\S*\d{4}-\d\d-\d\dT\S+\s*", "", text)       # timestamp
            key = re.sub(r"\b[0-9A-F]{16}\b", "<id>", key)               # queue IDs
            key = re.sub(r"\b\d+(\.\d+)?(ms|s|µs)?\b", "<n>", key)       # numbers
            distinct[(f[0], key[:300])] += 1
    except OSError:
        levels["nolog"] += 1
    metrics = collections.Counter()
    try:
        for m in open(os.path.join(d, "metrics.txt")):
            if m.startswith("#") or not m.strip():
                continue
            name, _, value = m.rpartition(" ")
            try:
                metrics[name] += float(value)
            except ValueError:
                metrics["scrape_error"] += 1
    except OSError:
        metrics["no_metrics"] = 1
    get = lambda prefix: int(sum(v for k, v in metrics.items() if k.startswith(prefix)))
    try:
        left = sum(1 for l in open(os.path.join(d, "spool-after.txt")) if l.strip())
    except OSError:
        left = -1
    lv = f"{levels['WARN']}/{levels['ERROR']}/{sum(v for k, v in levels.items() if k not in ('WARN', 'ERROR'))}"
    out = lambda o: get('tidegate_deliveries_total{outcome="%s"' % o)
    print(f"{run:58} {lv:>13} {out('delivered'):>9} {out('deferred'):>8} {out('bounced'):>7} "
          f"{get('tidegate_messages_accepted'):>8} {get('tidegate_messages_refused'):>7} "
          f"{get('tidegate_connections_refused'):>12} {get('tidegate_plugin_failures'):>11} {left:>4}")
print("\ndistinct log lines (peer, count, text):")
if not distinct:
    print("  (none: every Tidegate log was empty)")
for (peer, key), n in distinct.most_common():
    print(f"  {peer:17} {n:>6}  {key}")
