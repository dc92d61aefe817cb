#!/usr/bin/env bash
# test/bench/drain.sh: end-to-end drain throughput against a fast local
# upstream (nginx answering a fixed chat.completions JSON).
#
# DRAIN_N prompts (20,000) over 1,000 keys with spend limits are queued in
# one transaction; the clock starts just before its COMMIT, and stops at the
# last completed_at once nothing is queued or running: claimed, sent,
# answered, recorded and settled.  The baseline is the upstream alone: wrk
# POSTing the same body to the same nginx at the same concurrency
# (DRAIN_CONCURRENCY = lava.max_concurrency, 256: its default).  Then the
# same again at DRAIN_LOW_CONCURRENCY = 64, for information: each claim and
# each recording transaction has a fixed cost, which smaller batches pay
# more often (0 skips it).  Then, unless DRAIN_NO_RECORDER=0, the first
# drain again with lava.recorder off, for information: the worker records
# the results itself, on the same core as its claims and calls.  The
# worker's memory is sampled during the first drain (the "memory" row).
. "$(dirname "$0")/lib.sh"

N=${DRAIN_N:-20000}
CONC=${DRAIN_CONCURRENCY:-256}
LOW=${DRAIN_LOW_CONCURRENCY:-64}
KEYS=${DRAIN_KEYS:-1000}

bench_header "drain: $N queued prompts, lava.max_concurrency $CONC (then $LOW), $KEYS keys, nginx upstream"
need_tools
bench_cluster_start "lava.max_concurrency = $CONC"
nginx_start
catalog "$NGINX_PORT"
make_keys "$KEYS"

# warm up: connections, caches, plans
q "$(enqueue_sql 1000 'warm up')" >/dev/null || die "warm-up enqueue failed"
wait_drained 120 || die "warm-up did not drain"
steady_stats
idle_rss=$(rss_now)

# drain_at CONC: queues $N prompts in one transaction, waits until they are
# all completed, checks them, and runs wrk at the same concurrency; sets
# RATE (lava) and UP (wrk).
drain_at() {
	local conc=$1 before t0 t_client wpid cpu0 cpu1 wcpu queued rpid rcpu0 rcpu1 rcpu
	before=$(q "SELECT count(*) FROM lava.request_store")
	wpid=$(worker_pid)
	rpid=$(recorder_pid)
	cpu0=$(cpu_ticks "$wpid")
	rcpu0=$([ -n "$rpid" ] && cpu_ticks "$rpid" || echo 0)
	t0=$(enqueue_committed "$N" hello) || exit 1
	queued=$(q "SELECT count(*) FROM lava.request_store WHERE status IN ('queued', 'running')")
	wait_drained "${DRAIN_TIMEOUT:-600}" || die "the queue did not drain"
	t_client=$(now_s)
	cpu1=$(cpu_ticks "$wpid")
	rcpu1=$([ -n "$rpid" ] && cpu_ticks "$rpid" || echo 0)

	drained_rate "$N" "$t0" "at conc $conc"
	[ "$(q "SELECT count(*) FROM lava.request_store")" = $((before + N)) ] || die "unexpected request count"
	for i in $(seq 1 100); do
		[ "$(q "SELECT count(*) FROM lava.deferred_settlements")" = 0 ] && break
		sleep 0.1
	done
	[ "$(q "SELECT count(*) FROM lava.spend_key_store WHERE reserved_spend <> 0")" = 0 ] || die "reservations left unsettled"
	echo "  lava.max_concurrency $conc: drained $N in $(printf %.3f "$DRAIN_SECS") s (client-side, polling:" \
		"$(printf %.3f "$(calc "$t_client - $t0")") s): $(printf '%.0f' "$RATE") requests/s ($queued non-terminal right after commit)"
	# the worker's own CPU time over the drain: near the wall time means the
	# worker is the bottleneck; far below means it waits (on the upstream, on
	# the others sharing the cores)
	wcpu=$(calc "($cpu1 - $cpu0) / $(getconf CLK_TCK)")
	echo "  worker CPU: $(printf %.2f "$wcpu") s user+system over $(printf %.2f "$(calc "$t_client - $t0")") s wall:" \
		"$(printf %.0f "$(calc "$wcpu * 1000000 / $N")") us per request"
	# the recorder (lava.recorder) records the results on the other core
	if [ -n "$rpid" ]; then
		rcpu=$(calc "($rcpu1 - $rcpu0) / $(getconf CLK_TCK)")
		echo "  recorder CPU: $(printf %.2f "$rcpu") s: $(printf %.0f "$(calc "$rcpu * 1000000 / $N")") us per request;" \
			"recorder memory $(rss_of "$rpid") MB (RssAnon + RssFile)"
	else
		echo "  no recorder ran (lava.recorder is off): the worker recorded the results"
	fi

	# the upstream alone, same concurrency, same body and headers
	wrk_rate "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$conc"
}

rss_sampler_start "$WORK/rss.drain"
perf_start
drain_at "$CONC"
perf_stop
sleep 0.5
stop_bg "$RSS_PID"
record "drain: requests/s ($N queued, nginx, conc $CONC)" "$(printf '%.0f' "$RATE")" "$(printf '%.0f' "$UP")" \
	"$(calc "$RATE / $UP")" ">= 10000/s" "$(met "$RATE >= 10000")"
rss_report "$WORK/rss.drain" "drain ($N queued)" "$idle_rss"
profile

if [ "$LOW" -gt 0 ] && [ "$LOW" != "$CONC" ]; then
	{ q "ALTER SYSTEM SET lava.max_concurrency = $LOW" postgres && q "SELECT pg_reload_conf()" postgres; } >/dev/null ||
		die "could not set lava.max_concurrency"
	sleep 1
	drain_at "$LOW"
	record "drain: requests/s ($N queued, nginx, conc $LOW)" "$(printf '%.0f' "$RATE")" "$(printf '%.0f' "$UP")" \
		"$(calc "$RATE / $UP")" "(report)" "-"
fi

if [ "${DRAIN_NO_RECORDER:-1}" != 0 ]; then
	{ q "ALTER SYSTEM SET lava.max_concurrency = $CONC" postgres && q "ALTER SYSTEM SET lava.recorder = off" postgres &&
		q "SELECT pg_reload_conf()" postgres; } >/dev/null || die "could not set lava.recorder"
	for i in $(seq 1 100); do
		[ -z "$(recorder_pid)" ] && break
		sleep 0.1
	done
	[ -z "$(recorder_pid)" ] || die "the recorder did not stop"
	drain_at "$CONC"
	record "drain: requests/s (conc $CONC, lava.recorder off)" "$(printf '%.0f' "$RATE")" "$(printf '%.0f' "$UP")" \
		"$(calc "$RATE / $UP")" "(report)" "-"
fi
