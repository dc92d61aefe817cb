# test/tap.sh: a tiny TAP producer for the shell integration tests, run by prove.
. "$LAVA_ROOT/test/lib.sh"
# Source it, call plan N (or done_testing at the end), then ok/is/like.

_tap_n=0
_tap_failed=0

plan() { echo "1..$1"; }

# ok COND_EXIT_STATUS DESCRIPTION: `ok $? "..."` or `[ ... ]; ok $? "..."`.
ok() {
	_tap_n=$((_tap_n + 1))
	if [ "$1" -eq 0 ]; then
		echo "ok $_tap_n - $2"
	else
		echo "not ok $_tap_n - $2"
		_tap_failed=$((_tap_failed + 1))
	fi
}

# is GOT EXPECTED DESCRIPTION
is() {
	_tap_n=$((_tap_n + 1))
	if [ "$1" = "$2" ]; then
		echo "ok $_tap_n - $3"
	else
		echo "not ok $_tap_n - $3"
		echo "#   got:      '$1'"
		echo "#   expected: '$2'"
		_tap_failed=$((_tap_failed + 1))
	fi
}

# diag TEXT: a comment line in the TAP stream.
diag() { echo "# $*"; }

done_testing() {
	echo "1..$_tap_n"
	[ "$_tap_failed" -eq 0 ]
}

# q SQL [DB]: one value from psql, unaligned, no headers.
q() { psql -X -v ON_ERROR_STOP=1 -qAt -d "${2:-${TEST_DB:-postgres}}" -c "$1"; }

# mock_log FILTER_PY: the mock upstream's log entries (a JSON list) matching
# a Python expression over `r` (one logged request), e.g. "'#id=x' in
# str(r['body'])".  The mock is the one at MOCK_URL (default: the plain one
# on MOCK_PORT), verified against MOCK_CACERT when that is set.
mock_log() {
	curl -fsS ${MOCK_CACERT:+--cacert "$MOCK_CACERT"} "${MOCK_URL:-http://127.0.0.1:$MOCK_PORT}/_log" | /usr/bin/python3 -c "
import json, sys
rs = json.load(sys.stdin)['requests']
print(json.dumps([r for r in rs if ($1)]))"
}

# await_all: waits (60 s at most) until every request is terminal, then (10 s
# at most) until no settlement is deferred; fails if either does not come
await_all() {
	local i
	for i in $(seq 1 600); do
		if [ "$(q "SELECT count(*) FROM lava.request_store WHERE status IN ('queued', 'running')")" = 0 ]; then
			wait_settled
			return
		fi
		sleep 0.1
	done
	return 1
}

# wait_settled [KID]: waits (10 s at most) until no settlement (of the key
# KID, else of any key) is deferred: lava.deferred_settlements is empty
wait_settled() {
	local i cond=true
	[ -n "$1" ] && cond="spend_key_id = '$1'"
	for i in $(seq 1 100); do
		[ "$(q "SELECT count(*) FROM lava.deferred_settlements WHERE $cond")" = 0 ] && return 0
		sleep 0.1
	done
	return 1
}

# backend_pid TYPE: the pid of the newest lava background process of TYPE
# ('lava worker', 'lava recorder'), once it has named itself (it is then ready).
backend_pid() {
	q "SELECT pid FROM pg_stat_activity WHERE backend_type = '$1' AND application_name = '$1'
	   ORDER BY backend_start DESC LIMIT 1" postgres 2>/dev/null
}

# wait_backend TYPE [NOT_PID [SECONDS]]: prints the pid of a process of TYPE
# other than NOT_PID, waiting SECONDS (15) at most.
wait_backend() {
	local i p
	for i in $(seq 1 $((${3:-15} * 10))); do
		p=$(backend_pid "$1")
		[ -n "$p" ] && [ "$p" != "$2" ] && { echo "$p"; return 0; }
		sleep 0.1
	done
	return 1
}

