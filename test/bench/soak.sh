#!/usr/bin/env bash
# test/bench/soak.sh: what `make soak` runs.  SOAK_SECONDS (600) of steady
# load: pgbench enqueues SOAK_RATE (200) prompts/s (4 clients, --rate) over
# 100 keys with spend limits, to test/bench/slow_upstream.py with a mix of
# answers: 70% fast, 15% slow (1.5 s), 5% HTTP 500 (retried, then error), 4%
# HTTP 400, 3% 429 with Retry-After: 1, 2% a 200 that is not JSON, 1% a 200
# without usage.  lava.max_concurrency is SOAK_CONCURRENCY (256).  The
# memory (RssAnon + RssFile) of the worker and of its recorder is sampled
# every SOAK_SAMPLE (10) s.
#
# It fails (exit 1) when
#   - the worker's or the recorder's memory grows after the warm-up (the
#     first third: the connection cache and the pools fill up to the peak
#     concurrency seen):
#     the mean of the last 5 samples exceeds the mean of the 5 samples
#     after the first third by more than 10% (a leak of 20% over the run
#     fails this; the old "last third / first third <= 1.2x" passed it, yet
#     failed on a warm-up ramp that then stayed flat for 400 s);
#   - any request is still queued or running SOAK_GRACE (120) s after the load;
#   - a key's counters differ from the ledger: total_spend from the sum of
#     its requests' costs or from key_usage_daily, total_requests from its
#     request count, or a reservation is still held.
# It prints the table of the figures (metric | lava | baseline | ratio | target | met?).
. "$(dirname "$0")/lib.sh"

SECS=${SOAK_SECONDS:-600}
RATE=${SOAK_RATE:-200}
CONC=${SOAK_CONCURRENCY:-256}
SAMPLE=${SOAK_SAMPLE:-10}
GRACE=${SOAK_GRACE:-120}
export BENCH_RESULTS=${BENCH_RESULTS:-$WORK/results.tsv}
: >"$BENCH_RESULTS"

bench_header "soak: $SECS s at $RATE prompts/s, mixed answers, lava.max_concurrency $CONC"
bench_cluster_start "lava.max_concurrency = $CONC"
slow_start 0.05
catalog "$SLOW_PORT"
make_keys 100
steady_stats

