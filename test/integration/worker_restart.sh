# worker_restart.sh: the worker restarts after pg_terminate_backend, after a
# kill -9 of the worker (the server restarts), and after an immediate server
# stop, each under load.  Afterwards every request is terminal, none was
# charged twice, and the key counters equal the ledger.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 13

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