# wait_server [SECONDS [DB]]: waits SECONDS (30) at most until the server
# accepts connections to DB (postgres) again, after a crash or a restart.
wait_server() {
	local i
	for i in $(seq 1 $((${1:-30} * 10))); do
		psql -X -qAt -d "${2:-postgres}" -c "SELECT 1" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# wait_no_backend TYPE: waits (15 s at most) until no process of TYPE runs
wait_no_backend() {
	local i
	for i in $(seq 1 150); do
		[ -z "$(backend_pid "$1")" ] && return 0
		sleep 0.1
	done
	return 1
}

# count_status IDS STATUS: how many of the requests IDS (a SQL list) have STATUS
count_status() { q "SELECT count(*) FILTER (WHERE status = '$2') FROM lava.request_store WHERE request_id IN ($1)"; }
# wait_status IDS STATUS N: waits (20 s at most) until N of IDS have STATUS
wait_status() {
	local i
	for i in $(seq 1 200); do
		[ "$(count_status "$1" "$2")" = "$3" ] && return 0
		sleep 0.1
	done
	return 1
}

# mock_count TAG: how many requests the mock upstream received with TAG in their body
mock_count() { mock_log "'$1' in json.dumps(r['body'])" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }

# wait_answered TAG N: waits (10 s at most) until the mock answered N prompts carrying TAG
wait_answered() {
	local i
	for i in $(seq 1 100); do
		[ "$(mock_count "$1")" = "$2" ] && return 0
		sleep 0.1
	done
	return 1
}

# wait_handed: waits (10 s at most) until the worker has no call in flight:
# it has taken every answer and handed it over (in the same loop turn)
wait_handed() {
	local i
	for i in $(seq 1 100); do
		[ "$(q "SELECT in_flight FROM lava.worker_status")" = 0 ] && return 0
		sleep 0.1
	done
	return 1
}

# mock_key NAME: a provider NAME_oa on the mock upstream, its model gpt-NAME
# (1 and 1 per million tokens, at most 10 out), and a spend key NAME with a
# total spend limit of 100; sets key (the plaintext) and kid (its id)
mock_key() {
	q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('$1_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-$1') ON CONFLICT DO NOTHING" >/dev/null
	q "INSERT INTO lava.models VALUES ('$1_oa', 'gpt-$1', 1, 1, 10) ON CONFLICT DO NOTHING" >/dev/null
	created=$(q "SELECT lava.create_spend_key('{\"name\": \"$1\", \"spend_limit\": {\"amount\": \"100\", \"cycle\": \"total\"}}')")
	key=$(q "SELECT '$created'::jsonb ->> 'key'")
	kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")
}

# key_balanced KID: t when the key's total_spend equals both the sum of its
# requests' costs and its daily ledger, and nothing is left reserved, once
# no settlement of the key is deferred
key_balanced() {
	wait_settled "$1"
	q "SELECT k.total_spend = COALESCE((SELECT sum(cost) FROM lava.request_store r WHERE r.spend_key_id = k.spend_key_id), 0)
	   AND k.total_spend = COALESCE((SELECT sum(cost) FROM lava.key_usage_daily d WHERE d.spend_key_id = k.spend_key_id), 0)
	   AND k.reserved_spend = 0
	   FROM lava.spend_key_store k WHERE spend_key_id = '$1'"
}

# hold_open SECONDS STATEMENT: a transaction in TEST_DB runs STATEMENT (which
# locks rows) and stays open SECONDS more, in the background (its pid in
# holder); returns once it sleeps, so holding what STATEMENT locked
hold_open() {
	local i
	psql -X -qAt -d "$TEST_DB" -c "BEGIN" -c "$2" -c "SELECT pg_sleep($1)" -c "COMMIT" >/dev/null &
	holder=$!
	for i in $(seq 1 100); do
		[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep($1)' AND state = 'active'" postgres)" = 1 ] && return 0
		sleep 0.05
	done
	echo "# hold_open: the transaction did not start" >&2
	return 1
}

# server_set NAME [VALUE]: ALTER SYSTEM SET NAME = VALUE (RESET without a
# VALUE) and reload, from a session that is never read-only
server_set() {
	local stmt="ALTER SYSTEM RESET $1"
	[ $# -gt 1 ] && stmt="ALTER SYSTEM SET $1 = $2"
	psql -X -qAt -v ON_ERROR_STOP=1 -d postgres -c "SET default_transaction_read_only = off" -c "$stmt" >/dev/null &&
		q "SELECT pg_reload_conf()" postgres >/dev/null
}
