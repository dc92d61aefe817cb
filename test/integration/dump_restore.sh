# dump_restore.sh: pg_dump + pg_restore into a new database keeps keys working
# (digests, settings, counters and ledger are dumped as extension config data).
. "$LAVA_ROOT/test/tap.sh"
plan 6
src=lava_dump_src
dst=lava_dump_dst
for db in $src $dst; do q "DROP DATABASE IF EXISTS $db" postgres >/dev/null; done
q "CREATE DATABASE $src" postgres >/dev/null
q "CREATE EXTENSION lava" $src >/dev/null
key=$(q "SELECT lava.create_spend_key('{\"name\": \"dumped\", \"spend_limit\": {\"amount\": \"3\", \"cycle\": \"monthly\"}, \"allowed_models\": [\"m1\"]}') ->> 'key'" $src)
q "SELECT lava._settle(a.spend_key_id, a.admitted_at, a.reservation, 0.25, 7, 9) FROM lava._admit('$key', 'openai', 'm1', 0.5) a" $src >/dev/null
before=$(q "SELECT lava.verify_spend_key('$key') - 'last_used_at'" $src)

"$PGBIN/pg_dump" -Fc -d $src -f "$LAVA_TEST_DIR/lava.dump" 2>"$LAVA_TEST_DIR/pg_dump.err"
ok $? "pg_dump of a database with lava"
q "CREATE DATABASE $dst" postgres >/dev/null
"$PGBIN/pg_restore" -d $dst "$LAVA_TEST_DIR/lava.dump" 2>"$LAVA_TEST_DIR/pg_restore.err"
ok $? "pg_restore into a new database"
is "$(q "SELECT lava.verify_spend_key('$key') - 'last_used_at'" $dst)" "$before" "the key verifies in the restored database, same document"
is "$(q "SELECT count(*) FROM lava.key_usage_daily" $dst)" 1 "the usage ledger came along"
is "$(q "SELECT (a).reservation FROM (SELECT lava._admit('$key', 'openai', 'm1', 0.1) a) x" $dst)" 0.1 \
	"the restored key admits requests"
is "$(q "SELECT grep FROM (SELECT count(*)::text AS grep FROM lava.spend_key_store) x" $dst)" 1 "no duplicate rows from the extension script"
for db in $src $dst; do q "DROP DATABASE $db" postgres >/dev/null; done
