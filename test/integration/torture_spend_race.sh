# torture_spend_race.sh: 16 pgbench clients race ONE spend-limited key through
# lava.prompt (the real enqueue path) while the worker drains the queue
# against the mock upstream.  Each request costs exactly its reservation
# (input price 0, output price P, max_tokens C, the mock answers C output
# tokens; C is drawn from 50, 100 and 200 per try), so the limit can be
# filled to the cent.  Asserts: the key's
# current spend plus its reservations never exceed the limit at any sampled
# moment; the settled spend never exceeds the limit and reaches >= 95% of it;
# every request is terminal and completed at its exact cost; the key's
# counters (total_spend, current_spend, total_requests, reserved_spend = 0)
# equal the request rows and the daily ledger.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it

# C = 50, 100 or 200 output tokens at P = 100 USD per million: 0.005, 0.01
# or 0.02 per request against a 3.00 limit.  The mock answers after 30 ms,
# so reservations are in flight while the other clients race for the rest.
LIMIT=3.00
DURATION=${TORTURE_RACE_SECONDS:-8}
run=$(date +%s%N)

q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('tort_race_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-tr')
	ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tort_race_oa', 'gpt-tort-race', 0, 100, 200) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"torture spend race $run\", \"allowed_models\": [\"gpt-tort-race\"],
	\"spend_limit\": {\"amount\": \"$LIMIT\", \"cycle\": \"daily\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")

# A refusal (53400) must not abort the pgbench client: the helper catches it,
# pauses 2 ms (so refused clients do not starve the worker of CPU) and
# returns false.  The watcher samples the key's current spend + reservations.
psql -X -q -v ON_ERROR_STOP=1 -d $TEST_DB <<'SQL'
CREATE OR REPLACE FUNCTION public.torture_spend_try(k text, cap int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	PERFORM lava.prompt('gpt-tort-race', 'race #out=' || cap || ' #in=7 #latency_ms=30', jsonb_build_object('max_tokens', cap), k);
	RETURN true;
EXCEPTION WHEN SQLSTATE '53400' THEN
	PERFORM pg_sleep(0.002);
	RETURN false;
END $$;
CREATE OR REPLACE FUNCTION public.torture_spend_watch(kid uuid, secs float8) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	mx numeric := 0;
	v numeric;
	n int := 0;
	stop timestamptz := clock_timestamp() + make_interval(secs => secs);
BEGIN
	WHILE clock_timestamp() < stop LOOP
		SELECT current_spend + reserved_spend INTO v FROM lava.spend_keys WHERE spend_key_id = kid;
		mx := GREATEST(mx, v);
		n := n + 1;
		PERFORM pg_sleep(0.02);
	END LOOP;
	RETURN mx || ' ' || n;
END $$;
SQL
ok $? "helper functions created"

printf '%s\n' '\set c 25 * (1 << random(1, 3))' 'SELECT public.torture_spend_try(:k, :c);' >"$LAVA_TEST_DIR/torture_spend.sql"
q "SELECT public.torture_spend_watch('$kid', $DURATION + 1)" >"$LAVA_TEST_DIR/torture_spend_watch.out" 2>&1 &
watch_pid=$!
t0=$(date +%s)
"$PGBIN/pgbench" -n -M prepared -c 16 -j 2 -T "$DURATION" -D k="$key" -f "$LAVA_TEST_DIR/torture_spend.sql" $TEST_DB \
	>"$LAVA_TEST_DIR/torture_spend_pgbench.log" 2>&1
ok $? "pgbench: 16 clients race one key through lava.prompt for ${DURATION}s"
grep -E "number of (transactions actually processed|failed)|tps" "$LAVA_TEST_DIR/torture_spend_pgbench.log" | sed 's/^/# /'
wait "$watch_pid"
watch=$(cat "$LAVA_TEST_DIR/torture_spend_watch.out")
diag "watcher: max(current_spend + reserved_spend) and samples = $watch"
is "$(q "SELECT split_part('$watch', ' ', 1)::numeric <= $LIMIT AND split_part('$watch', ' ', 2)::int > 10")" t \
	"at every sampled moment current spend + reservations <= the limit"

# drain: every request of the key terminal (120 s at most)
for i in $(seq 1 1200); do
	[ "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" = 0 ] && break
	sleep 0.1
done
wait_settled "$kid"
diag "drained $(($(date +%s) - t0))s after the start"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" 0 \
	"every request is terminal"
diag "requests (status/cap=count): $(q "SELECT string_agg(status || '/' || cap || '=' || n, ' ') FROM (SELECT status, body ->> 'max_completion_tokens' cap,
	count(*) n FROM lava.request_store WHERE spend_key_id = '$kid' GROUP BY 1, 2 ORDER BY 1, 2) s")"
is "$(q "SELECT count(*) FILTER (WHERE status <> 'completed' OR cost IS DISTINCT FROM reservation
		 OR reservation <> output_tokens * 100 / 1000000.0 OR output_tokens <> (body ->> 'max_completion_tokens')::int)
		 FROM lava.request_store WHERE spend_key_id = '$kid'")" 0 \
	"every request completed, charged exactly its reservation (its cap x the output price)"
spent=$(q "SELECT total_spend FROM lava.spend_key_store WHERE spend_key_id = '$kid'")
diag "settled spend $spent of $LIMIT over $(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid'") admitted requests"
is "$(q "SELECT total_spend <= $LIMIT FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" t \
	"the settled spend never exceeds the limit"
is "$(q "SELECT bool_and(cost <= $LIMIT) FROM lava.key_usage_daily WHERE spend_key_id = '$kid'")" t \
	"nor does any day of the ledger (the cycle is daily)"
is "$(q "SELECT total_spend >= 0.95 * $LIMIT FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" t \
	"and it reaches at least 95% of it"
is "$(q "SELECT k.total_spend = (SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 AND k.total_spend = (SELECT sum(cost) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t \
	"total_spend = sum of request costs = sum of the daily ledger"
is "$(q "SELECT (lava.get_spend_key('$kid') ->> 'current_spend')::numeric
		 = COALESCE((SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = '$kid'
					 AND r.admitted_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'), 0)
		 AND (lava.get_spend_key('$kid') ->> 'current_spend')::numeric
		 = COALESCE((SELECT cost FROM lava.key_usage_daily d WHERE d.spend_key_id = '$kid'
					 AND d.day = (now() AT TIME ZONE 'UTC')::date), 0)")" t \
	"current_spend (get_spend_key) = the cost of today's requests = today's ledger row"
is "$(q "SELECT (lava.get_spend_key('$kid') ->> 'reserved_spend')::numeric = 0 AND reserved_spend = 0
		 FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" t "nothing is left reserved"
is "$(q "SELECT k.total_requests = (SELECT count(*) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 AND k.total_requests = (SELECT sum(requests) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t \
	"total_requests = request rows = the ledger's requests"
tries=$(sed -n 's/.*actually processed: \([0-9]*\).*/\1/p' "$LAVA_TEST_DIR/torture_spend_pgbench.log")
diag "$tries tries"
is "$(q "SELECT count(*) < ${tries:-0} FROM lava.request_store WHERE spend_key_id = '$kid'")" t "the limit refused the other tries"

q "DROP FUNCTION public.torture_spend_try(text, int)" >/dev/null
q "DROP FUNCTION public.torture_spend_watch(uuid, float8)" >/dev/null
done_testing
