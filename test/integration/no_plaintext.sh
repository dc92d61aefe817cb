# no_plaintext.sh: a plaintext spend key reaches no table and no log line,
# even when calls made with it fail (the server logs failing statements).
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_secrets
plan 5
q "DROP DATABASE IF EXISTS $TEST_DB" postgres >/dev/null
q "CREATE DATABASE $TEST_DB" postgres >/dev/null
q "CREATE EXTENSION lava" >/dev/null
doc=$(q "SELECT lava.create_spend_key('{\"name\": \"secret\", \"request_limit\": {\"count\": 1, \"cycle\": \"total\"}, \"allowed_models\": [\"ok\"]}')")
key=$(echo "$doc" | sed -E 's/.*"key": "([^"]+)".*/\1/')
id=$(q "SELECT spend_key_id FROM lava.spend_keys")
[ ${#key} -eq 51 ]; ok $? "got a plaintext key"
# failing calls that carry the key: model refused, limit reached, paused, revoked
psql -X -q -d $TEST_DB -c "SELECT lava._admit('$key', 'openai', 'nope', 0)" >/dev/null 2>&1
psql -X -q -d $TEST_DB -c "SELECT lava._admit('$key', 'openai', 'ok', 0)" >/dev/null 2>&1
psql -X -q -d $TEST_DB -c "SELECT lava._admit('$key', 'openai', 'ok', 0)" >/dev/null 2>&1
q "SELECT lava.update_spend_key('$id', '{\"status\": \"paused\"}')" >/dev/null
psql -X -q -d $TEST_DB -c "SELECT lava.verify_spend_key('$key')" >/dev/null 2>&1
q "SELECT lava.revoke_spend_key('$id')" >/dev/null
psql -X -q -d $TEST_DB -c "SELECT lava.verify_spend_key('$key')" >/dev/null 2>&1
# the failures were logged ...
grep -q "request limit reached" "$LAVA_TEST_DIR/server.log"; ok $? "the refusals reached the server log"
# ... without the statements that carried the key
! grep -q "$key" "$LAVA_TEST_DIR/server.log"; ok $? "the plaintext key is in no log line"
"$PGBIN/pg_dump" -d $TEST_DB --data-only -f "$LAVA_TEST_DIR/secrets.sql"
! grep -q "$key" "$LAVA_TEST_DIR/secrets.sql"; ok $? "the plaintext key is in no table (pg_dump --data-only)"
grep -q "$(echo -n "$key" | sha256sum | cut -c1-64)" "$LAVA_TEST_DIR/secrets.sql"; ok $? "only its SHA-256 digest is stored"
q "DROP DATABASE $TEST_DB" postgres >/dev/null
