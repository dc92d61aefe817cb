#!/usr/bin/env bash
# test/bench/scale.sh: does the cost stay flat as the tables grow?
#
# Enqueue: lava.prompt() TPS (pgbench -c 8 -j 2 -T SCALE_SECONDS = 10,
# prepared, the worker idle as in enqueue.sh) with 1,000 keys with spend
# limits, then with SCALE_KEYS = 1,000,000 keys in lava.spend_key_store: the
# 999,000 more are bulk-inserted directly (random plaintexts, their digests,
# the same spend limit), then VACUUM ANALYZE.  pgbench draws among the same
# 1,000 keys (the table row), and, for information, among all 1,000,000 (a
# row of its own: most of those keys are used for the first time, so they
# also get their first ledger row of the day).  The queue is emptied before
# each run, so that only the keys differ.
#
# Dequeue: drain throughput (SCALE_DRAIN_N = 20,000 queued in one
# transaction, nginx upstream, as in drain.sh) with 1,000 finished rows
# already in lava.request_store, then with SCALE_ROWS = 1,000,000 (finished
# rows bulk-inserted directly, completed over the last day, then VACUUM
# ANALYZE).
#
# SCALE_PARTS=enqueue or =dequeue runs one half.
. "$(dirname "$0")/lib.sh"

SECS=${SCALE_SECONDS:-10}
BIGKEYS=${SCALE_KEYS:-1000000}
ROWS=${SCALE_ROWS:-1000000}
DN=${SCALE_DRAIN_N:-20000}
CONC=${DRAIN_CONCURRENCY:-256}
PARTS=${SCALE_PARTS:-enqueue,dequeue}
DB=lava_enqueue
PGB=(-n -c 8 -j 2 -T "$SECS" -M prepared)

bench_header "scale: enqueue with 1,000 vs $BIGKEYS keys; drain with 1,000 vs $ROWS finished rows"
need_tools
bench_cluster_start "lava.max_concurrency = $CONC"
nginx_start
q "CREATE DATABASE $DB" postgres >/dev/null && q "CREATE EXTENSION lava" $DB >/dev/null || die "second database failed"
if [ "${BENCH_PROFILE:-0}" = 1 ]; then q "CREATE EXTENSION pg_stat_statements" $DB >/dev/null; fi
catalog "$NGINX_PORT" $DB
make_keys 1000 $DB
catalog "$NGINX_PORT"
make_keys 1000

