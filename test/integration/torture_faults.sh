# torture_faults.sh: a mixed load of 1,000 prompts whose texts carry fault
# directives for the mock upstream, enqueued by 4 concurrent sessions, with
# lava.request_timeout = 2s and lava.max_attempts = 2.  Per 20 prompts:
#   8 plain                                   -> completed, 1 attempt, exact cost
#   2 #status=500 #fail_times=1 (unique #id)  -> completed, 2 attempts, exact cost
#   2 #status=503 #retry_after=1 #fail_times=1 -> completed, 2 attempts, exact cost, retry >= 1 s later
#   2 #status=400                             -> error, 1 attempt, cost 0
#   1 #hang=1                                 -> error (timed out), 2 attempts, cost 0
#   2 #garbage=1                              -> error, 1 attempt, cost = reservation
#   2 #no_usage=1                             -> completed, 1 attempt, cost = reservation
#   1 #reset=1                                -> error, 2 attempts, cost 0
# Global invariants after draining: every request terminal, nothing left
# reserved, the key's counters equal the request rows and the daily ledger,
# and the upstream calls the mock logged per request equal its attempts.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 19

N=${TORTURE_FAULT_REQUESTS:-1000}
SESSIONS=4
run=f$(date +%s%N)
q "ALTER SYSTEM SET lava.max_attempts = 2" >/dev/null
q "ALTER SYSTEM SET lava.request_timeout = '2s'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 1
q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('tort_fault_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-tf')
	ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tort_fault_oa', 'gpt-tort-fault', 1, 2, 50) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"torture faults $run\", \"allowed_models\": [\"gpt-tort-fault\"],
	\"spend_limit\": {\"amount\": \"100\", \"cycle\": \"total\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")

# the category of prompt n (1-based), 20 to a cycle
cat_of() {
	case $(($1 % 20)) in
	0 | 1 | 2 | 3 | 4 | 5 | 6 | 7) echo plain ;;
	8 | 9) echo s500 ;;
	10 | 11) echo s503 ;;
	12 | 13) echo s400 ;;
	14) echo hang ;;
	15 | 16) echo garbage ;;
	17 | 18) echo nousage ;;
	19) echo reset ;;
	esac
}
directives() {
	case $1 in
	plain) echo "" ;;
	s500) echo "#status=500 #fail_times=1" ;;
	s503) echo "#status=503 #retry_after=1 #fail_times=1" ;;
	s400) echo "#status=400" ;;
	hang) echo "#hang=1" ;;
	garbage) echo "#garbage=1" ;;
	nousage) echo "#no_usage=1" ;;
	reset) echo "#reset=1" ;;
	esac
}
# one SQL file per session, one autocommitted lava.prompt per prompt,
# interleaved across sessions; metadata carries the category
for s in $(seq 0 $((SESSIONS - 1))); do : >"$LAVA_TEST_DIR/torture_faults_$s.sql"; done
for n in $(seq 1 "$N"); do
	c=$(cat_of "$n")
	echo "SELECT lava.prompt('gpt-tort-fault', 'fault $c #in=$((n % 97 + 1)) #out=$((n % 41 + 1)) $(directives $c) #id=$run-$n',
		'{\"metadata\": {\"cat\": \"$c\", \"n\": $n}}', '$key');" >>"$LAVA_TEST_DIR/torture_faults_$((n % SESSIONS)).sql"
done
t0=$(date +%s)
pids=()
for s in $(seq 0 $((SESSIONS - 1))); do
	psql -X -q -v ON_ERROR_STOP=1 -d $TEST_DB -f "$LAVA_TEST_DIR/torture_faults_$s.sql" >/dev/null 2>"$LAVA_TEST_DIR/torture_faults_$s.err" &
	pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
ok $rc "$SESSIONS sessions enqueued $N prompts concurrently"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid'")" "$N" "all $N are queued"

for i in $(seq 1 1200); do
	[ "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" = 0 ] && break
	sleep 0.1
done
wait_settled "$kid"
diag "drained in $(($(date +%s) - t0))s"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND status IN ('queued', 'running')")" 0 \
	"every request is terminal"
diag "$(q "SELECT string_agg(c, ' ') FROM (SELECT metadata ->> 'cat' || ':' || status || '/' || attempts || '=' || count(*) AS c
	FROM lava.request_store WHERE spend_key_id = '$kid' GROUP BY metadata ->> 'cat', status, attempts ORDER BY 1) x")"

# rows of a category that break its documented outcome (listed for diagnosis)
exact="cost = input_tokens * input_price / 1000000 + output_tokens * output_price / 1000000
	AND input_tokens = substring(body::text from '#in=([0-9]+)')::bigint
	AND output_tokens = substring(body::text from '#out=([0-9]+)')::bigint"
