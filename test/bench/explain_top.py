#!/usr/bin/env python3
"""Summarises auto_explain plans in a server log (test/bench, BENCH_PROFILE=1).

Usage: explain_top.py SERVER_LOG [N]

Groups the plans that auto_explain logged by the first lines of their query text and prints, for the N
(3) groups with the largest total duration, the count, the total and the
slowest plan.  Each group says which process logged it: the lava worker (no
application name in the log line prefix) or a client (psql, pgbench).
"""
import re
import sys

HEAD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[(\d+)\] (\S*)\s*LOG:  duration: ([0-9.]+) ms  plan:$")
NEW = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def main():
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    groups = {}
    cur = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if NEW.match(line):
                m = HEAD.match(line)
                cur = None
                if m:
                    cur = {"who": m.group(2) or "lava worker", "ms": float(m.group(3)), "lines": []}
                    plans.append(cur)
                continue
            if cur is not None:
                cur["lines"].append(line)
    for p in plans:
        # the query text's first lines (auto_explain's text format does not
        # delimit a multi-line query text from the plan below it)
        key = (p["who"], " ".join(l.strip() for l in p["lines"][:3])[:300])
        g = groups.setdefault(key, {"count": 0, "total": 0.0, "worst": None})
        g["count"] += 1
        g["total"] += p["ms"]
        if g["worst"] is None or p["ms"] > g["worst"]["ms"]:
            g["worst"] = p
    top = sorted(groups.items(), key=lambda kv: -kv[1]["total"])[:n]
    print("auto_explain: %d plans logged in %d groups; the %d groups with the most total time:" % (
        len(plans), len(groups), len(top)))
    for (who, q), g in top:
        print()
        print("[%s] %d plans, %.0f ms in all, slowest %.1f ms: %s" % (who, g["count"], g["total"], g["worst"]["ms"],
                                                                     re.sub(r"\s+", " ", q)[:160]))
        for l in g["worst"]["lines"][:80]:
            print("    " + l.replace("\t", "  "))


plans = []
if __name__ == "__main__":
    main()
