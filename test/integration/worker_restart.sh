# worker_restart.sh: the worker restarts after pg_terminate_backend, after a
# kill -9 of the worker (the server restarts), and after an immediate server
# stop, each under load.  Afterwards every request is terminal, none was
# charged twice, and the key counters equal the ledger.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 18

mock_key crash
load() { q "SELECT count(lava.prompt('gpt-crash', '#latency_ms=1000 #in=5 #out=5 n' || g, '{}', '$key')) FROM generate_series(1, $1) g"; }
invariants() {
	await_all; ok $? "$1: every request reached a terminal state"
	is "$(q "SELECT count(*) FROM lava.request_store r JOIN lava.spend_key_store k USING (spend_key_id)
			 WHERE k.spend_key_id = '$kid' AND r.status NOT IN ('completed', 'error', 'cancelled')")" 0 "$1: none left queued or running"
	is "$(key_balanced "$kid")" t "$1: key spend = sum of request costs = ledger, nothing reserved (none charged twice)"
}

pid=$(wait_backend 'lava worker' ""); ok $? "the worker runs"
q "SELECT pg_terminate_backend($pid)" postgres >/dev/null
pid2=$(wait_backend 'lava worker' "$pid"); ok $? "it restarts after pg_terminate_backend"

load 150 >/dev/null
sleep 0.4
inflight=$(q "SELECT count(*) FROM lava.request_store WHERE status = 'running'")
kill -9 "$pid2"
diag "$inflight requests were running when the worker was killed"
[ "$inflight" -gt 0 ]; ok $? "requests were in flight at the kill"
wait_server; ok $? "after kill -9 of the worker under load, the server is back"
pid3=$(wait_backend 'lava worker' "$pid2"); ok $? "and so is the worker"
invariants "kill -9"
is "$(q "SELECT count(*) > 0 FROM lava.request_store WHERE error LIKE '%interrupted by a worker restart%' OR attempts > 1")" t \
	"the crash rule requeued the interrupted requests"

load 150 >/dev/null
sleep 0.4
as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -m immediate -w stop >/dev/null 2>&1
as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -l "$LAVA_TEST_DIR/server.log" -w -t 60 start >/dev/null 2>&1
wait_server; ok $? "after pg_ctl stop -m immediate under load, the server starts again"
invariants "immediate stop"

# synchronous_commit = off on the database does not reach the worker: its
# claim is on disk before the calls are sent, so a crash right after they
# went out keeps the attempt (without that, the claims were lost with the
# WAL buffers, and the upstream saw each request once more than its
# attempts).  wal_writer_delay = 10s keeps asynchronous commits unflushed
# for that long.
q "ALTER DATABASE lava_it SET synchronous_commit = off" postgres >/dev/null
server_set wal_writer_delay "'10s'"
pid=$(wait_backend 'lava worker')
q "SELECT pg_terminate_backend($pid)" postgres >/dev/null
pid=$(wait_backend 'lava worker' "$pid"); ok $? "a worker starts with synchronous_commit = off on its database"
ids=$(psql -X -qAt -v ON_ERROR_STOP=1 -d lava_it -c "SET synchronous_commit = on" \
	-c "SELECT string_agg(lava.prompt('gpt-crash', '#latency_ms=3000 #in=5 #out=5 async' || g, '{}', '$key')::text, ',')
		FROM generate_series(1, 20) g")
wait_answered async 20; ok $? "its 20 calls are out"
as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -m immediate -w stop >/dev/null 2>&1
as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -l "$LAVA_TEST_DIR/server.log" -w -t 60 start >/dev/null 2>&1
wait_server; ok $? "after pg_ctl stop -m immediate, the server starts again"
q "ALTER DATABASE lava_it RESET synchronous_commit" postgres >/dev/null
server_set wal_writer_delay
wait_status "$ids" completed 20; ok $? "the 20 complete"
is "$(q "SELECT count(*) FILTER (WHERE attempts = 2) FROM lava.request_store WHERE request_id IN ($ids)")/$(mock_count async)" "20/40" \
	"each was seen twice by the upstream, and both attempts are counted"
