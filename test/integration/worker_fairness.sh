# worker_fairness.sh: no head-of-line blocking between keys.  With 8 slots,
# key A queues 40 slow requests, then key B queues 3 fast ones: B is served
# from the next free slots instead of waiting behind A's whole backlog
# (strict FIFO would finish at least 32 of A's requests first).
#
# Then the per-key cap (lava.max_key_concurrency): a key whose backlog could
# fill every slot holds at most its cap, so a key that comes later is served
# at once, before any of the first key's calls has finished.  Set to 6 of 8,
# then the default (all but a sixteenth: 30 of 32).
#
# Last, an open transaction that enqueued on key A (and so holds A's row)
# holds back no answer, with the recorder and without it: every key's
# answers are recorded at once, and only A's settlements wait, deferred,
# until the transaction ends.  Meanwhile A keeps their reservations and
# its usage report already counts them.  Neither the start-up recovery
# nor lava.cancel waits for a held key either.  A busy key (8 clients enqueueing on it)
# still gets its settlements made as they come.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 46

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

# deferred KEY_ID: how many of the key's settlements are deferred
deferred() { q "SELECT count(*) FROM lava.deferred_settlements WHERE spend_key_id = '$1'"; }

mock_key held; hkey=$key; hid=$kid
mock_key free; fkey=$key; fid=$kid
for mode in recorder worker; do
	if [ "$mode" = worker ]; then
		server_set lava.recorder off
		wait_no_backend 'lava recorder'
	fi
	h=$(q "SELECT string_agg(lava.prompt('gpt-held', '#latency_ms=3000 #in=5 #out=5 held-$mode ' || g, '{}', '$hkey')::text, ',') FROM generate_series(1, 5) g")
	f=$(q "SELECT string_agg(lava.prompt('gpt-free', '#latency_ms=3000 #in=5 #out=5 free-$mode ' || g, '{}', '$fkey')::text, ',') FROM generate_series(1, 5) g")
	t0=$(date +%s.%N)
	hold_open 10 "SELECT lava.prompt('gpt-held', '#in=5 #out=5 open-$mode', '{}', '$hkey')" &&
		[ "$(count_status "$h,$f" completed)" = 0 ]
	ok $? "$mode: key A's row is held before any answer comes"
	wait_status "$h,$f" completed 10; ok $? "$mode: while an open transaction holds key A's row, both keys' 10 answers are recorded"
	waited=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t0 }")
	diag "$mode: recorded $waited s after the prompts were queued (the calls take 3 s)"
	awk "BEGIN { exit !($waited < 7) }"; ok $? "$mode: long before the transaction ends (10 s)"
	is "$(deferred "$hid")/$(deferred "$fid")/$(q "SELECT deferred_settlements FROM lava.worker_status")" "5/0/5" \
		"$mode: only key A's 5 settlements are deferred, as lava.worker_status shows"
	is "$(q "SELECT k.reserved_spend > 0 AND k.total_spend = COALESCE((SELECT sum(cost) FROM lava.request_store r
			 WHERE r.spend_key_id = k.spend_key_id AND r.request_id NOT IN ($h)), 0)
			 FROM lava.spend_key_store k WHERE k.spend_key_id = '$hid'")" t \
		"$mode: key A keeps their reservations and has charged none of them yet"
	is "$(q "SELECT (lava.spend_key_usage('$hid', now() - interval '1 day') #>> '{totals,total_cost}')::numeric
			 = (SELECT sum(cost) FROM lava.request_store WHERE spend_key_id = '$hid')")" t \
		"$mode: key A's usage report already counts their cost"
	is "$(key_balanced "$fid")" t "$mode: key B is settled: spend = its requests' costs = its ledger"
	wait "$holder"
	wait_settled "$hid"; ok $? "$mode: once the transaction commits, key A's settlements are made"
	await_all
	is "$(q "SELECT count(*) FILTER (WHERE attempts = 1) FROM lava.request_store WHERE request_id IN ($h, $f)")/$(mock_count "held-$mode")/$(mock_count "free-$mode")" \
		"10/5/5" "$mode: each after one attempt, sent once"
	is "$(key_balanced "$hid")" t "$mode: key A's spend = its requests' costs = its ledger, nothing reserved"
done
server_set lava.recorder
wait_backend 'lava recorder' >/dev/null

# the start-up recovery does not wait for a held key either: requests of
# key A that a stopped worker left running, with no attempt left, end in
# error at once, their releases deferred, and key B is served meanwhile
server_set lava.max_attempts 1
server_set lava.stop_timeout 0
mock_key recover; rkey=$key; rid=$kid
r=$(q "SELECT string_agg(lava.prompt('gpt-recover', '#latency_ms=3000 #in=5 #out=5 recover ' || g, '{}', '$rkey')::text, ',') FROM generate_series(1, 3) g")
wait_status "$r" running 3
hold_open 15 "SELECT lava.prompt('gpt-recover', '#in=5 #out=5 recover-open', '{}', '$rkey')"
ok $? "a transaction holds key A's row"
worker=$(backend_pid 'lava worker')
q "SELECT pg_terminate_backend($worker)" >/dev/null
wait_backend 'lava worker' "$worker" >/dev/null
wait_status "$r" error 3 && kill -0 "$holder" 2>/dev/null
ok $? "with key A's row held, the next worker's recovery ends A's 3 interrupted requests (no attempt left) in error"
is "$(deferred "$rid")" 3 "and defers their releases"
f=$(q "SELECT lava.prompt('gpt-free', '#in=5 #out=5 after-recover', '{}', '$fkey')")
wait_status "$f" completed 1 && kill -0 "$holder" 2>/dev/null
ok $? "the worker serves key B meanwhile"
wait "$holder"
server_set lava.max_attempts
server_set lava.stop_timeout
await_all
is "$(q "SELECT reserved_spend FROM lava.spend_key_store WHERE spend_key_id = '$rid'")/$(key_balanced "$rid")" "0/t" \
	"once the transaction ends, A's reservations are released: spend = its requests' costs = its ledger"

# not_due PROMPT: the id of a request of key A queued with PROMPT and due
# only in an hour (so that the worker leaves it queued)
not_due() {
	psql -X -qAt -v ON_ERROR_STOP=1 -d lava_it <<SQL
BEGIN;
SELECT lava.prompt('gpt-recover', '$1', '{}', '$rkey') AS id \gset
UPDATE lava.request_store SET next_attempt_at = now() + interval '1 hour' WHERE request_id = :id;
COMMIT;
SELECT :id;
SQL
}

# lava.cancel does not wait for a held key either: a queued request of key
# A (due in an hour) is cancelled at once while A's row is held, its
# release deferred
c=$(not_due "to cancel")
hold_open 8 "SELECT lava.prompt('gpt-recover', '#in=5 #out=5 cancel-open', '{}', '$rkey')"
is "$(timeout 5 psql -X -qAt -d lava_it -c "SELECT lava.cancel($c) ->> 'status'")/$(kill -0 "$holder" 2>/dev/null && echo held)" "cancelled/held" \
	"lava.cancel of key A's queued request returns at once while A's row is held"
is "$(deferred "$rid")" 1 "and defers its release"
wait "$holder"
await_all
is "$(key_balanced "$rid")" t "after the commit, A's reservation is released: spend = its requests' costs = its ledger"

# a deferral is noted when its transaction commits: the recorder's look,
# which comes every 250 ms while it is open and sees nothing yet, cannot
# clear the note and leave the deferred release behind
c=$(not_due "to cancel later")
hold_open 5 "SELECT lava.prompt('gpt-recover', '#in=5 #out=5 note-open', '{}', '$rkey')"
psql -X -qAt -d lava_it -c "BEGIN" -c "SELECT lava.cancel($c)" -c "SELECT pg_sleep(1.5)" -c "COMMIT" >/dev/null
is "$(deferred "$rid")" 1 "a cancel that deferred its release, committed after 1.5 s open, left it deferred"
wait "$holder"
wait_settled "$rid"; ok $? "the recorder makes it once the key is free: the note came at commit, after the looks that saw nothing"
await_all
is "$(key_balanced "$rid")" t "key A: spend = its requests' costs = its ledger, nothing reserved"

# the claim cancels a paused key's queued requests; with the key's row
# held, only the first waits (20 ms, twice) and defers: the others defer
# at once, so 200 of them take about as long as one claim (20 ms each
# would be more than 8 s), and the claim serves key B's request after them
mock_key paused; pkey=$key; pkid=$kid
ids=$(psql -X -qAt -v ON_ERROR_STOP=1 -d lava_it <<SQL
BEGIN;
SELECT string_agg(lava.prompt('gpt-paused', 'paused ' || g, '{}', '$pkey')::text, ',') AS ids FROM generate_series(1, 200) g \gset
UPDATE lava.request_store SET next_attempt_at = now() + interval '1 hour' WHERE request_id IN (:ids);
COMMIT;
SELECT :'ids';
SQL
)
q "SELECT lava.update_spend_key('$pkid', '{\"status\": \"paused\"}')" >/dev/null
hold_open 12 "SELECT 1 FROM lava.spend_key_store WHERE spend_key_id = '$pkid' FOR UPDATE"
t0=$(date +%s.%N)
q "UPDATE lava.request_store SET next_attempt_at = now() WHERE request_id IN ($ids)" >/dev/null
f=$(q "SELECT lava.prompt('gpt-free', '#in=5 #out=5 after-paused', '{}', '$fkey')")
wait_status "$ids" cancelled 200 && wait_status "$f" completed 1
took=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t0 }")
kill -0 "$holder" 2>/dev/null
ok $? "while the paused key's row is held, its 200 queued requests are cancelled and key B is served"
diag "cancelled and served in $took s"
awk "BEGIN { exit !($took < 5) }"; ok $? "in well under the 8 s that a 20 ms wait each would take"
is "$(deferred "$pkid")" 200 "their 200 releases are deferred"
wait "$holder"
wait_settled "$pkid"
is "$(q "SELECT reserved_spend FROM lava.spend_key_store WHERE spend_key_id = '$pkid'")/$(key_balanced "$pkid")" "0/t" \
	"once the row is free, they are released: nothing reserved, spend = costs = ledger"

