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

# mock_log_count FILTER_PY: number of mock upstream log entries matching a
# Python expression over `r` (one logged request), e.g. "'#id=x' in str(r['body'])".
mock_log() {
	curl -fsS "http://127.0.0.1:$MOCK_PORT/_log" | /usr/bin/python3 -c "
import json, sys
rs = json.load(sys.stdin)['requests']
print(json.dumps([r for r in rs if ($1)]))"
}

# await_ids IDS...: waits (60 s at most) until every request is terminal.
await_all() {
	local i
	for i in $(seq 1 600); do
		[ "$(q "SELECT count(*) FROM lava.request_store WHERE status IN ('queued', 'running')")" = 0 ] && return 0
		sleep 0.1
	done
	return 1
}
