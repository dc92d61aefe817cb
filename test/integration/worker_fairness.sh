# worker_fairness.sh: no head-of-line blocking between keys.  With 8 slots,
# key A queues 40 slow requests, then key B queues 3 fast ones: B is served
# from the next free slots instead of waiting behind A's whole backlog
# (strict FIFO would finish at least 32 of A's requests first).
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 3

q "ALTER SYSTEM SET lava.max_concurrency = 8" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('fair_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-f') ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('fair_oa', 'gpt-fair', 1, 1, 10) ON CONFLICT DO NOTHING" >/dev/null
a=$(q "SELECT lava.create_spend_key('{\"name\": \"fair slow\"}')")
b=$(q "SELECT lava.create_spend_key('{\"name\": \"fair fast\"}')")
akey=$(q "SELECT '$a'::jsonb ->> 'key'"); aid=$(q "SELECT '$a'::jsonb ->> 'spend_key_id'")
bkey=$(q "SELECT '$b'::jsonb ->> 'key'"); bid=$(q "SELECT '$b'::jsonb ->> 'spend_key_id'")

q "SELECT count(lava.prompt('gpt-fair', '#latency_ms=600 slow ' || g, '{}', '$akey')) FROM generate_series(1, 40) g" >/dev/null
sleep 0.3
q "SELECT count(lava.prompt('gpt-fair', 'fast ' || g, '{}', '$bkey')) FROM generate_series(1, 3) g" >/dev/null
await_all; ok $? "every request finished"
ahead=$(q "SELECT count(*) FROM lava.request_store a WHERE a.spend_key_id = '$aid'
		   AND a.completed_at < (SELECT max(completed_at) FROM lava.request_store WHERE spend_key_id = '$bid')")
diag "$ahead of key A's 40 slow requests finished before key B's 3 fast ones"
[ "$ahead" -le 16 ]; ok $? "the fast key was not held behind the slow key's backlog"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id IN ('$aid', '$bid') AND status = 'completed'")" 43 \
	"and every request of both keys completed"

q "ALTER SYSTEM RESET lava.max_concurrency" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
