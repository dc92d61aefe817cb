#!/usr/bin/env bash
# test/demo.sh: what `make demo` runs after building and installing: a
# throwaway cluster with lava preloaded and the mock upstream, and a readable
# walkthrough of the product.  Everything it starts is stopped at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
export LAVA_ROOT=$PWD
. test/lib.sh

WORK=$(mktemp -d /tmp/lava-demo.XXXXXX)
PORT=$(free_port)
MOCK_PORT=$(free_port)
export PGHOST=$WORK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
cleanup() {
	mock_stop "$WORK"
	cluster_stop "$WORK"
	rm -rf "$WORK"
}
trap cleanup EXIT

bold=$(tput bold 2>/dev/null || true)
plain=$(tput sgr0 2>/dev/null || true)
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
# sql TEXT: shows a statement, then runs it with readable output
sql() {
	printf '%s\n' "$1" | sed 's/^/  sql> /'
	psql -X -q -v ON_ERROR_STOP=0 -P pager=off -P null='(null)' -c "$1" 2>&1 | sed 's/^/       /' || true
}
val() { psql -X -qAt -c "$1"; }

step "starting a throwaway PostgreSQL 15 cluster (lava preloaded) and the mock upstream"
cluster_start "$WORK" "$PORT" "lava.database = 'postgres'"
mock_start "$WORK" "$MOCK_PORT"
echo "cluster on port $PORT, mock upstream on 127.0.0.1:$MOCK_PORT"
sql "CREATE EXTENSION lava;"

# the upstream: the mock on 127.0.0.1, or a real provider when its key is in the environment
if [ -n "${OPENAI_API_KEY:-}" ]; then
	PROVIDER="('openai', 'https://api.openai.com/v1', '$OPENAI_API_KEY', 'openai')"
	MODEL=gpt-4o-mini; PRICES="0.15, 0.60"; OTHER=gpt-4o
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
	PROVIDER="('anthropic', 'https://api.anthropic.com/v1', '$ANTHROPIC_API_KEY', 'anthropic')"
	MODEL=claude-3-5-haiku-latest; PRICES="0.80, 4.00"; OTHER=claude-3-opus-latest
else
	PROVIDER="('mock', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-mock', 'openai')"
	MODEL=gpt-4o-mini; PRICES="0.15, 0.60"; OTHER=gpt-4o
fi
PNAME=$(echo "$PROVIDER" | sed -E "s/^\('([^']+)'.*/\1/")

step "1. a provider and its models (prices in USD per million tokens)"
psql -X -q -c "INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES $PROVIDER" \
	-c "INSERT INTO lava.models VALUES ('$PNAME', '$MODEL', $PRICES, 256), ('$PNAME', '$OTHER', 2.50, 10.00, 256)"
sql "SELECT name, base_url, request_shape, enabled FROM lava.providers;"
sql "SELECT * FROM lava.models;"

step "2. create a spend key: 2 cents a day, one model, 30 requests a minute with a burst of 2"
key_doc=$(val "SELECT lava.create_spend_key('{\"name\": \"demo agent\", \"allowed_models\": [\"$MODEL\"], \"spend_limit\": {\"amount\": \"0.02\", \"cycle\": \"daily\"}, \"request_limit\": {\"count\": 100, \"cycle\": \"daily\"}, \"rate_limit\": {\"rpm\": 30, \"burst\": 2}}')")
KEY=$(echo "$key_doc" | sed -E 's/.*"key": "([^"]+)".*/\1/')
ID=$(echo "$key_doc" | sed -E 's/.*"spend_key_id": "([^"]+)".*/\1/')
echo "  the plaintext key is shown this once: $KEY"
echo "  only its SHA-256 digest is stored; id $ID"
sql "SELECT name, status, allowed_models, spend_limit, remaining_spend, rate_limit, key_preview FROM lava.spend_keys;"

step "3. use it: enqueue a prompt from SQL; the worker calls the upstream, its recorder records the answer; await the result"
REQ=$(val "SELECT lava.prompt('$MODEL', 'Say hello to the lava demo in five words.', '{\"max_tokens\": 40}', '$KEY')")
sql "SELECT status, output_text, model_usage, cost, attempts FROM lava.requests WHERE request_id = $REQ AND lava.await($REQ, '30 seconds') IS NOT NULL;"
sql "SELECT current_spend, reserved_spend, remaining_spend, current_requests, last_used_at IS NOT NULL AS used FROM lava.spend_keys;"

step "4. limits hold: a model outside the allow-list, a request whose cost bound exceeds the budget"
sql "SELECT lava.prompt('$OTHER', 'hi', '{}', '$KEY');"
sql "SELECT lava.prompt('$MODEL', 'write a novel', '{\"max_tokens\": 100000}', '$KEY');"

step "5. pacing: 4 prompts at once on a key allowing 30 per minute with a burst of 2"
val "SELECT lava.prompt('$MODEL', 'count ' || g, '{\"max_tokens\": 5}', '$KEY') FROM generate_series(1, 4) g" >/dev/null
val "SELECT lava.await(max(request_id), '30 seconds') FROM lava.request_store" >/dev/null
sql "SELECT request_id, status, round(extract(epoch FROM started_at - min(started_at) OVER ())::numeric, 2) AS seconds_after_first FROM lava.requests WHERE request_id > $REQ ORDER BY request_id;"

step "6. usage per UTC day"
sql "SELECT jsonb_pretty(lava.spend_key_usage('$ID', now() - interval '1 day'));"

step "7. update: lift the request limit (null clears), pause and resume"
sql "SELECT lava.update_spend_key('$ID', '{\"request_limit\": null}') ->> 'request_limit' AS request_limit;"
sql "SELECT lava.update_spend_key('$ID', '{\"status\": \"paused\"}') ->> 'status' AS status;"
sql "SELECT lava.verify_spend_key('$KEY');"
sql "SELECT lava.update_spend_key('$ID', '{\"status\": \"active\"}') ->> 'status' AS status;"
sql "SELECT lava.verify_spend_key('$KEY') ->> 'status' AS status;"

step "8. rotate: same key id, new value; the old value is refused"
NEW=$(val "SELECT lava.rotate_spend_key('$ID') ->> 'key'")
echo "  new key: $NEW"
sql "SELECT lava.verify_spend_key('$KEY');"
sql "SELECT lava.verify_spend_key('$NEW') ->> 'key_preview' AS works;"

step "9. revoke: permanent"
sql "SELECT lava.revoke_spend_key('$ID');"
sql "SELECT lava.verify_spend_key('$NEW');"
sql "SELECT lava.get_spend_key('$ID');"
sql "SELECT count(*) AS keys_listed FROM lava.spend_keys;"
sql "SELECT running, queued, in_flight, completed, failed FROM lava.worker_status;"
sql "SELECT backend_type, datname, state FROM pg_stat_activity WHERE backend_type LIKE 'lava%' ORDER BY 1;"

step "done: stopping the cluster and the mock upstream"
