# pgbench_race.sh: 16 pgbench clients race one key.  The admitted (settled)
# spend never exceeds the spend_limit, reaches nearly all of it, and the key's
# counters equal the ledger; with a request_limit of 500 over 1,000 tries,
# exactly 500 are admitted.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_pgbench
plan 8

q "DROP DATABASE IF EXISTS $TEST_DB" postgres >/dev/null
q "CREATE DATABASE $TEST_DB" postgres >/dev/null
q "CREATE EXTENSION lava" >/dev/null
# admit with a random reservation of 0.01..0.05 and settle at 50-100% of it;
# a refusal (53400) is counted, not fatal to the pgbench client
psql -X -q -v ON_ERROR_STOP=1 -d $TEST_DB <<'SQL'
CREATE TABLE refusals (n int);
CREATE FUNCTION race_spend(k text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	a lava.admission;
	r numeric := round((0.01 + random() * 0.04)::numeric, 4);
BEGIN
	a := lava._admit(k, 'openai', 'gpt-race', r);
	PERFORM lava._settle(a.spend_key_id, a.admitted_at, a.reservation, round(r * (0.5 + random() / 2)::numeric, 6), 10, 10);
	RETURN true;
EXCEPTION WHEN SQLSTATE '53400' THEN
	INSERT INTO refusals VALUES (1);
	RETURN false;
END $$;
CREATE FUNCTION race_count(k text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	a lava.admission;
BEGIN
	a := lava._admit(k, 'openai', 'gpt-race', 0);
	PERFORM lava._settle(a.spend_key_id, a.admitted_at, a.reservation, NULL);
	RETURN true;
EXCEPTION WHEN SQLSTATE '53400' THEN
	RETURN false;
END $$;
SQL

spend_key=$(q "SELECT lava.create_spend_key('{\"name\": \"race\", \"spend_limit\": {\"amount\": \"2.00\", \"cycle\": \"total\"}}') ->> 'key'")
count_key=$(q "SELECT lava.create_spend_key('{\"name\": \"count\", \"request_limit\": {\"count\": 500, \"cycle\": \"total\"}}') ->> 'key'")

echo "SELECT race_spend(:k);" >"$LAVA_TEST_DIR/race_spend.sql"
echo "SELECT race_count(:k);" >"$LAVA_TEST_DIR/race_count.sql"
"$PGBIN/pgbench" -n -M prepared -c 16 -j 2 -t 100 -D k="$spend_key" -f "$LAVA_TEST_DIR/race_spend.sql" $TEST_DB >"$LAVA_TEST_DIR/pgbench1.log" 2>&1
ok $? "pgbench: 16 clients x 100 admissions on one spend-limited key"
spent=$(q "SELECT total_spend FROM lava.spend_key_store WHERE name = 'race'")
diag "settled spend $spent of 2.00 after $(q 'SELECT count(*) FROM refusals') refusals"
is "$(q "SELECT total_spend <= 2.00 FROM lava.spend_key_store WHERE name = 'race'")" t "settled spend never exceeds the limit"
is "$(q "SELECT total_spend >= 1.90 FROM lava.spend_key_store WHERE name = 'race'")" t "and reaches at least 95% of it"
is "$(q "SELECT (k.total_spend = k.period_spend AND k.total_spend = d.cost AND k.total_requests = d.requests AND k.reserved_spend = 0)::text
		 FROM lava.spend_key_store k JOIN (SELECT spend_key_id, sum(cost) AS cost, sum(requests) AS requests FROM lava.key_usage_daily GROUP BY 1) d USING (spend_key_id) WHERE k.name = 'race'")" true \
	"key counters equal the daily ledger, nothing left reserved"
is "$(q "SELECT count(*) > 0 FROM refusals")" t "the limit refused the rest"

echo "SELECT race_count(:k);" >"$LAVA_TEST_DIR/race_count.sql"
"$PGBIN/pgbench" -n -M prepared -c 16 -j 2 -t 63 -D k="$count_key" -f "$LAVA_TEST_DIR/race_count.sql" $TEST_DB >"$LAVA_TEST_DIR/pgbench2.log" 2>&1
ok $? "pgbench: 16 clients x 63 tries (1,008) on a key with request_limit 500"
is "$(q "SELECT total_requests FROM lava.spend_key_store WHERE name = 'count'")" 500 "exactly 500 admitted"
is "$(q "SELECT sum(d.requests) FROM lava.key_usage_daily d JOIN lava.spend_key_store k USING (spend_key_id) WHERE k.name = 'count'")" 500 \
	"the ledger agrees"

q "DROP DATABASE $TEST_DB" postgres >/dev/null
