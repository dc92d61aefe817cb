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

step "1. create a spend key: \$1.00 a day, 3 requests a day, one model"
key_doc=$(val "SELECT lava.create_spend_key('{\"name\": \"demo agent\", \"allowed_models\": [\"gpt-4o-mini\"], \"spend_limit\": {\"amount\": \"1.00\", \"cycle\": \"daily\"}, \"request_limit\": {\"count\": 3, \"cycle\": \"daily\"}, \"rate_limit\": {\"rpm\": 60, \"burst\": 5}}')")
KEY=$(echo "$key_doc" | sed -E 's/.*"key": "([^"]+)".*/\1/')
ID=$(echo "$key_doc" | sed -E 's/.*"spend_key_id": "([^"]+)".*/\1/')
echo "  the plaintext key is shown this once: $KEY"
echo "  only its SHA-256 digest is stored; id $ID"

step "2. show it"
sql "SELECT name, status, allowed_models, spend_limit, remaining_spend, request_limit, rate_limit, key_preview FROM lava.spend_keys;"

step "3. use it: the admission core reserves an upper bound, settlement charges the actual cost"
sql "SELECT lava._settle(a.spend_key_id, a.admitted_at, a.reservation, 0.12, 1200, 300) FROM lava._admit('$KEY', 'openai', 'gpt-4o-mini', 0.40) a;"
sql "SELECT current_spend, reserved_spend, remaining_spend, current_requests FROM lava.spend_keys;"

step "4. limits hold: a model outside the allow-list, a reservation over budget, the 4th request"
sql "SELECT lava._admit('$KEY', 'openai', 'gpt-4o', 0.01);"
sql "SELECT lava._admit('$KEY', 'openai', 'gpt-4o-mini', 0.95);"
sql "SELECT (lava._admit('$KEY', 'openai', 'gpt-4o-mini', 0.01)).reservation; SELECT (lava._admit('$KEY', 'openai', 'gpt-4o-mini', 0.01)).reservation;"
sql "SELECT lava._admit('$KEY', 'openai', 'gpt-4o-mini', 0.01);"

step "5. update: lift the request limit (null clears), pause and resume"
sql "SELECT lava.update_spend_key('$ID', '{\"request_limit\": null}') ->> 'request_limit' AS request_limit;"
sql "SELECT lava.update_spend_key('$ID', '{\"status\": \"paused\"}') ->> 'status' AS status;"
sql "SELECT lava.verify_spend_key('$KEY');"
sql "SELECT lava.update_spend_key('$ID', '{\"status\": \"active\"}') ->> 'status' AS status;"
sql "SELECT lava.verify_spend_key('$KEY') ->> 'status' AS status;"

step "6. rotate: same key id, new value; the old value is refused"
NEW=$(val "SELECT lava.rotate_spend_key('$ID') ->> 'key'")
echo "  new key: $NEW"
sql "SELECT lava.verify_spend_key('$KEY');"
sql "SELECT lava.verify_spend_key('$NEW') ->> 'key_preview' AS works;"

step "7. revoke: permanent"
sql "SELECT lava.revoke_spend_key('$ID');"
sql "SELECT lava.verify_spend_key('$NEW');"
sql "SELECT lava.get_spend_key('$ID');"
sql "SELECT count(*) AS keys_listed FROM lava.spend_keys;"

step "done: stopping the cluster and the mock upstream"