# a busy key: 8 pgbench clients enqueue on it for 4 s (1,500 a second) while its answers
# come back; its settlements are made meanwhile, none waits long
mock_key busy; bkey=$key; bid=$kid
cat >"$LAVA_TEST_DIR/busy.sql" <<SQL
SELECT lava.prompt('gpt-busy', '#in=5 #out=5 busy', '{}', '$bkey');
SQL
chown postgres "$LAVA_TEST_DIR/busy.sql" 2>/dev/null
"$PGBIN/pgbench" -n -c 8 -j 2 -T 4 -R 1500 -f "$LAVA_TEST_DIR/busy.sql" lava_it >/dev/null 2>&1 &
bench=$!
sleep 2
s1=$(q "SELECT total_spend FROM lava.spend_key_store WHERE spend_key_id = '$bid'")
sleep 1
s2=$(q "SELECT total_spend FROM lava.spend_key_store WHERE spend_key_id = '$bid'")
old=$(q "SELECT count(*) FROM lava.deferred_settlements WHERE spend_key_id = '$bid' AND deferred_at < clock_timestamp() - interval '1 second'")
wait "$bench"
diag "busy key: total_spend $s1 then $s2 a second later; settlements deferred over a second: $old"
is "$(q "SELECT $s2 > $s1")" t "under constant enqueues the busy key's settlements are made as its answers come"
is "$old" 0 "and none of them waits more than a second"
await_all
is "$(key_balanced "$bid")" t "busy key: spend = its requests' costs = its ledger, nothing reserved"
