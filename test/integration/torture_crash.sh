# torture_crash.sh: crashes at random moments during runs of 5,000 prompts
# (mock latency 20 ms, lava.max_concurrency 256), 3 runs, and a clean one.  In each run, 3
# background enqueuers queue the prompts in batches of 100 (one transaction
# each, about 1000 kept queued) while the foreground crashes the server
# twice at random points of the run's progress: kill -9 of the worker (the
# postmaster then resets every backend) and pg_ctl stop -m immediate +
# start, in alternating order.  The last of these runs has
# lava.max_attempts = 1, so that the crash rule also ends interrupted
# requests in error.  A fourth run stops instead of crashing, cleanly:
# pg_ctl stop -m fast + start, and pg_terminate_backend of the worker; the
# worker then waits for its calls in flight and records every answer, so in
# that run (mock latency 300 ms, to keep calls in flight at the stops)
# each request completes after one attempt and the upstream sees it once.  The
# enqueuers survive the crashes: when a batch's commit is in doubt they look
# the batch up (by metadata) and queue it again only if it is absent.
# After each recovery (one snapshot): no batch is partial, every confirmed
# batch is there, reserved_spend = the reservations of the unfinished
# requests, total_spend = sum of request costs = the ledger, total_requests =
# rows, the ledger counts the finished ones (each with the settlements still
# deferred in lava.deferred_settlements set apart), no prompt has two rows, and no
# finished request is charged wrongly (completed = its exact cost, error =
# 0 and only for 'interrupted ... no attempts left').  At the end of each run
# and overall: nothing lost (one row per prompt, all terminal), nothing
# charged twice (completed = the exact cost of one answer even when the
# upstream saw the request twice), nothing reserved, and the mock's calls
# per request never exceed its attempts.
# Size: TORTURE_REQUESTS prompts per run (default 5000, rounded up to a
# multiple of 100), TORTURE_ROUNDS crash runs (default 3) and the clean
# one; about 50 s here.  The
# mock keeps its last 100,000 calls, so keep TORTURE_REQUESTS x
# TORTURE_ROUNDS well below that.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it

N=${TORTURE_REQUESTS:-5000}
ROUNDS=${TORTURE_ROUNDS:-3}
BATCH=100
ENQUEUERS=3
BATCHES=$(((N + BATCH - 1) / BATCH))	# per run
N=$((BATCHES * BATCH))
TOTAL=$((N * (ROUNDS + 1)))
run=c$(date +%s%N)
dir=$LAVA_TEST_DIR/torture_crash_$run
mkdir -p "$dir"

q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('tort_crash_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-tc')
	ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tort_crash_oa', 'gpt-tort-crash', 1, 2, 10) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"torture crash $run\", \"allowed_models\": [\"gpt-tort-crash\"],
	\"spend_limit\": {\"amount\": \"1000\", \"cycle\": \"total\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")

