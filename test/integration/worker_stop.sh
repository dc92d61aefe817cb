# worker_stop.sh: a worker asked to stop (a server shutdown,
# pg_terminate_backend) claims nothing more and, for up to
# lava.stop_timeout, waits for its calls in flight and records every
# answer, the outbox's included, so that a restart sends none of them again:
#   - pg_ctl stop -m fast with 30 answers waiting for a stopped recorder and
#     40 calls in flight for 1.5 s: after the restart all 70 are completed
#     after one attempt, and the upstream saw each once;
#   - calls slower than lava.stop_timeout are dropped at the deadline, and
#     sent again after the restart;
#   - while a transaction holds the requests' rows locked, the stop gives up at
#     the deadline and says so; the answers stay in the outbox, and the
#     next worker records them, before its start-up recovery, once the lock
#     is gone: none is sent again;
#   - a commit that waits for a synchronous standby that never comes ends
#     at the deadline too;
#   - lava.stop_timeout = 0 stops at once: answers not yet recorded are
#     lost with the server, and their requests sent again;
#   - values out of range are refused with 22023 and change nothing;
# and pg_cancel_backend cancels a step, never a process:
#   - with calls in flight neither process exits, and none is sent again;
#   - a recording step that waits for a locked request row is cancelled, and
#     done again once the lock is gone: the answer is not taken for a bad
#     one, and not sent again;
# and the database's lock_timeout, default_transaction_isolation and
# search_path do not reach the worker's and the recorder's steps; a server
# read-only for a while delays the recording, and loses nothing.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 60

data="$LAVA_TEST_DIR/data"
log="$LAVA_TEST_DIR/server.log"

mock_key stop

# load N TAG [LATENCY_MS]: N prompts, answered after LATENCY_MS; their ids as a SQL list
load() { q "SELECT string_agg(lava.prompt('gpt-stop', '#latency_ms=${3:-0} #in=5 #out=5 $2 ' || g, '{}', '$key')::text, ',') FROM generate_series(1, $1) g"; }
# summary IDS: "N status/attempts" for each kind of those requests
summary() {
	q "SELECT string_agg(n || ' ' || status || '/' || attempts, ', ' ORDER BY status, attempts)
	   FROM (SELECT status, attempts, count(*) AS n FROM lava.request_store
			 WHERE request_id IN ($1) GROUP BY 1, 2) s"
}
# gone PID: waits (15 s at most) until process PID has exited
gone() {
	local i
	for i in $(seq 1 150); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}
