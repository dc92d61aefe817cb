# torture_request_limit.sh: 16 pgbench clients race ONE key with a
# request_limit of 500 through lava.prompt (the real enqueue path), 1,008
# tries in all (16 x 63), while the worker drains the queue against the mock
# upstream.  Asserts: exactly 500 are admitted (request rows, total_requests,
# current_requests), the other 508 are refused with 53400, all 500 complete,
# the upstream sees each exactly once, and the counters equal the ledger.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 11

run=$(date +%s%N)
q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('tort_rl_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-rl')
	ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tort_rl_oa', 'gpt-tort-rl', 1, 2, 20) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"torture request limit $run\", \"allowed_providers\": [\"tort_rl_oa\"],
	\"request_limit\": {\"count\": 500, \"cycle\": \"total\"}, \"spend_limit\": {\"amount\": \"100\", \"cycle\": \"total\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")

# A refusal (53400) is counted, not fatal to the pgbench client; any other
# error aborts the client and fails the pgbench run.
psql -X -q -v ON_ERROR_STOP=1 -d $TEST_DB <<'SQL'
CREATE SEQUENCE IF NOT EXISTS public.torture_rl_seq;
CREATE TABLE IF NOT EXISTS public.torture_rl_refusals (run text, n int);
CREATE OR REPLACE FUNCTION public.torture_rl_try(k text, run text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	PERFORM lava.prompt('gpt-tort-rl', 'count me #in=3 #out=4 #latency_ms=10 #id=' || run || '-' || nextval('public.torture_rl_seq'),
						'{}', k);
	RETURN true;
EXCEPTION WHEN SQLSTATE '53400' THEN
	INSERT INTO public.torture_rl_refusals VALUES (run, 1);
	RETURN false;
END $$;
SQL
ok $? "helper function created"

echo "SELECT public.torture_rl_try(:k, :run);" >"$LAVA_TEST_DIR/torture_rl.sql"
"$PGBIN/pgbench" -n -M prepared -c 16 -j 2 -t 63 -D k="$key" -D run="rl$run" -f "$LAVA_TEST_DIR/torture_rl.sql" $TEST_DB \
	>"$LAVA_TEST_DIR/torture_rl_pgbench.log" 2>&1
ok $? "pgbench: 16 clients x 63 tries (1,008) on one key with request_limit 500"
grep -E "number of (transactions actually processed|failed)" "$LAVA_TEST_DIR/torture_rl_pgbench.log" | sed 's/^/# /'

is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid'")" 500 "exactly 500 request rows were admitted"
is "$(q "SELECT count(*) FROM public.torture_rl_refusals WHERE run = 'rl$run'")" 508 "the other 508 tries were refused (53400)"
is "$(q "SELECT total_requests || ' ' || (lava.get_spend_key('$kid') ->> 'current_requests')
		 FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" "500 500" "the key's total_requests and current_requests are 500"

for i in $(seq 1 1200); do
	[ "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" = 0 ] && break
	sleep 0.1
done
wait_settled "$kid"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" 0 \
	"every admitted request is terminal"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status = 'completed' AND attempts = 1
		 AND cost = 0.000011")" 500 "all 500 completed, each at its exact cost (3 x 1 + 4 x 2 per million)"
is "$(mock_log "'#id=rl$run-' in json.dumps(r['body'])" | /usr/bin/python3 -c 'import json,sys,re,collections
c = collections.Counter(re.search(r"#id=(\S+)", m["content"]).group(1) for r in json.load(sys.stdin) for m in r["body"]["messages"])
print(len(c), sum(c.values()))')" "500 500" "the upstream saw each of the 500 exactly once"
is "$(q "SELECT k.total_requests = (SELECT sum(requests) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t "the ledger counts 500 requests too"
is "$(q "SELECT k.total_spend = (SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 AND k.total_spend = (SELECT sum(cost) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 AND k.reserved_spend = 0
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t "total_spend = sum of request costs = ledger; nothing reserved"
psql -X -qAt -d $TEST_DB -c "SELECT lava.prompt('gpt-tort-rl', 'one more', '{}', '$key')" >/dev/null 2>"$LAVA_TEST_DIR/torture_rl_more.err"
grep -q "request limit" "$LAVA_TEST_DIR/torture_rl_more.err"; ok $? "a 501st try is still refused once the queue has drained"

q "DROP FUNCTION public.torture_rl_try(text, text)" >/dev/null
q "DROP TABLE public.torture_rl_refusals" >/dev/null
q "DROP SEQUENCE public.torture_rl_seq" >/dev/null
