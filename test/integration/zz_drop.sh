# zz_drop.sh (runs last): the worker blocks neither DROP EXTENSION nor DROP
# DATABASE of lava.database, and picks the database up again once it is back.
. "$LAVA_ROOT/test/tap.sh"
plan 4

psql -X -qAt -d lava_it -c "SET statement_timeout = '20s'" -c "DROP EXTENSION lava CASCADE" >/dev/null 2>&1
ok $? "DROP EXTENSION lava is not blocked by the worker"
psql -X -qAt -d postgres -c "SET statement_timeout = '20s'" -c "DROP DATABASE lava_it" >/dev/null 2>&1
ok $? "DROP DATABASE of lava.database is not blocked by the worker"
q "CREATE DATABASE lava_it" postgres >/dev/null
q "CREATE EXTENSION lava" lava_it >/dev/null
for i in $(seq 1 150); do
	[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava worker' AND datname = 'lava_it'" postgres)" = 1 ] && break
	sleep 0.1
done
is "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lava worker' AND datname = 'lava_it'" postgres)" 1 \
	"the worker reconnects once the database is back"
is "$(q "SELECT running FROM lava.worker_status" lava_it)" t "and reports itself running"
