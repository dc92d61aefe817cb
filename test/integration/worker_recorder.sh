# worker_recorder.sh: the recorder process records what the worker's calls
# answered, and nothing is lost when it stops, is terminated, is turned
# off or is killed:
#   - with the recorder stopped (SIGSTOP), answered requests stay 'running'
#     and complete once it continues: the recording is the recorder's;
#   - while answers wait for it, the worker claims no more;
#   - terminated while it holds answers, the worker records them itself and
#     starts a new recorder;
#   - when the worker is terminated too, it records what the outbox holds
#     before it exits, so nothing is sent twice (worker_stop.sh has the
#     case where it cannot, and the next worker records them);
#   - with lava.recorder off no recorder runs and the worker records;
#   - kill -9 of the recorder under load restarts the server; afterwards
#     every request is terminal, none was charged twice, and the key
#     counters equal the ledger;
#   - outcomes that outlive DROP EXTENSION are dropped, never recorded
#     against the new extension's requests, even those with the same ids;
#   - without a free background worker slot the worker says so once and
#     records results itself.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 38

setup() { mock_key rec; }
setup

# load N TAG: N prompts (answered at once by the mock), their ids as a SQL list
load() { q "SELECT string_agg(lava.prompt('gpt-rec', '#in=5 #out=5 $2 ' || g, '{}', '$key')::text, ',') FROM generate_series(1, $1) g"; }
invariants() {
	await_all; ok $? "$1: every request reached a terminal state"
	is "$(key_balanced "$kid")" t "$1: key spend = sum of request costs = ledger, nothing reserved (none charged twice)"
}

worker=$(wait_backend 'lava worker'); ok $? "the worker runs"
rec=$(wait_backend 'lava recorder'); ok $? "so does its recorder"
is "$(q "SELECT datname FROM pg_stat_activity WHERE pid = $rec" postgres)" lava_it "the recorder is connected to lava.database"
is "$(q "SELECT recorder_pid FROM lava.worker_status")" "$rec" "lava.worker_status shows the recorder's pid"

# 1. the recording is the recorder's: stopped, the answers wait for it
kill -STOP "$rec"
ids=$(load 40 stopped)
wait_answered stopped 40
sleep 0.5
is "$(count_status "$ids" running)" 40 "with the recorder stopped, 40 answered requests stay running"
kill -CONT "$rec"
wait_status "$ids" completed 40; ok $? "once it continues, all 40 complete"
is "$(q "SELECT count(*) FROM lava.request_store WHERE request_id IN ($ids) AND cost = 0.00001 AND attempts = 1")" 40 \
	"each was charged its exact cost after one attempt"

