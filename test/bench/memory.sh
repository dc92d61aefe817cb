#!/usr/bin/env bash
# test/bench/memory.sh: the worker's memory with MEMORY_N = 10,000 requests
# in flight at once: lava.max_concurrency 10,000, the slow upstream answering
# after MEMORY_DELAY = 10 s, 10,000 prompts queued in one transaction.  The
# worker's RssAnon + RssFile (its VmRSS without the shared buffers it has
# touched) is sampled every 0.2 s; the baseline is the same, idle, before.
# What it keeps once the burst is over is printed too.
# (drain.sh and slow.sh sample it too, with 20,000 queued and 512 in flight.)
. "$(dirname "$0")/lib.sh"

N=${MEMORY_N:-10000}
DELAY=${MEMORY_DELAY:-10}

bench_header "memory: $N requests in flight (slow upstream, $DELAY s)"
need_tools
bench_cluster_start "lava.max_concurrency = $N" "lava.request_timeout = '120s'"
slow_start "$DELAY"
catalog "$SLOW_PORT"
make_keys 1000
q "$(enqueue_sql 100 'warm up #fast')" >/dev/null || die "warm-up enqueue failed"
wait_drained 60 || die "warm-up did not drain"
steady_stats
idle_rss=$(rss_now)

rss_sampler_start "$WORK/rss.mem"
burst_peak "$N" 300
stop_bg "$RSS_PID"
echo "  in flight at most: $PEAK (worker_status), the worker's sockets at most $PEAK_SOCKETS;" \
	"upstream: $(curl -fsS "http://127.0.0.1:$SLOW_PORT/_stats")"
echo "  worker RSS after the burst (anon + file): $(rss_now) MB; idle before it: $idle_rss MB"
rss_report "$WORK/rss.mem" "$PEAK in flight" "$idle_rss"
