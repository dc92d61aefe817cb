# worker_happy.sh: prompts through the worker to the mock upstream over real
# HTTP, both shapes: results, exact costs, headers, cap injection, NOTIFY,
# await, pg_stat_activity, worker_status, usage.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 23

q "INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES
	('happy_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-test-oa', 'openai'),
	('happy_an', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-test-an', 'anthropic') ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('happy_oa', 'gpt-happy', 0.5, 1.5, 100), ('happy_an', 'claude-happy', 3, 15, 200) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"happy\", \"spend_limit\": {\"amount\": \"1.00\", \"cycle\": \"daily\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")
free=$(q "SELECT lava.create_spend_key('{\"name\": \"happy free\"}') ->> 'key'")
curl -fsS -X POST "http://127.0.0.1:$MOCK_PORT/_reset" >/dev/null

# OpenAI shape
id=$(q "SELECT lava.prompt('gpt-happy', 'hello #in=1000 #out=50 #text=hi-there #id=h1', '{}', '$key')")
doc=$(q "SELECT lava.await($id, '20 seconds')")
is "$(q "SELECT '$doc'::jsonb ->> 'status'")" completed "openai prompt completed"
is "$(q "SELECT '$doc'::jsonb ->> 'http_status'")" 200 "http_status 200"
is "$(q "SELECT '$doc'::jsonb ->> 'output_text'")" hi-there "output_text extracted"
is "$(q "SELECT '$doc'::jsonb -> 'model_usage' = '{\"input_cost\": \"0.0005\", \"total_cost\": \"0.000575\", \"input_tokens\": 1000,
	\"output_cost\": \"0.000075\", \"total_tokens\": 1050, \"output_tokens\": 50}'::jsonb")" t \
	"model_usage: tokens and exact costs (1000 x 0.5 + 50 x 1.5 per million)"
is "$(q "SELECT '$doc'::jsonb ->> 'cost'")" 0.000575 "cost"
is "$(q "SELECT '$doc'::jsonb ->> 'attempts'")" 1 "one attempt"
is "$(q "SELECT lava.get_spend_key('$kid') ->> 'current_spend' || ' ' || (lava.get_spend_key('$kid') ->> 'reserved_spend')")" "0.000575 0.00" \
	"the key is charged the exact cost, its reservation released"
seen=$(mock_log "'#id=h1' in json.dumps(r['body'])")
is "$(echo "$seen" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["headers"]["authorization"], r["path"], r["body"]["max_completion_tokens"])')" \
	"Bearer sk-test-oa /v1/chat/completions 100" "upstream got Authorization: Bearer, the openai path and the injected cap"

# Anthropic shape
id2=$(q "SELECT lava.prompt('claude-happy', 'hi #in=10 #out=20 #text=bonjour #id=h2', '{\"system\": \"sys\"}', '$key')")
doc2=$(q "SELECT lava.await($id2, '20 seconds')")
is "$(q "SELECT '$doc2'::jsonb ->> 'status'")" completed "anthropic prompt completed"
is "$(q "SELECT '$doc2'::jsonb ->> 'output_text'")" bonjour "anthropic output_text"
is "$(q "SELECT '$doc2'::jsonb ->> 'cost'")" 0.00033 "anthropic cost (10 x 3 + 20 x 15 per million)"
seen2=$(mock_log "'#id=h2' in json.dumps(r['body'])")
is "$(echo "$seen2" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; h=r["headers"]; print(h["x-api-key"], h["anthropic-version"], "authorization" in h, r["path"], r["body"]["max_tokens"], r["body"]["system"])')" \
	"sk-test-an 2023-06-01 False /v1/messages 200 sys" "upstream got x-api-key, anthropic-version, no Bearer, /messages, the cap and the system prompt"

# NOTIFY lava_requests at the terminal state, seen by a listener
out=$(psql -X -d $TEST_DB -c "LISTEN lava_requests" -c "SELECT lava.prompt('gpt-happy', 'notify me', '{}', '$key') AS id" \
	-c "SELECT pg_sleep(0.5); SELECT lava.await(max(request_id), '20 seconds') ->> 'status' FROM lava.request_store" \
	-c "SELECT 1" 2>&1)
echo "$out" | grep -q 'Asynchronous notification "lava_requests" with payload "{"status": "completed", "request_id": '; ok $? "NOTIFY lava_requests carries {request_id, status}"
! echo "$out" | grep -q 'lava_sk_'; ok $? "the payload carries no key"

# chat with the full body, and call to a passthrough endpoint
id3=$(q "SELECT lava.chat('{\"model\": \"gpt-happy\", \"messages\": [{\"role\": \"user\", \"content\": \"#out=7\"}], \"max_tokens\": 9}', '$key')")
is "$(q "SELECT lava.await($id3, '20 seconds') #>> '{model_usage,output_tokens}'")" 7 "chat completes"
id4=$(q "SELECT lava.call('happy_oa', '/status/check', NULL, 'GET', '$free')")
is "$(q "SELECT (lava.await($id4, '20 seconds') -> 'response') ->> 'path'")" "/v1/status/check" "call reaches any endpoint (GET)"

# await times out on a slow request and returns it as it stands
id5=$(q "SELECT lava.prompt('gpt-happy', '#latency_ms=3000', '{}', '$key')")
is "$(q "SELECT lava.await($id5, '200 milliseconds') ->> 'status'")" running "await returns the request as it stands at the timeout"
is "$(q "SELECT lava.await($id5, '20 seconds') ->> 'status'")" completed "and later completes"

# the worker is visible and counts
is "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava worker' AND datname = 'lava_it'")" 1 \
	"the worker shows in pg_stat_activity"
# (sampled until idle: a sample can catch it busy, e.g. in an I/O wait)
for i in $(seq 1 50); do
	we=$(q "SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'lava worker'")
	[ "$we" = Extension ] && break
	sleep 0.1
done
is "$we" Extension "it waits on an Extension wait event"
is "$(q "SELECT running AND completed >= 5 AND pid > 0 FROM lava.worker_status")" t "lava.worker_status: running, with completions"
is "$(q "SELECT (lava.spend_key_usage('$kid', now() - interval '1 hour') #>> '{totals,total_requests}')")" 5 "usage counts the key's 5 requests"
is "$(q "SELECT k.total_spend = (SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id)
		 FROM lava.spend_key_store k WHERE spend_key_id = '$kid'")" t "key total = sum of request costs"