# 1b. claiming gives way to recording: with 2.4 MB of answers waiting for a
# stopped recorder (over half the outbox), a new request is not sent
kill -STOP "$rec"
big=$(q "SELECT string_agg(lava.prompt('gpt-rec', '#in=5 #out=5 big' || g || ' #text=' || repeat('x', 600000), '{}', '$key')::text, ',')
		 FROM generate_series(1, 4) g")
wait_answered big 4 && wait_handed
small=$(load 1 held-back)
sleep 1
is "$(count_status "$small" queued)" 1 "with 2.4 MB of answers waiting for a stopped recorder, the worker claims nothing more"
kill -CONT "$rec"
wait_status "$big,$small" completed 5; ok $? "once the recorder catches up, the held-back request is sent, and all five complete"

# 2. terminated while holding answers: the worker records them, and a new recorder starts
kill -STOP "$rec"
ids=$(load 30 terminated)
wait_answered terminated 30 && wait_handed
is "$(count_status "$ids" running)" 30 "30 answers wait in the outbox of a stopped recorder"
q "SELECT pg_terminate_backend($rec)" postgres >/dev/null
kill -CONT "$rec"
wait_status "$ids" completed 30; ok $? "after the recorder is terminated, all 30 are recorded"
rec2=$(wait_backend 'lava recorder' "$rec"); ok $? "and the worker starts a new recorder"
is "$(q "SELECT max(completed_at) < (SELECT backend_start FROM pg_stat_activity WHERE pid = $rec2)
		 FROM lava.request_store WHERE request_id IN ($ids)")" t "the worker recorded them itself, before the new recorder started"
is "$(backend_pid 'lava worker')" "$worker" "the worker itself kept running"

# 2b. the worker and the recorder both terminated with answers in the outbox:
# the worker records them before it exits, and none is sent again
kill -STOP "$rec2"
ids=$(load 20 both-gone)
wait_answered both-gone 20 && wait_handed
q "SELECT pg_terminate_backend($worker)" postgres >/dev/null
kill -CONT "$rec2"
new=$(wait_backend 'lava worker' "$worker"); ok $? "a new worker starts"
wait_status "$ids" completed 20; ok $? "the 20 answers the outbox held are recorded"
is "$(q "SELECT max(completed_at) < (SELECT backend_start FROM pg_stat_activity WHERE pid = $new)
		 FROM lava.request_store WHERE request_id IN ($ids)")" t "by the terminated worker, before it exited"
worker=$new
sleep 0.5
is "$(q "SELECT count(*) FROM lava.request_store WHERE request_id IN ($ids) AND attempts = 1")/$(mock_count both-gone)" "20/20" "each after one attempt, sent once"

# 3. lava.recorder = off: no recorder, the worker records
server_set lava.recorder off
wait_no_backend 'lava recorder'; ok $? "with lava.recorder off the recorder exits"
is "$(q "SELECT recorder_pid IS NULL FROM lava.worker_status")" t "and lava.worker_status shows none"
ids=$(load 30 off)
wait_status "$ids" completed 30; ok $? "and the worker records results itself"
server_set lava.recorder
rec3=$(wait_backend 'lava recorder'); ok $? "turned on again, a recorder starts"
ids=$(load 30 on-again)
wait_status "$ids" completed 30; ok $? "and results are recorded"
invariants "stop, terminate, off"

# 4. kill -9 of the recorder with answers in the outbox and calls in flight:
# the server restarts, the outbox is lost, and the crash rule sends those
# requests again; nothing is lost or charged twice
kill -STOP "$rec3"
ids=$(load 30 ring)
wait_answered ring 30 && wait_handed
q "SELECT count(lava.prompt('gpt-rec', '#latency_ms=300 #in=5 #out=5 k' || g, '{}', '$key')) FROM generate_series(1, 150) g" >/dev/null
sleep 0.1
kill -9 "$rec3"
wait_server; ok $? "after kill -9 of the recorder under load, the server is back"
wait_backend 'lava recorder' "$rec3" >/dev/null; ok $? "and so is a recorder"
invariants "kill -9 of the recorder"
is "$(q "SELECT count(*) FROM lava.request_store WHERE request_id IN ($ids) AND status = 'completed' AND attempts = 2")" 30 \
	"the 30 answers lost with the outbox were sent again once, and completed"

# 5. outcomes that outlive DROP EXTENSION: dropped, even where the new
# extension's requests have their ids (the identity restarted on purpose)
rec4=$(wait_backend 'lava recorder')
kill -STOP "$rec4"
ids=$(load 20 stale)
wait_answered stale 20 && wait_handed
first=$(q "SELECT min(request_id) FROM lava.request_store WHERE request_id IN ($ids)")
psql -X -qAt -d lava_it -c "SET statement_timeout = '20s'" -c "DROP EXTENSION lava CASCADE" >/dev/null &&
	q "CREATE EXTENSION lava" >/dev/null &&
	q "ALTER TABLE lava.request_store ALTER COLUMN request_id RESTART WITH $first" >/dev/null
setup
new_ids=$(load 20 '#latency_ms=1500 #text=fresh')
is "$new_ids" "$ids" "the new extension's requests have the ids of the 20 outcomes still in the outbox"
kill -CONT "$rec4"
wait_status "$new_ids" completed 20; ok $? "the new requests complete"
is "$(q "SELECT count(*) FROM lava.request_store WHERE request_id IN ($new_ids) AND output_text = 'fresh' AND attempts = 1")" 20 \
	"each with its own answer, none with a stale one"
grep -q "lava recorder dropped 20 results of requests claimed before extension lava was dropped" "$LAVA_TEST_DIR/server.log"
ok $? "the recorder dropped the 20 stale outcomes (server log)"

# 6. no background worker slot for the recorder: the worker records itself
restart() {
	as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -l "$LAVA_TEST_DIR/server.log" -w -t 60 restart >/dev/null 2>&1 && wait_server
}
# (the logical replication launcher and the lava worker take both slots)
q "ALTER SYSTEM SET max_worker_processes = 2" postgres >/dev/null
restart; ok $? "the server restarts with max_worker_processes = 2"
wait_backend 'lava worker' >/dev/null
ids=$(load 20 no-slot)
wait_status "$ids" completed 20; ok $? "without a slot for the recorder, the worker records the results"
is "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava recorder'" postgres)" 0 "no recorder runs"
grep -q "lava worker could not start its recorder and records results itself" "$LAVA_TEST_DIR/server.log"
ok $? "the worker says why in the server log"
q "ALTER SYSTEM RESET max_worker_processes" postgres >/dev/null
restart || echo "# the server did not restart"
wait_backend 'lava recorder' >/dev/null || echo "# no recorder after the restart"
