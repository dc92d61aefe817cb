#!/usr/bin/env bash
# test/bench/enqueue.sh: lava.prompt() throughput with pgbench (8 clients,
# 2 threads, ENQUEUE_SECONDS = 10 s, prepared), a key drawn at random among
# 1,000 keys with spend limits, against the baseline: the same pgbench doing
# a bare INSERT of an equivalent row (the columns of lava.request_store, same
# body, same key lookup) into a plain table with only a primary key.  Then
# the hot key: all 8 clients on one key.  The baseline and lava.prompt take
# turns, ENQUEUE_ROUNDS (2) rounds of ENQUEUE_SECONDS / rounds each, and
# each figure is the mean of its rounds: the host's speed drifts over
# minutes, and one long run of each would lend the drift to the ratio.
#
# The worker is kept idle for these: pgbench runs in a second database with
# the extension (lava_enqueue), which the worker does not serve, so the
# figures are the enqueue path alone (the commit still wakes the worker,
# which finds nothing to claim).  One more row, for information, is the
# same lava run in the worker's database with the worker draining every
# request to nginx meanwhile, on the same two cores.
. "$(dirname "$0")/lib.sh"

SECS=${ENQUEUE_SECONDS:-10}
ROUNDS=${ENQUEUE_ROUNDS:-2}
KEYS=${ENQUEUE_KEYS:-1000}
CLIENTS=${ENQUEUE_CLIENTS:-8}
DB=lava_enqueue
PGB=(-n -c "$CLIENTS" -j 2 -T "$SECS" -M prepared)

bench_header "enqueue: pgbench -c $CLIENTS -j 2 -T $SECS -M prepared, $KEYS keys"
need_tools
bench_cluster_start
nginx_start
q "CREATE DATABASE $DB" postgres >/dev/null && q "CREATE EXTENSION lava" $DB >/dev/null || die "second database failed"
if [ "${BENCH_PROFILE:-0}" = 1 ]; then q "CREATE EXTENSION pg_stat_statements" $DB >/dev/null; fi
for db in $DB $BENCH_DB; do
	catalog "$NGINX_PORT" $db
	make_keys "$KEYS" $db
done

# the baseline: a plain table shaped like lava.request_store, primary key only
# the body lava.prompt forwards, read back from a prompt rolled back
body=$(psql -X -qAt -v ON_ERROR_STOP=1 -d $DB <<'SQL'
BEGIN;
SELECT lava.prompt('bench-model', 'hello', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = 1)) AS id \gset
SELECT body FROM lava.request_store WHERE request_id = :id;
ROLLBACK;
SQL
) && [ -n "$body" ] || die "no body"
q "CREATE TABLE bench_plain (LIKE lava.request_store INCLUDING DEFAULTS INCLUDING IDENTITY);
   ALTER TABLE bench_plain ADD PRIMARY KEY (request_id)" $DB >/dev/null || die "bench_plain failed"

cat >"$WORK/insert.sql" <<EOF
\set n random(1, $KEYS)
INSERT INTO bench_plain (spend_key_id, role_name, provider, model, endpoint, method, body, request_shape,
	input_price, output_price, reservation, admitted_at)
VALUES ((SELECT id FROM bench_keys WHERE n = :n), 'postgres', 'bench', 'bench-model', '/chat/completions', 'POST',
	'$body', 'openai', 0.15, 0.60, 0.0000096, clock_timestamp())
RETURNING request_id;
EOF
cat >"$WORK/prompt.sql" <<EOF
\set n random(1, $KEYS)
SELECT lava.prompt('bench-model', 'hello', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = :n));
EOF
cat >"$WORK/hot.sql" <<EOF
SELECT lava.prompt('bench-model', 'hello', '{"max_tokens": 16}', (SELECT k FROM bench_keys WHERE n = 1));
EOF

# a short warm-up of both, so that neither pays for cold caches
pgbench_tps "${PGB[@]}" -T 2 -f "$WORK/insert.sql" $DB >/dev/null
pgbench_tps "${PGB[@]}" -T 2 -f "$WORK/prompt.sql" $DB >/dev/null
q "TRUNCATE bench_plain" $DB >/dev/null
steady_stats $DB
steady_stats
q "CHECKPOINT" $DB >/dev/null
[ "${BENCH_PROFILE:-0}" = 1 ] && q "SELECT pg_stat_statements_reset()" $DB >/dev/null

before=$(q "SELECT count(*) FROM lava.request_store" $DB)
base=0
lava=0
round_secs=$(awk -v s="$SECS" -v r="$ROUNDS" 'BEGIN { v = int(s / r + 0.5); print (v < 1 ? 1 : v) }')
for r in $(seq 1 "$ROUNDS"); do
	q "CHECKPOINT" $DB >/dev/null
	b=$(pgbench_tps "${PGB[@]}" -T "$round_secs" -f "$WORK/insert.sql" $DB) || exit 1
	q "CHECKPOINT" $DB >/dev/null
	l=$(pgbench_tps "${PGB[@]}" -T "$round_secs" -f "$WORK/prompt.sql" $DB) || exit 1
	printf '  round %s of %s (%s s each): baseline INSERT %.0f tps, lava.prompt %.0f tps (%.3fx)\n' \
		"$r" "$ROUNDS" "$round_secs" "$b" "$l" "$(calc "$l / $b")"
	grep -E 'latency average|number of failed' "$WORK/pgbench.last" | sed 's/^/    /'
	base=$(calc "$base + $b / $ROUNDS")
	lava=$(calc "$lava + $l / $ROUNDS")
done
echo "  baseline INSERT: $(printf '%.0f' "$base") tps (mean)"
echo "  lava.prompt, $KEYS keys: $(printf '%.0f' "$lava") tps (mean; $(($(q "SELECT count(*) FROM lava.request_store" $DB) - before)) rows queued)"
q "CHECKPOINT" $DB >/dev/null
hot=$(pgbench_tps "${PGB[@]}" -f "$WORK/hot.sql" $DB) || exit 1
echo "  lava.prompt, one hot key: $hot tps"
grep -E 'latency average' "$WORK/pgbench.last" | sed 's/^/    /'
[ "$(q "SELECT count(*) FROM lava.request_store WHERE status <> 'queued'" $DB)" = 0 ] ||
	die "the worker touched requests of a database it does not serve"
profile $DB

q "CHECKPOINT" >/dev/null
live=$(pgbench_tps "${PGB[@]}" -f "$WORK/prompt.sql" $BENCH_DB) || exit 1
echo "  lava.prompt, $KEYS keys, worker draining to nginx meanwhile: $live tps"
wait_drained 300 || die "the worker did not drain"

record "enqueue: tps, $CLIENTS clients, $KEYS keys" "$(printf '%.0f' "$lava")" "$(printf '%.0f' "$base")" \
	"$(calc "$lava / $base")" ">= 0.5x INSERT" "$(met "$lava >= 0.5 * $base")"
record "enqueue: tps, $CLIENTS clients, 1 hot key" "$(printf '%.0f' "$hot")" "$(printf '%.0f' "$base")" \
	"$(calc "$hot / $base")" "(report)" "-"
record "enqueue: tps, $KEYS keys, worker draining" "$(printf '%.0f' "$live")" "$(printf '%.0f' "$base")" \
	"$(calc "$live / $base")" "(report)" "-"
