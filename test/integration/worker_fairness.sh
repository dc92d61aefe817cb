# worker_fairness.sh: no head-of-line blocking between keys.  With 8 slots,
# key A queues 40 slow requests, then key B queues 3 fast ones: B is served
# from the next free slots instead of waiting behind A's whole backlog
# (strict FIFO would finish at least 32 of A's requests first).
#
# Then the per-key cap (lava.max_key_concurrency): a key whose backlog could
# fill every slot holds at most its cap, so a key that comes later is served
# at once, before any of the first key's calls has finished.  Set to 6 of 8,
# then the default (all but a sixteenth: 30 of 32).
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 8

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

# running_of KEY_ID CAP: how many of the key's requests run, polled until it
# reaches CAP or stops growing (its slow calls take 2 s to answer)
running_of() {
	local n=-1 m i
	for i in $(seq 1 30); do
		m=$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$1' AND status = 'running'")
		{ [ "$m" -ge "$2" ] || { [ "$m" = "$n" ] && [ "$m" -gt 0 ]; }; } && break
		n=$m
		sleep 0.1
	done
	echo "$m"
}

q "ALTER SYSTEM SET lava.max_key_concurrency = 6" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
c=$(q "SELECT lava.create_spend_key('{\"name\": \"capped slow\"}')")
d=$(q "SELECT lava.create_spend_key('{\"name\": \"capped fast\"}')")
ckey=$(q "SELECT '$c'::jsonb ->> 'key'"); cid=$(q "SELECT '$c'::jsonb ->> 'spend_key_id'")
dkey=$(q "SELECT '$d'::jsonb ->> 'key'"); did=$(q "SELECT '$d'::jsonb ->> 'spend_key_id'")
q "SELECT count(lava.prompt('gpt-fair', '#latency_ms=2000 slow ' || g, '{}', '$ckey')) FROM generate_series(1, 8) g" >/dev/null
is "$(running_of "$cid" 7)" 6 "a key with 8 slow requests holds 6 of the 8 slots (lava.max_key_concurrency = 6)"
q "SELECT count(lava.prompt('gpt-fair', 'fast ' || g, '{}', '$dkey')) FROM generate_series(1, 2) g" >/dev/null
await_all; ok $? "every request finished"
is "$(q "SELECT count(*) FROM lava.request_store a WHERE a.spend_key_id = '$cid'
		 AND a.completed_at <= (SELECT max(completed_at) FROM lava.request_store WHERE spend_key_id = '$did')")" 0 \
	"the later key was served from the free slots before any call of the capped key finished"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id IN ('$cid', '$did') AND status = 'completed'")" 10 \
	"and every request of both keys completed"

q "ALTER SYSTEM RESET lava.max_key_concurrency" >/dev/null
q "ALTER SYSTEM SET lava.max_concurrency = 32" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
e=$(q "SELECT lava.create_spend_key('{\"name\": \"default cap\"}')")
ekey=$(q "SELECT '$e'::jsonb ->> 'key'"); eid=$(q "SELECT '$e'::jsonb ->> 'spend_key_id'")
q "SELECT count(lava.prompt('gpt-fair', '#latency_ms=2000 slow ' || g, '{}', '$ekey')) FROM generate_series(1, 34) g" >/dev/null
is "$(running_of "$eid" 31)" 30 "by default a key holds all but a sixteenth of the slots (30 of 32)"
await_all

q "ALTER SYSTEM RESET lava.max_concurrency" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