# --- enqueue
if [[ ",$PARTS," == *,enqueue,* ]]; then
cat >"$WORK/prompt1k.sql" <<EOF
\set n random(1, 1000)
SELECT lava.prompt('bench-model', 'hello', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
EOF
sed "s/random(1, 1000)/random(1, $BIGKEYS)/" "$WORK/prompt1k.sql" >"$WORK/prompt1m.sql"
reset_queue() {
	psql -X -q -v ON_ERROR_STOP=1 -d $DB -c "TRUNCATE lava.request_store" -c "VACUUM ANALYZE lava.spend_key_store" \
		-c "VACUUM ANALYZE lava.key_usage_daily" -c "CHECKPOINT" >/dev/null || die "reset failed"
}

pgbench_tps "${PGB[@]}" -T 2 -f "$WORK/prompt1k.sql" $DB >/dev/null || exit 1
steady_stats $DB
reset_queue
e1k=$(pgbench_tps "${PGB[@]}" -f "$WORK/prompt1k.sql" $DB) || exit 1
echo "  enqueue, 1,000 keys: $e1k tps"

t=$(now_s)
psql -X -q -v ON_ERROR_STOP=1 -d $DB >/dev/null <<SQL || die "bulk keys failed"
SET synchronous_commit = off;
CREATE TEMP TABLE fake AS
SELECT g AS n, 'lava_sk_' || left(md5(g::text || random()::text) || md5(random()::text), 43) AS k
FROM generate_series(1001, $BIGKEYS) g;
WITH ins AS (
	INSERT INTO lava.spend_key_store (key_digest, key_preview, name, spend_limit_amount, spend_cycle, created_at)
	SELECT lava._key_digest(k), lava._key_preview(k), 'bulk', 1000000, 'monthly', now() - random() * interval '30 days'
	FROM fake ORDER BY n
	RETURNING spend_key_id, key_digest)
INSERT INTO bench_keys (n, k, id)
SELECT f.n, f.k, ins.spend_key_id FROM fake f JOIN ins ON ins.key_digest = lava._key_digest(f.k);
VACUUM ANALYZE lava.spend_key_store;
VACUUM ANALYZE bench_keys;
SQL
echo "  bulk-inserted $((BIGKEYS - 1000)) keys in $(printf %.1f "$(calc "$(now_s) - $t")") s ($(q "SELECT count(*) FROM lava.spend_key_store" $DB) keys)"
reset_queue
e1m=$(pgbench_tps "${PGB[@]}" -f "$WORK/prompt1k.sql" $DB) || exit 1
echo "  enqueue, $BIGKEYS keys, pgbench on the same 1,000: $e1m tps"
reset_queue
e1mr=$(pgbench_tps "${PGB[@]}" -f "$WORK/prompt1m.sql" $DB) || exit 1
echo "  enqueue, $BIGKEYS keys, pgbench on all of them: $e1mr tps"
profile $DB
record "scale: enqueue tps, $BIGKEYS vs 1,000 keys" "$(printf '%.0f' "$e1m")" "$(printf '%.0f' "$e1k")" \
	"$(calc "$e1m / $e1k")" ">= 0.8x" "$(met "$e1m >= 0.8 * $e1k")"
record "scale: enqueue tps, random among $BIGKEYS keys" "$(printf '%.0f' "$e1mr")" "$(printf '%.0f' "$e1k")" \
	"$(calc "$e1mr / $e1k")" "(report)" "-"
fi

# --- dequeue
[[ ",$PARTS," == *,dequeue,* ]] || exit 0
finished_rows() {	# finished_rows N: N completed rows, over the 1,000 keys, finished during the last day
	psql -X -q -v ON_ERROR_STOP=1 -d "$BENCH_DB" >/dev/null <<SQL || die "bulk rows failed"
SET synchronous_commit = off;
INSERT INTO lava.request_store (status, spend_key_id, role_name, provider, model, endpoint, method, body, request_shape,
	input_price, output_price, reservation, admitted_at, http_status, response, output_text, input_tokens, output_tokens,
	input_cost, output_cost, cost, attempts, created_at, started_at, completed_at, next_attempt_at)
SELECT 'completed', k.id, 'postgres', 'bench', 'bench-model', '/chat/completions', 'POST',
	'{"model": "bench-model", "messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 16}',
	'openai', 0.15, 0.60, 0.0000096, t, 200, '$NGINX_BODY', 'bench reply', 12, 5, 0.0000018, 0.000003, 0.0000048,
	1, t, t, t + interval '5 ms', t
FROM (SELECT g, now() - interval '1 day' + (g::float8 / $1) * interval '1 day' AS t FROM generate_series(1, $1) g) s
JOIN bench_keys k ON k.n = 1 + s.g % 1000;
VACUUM ANALYZE lava.request_store;
CHECKPOINT;
SQL
}
drain_rate() {	# drain_rate: queues $DN prompts in one transaction, prints requests/s to the last completed_at
	local t0 t_last
	t0=$(enqueue_committed "$DN" hello) || exit 1
	wait_drained 600 || die "the queue did not drain"
	t_last=$(q "SELECT extract(epoch FROM max(completed_at)) FROM lava.request_store WHERE status = 'completed'")
	calc "$DN / ($t_last - $t0)"
}
q "$(enqueue_sql 1000 'warm up')" >/dev/null && wait_drained 120 || die "warm-up failed"
q "TRUNCATE lava.request_store" >/dev/null
finished_rows 1000
steady_stats
d1k=$(drain_rate) || exit 1
echo "  drain, 1,000 finished rows: $(printf '%.0f' "$d1k") requests/s"
have=$(q "SELECT count(*) FROM lava.request_store")
t=$(now_s)
finished_rows $((ROWS - have))
echo "  bulk-inserted $((ROWS - have)) finished rows in $(printf %.1f "$(calc "$(now_s) - $t")") s ($(q "SELECT count(*) FROM lava.request_store") rows," \
	"$(q "SELECT pg_size_pretty(pg_total_relation_size('lava.request_store'))"))"
profile_reset
d1m=$(drain_rate) || exit 1
echo "  drain, $ROWS finished rows: $(printf '%.0f' "$d1m") requests/s"
profile

record "scale: drain/s, $ROWS vs 1,000 finished rows" "$(printf '%.0f' "$d1m")" "$(printf '%.0f' "$d1k")" \
	"$(calc "$d1m / $d1k")" ">= 0.8x" "$(met "$d1m >= 0.8 * $d1k")"
