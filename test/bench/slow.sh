#!/usr/bin/env bash
# test/bench/slow.sh: a slow upstream (test/bench/slow_upstream.py answering
# after SLOW_DELAY = 1 s), SLOW_N = 5,000 prompts queued in one transaction
# over 1,000 keys, lava.max_concurrency SLOW_CONCURRENCY = 512.  Throughput
# (from just before the COMMIT to the last completed_at) against the bound
# concurrency / latency.
#
# Then head-of-line blocking: HOL_SLOW = 2,000 slow prompts on key A are
# committed, then HOL_FAST = 20 `#fast` prompts (answered at once by the
# upstream) on key B; the fast ones' latency, from just before their COMMIT
# to their completed_at, against the slow ones' latency.  The worker's
# memory is sampled throughout.
. "$(dirname "$0")/lib.sh"

N=${SLOW_N:-5000}
CONC=${SLOW_CONCURRENCY:-512}
DELAY=${SLOW_DELAY:-1}
HOL_SLOW=${HOL_SLOW:-2000}
HOL_FAST=${HOL_FAST:-20}

bench_header "slow upstream: $N queued prompts, latency $DELAY s, lava.max_concurrency $CONC"
need_tools
bench_cluster_start "lava.max_concurrency = $CONC"
slow_start "$DELAY"
catalog "$SLOW_PORT"
make_keys 1000

# warm up: open the connections
q "$(enqueue_sql "$CONC" 'warm up')" >/dev/null || die "warm-up enqueue failed"
wait_drained 120 || die "warm-up did not drain"
steady_stats
idle_rss=$(rss_now)

rss_sampler_start "$WORK/rss.slow"
t0=$(enqueue_committed "$N" hello) || exit 1
wait_drained 600 || die "the queue did not drain"
read -r t_last done_ok < <(q "SELECT extract(epoch FROM max(completed_at)), count(*) FILTER (WHERE status = 'completed')
	FROM lava.request_store WHERE request_id > (SELECT max(request_id) FROM lava.request_store) - $N" | tr '|' ' ')
[ "$done_ok" = "$N" ] || die "only $done_ok of $N requests completed"
secs=$(calc "$t_last - $t0")
rate=$(calc "$N / $secs")
bound=$(calc "$CONC / $DELAY")
stats=$(curl -fsS "http://127.0.0.1:$SLOW_PORT/_stats")
echo "  lava completed $N in $(printf %.3f "$secs") s: $(printf '%.1f' "$rate") requests/s; bound $CONC / $DELAY s = $bound/s"
echo "  (waves: ceil($N / $CONC) x $DELAY s = $(calc "int(($N + $CONC - 1) / $CONC) * $DELAY") s at best)"
echo "  upstream: $stats"

# head-of-line blocking: slow on key A, then fast on key B
a=$(q "SELECT k FROM bench_keys WHERE n = 1")
b=$(q "SELECT k FROM bench_keys WHERE n = 2")
q "$(enqueue_sql "$HOL_SLOW" 'slow' "'$a'")" >/dev/null || die "slow enqueue failed"
sleep 0.2
first_fast=$(q "SELECT max(request_id) FROM lava.request_store")
out=$(psql -X -qAt -v ON_ERROR_STOP=1 -d "$BENCH_DB" <<SQL
BEGIN;
$(enqueue_sql "$HOL_FAST" 'hello #fast' "'$b'")
SELECT extract(epoch FROM clock_timestamp());
COMMIT;
SQL
) || die "fast enqueue failed: $out"
tf=$(echo "$out" | tail -1)
wait_drained 600 || die "the HOL queue did not drain"
stop_bg "$RSS_PID"
q "SELECT (extract(epoch FROM completed_at) - $tf) * 1000 FROM lava.request_store
   WHERE request_id > $first_fast AND status = 'completed' ORDER BY 1" >"$WORK/fast.ms"
[ "$(wc -l <"$WORK/fast.ms")" = "$HOL_FAST" ] || die "not every fast request completed"
fast_p50=$(sort -n "$WORK/fast.ms" | awk '{ v[NR] = $1 } END { printf "%.1f", v[int(NR / 2 + 0.5)] }')
fast_max=$(sort -n "$WORK/fast.ms" | tail -1 | awk '{ printf "%.1f", $1 }')
slow_ms=$(calc "$DELAY * 1000")
echo "  HOL: $HOL_FAST fast prompts on key B after $HOL_SLOW slow ones on key A: commit -> completed p50 $fast_p50 ms, max $fast_max ms"

record "slow: requests/s ($N queued, ${DELAY}s, conc $CONC)" "$(printf '%.1f' "$rate")" "$bound" \
	"$(calc "$rate / $bound")" ">= 0.9x conc/latency" "$(met "$rate >= 0.9 * $bound")"
record "slow: HOL, fast key max ms behind $HOL_SLOW slow" "$fast_max" "$slow_ms" \
	"$(calc "$fast_max / $slow_ms")" "< 0.1x slow latency" "$(met "$fast_max < 0.1 * $slow_ms")"
rss_report "$WORK/rss.slow" "slow ($N queued, $CONC in flight)" "$idle_rss"
profile
