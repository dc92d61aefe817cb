# worker_faults.sh: retries with backoff and Retry-After, 4xx fail at once,
# timeouts, bodies that are not JSON or lack usage, resets mid-body, keys
# revoked after enqueue; every request ends in its documented state and the
# key's counters equal the ledger.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 24

q "ALTER SYSTEM SET lava.max_attempts = 3" >/dev/null
q "ALTER SYSTEM SET lava.request_timeout = '1s'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('fault_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-f')" >/dev/null
q "INSERT INTO lava.models VALUES ('fault_oa', 'gpt-fault', 1, 2, 50)" >/dev/null
key=$(q "SELECT lava.create_spend_key('{\"name\": \"faults\", \"spend_limit\": {\"amount\": \"5\", \"cycle\": \"daily\"}}') ->> 'key'")
curl -fsS -X POST "http://127.0.0.1:$MOCK_PORT/_reset" >/dev/null
p() { q "SELECT lava.prompt('gpt-fault', '$1', '{}', '$key')"; }
field() { q "SELECT lava.await($1, '30 seconds') ->> '$2'"; }

r500=$(p '#id=f500 #fail_times=2 #status=500 #in=3 #out=4')
r503=$(p '#id=f503 #fail_times=1 #status=503 #retry_after=2')
r400=$(p '#id=f400 #status=400')
r429=$(p '#id=f429 #status=429')
rhang=$(p '#id=fhang #hang=1')
rgarb=$(p '#id=fgarb #garbage=1')
rnousage=$(p '#id=fnousage #no_usage=1')
rreset=$(p '#id=freset #reset=1')

is "$(field $r500 status)/$(field $r500 attempts)" completed/3 "500 twice, then success: completed on attempt 3"
is "$(field $r500 cost)" 0.000011 "and charged its exact cost once (3 x 1 + 4 x 2 per million)"
is "$(mock_count '#id=f500')" 3 \
	"the upstream saw exactly 3 attempts"
is "$(field $r503 status)/$(field $r503 attempts)" completed/2 "503 with Retry-After, then success"
gap=$(mock_log "'#id=f503' in json.dumps(r['body'])" | /usr/bin/python3 -c 'import json,sys; t=[r["time"] for r in json.load(sys.stdin)]; print("%.2f" % (t[1]-t[0]))')
diag "503 retry came after ${gap}s (Retry-After: 2)"
is "$(/usr/bin/python3 -c "print(int($gap >= 1.95))")" 1 "the retry honoured Retry-After: 2"
is "$(field $r400 status)/$(field $r400 attempts)/$(field $r400 http_status)" error/1/400 "400 fails at once, no retry"
field $r400 error | grep -q "upstream answered HTTP 400: mock error 400"; ok $? "the error names the status and the provider's message"
is "$(field $r400 cost)" 0.00 "a failed request is not charged"
is "$(field $r429 status)/$(field $r429 attempts)" error/3 "429 every time: error after max_attempts"
is "$(field $rhang status)/$(field $rhang attempts)" error/3 "a hanging upstream: each attempt times out (lava.request_timeout)"
field $rhang error | grep -qi "timed out"; ok $? "the error says it timed out"
is "$(field $rgarb status)" error "a 200 whose body is not JSON is an error"
is "$(q "SELECT cost = reservation FROM lava.request_store WHERE request_id = $rgarb")" t "and is charged its reservation (the upstream did the work)"
is "$(field $rnousage status)" completed "a 200 without usage completes"
is "$(q "SELECT cost = reservation AND cost > 0 FROM lava.request_store WHERE request_id = $rnousage")" t "and is charged its reservation, never zero"
field $rnousage error | grep -q "no usage"; ok $? "with a note saying so"
is "$(field $rreset status)/$(field $rreset attempts)" error/3 "a connection reset mid-body is retried, then fails"
is "$(field $rreset cost)" 0.00 "and is not charged"

# a key revoked (or paused) after enqueue: its queued requests are cancelled at dispatch
kid=$(q "SELECT spend_key_id FROM lava.spend_key_store WHERE name = 'faults'")
both=$(psql -X -qAt -d $TEST_DB -c "BEGIN" -c "SELECT lava.prompt('gpt-fault', '#id=late1', '{}', '$key')" \
	-c "SELECT lava.update_spend_key('$kid', '{\"status\": \"paused\"}') IS NOT NULL" -c "COMMIT")
late=$(echo "$both" | sed -n 1p)
is "$(field $late status)" cancelled "a request whose key was paused before dispatch is cancelled"
field $late error | grep -q "paused"; ok $? "with an error saying why"
q "SELECT lava.update_spend_key('$kid', '{\"status\": \"active\"}')" >/dev/null
is "$(mock_log "'#id=late1' in json.dumps(r['body'])")" "[]" "and never reached the upstream"

await_all
is "$(q "SELECT reserved_spend = 0 FROM lava.spend_key_store WHERE name = 'faults'")" t "nothing is left reserved"
is "$(q "SELECT k.total_spend = (SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 AND k.total_spend = (SELECT sum(cost) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE name = 'faults'")" t "key counters = sum of request costs = the daily ledger"
is "$(q "SELECT count(*) FROM lava.request_store r JOIN lava.spend_key_store k USING (spend_key_id)
		 WHERE k.name = 'faults' AND r.status IN ('queued', 'running')")" 0 "every request is terminal"

q "ALTER SYSTEM RESET lava.max_attempts" >/dev/null
q "ALTER SYSTEM RESET lava.request_timeout" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