cat >"$WORK/soak.sql" <<'EOF'
\set n random(1, 100)
\set r random(1, 100)
\if :r <= 70
SELECT lava.prompt('bench-model', 'hello #fast', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\elif :r <= 85
SELECT lava.prompt('bench-model', 'slow #latency_ms=1500', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\elif :r <= 90
SELECT lava.prompt('bench-model', 'fail #status=500', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\elif :r <= 94
SELECT lava.prompt('bench-model', 'refused #status=400', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\elif :r <= 97
SELECT lava.prompt('bench-model', 'busy #status=429 #retry_after=1', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\elif :r <= 99
SELECT lava.prompt('bench-model', 'broken #garbage=1 #fast', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\else
SELECT lava.prompt('bench-model', 'unmetered #no_usage=1 #fast', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
\endif
EOF

# warm up (10 s at the same rate), then sample from the start of the load on
bg pgbench -n -c 4 -j 2 -T 10 -R "$RATE" -M prepared -f "$WORK/soak.sql" "$BENCH_DB"
wait "$BG_PID" || die "warm-up pgbench failed"
pid=$(worker_pid)
rpid=$(recorder_pid)
bg pgbench -n -c 4 -j 2 -T "$SECS" -R "$RATE" -M prepared -f "$WORK/soak.sql" -P 60 "$BENCH_DB"
PGB_PID=$BG_PID
rss_sampler_start "$WORK/rss.soak" "$SAMPLE"
RSS_WORKER=$RSS_PID
[ -n "$rpid" ] || die "no lava recorder runs"
rss_sampler_start "$WORK/rss.soak.recorder" "$SAMPLE" "$rpid"
RSS_RECORDER=$RSS_PID
wait "$PGB_PID" || die "pgbench failed"
echo "  load done; waiting for the queue to drain"
wait_drained "$GRACE"
left=$(non_terminal)
stop_bg "$RSS_WORKER"
stop_bg "$RSS_RECORDER"
[ "$(worker_pid)" = "$pid" ] || echo "  the worker restarted during the soak (pid $pid -> $(worker_pid))"
[ "$(recorder_pid)" = "$rpid" ] || echo "  the recorder restarted during the soak (pid $rpid -> $(recorder_pid))"

echo "  requests by status:"
q "SELECT status, count(*), COALESCE(sum(cost), 0) FROM lava.request_store GROUP BY 1 ORDER BY 1" | sed 's/^/    /'
# (a settlement deferred while a key's row was held is made once it is free)
for i in $(seq 1 100); do
	[ "$(q "SELECT count(*) FROM lava.deferred_settlements")" = 0 ] && break
	sleep 0.1
done
bad=$(q "SELECT count(*) FROM lava.spend_key_store k
	WHERE k.total_spend IS DISTINCT FROM (SELECT COALESCE(sum(r.cost), 0) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
	   OR k.total_spend IS DISTINCT FROM (SELECT COALESCE(sum(d.cost), 0) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
	   OR k.total_requests IS DISTINCT FROM (SELECT count(*) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
	   OR (k.reserved_spend <> 0 AND NOT EXISTS (SELECT 1 FROM lava.request_store r
			WHERE r.spend_key_id = k.spend_key_id AND r.status IN ('queued', 'running')))")

# growth FILE: "start warm end" in MB: the first sample, the mean of the 5
# after the first third, the mean of the last 5
growth() {
	awk -v n="$(wc -l <"$1")" '{ v = ($3 + $4) / 1024 }
		NR == 1 { s = v } NR > int(n / 3) && NR <= int(n / 3) + 5 { w += v; nw++ } NR > n - 5 { l += v; nl++ }
		END { printf "%.2f %.2f %.2f\n", s, (nw ? w / nw : 0), (nl ? l / nl : 0) }' "$1"
}
n=$(wc -l <"$WORK/rss.soak")
read -r start warm last < <(growth "$WORK/rss.soak")
read -r _ rwarm rlast < <(growth "$WORK/rss.soak.recorder")
for f in rss.soak rss.soak.recorder; do
	echo "  $([ "$f" = rss.soak ] && echo worker || echo recorder) memory samples (MB, RssAnon + RssFile; VmRSS in brackets):"
	awk '{ printf "    %s%.1f (%.1f)", (NR % 8 == 1 && NR > 1 ? "\n    " : ""), ($3 + $4) / 1024, $2 / 1024 } END { print "" }' "$WORK/$f" |
		sed 's/^    \(    \)/\1/'
done

fail=0
[ "$n" -ge 15 ] || { echo "soak: only $n memory samples (SOAK_SECONDS too short for SOAK_SAMPLE?)" >&2; fail=1; }
grow=$(calc "$last / $warm")
record "soak: worker MB, end / after warm-up" "$last" "$warm" "$grow" "<= 1.1x" "$(met "$grow <= 1.1")"
[ "$(met "$grow <= 1.1")" = yes ] || fail=1
record "soak: worker MB, warm-up (after a third / first sample)" "$warm" "$start" "$(calc "$warm / $start")" "(report)" "-"
rgrow=$(calc "$rlast / $rwarm")
record "soak: recorder MB, end / after warm-up" "$rlast" "$rwarm" "$rgrow" "<= 1.1x" "$(met "$rgrow <= 1.1")"
[ "$(met "$rgrow <= 1.1")" = yes ] || fail=1
record "soak: requests left non-terminal" "$left" "-" "-" "0" "$(met "$left == 0")"
[ "$left" = 0 ] || fail=1
record "soak: keys whose counters differ from ledger" "$bad" "-" "-" "0" "$(met "$bad == 0")"
[ "$bad" = 0 ] || fail=1
total=$(q "SELECT count(*) FROM lava.request_store")
record "soak: requests queued (of rate x time)" "$total" "$(calc "($SECS + 10) * $RATE")" \
	"$(calc "$total / (($SECS + 10) * $RATE)")" "(report)" "-"
print_table "$BENCH_RESULTS"
[ "$fail" = 0 ] || { echo "soak: FAILED" >&2; exit 1; }
echo "soak: passed"
