# zz_drop.sh (runs last): the worker blocks neither DROP EXTENSION nor DROP
# DATABASE of lava.database, survives a reload while it waits for the
# database, and picks the database up again once it is back.
. "$LAVA_ROOT/test/tap.sh"
plan 5

psql -X -qAt -d lava_it -c "SET statement_timeout = '20s'" -c "DROP EXTENSION lava CASCADE" >/dev/null 2>&1
ok $? "DROP EXTENSION lava is not blocked by the worker"
dropped_at=$(stat -c %s "$LAVA_TEST_DIR/server.log")
psql -X -qAt -d postgres -c "SET statement_timeout = '20s'" -c "DROP DATABASE lava_it" >/dev/null 2>&1
ok $? "DROP DATABASE of lava.database is not blocked by the worker"
# a reload while the worker waits for its database (it has no HTTP client
# yet); getting there takes the worker two restarts, 5 s apart
for i in $(seq 1 300); do
	wpid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lava worker' AND wait_event IS NOT NULL AND datname IS NULL" postgres)
	[ -n "$wpid" ] && tail -c +$((dropped_at + 1)) "$LAVA_TEST_DIR/server.log" | grep -q "lava worker is waiting for database \"lava_it\"" && break
	sleep 0.1
done
logsize=$(stat -c %s "$LAVA_TEST_DIR/server.log")
q "SELECT pg_reload_conf()" postgres >/dev/null
sleep 1
is "$(q "SELECT count(*) FROM pg_stat_activity WHERE pid = '${wpid:-0}'" postgres)/$(tail -c +$((logsize + 1)) "$LAVA_TEST_DIR/server.log" | grep -c 'terminated by signal')" 1/0 \
	"a reload while the worker waits for its database leaves it waiting (no crash)"
q "CREATE DATABASE lava_it" postgres >/dev/null
q "CREATE EXTENSION lava" lava_it >/dev/null
for i in $(seq 1 150); do
	[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava worker' AND datname = 'lava_it'" postgres)" = 1 ] && break
	sleep 0.1
done
is "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava worker' AND datname = 'lava_it'" postgres)" 1 \
	"the worker reconnects once the database is back"
is "$(q "SELECT running FROM lava.worker_status" lava_it)" t "and reports itself running"