log_pos() { stat -c %s "$log"; }
# log_has OFFSET TEXT: whether the server log has TEXT past byte OFFSET
log_has() { tail -c "+$(($1 + 1))" "$log" | grep -qF "$2"; }
stop_server() { as_postgres "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1; }
start_server() { as_postgres "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1 && wait_server; }
# lock_wait PID: waits (5 s at most) until process PID waits for a lock;
# prints its wait event type then
lock_wait() {
	local i t
	for i in $(seq 1 50); do
		t=$(q "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1" postgres)
		[ "$t" = Lock ] && break
		sleep 0.1
	done
	echo "$t"
}

# lock_rows SECONDS IDS [update]: a transaction holds the rows of the
# requests IDS (a SQL list) locked (or updated) for SECONDS, in the
# background (its pid in holder), once it has them.  (A key's row held so
# would only defer the key's settlements: see worker_fairness.sh.)
lock_rows() {
	local stmt="SELECT 1 FROM lava.request_store WHERE request_id IN ($2) FOR UPDATE"
	[ "$3" = update ] && stmt="UPDATE lava.request_store SET metadata = metadata WHERE request_id IN ($2)"
	hold_open "$1" "$stmt"
}

# 0. pg_cancel_backend: outside a step there is nothing to cancel
worker=$(wait_backend 'lava worker')
rec=$(wait_backend 'lava recorder')
calls=$(load 20 cancel 1000)
wait_answered cancel 20
q "SELECT pg_cancel_backend($worker), pg_cancel_backend($rec)" postgres >/dev/null
sleep 0.3
is "$(backend_pid 'lava worker')/$(backend_pid 'lava recorder')" "$worker/$rec" \
	"pg_cancel_backend with 20 calls in flight: neither process exits"
wait_status "$calls" completed 20; ok $? "the 20 complete"
is "$(summary "$calls")/$(mock_count cancel)" "20 completed/1/20" "after one attempt: none was sent again"

# 0b. a recording step waiting for a locked request row is cancelled, and done
# later: a cancel is not the answer's fault, even when it is alone in its
# batch (it was once recorded as an error, and sent again)
calls=$(load 1 cancel-step 1500)
wait_answered cancel-step 1
lock_rows 5 "$calls"
is "$(lock_wait "$rec")" Lock "the recorder waits for the locked request row"
pos=$(log_pos)
q "SELECT pg_cancel_backend($rec)" postgres >/dev/null
sleep 0.3
is "$(backend_pid 'lava recorder')" "$rec" "cancelled, the recorder keeps running"
log_has "$pos" "canceling statement due to user request"; ok $? "its step was cancelled (server log)"
wait "$holder"
wait_status "$calls" completed 1; ok $? "once the lock is gone, the answer is recorded"
is "$(summary "$calls")/$(mock_count cancel-step)" "1 completed/1/1" "after one attempt: it was not sent again"

# 0c. the database's lock_timeout, default_transaction_isolation and
# search_path do not reach the worker's steps: a recording that waits for
# request rows another transaction updates neither times out nor fails to
# serialize, and a database owner's search_path lends the worker (a
# superuser) none of its types: a trap domain named uuid sees no call
q "CREATE SCHEMA evil; CREATE TABLE evil.hits (backend_type text);
   CREATE FUNCTION evil.hit() RETURNS boolean LANGUAGE sql
	 AS 'INSERT INTO evil.hits SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid() RETURNING true';
   CREATE DOMAIN evil.uuid AS pg_catalog.uuid CHECK (evil.hit())" >/dev/null
q "ALTER DATABASE lava_it SET lock_timeout = '10ms'" postgres >/dev/null
q "ALTER DATABASE lava_it SET default_transaction_isolation = 'serializable'" postgres >/dev/null
q "ALTER DATABASE lava_it SET search_path = evil, pg_catalog, public" postgres >/dev/null
q "SELECT '00000000-0000-0000-0000-000000000000'::uuid" >/dev/null
is "$(q "SELECT count(*) FROM evil.hits")" 1 "the trap works: a session's uuid now resolves to evil.uuid"
q "SELECT pg_terminate_backend($worker)" postgres >/dev/null
worker=$(wait_backend 'lava worker' "$worker"); ok $? "a worker starts under those database settings"
rec=$(wait_backend 'lava recorder' "$rec"); ok $? "and its recorder"
pos=$(log_pos)
calls=$(load 10 pinned 1500)
wait_answered pinned 10
lock_rows 4 "$calls" update
holder_pid=$(q "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(4)'" postgres)
is "$(lock_wait "$rec")" Lock \
	"the recorder waits for the request rows, past the database's lock_timeout of 10 ms"
wait "$holder"
wait_status "$calls" completed 10; ok $? "once the rows are free, the 10 are recorded"
! log_has "$pos" "lock timeout" && ! log_has "$pos" "could not serialize"
ok $? "with no lock timeout and no serialization failure (server log)"
log_has "$pos" "process $rec still waiting for" && log_has "$pos" "Process holding the lock: $holder_pid."
ok $? "the wait is in the log, with the holder's pid (log_lock_waits)"
is "$(summary "$calls")/$(mock_count pinned)" "10 completed/1/10" "after one attempt: none was sent again"
is "$(q "SELECT count(*) FROM evil.hits WHERE backend_type LIKE 'lava%'")" 0 "and neither lava process ever resolved a name through that search_path"
q "ALTER DATABASE lava_it RESET lock_timeout" postgres >/dev/null
q "ALTER DATABASE lava_it RESET default_transaction_isolation" postgres >/dev/null
q "ALTER DATABASE lava_it RESET search_path" postgres >/dev/null
q "DROP SCHEMA evil CASCADE" >/dev/null 2>&1

# 0d. the server made read-only for a while (default_transaction_read_only
# in postgresql.conf): answers wait, and are recorded once it is writable
# again, each sent once (they used to be taken for bad answers, dropped,
# and sent again at the next restart)
calls=$(load 20 readonly 1500)
wait_answered readonly 20
pos=$(log_pos)
server_set default_transaction_read_only on
sleep 2.5
is "$(summary "$calls")" "20 running/1" "while the server is read-only, the 20 answers wait, unrecorded"
log_has "$pos" "cannot execute"; ok $? "as the recording failed (server log)"
server_set default_transaction_read_only
wait_status "$calls" completed 20; ok $? "writable again, the 20 are recorded"
is "$(summary "$calls")/$(mock_count readonly)" "20 completed/1/20" "after one attempt: none was sent again"

# 1. a fast shutdown with answers waiting for a stopped recorder and calls in flight
worker=$(wait_backend 'lava worker'); ok $? "the worker runs"
rec=$(wait_backend 'lava recorder'); ok $? "and its recorder"
kill -STOP "$rec"
answered=$(load 30 fast-stop-done)
wait_answered fast-stop-done 30 && wait_handed
is "$(summary "$answered")" "30 running/1" "30 answers wait in the outbox of a stopped recorder"
slow=$(load 40 fast-stop-inflight 1500)
wait_answered fast-stop-inflight 40; ok $? "40 calls answered after 1.5 s are in flight"
pos=$(log_pos)
stop_server &
stopper=$!
gone "$worker"; ok $? "pg_ctl stop -m fast: the worker exits"
kill -CONT "$rec"
wait "$stopper"; ok $? "and the server stops"
log_has "$pos" "lava worker is stopping and waits up to 5000 ms for 40 calls in flight"
ok $? "the worker said it waits for its calls (server log)"
start_server; ok $? "the server starts again"
is "$(summary "$answered")" "30 completed/1" "the 30 answers the outbox held were recorded before the stop"
is "$(summary "$slow")" "40 completed/1" "the 40 calls in flight were awaited and recorded"
wait_backend 'lava recorder' >/dev/null
sleep 0.5
is "$(mock_count fast-stop-done)/$(mock_count fast-stop-inflight)" "30/40" "after the restart none was sent again"

# 2. calls slower than lava.stop_timeout: dropped at the deadline, sent again
server_set lava.stop_timeout "'1s'"
beyond=$(load 20 beyond 4000)
wait_answered beyond 20; ok $? "20 calls answered after 4 s are in flight"
pos=$(log_pos)
stop_server; ok $? "with lava.stop_timeout = 1s the server stops"
log_has "$pos" "lava worker stopped with 20 calls in flight"
ok $? "the worker said it dropped 20 calls in flight (server log)"
start_server; ok $? "the server starts again"
wait_status "$beyond" completed 20; ok $? "the 20 requests complete after the restart"
is "$(summary "$beyond")/$(mock_count beyond)" "20 completed/2/40" "each was sent again once: the stop did not wait past its timeout"

# 3. a transaction holds the requests' rows: the stop gives up at the deadline,
# and the next worker records the answers once the lock is gone
worker=$(wait_backend 'lava worker')
rec=$(wait_backend 'lava recorder'); ok $? "a recorder runs"
kill -STOP "$rec"
locked=$(load 20 locked)
wait_answered locked 20 && wait_handed
lock_rows 8 "$locked"
pos=$(log_pos)
q "SELECT pg_terminate_backend($worker)" postgres >/dev/null
gone "$worker"; ok $? "terminated, the worker exits"
kill -0 "$holder" 2>/dev/null; ok $? "while the request rows are still locked: the stop gave up at lava.stop_timeout"
kill -CONT "$rec"
log_has "$pos" "lava worker stopped before it could record every answer"
ok $? "and said so (server log)"
is "$(summary "$locked")" "20 running/1" "the 20 answers wait in the outbox, unrecorded"
new=$(wait_backend 'lava worker' "$worker"); ok $? "a new worker starts"
wait "$holder"
wait_status "$locked" completed 20; ok $? "once the lock is gone, the 20 are recorded"
sleep 0.5
is "$(summary "$locked")/$(mock_count locked)" "20 completed/1/20" "after one attempt: none was sent again"
is "$(q "SELECT max(completed_at) < (SELECT backend_start FROM pg_stat_activity WHERE pid = $(wait_backend 'lava recorder' "$rec"))
		 FROM lava.request_store WHERE request_id IN ($locked)")" t "by the new worker, before it started its recorder"

# 3b. a commit that waits for a synchronous standby that never comes: the
# stop's deadline cancels the wait (the commit stays, locally), and the
# worker exits instead of hanging the shutdown
worker=$(wait_backend 'lava worker')
rec=$(wait_backend 'lava recorder')
kill -STOP "$rec"
syncrep=$(load 20 syncrep)
wait_answered syncrep 20 && wait_handed
server_set synchronous_standby_names "'lava_nobody'"
sleep 0.3
pos=$(log_pos)
q "SELECT pg_terminate_backend($worker)" postgres >/dev/null
gone "$worker"; ok $? "with every commit waiting for a standby that never comes, the stopped worker still exits"
server_set synchronous_standby_names
kill -CONT "$rec"
log_has "$pos" "canceling wait for synchronous replication"; ok $? "its deadline cancelled the wait (server log)"
sleep 0.5
is "$(summary "$syncrep")/$(mock_count syncrep)" "20 completed/1/20" "the 20 answers were recorded, locally, and none was sent again"

# 4. lava.stop_timeout = 0: the worker stops at once
server_set lava.stop_timeout 0
rec=$(wait_backend 'lava recorder')
worker=$(wait_backend 'lava worker')
kill -STOP "$rec"
zero=$(load 20 zero)
wait_answered zero 20 && wait_handed
pos=$(log_pos)
stop_server &
stopper=$!
gone "$worker"; ok $? "with lava.stop_timeout = 0 the worker exits"
kill -CONT "$rec"
log_has "$pos" "lava worker stopped at once (lava.stop_timeout is 0) and left answers unrecorded"
ok $? "and said it left answers unrecorded (server log)"
wait "$stopper" && start_server; ok $? "the server stops and starts again"
wait_status "$zero" completed 20; ok $? "the 20 requests complete after the restart"
is "$(summary "$zero")/$(mock_count zero)" "20 completed/2/40" "their answers were lost with the server: each was sent again"

# 5. bad values
before=$(q "SHOW lava.stop_timeout" postgres)
for v in "'-1'" "'11min'" "'soon'"; do
	out=$(psql -X -qAt -d postgres -v VERBOSITY=sqlstate -c "ALTER SYSTEM SET lava.stop_timeout = $v" 2>&1)
	is "$out" "ERROR:  22023" "lava.stop_timeout = $v is refused with 22023"
done
q "SELECT pg_reload_conf()" postgres >/dev/null
sleep 0.2
is "$(q "SHOW lava.stop_timeout" postgres)" "$before" "and changes nothing"

server_set lava.stop_timeout
await_all
is "$(key_balanced "$kid")" t "key spend = sum of request costs = ledger, nothing reserved"
