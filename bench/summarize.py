#!/usr/bin/env python3
"""Summarize relay-bench lines: median [min-max] per peer+variant, and per-repetition
ratios of every peer against the first peer of the file (paired within one repetition).

usage: summarize.py RESULTS.txt [--markdown]

Columns: accepted msg/s (smtp-source), end-to-end msg/s (until the sink had them all),
relay CPU seconds per 1000 messages (= ms per message), peak summed RSS and PSS (MB).
A failed run (smtp-source error or sink timeout) has rate 0 and is counted in `fail`."""
import collections, statistics, sys

path = sys.argv[1]
markdown = "--markdown" in sys.argv[2:]
rows = []
for line in open(path):
    f = line.split()
    if len(f) < 8 or f[0].startswith("#"):
        continue
    kv = dict(x.split("=", 1) for x in f[8:] if "=" in x)
    rows.append(dict(peer=f[0], s=int(f[1]), m=int(f[2]), l=int(f[3]), acc=float(f[4]),
                     e2e=float(f[5]), cpu=float(f[6]), rss=int(f[7]), pss=int(kv.get("peak_pss_kb", 0)),
                     rep=kv.get("rep", "1"), var=kv.get("variant", f"{f[1]}:{f[2]}:{f[3]}")))
if not rows:
    sys.exit("no rows")
peers = list(dict.fromkeys(r["peer"] for r in rows))
groups = collections.defaultdict(list)
for r in rows:
    groups[(r["var"], r["peer"])].append(r)


def med(xs, d=0):
    return f"{statistics.median(xs):.{d}f} [{min(xs):.{d}f}-{max(xs):.{d}f}]"


def stats(rs):
    return dict(
        n=len(rs),
        fail=sum(1 for r in rs if not r["acc"] or not r["e2e"]),
        acc=med([r["acc"] for r in rs]),
        e2e=med([r["e2e"] for r in rs]),
        cpu=med([1000 * r["cpu"] / r["m"] for r in rs], 2),
        rss=med([r["rss"] / 1024 for r in rs]),
        pss=med([r["pss"] / 1024 for r in rs]),
    )


if markdown:
    print("| variant (sessions:msgs:size) | peer | runs | accepted msg/s | end-to-end msg/s "
          "| relay CPU s / 1000 msgs | peak RSS MB (summed) | peak PSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    last = None
    for (var, peer), rs in groups.items():
        s = stats(rs)
        runs = f"{s['n']}" + (f" ({s['fail']} failed)" if s["fail"] else "")
        print(f"| {var if var != last else ''} | {peer} | {runs} | {s['acc']} | {s['e2e']} "
              f"| {s['cpu']} | {s['rss']} | {s['pss']} |")
        last = var
else:
    print(f"{'variant':16} {'peer':17} {'n':>2} {'fail':>4} {'accept msg/s':>16} {'e2e msg/s':>16} "
          f"{'cpu s/1k msgs':>18} {'peak RSS MB':>14} {'peak PSS MB':>14}")
    for (var, peer), rs in groups.items():
        s = stats(rs)
        print(f"{var:16} {peer:17} {s['n']:>2} {s['fail']:>4} {s['acc']:>16} {s['e2e']:>16} "
              f"{s['cpu']:>18} {s['rss']:>14} {s['pss']:>14}")

base = peers[0]
print(f"\npaired ratios vs {base} (same repetition): median [min-max]" + ("\n" if markdown else ""))
if markdown:
    print(f"| variant | peer / {base} | accepted msg/s | end-to-end msg/s | relay CPU |")
    print("| --- | --- | --- | --- | --- |")
for var in dict.fromkeys(r["var"] for r in rows):
    b = {r["rep"]: r for r in groups.get((var, base), [])}
    for peer in peers[1:]:
        ra, re_, rc = [], [], []
        for r in groups.get((var, peer), []):
            if r["rep"] in b and b[r["rep"]]["acc"] and b[r["rep"]]["e2e"]:
                ra.append(r["acc"] / b[r["rep"]]["acc"])
                re_.append(r["e2e"] / b[r["rep"]]["e2e"])
                rc.append(r["cpu"] / b[r["rep"]]["cpu"] if b[r["rep"]]["cpu"] else 0)
        if ra:
            fmt = lambda xs: f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"
            if markdown:
                print(f"| {var} | {peer} | {fmt(ra)} | {fmt(re_)} | {fmt(rc)} |")
            else:
                print(f"{var:16} {peer}/{base}: accept {fmt(ra)}  e2e {fmt(re_)}  cpu {fmt(rc)}")
