# test/tap.sh: a tiny TAP producer for the shell integration tests, run by prove.
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