# the enqueuer: batch b holds prompts b*100+1 .. b*100+100, tagged in metadata
# and in the text (#id, for the mock's log); in/out tokens vary per prompt
LATENCY=20	# the mock's, in ms; 300 in the clean run, to keep calls in flight at the stops
enqueue_batch() {
	psql -X -qAt -v ON_ERROR_STOP=1 -d $TEST_DB -c "SELECT count(lava.prompt('gpt-tort-crash',
		format('crash #latency_ms=$LATENCY #in=%s #out=%s #id=$run-%s', n % 50 + 1, n % 10 + 1, n),
		jsonb_build_object('metadata', jsonb_build_object('b', $1, 'n', n)), '$key'))
		FROM generate_series($1 * $BATCH + 1, $1 * $BATCH + $BATCH) n" 2>/dev/null
}
enqueuer() { # ROUND I: the I-th of ENQUEUERS queues the run's batches I, I + ENQUEUERS, ...
	local b tries got
	for b in $(seq $(($1 * BATCHES + $2)) "$ENQUEUERS" $(($1 * BATCHES + BATCHES - 1))); do
		tries=0
		while :; do
			tries=$((tries + 1))
			if [ "$(enqueue_batch "$b")" = "$BATCH" ]; then
				echo "$b" >>"$dir/confirmed"
				break
			fi
			# failed or in doubt: is the batch there?
			wait_server 120 "$TEST_DB"
			got=$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND metadata ->> 'b' = '$b'" 2>/dev/null)
			if [ "$got" = "$BATCH" ]; then
				echo "$b" >>"$dir/confirmed"
				echo "$b" >>"$dir/in_doubt_committed"
				break
			elif [ -n "$got" ] && [ "$got" != 0 ]; then
				echo "batch $b: $got rows after a failed enqueue" >>"$dir/anomalies"
				break
			fi
			[ "$tries" -ge 50 ] && { echo "batch $b: gave up after $tries tries" >>"$dir/anomalies"; break; }
		done
		# keep a backlog of about 1000: the run lasts, and the enqueuers stay busy across the crashes
		while [ "$(q "SELECT count(*) > 1000 FROM lava.request_store
				WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')" 2>/dev/null)" = t ]; do
			sleep 0.1
		done
	done
}

# one snapshot of the accounting: empty when every invariant holds
check_sql="WITH r AS (SELECT request_id, status, reservation, cost, metadata,
			(status = 'completed' AND cost IS DISTINCT FROM
				(substring(body::text from '#in=([0-9]+)')::numeric * input_price
				 + substring(body::text from '#out=([0-9]+)')::numeric * output_price) / 1000000) AS bad_completed,
			(status = 'error' AND (cost IS DISTINCT FROM 0 OR COALESCE(error, '') NOT LIKE '%interrupted%')) AS bad_error,
			status NOT IN ('queued', 'running', 'completed', 'error') AS bad_status,
			(status IN ('queued', 'running') AND cost IS NOT NULL AND cost <> 0) AS cost_unfinished,
			COALESCE(cost > reservation, false) AS over
		FROM lava.request_store WHERE spend_key_id = '$kid'),
	k AS (SELECT * FROM lava.spend_key_store WHERE spend_key_id = '$kid'),
	d AS (SELECT COALESCE(sum(cost), 0) AS cost, COALESCE(sum(requests), 0) AS requests
		  FROM lava.key_usage_daily WHERE spend_key_id = '$kid'),
	p AS (SELECT COALESCE(sum(reservation), 0) AS reserved, COALESCE(sum(cost), 0) AS cost, count(*) AS n
		  FROM lava.deferred_settlements WHERE spend_key_id = '$kid'),
	a AS (SELECT COALESCE(sum(reservation) FILTER (WHERE status IN ('queued', 'running')), 0) AS reserved,
				 COALESCE(sum(cost), 0) AS cost, count(*) AS n,
				 count(*) FILTER (WHERE status IN ('completed', 'error', 'cancelled')) AS finished,
				 count(*) FILTER (WHERE bad_completed) AS bad_completed,
				 count(*) FILTER (WHERE bad_error) AS bad_error,
				 count(*) FILTER (WHERE bad_status) AS bad_status,
				 count(*) FILTER (WHERE cost_unfinished) AS cost_unfinished,
				 count(*) FILTER (WHERE over) AS over,
				 (array_agg(request_id ORDER BY request_id)
					FILTER (WHERE bad_completed OR bad_error OR bad_status OR cost_unfinished OR over))[1:5] AS eg,
				 count(DISTINCT metadata ->> 'n') AS distinct_n
		  FROM r)
	SELECT concat_ws('; ',
		CASE WHEN k.reserved_spend <> a.reserved + p.reserved THEN 'reserved_spend ' || k.reserved_spend
			|| ' <> unfinished reservations ' || a.reserved || ' + deferred ' || p.reserved END,
		CASE WHEN k.total_spend <> a.cost - p.cost THEN 'total_spend ' || k.total_spend || ' <> sum of request costs '
			|| a.cost || ' - deferred ' || p.cost END,
		CASE WHEN k.total_spend <> d.cost THEN 'total_spend ' || k.total_spend || ' <> ledger ' || d.cost END,
		CASE WHEN k.total_requests <> a.n THEN 'total_requests ' || k.total_requests || ' <> rows ' || a.n END,
		CASE WHEN d.requests <> a.finished - p.n THEN 'ledger requests ' || d.requests || ' <> finished rows '
			|| a.finished || ' - deferred ' || p.n END,
		CASE WHEN a.distinct_n <> a.n THEN 'a prompt has several rows (' || a.n || ' rows, ' || a.distinct_n || ' prompts)' END,
		CASE WHEN a.bad_completed > 0 THEN a.bad_completed || ' completed not at their exact cost' END,
		CASE WHEN a.bad_error > 0 THEN a.bad_error || ' errors charged or not interrupted' END,
		CASE WHEN a.bad_status > 0 THEN a.bad_status || ' with an unexpected status' END,
		CASE WHEN a.cost_unfinished > 0 THEN a.cost_unfinished || ' unfinished with a cost' END,
		CASE WHEN a.over > 0 THEN a.over || ' cost more than their reservation' END,
		'e.g. request_id ' || array_to_string(a.eg, ', '))
	FROM k, d, p, a"