bad() {
	q "SELECT count(*) || COALESCE(' e.g. ' || string_agg(request_id || ':' || status || '/' || attempts || '/' || cost || '/' || COALESCE(error, ''), ', ')
		FILTER (WHERE rn <= 3), '')
		FROM (SELECT *, row_number() OVER (ORDER BY request_id) rn FROM lava.request_store
			  WHERE spend_key_id = '$kid' AND metadata ->> 'cat' = '$1' AND NOT ($2)) x"
}
is "$(bad plain "status = 'completed' AND attempts = 1 AND $exact")" 0 "plain: completed, 1 attempt, exact cost"
is "$(bad s500 "status = 'completed' AND attempts = 2 AND http_status = 200 AND $exact")" 0 \
	"500 once: completed on attempt 2, exact cost"
is "$(bad s503 "status = 'completed' AND attempts = 2 AND http_status = 200 AND $exact")" 0 \
	"503 with Retry-After once: completed on attempt 2, exact cost"
is "$(bad s400 "status = 'error' AND attempts = 1 AND http_status = 400 AND cost = 0 AND error LIKE '%HTTP 400%'")" 0 \
	"400: error at once, 1 attempt, cost 0"
is "$(bad hang "status = 'error' AND attempts = 2 AND cost = 0 AND error ILIKE '%timed out%'")" 0 \
	"hang: error (timed out) after max_attempts 2, cost 0"
is "$(bad garbage "status = 'error' AND attempts = 1 AND cost = reservation AND cost > 0")" 0 \
	"garbage: error, 1 attempt, charged its reservation"
is "$(bad nousage "status = 'completed' AND attempts = 1 AND cost = reservation AND cost > 0 AND error LIKE '%no usage%'")" 0 \
	"no usage: completed, 1 attempt, charged its reservation"
is "$(bad reset "status = 'error' AND attempts = 2 AND cost = 0")" 0 "reset mid-body: error after max_attempts 2, cost 0"
is "$(q "SELECT count(*) FROM lava.request_store WHERE spend_key_id = '$kid' AND cost > reservation")" 0 \
	"no request costs more than its reservation"

# the upstream calls per request (by #id) equal the attempts recorded
mock_log "'#id=$run-' in json.dumps(r['body'])" | /usr/bin/python3 -c '
import json, sys, re, collections
c = collections.Counter()
t = collections.defaultdict(list)
for r in json.load(sys.stdin):
	i = re.search(r"#id=([A-Za-z0-9-]+)", json.dumps(r["body"])).group(1)
	c[i] += 1
	t[i].append(r["time"])
for i in sorted(c):
	ts = sorted(t[i])
	print(i.rsplit("-", 1)[1], c[i], "%.3f" % (ts[-1] - ts[0]))' >"$LAVA_TEST_DIR/torture_faults_calls.txt"
psql -X -q -d $TEST_DB -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE public.torture_faults_calls (n int PRIMARY KEY, calls int, span float8);
\copy public.torture_faults_calls FROM '$LAVA_TEST_DIR/torture_faults_calls.txt' WITH (DELIMITER ' ')
SQL
is "$(q "SELECT count(*), sum(calls) FROM public.torture_faults_calls")" \
	"$(q "SELECT count(*) FILTER (WHERE attempts > 0), sum(attempts) FROM lava.request_store WHERE spend_key_id = '$kid'")" \
	"the mock saw as many requests and upstream calls as the attempts recorded"
is "$(q "SELECT count(*) || COALESCE(' e.g. ' || string_agg(r.request_id || ': ' || r.attempts || ' attempts, ' || COALESCE(c.calls, 0) || ' calls', ', '), '')
		 FROM lava.request_store r LEFT JOIN public.torture_faults_calls c ON c.n = (r.metadata ->> 'n')::int
		 WHERE r.spend_key_id = '$kid' AND r.attempts IS DISTINCT FROM COALESCE(c.calls, 0)")" 0 \
	"and each request's upstream calls equal its attempts"
is "$(q "SELECT count(*) FROM lava.request_store r JOIN public.torture_faults_calls c ON c.n = (r.metadata ->> 'n')::int
		 WHERE r.spend_key_id = '$kid' AND r.metadata ->> 'cat' = 's503' AND c.span < 0.95")" 0 \
	"every 503 retry came at least Retry-After (1 s) after the first call"

is "$(q "SELECT k.total_spend = (SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 AND k.total_spend = (SELECT sum(cost) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t "total_spend = sum of request costs = the daily ledger"
is "$(q "SELECT reserved_spend FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" 0 "nothing is left reserved"
is "$(q "SELECT k.total_requests || ' ' || (SELECT sum(requests) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" "$N $N" "total_requests = the ledger's requests = $N"
is "$(q "SELECT (lava.get_spend_key('$kid') ->> 'current_spend')::numeric = total_spend
		 FROM lava.spend_key_store WHERE spend_key_id = '$kid'")" t "current_spend (cycle total) = total_spend"

q "DROP TABLE public.torture_faults_calls" >/dev/null
q "ALTER SYSTEM RESET lava.max_attempts" >/dev/null
q "ALTER SYSTEM RESET lava.request_timeout" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