# every confirmed batch is there in full, and no batch is partial
batches_sql() {
	local confirmed
	confirmed=$(sort -n "$dir/confirmed" 2>/dev/null | paste -sd, -)
	echo "SELECT concat_ws('; ',
		(SELECT count(*) || ' confirmed batches missing or partial' FROM unnest('{${confirmed}}'::int[]) c(b)
		 WHERE (SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND (metadata ->> 'b')::int = c.b) <> $BATCH
		 HAVING count(*) > 0),
		(SELECT count(*) || ' partial batches' FROM (SELECT metadata ->> 'b' FROM lava.request_store
			WHERE spend_key_id = '$kid' GROUP BY 1 HAVING count(*) <> $BATCH) x HAVING count(*) > 0))"
}

pid=$(wait_backend 'lava worker' "" 120); ok $? "the worker runs"
t0=$(date +%s)
# crash KIND CHECKPOINT_DESC: one crash, the wait for recovery, and the checks
crash() {
	local what newpid state
	state=$(q "SELECT count(*) FILTER (WHERE status = 'queued') || ' queued, ' || count(*) FILTER (WHERE status = 'running') || ' running, '
		|| count(*) FILTER (WHERE status NOT IN ('queued', 'running')) || ' done'
		FROM lava.request_store WHERE spend_key_id = '$kid'")
	case "$1" in
		kill)
			what="kill -9 of the worker"
			kill -9 "$pid" ;;
		terminate)
			what="pg_terminate_backend of the worker"
			q "SELECT pg_terminate_backend($pid)" postgres >/dev/null ;;
		*)
			what="pg_ctl stop -m $1 + start"
			as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -m "$1" -w stop >/dev/null 2>&1
			as_postgres "$PGBIN/pg_ctl" -D "$LAVA_TEST_DIR/data" -l "$LAVA_TEST_DIR/server.log" -w -t 60 start >/dev/null 2>&1 ;;
	esac
	diag "$2 at +$(($(date +%s) - t0))s: $what; just before: $state"
	wait_server 120 "$TEST_DB" && newpid=$(wait_backend 'lava worker' "$pid" 120)
	ok $? "$2 ($what): the server and the worker are back"
	pid=${newpid:-$pid}
	is "$(q "$check_sql")" "" "$2: the accounting is consistent after recovery"
	is "$(q "$(batches_sql)")" "" "$2: every confirmed batch is there in full, none partial"
}
# wait_done COUNT: waits until COUNT requests of the key are finished
wait_done() {
	local i
	for i in $(seq 1 2400); do
		[ "$(q "SELECT count(*) >= $1 FROM lava.request_store WHERE spend_key_id = '$kid' AND status NOT IN ('queued', 'running')" 2>/dev/null)" = t ] && return 0
		sleep 0.05
	done
	return 1
}
for round in $(seq 0 "$ROUNDS"); do
	base=$((round * N))
	if [ "$round" = "$ROUNDS" ]; then
		server_set lava.max_attempts
		sleep 1
		LATENCY=300
		diag "run $((round + 1)) with clean stops (mock latency $LATENCY ms)"
	elif [ "$round" = $((ROUNDS - 1)) ] && [ "$ROUNDS" -gt 1 ]; then
		# the last run with lava.max_attempts = 1: an interrupted request has
		# no attempt left, so the crash rule ends it in error, uncharged
		server_set lava.max_attempts 1
		sleep 1
		diag "run $((round + 1)) with lava.max_attempts = 1"
	fi
	enq_pids=()
	for i in $(seq 0 $((ENQUEUERS - 1))); do
		enqueuer "$round" "$i" &
		enq_pids+=($!)
	done
	# the first crash when a random 10-35% of the run is done, the second a
	# random 10-25% of the run after the first recovery (by 90% at the latest)
	if [ "$round" = "$ROUNDS" ]; then kinds="fast terminate"
	elif [ $((round % 2)) = 0 ]; then kinds="kill immediate"
	else kinds="immediate kill"; fi
	first=${kinds%% *}
	second=${kinds##* }
	wait_done $((base + N * (10 + RANDOM % 26) / 100))
	crash "$first" "run $((round + 1)), crash 1"
	done_now=$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status NOT IN ('queued', 'running')")
	target=$((done_now + N * (10 + RANDOM % 16) / 100))
	[ "$target" -gt $((base + N * 90 / 100)) ] && target=$((base + N * 90 / 100))
	wait_done "$target"
	crash "$second" "run $((round + 1)), crash 2"
	for p in "${enq_pids[@]}"; do wait "$p"; done
	for i in $(seq 1 1200); do
		[ "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" = 0 ] && break
		sleep 0.1
	done
	wait_settled "$kid"
	diag "run $((round + 1)) drained at +$(($(date +%s) - t0))s; in-doubt enqueues found committed so far: $(cat "$dir/in_doubt_committed" 2>/dev/null | wc -l);" \
		"status/attempts: $(q "SELECT string_agg(status || '/' || attempts || '=' || n, ' ') FROM (SELECT status, attempts, count(*) n
		FROM lava.request_store WHERE spend_key_id = '$kid' AND (metadata ->> 'b')::int / $BATCHES = $round GROUP BY 1, 2 ORDER BY 1, 2) x")"
	is "$(q "SELECT count(*) || ' ' || count(*) FILTER (WHERE status IN ('completed', 'error'))
		 FROM lava.request_store WHERE spend_key_id = '$kid'")" "$((base + N)) $((base + N))" \
		"run $((round + 1)): nothing lost: $((base + N)) rows so far, every one terminal"
	is "$(q "$check_sql")" "" "run $((round + 1)): the accounting is consistent at the end of the run"
done

is "$(cat "$dir/anomalies" 2>/dev/null)" "" "the enqueuers saw no partial batch and gave up on none"
is "$(sort -un "$dir/confirmed" | wc -l)" "$((BATCHES * (ROUNDS + 1)))" "all $((BATCHES * (ROUNDS + 1))) batches ($TOTAL prompts) were confirmed enqueued"
diag "$(q "SELECT string_agg(status || '/' || attempts || '=' || n, ' ') FROM (SELECT status, attempts, count(*) n
	FROM lava.request_store WHERE spend_key_id = '$kid' GROUP BY 1, 2 ORDER BY 1, 2) x")"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" 0 \
	"every request is terminal"
is "$(q "SELECT count(*) || ' ' || count(DISTINCT metadata ->> 'n') FROM lava.request_store WHERE spend_key_id = '$kid'")" "$TOTAL $TOTAL" \
	"nothing lost: exactly $TOTAL rows, one per prompt"
is "$(q "$check_sql")" "" "at the end: the accounting is consistent (total_spend = request costs = ledger, exact costs)"
is "$(q "$(batches_sql)")" "" "at the end: every batch is there in full"
is "$(q "SELECT reserved_spend FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" 0 "nothing is left reserved"
is "$(q "SELECT total_requests || ' ' || (SELECT sum(requests) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" "$TOTAL $TOTAL" \
	"total_requests = the ledger's requests = $TOTAL"
diag "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND (attempts > 1 OR error LIKE '%interrupted%')") requests were interrupted by a crash;" \
	"$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status = 'error'") ended in error (no attempts left)"

# the mock's view: calls per request (by #id) never exceed the attempts
# recorded (a claim commits before the call is sent), a completed request
# reached the upstream at least once, and however many times the upstream
# saw a request, the DB charged it once (its exact cost, checked above)
mock_log "'#id=$run-' in json.dumps(r['body'])" | /usr/bin/python3 -c '
import json, sys, re, collections
c = collections.Counter(re.search(r"#id=[a-z0-9]+-([0-9]+)", json.dumps(r["body"])).group(1) for r in json.load(sys.stdin))
for n in sorted(c, key=int):
	print(n, c[n])' >"$dir/calls.txt"
psql -X -q -d $TEST_DB -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.torture_crash_calls;
CREATE TABLE public.torture_crash_calls (n int PRIMARY KEY, calls int);
\copy public.torture_crash_calls FROM '$dir/calls.txt' WITH (DELIMITER ' ')
SQL
diag "the upstream saw $(q "SELECT sum(calls) FROM public.torture_crash_calls") calls for $TOTAL prompts;" \
	"$(q "SELECT count(*) FROM public.torture_crash_calls WHERE calls > 1") prompts more than once"
is "$(q "SELECT count(*) || COALESCE(' e.g. ' || string_agg(request_id || ' (' || status || ', ' || attempts || ' attempts, '
			|| calls || ' calls)', ', ') FILTER (WHERE rn <= 5), '')
		 FROM (SELECT r.request_id, r.status, r.attempts, COALESCE(c.calls, 0) AS calls, row_number() OVER (ORDER BY r.request_id) rn
			   FROM lava.request_store r LEFT JOIN public.torture_crash_calls c ON c.n = (r.metadata ->> 'n')::int
			   WHERE r.spend_key_id = '$kid'
				 AND (COALESCE(c.calls, 0) > r.attempts OR (r.status = 'completed' AND COALESCE(c.calls, 0) = 0))) x")" 0 \
	"per request, the upstream calls never exceed the attempts, and a completed one was called"
is "$(q "SELECT count(*) FROM public.torture_crash_calls c WHERE NOT EXISTS (SELECT 1 FROM lava.request_store r
		 WHERE r.spend_key_id = '$kid' AND (r.metadata ->> 'n')::int = c.n)")" 0 "the upstream saw no request that is not in the queue"
is "$(q "SELECT count(*) FROM lava.request_store r JOIN public.torture_crash_calls c ON c.n = (r.metadata ->> 'n')::int
		 WHERE r.spend_key_id = '$kid' AND c.calls > 1 AND r.status = 'completed'
		   AND r.cost <> (r.input_tokens * r.input_price + r.output_tokens * r.output_price) / 1000000")" 0 \
	"a request the upstream saw twice is charged once"
is "$(q "SELECT count(*) || COALESCE(' e.g. ' || string_agg(request_id || ' (' || status || ', ' || attempts || ' attempts, '
			|| calls || ' calls)', ', ') FILTER (WHERE rn <= 5), '')
		 FROM (SELECT r.request_id, r.status, r.attempts, COALESCE(c.calls, 0) AS calls, row_number() OVER (ORDER BY r.request_id) rn
			   FROM lava.request_store r LEFT JOIN public.torture_crash_calls c ON c.n = (r.metadata ->> 'n')::int
			   WHERE r.spend_key_id = '$kid' AND (r.metadata ->> 'b')::int / $BATCHES = $ROUNDS
				 AND (r.status <> 'completed' OR r.attempts <> 1 OR COALESCE(c.calls, 0) <> 1)) x")" 0 \
	"run $((ROUNDS + 1)), with clean stops: each request completed after one attempt, and the upstream saw it once"
q "DROP TABLE public.torture_crash_calls" >/dev/null
diag "total $(($(date +%s) - t0))s"
done_testing
