#!/usr/bin/env bash
# test/run-tests.sh: what `make test` runs after building and installing.
# Starts a throwaway cluster (lava preloaded) and the mock upstream, runs
# every suite (pg_regress, pgTAP via pg_prove, isolation specs, shell
# integration tests via prove), stops everything it started, and exits
# non-zero when any suite fails.
set -uo pipefail

cd "$(dirname "$0")/.."
export LAVA_ROOT=$PWD
. test/lib.sh

WORK=$(mktemp -d /tmp/lava-test.XXXXXX)
PORT=$(free_port)
MOCK_PORT=$(free_port)
export LAVA_TEST_DIR=$WORK PGHOST=$WORK PGPORT=$PORT PGUSER=postgres MOCK_PORT PGBIN

cleanup() {
	mock_stop "$WORK"
	cluster_stop "$WORK"
	if [ "${KEEP_TEST_DIR:-0}" = 1 ]; then echo "test files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting a throwaway cluster on port $PORT and the mock upstream on $MOCK_PORT"
cluster_start "$WORK" "$PORT" "lava.database = 'lava_it'" || exit 1
mock_start "$WORK" "$MOCK_PORT" || exit 1
# the database the worker serves (lava.database) for the integration tests
psql -X -q -d postgres -c "CREATE DATABASE lava_it" && psql -X -q -d lava_it -c "CREATE EXTENSION lava" || exit 1

passed=0
failed=0
failed_names=()
suite() {
	local name=$1
	shift
	echo
	echo "== $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failed_names+=("$name")
	fi
}

regress_tests=$(ls sql/*.sql | grep -v -- '--' | xargs -n1 basename | sed 's/\.sql$//' | sort)
suite "pg_regress" "$PGXS_DIR/src/test/regress/pg_regress" --inputdir=. --outputdir=. \
	--bindir="$PGBIN" --host="$PGHOST" --port="$PGPORT" --user=postgres \
	--dbname=contrib_regression $regress_tests

tap_suite() {
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS lava_tap" -c "CREATE DATABASE lava_tap" &&
		psql -X -q -d lava_tap -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION lava" &&
		pg_prove -d lava_tap test/pgtap/*.sql
}
suite "pgTAP (pg_prove)" tap_suite

iso_suite() {
	local specs
	specs=$(ls test/isolation/specs/*.spec | xargs -n1 basename | sed 's/\.spec$//' | sort)
	"$PGXS_DIR/src/test/isolation/pg_isolation_regress" --inputdir=test/isolation \
		--outputdir=test/isolation/output_iso --bindir="$PGBIN" --host="$PGHOST" --port="$PGPORT" \
		--user=postgres --dbname=lava_isolation --load-extension=lava $specs
}
suite "isolation" iso_suite

suite "integration (prove)" prove -e bash test/integration/*.sh

echo
for f in regression.diffs test/isolation/output_iso/regression.diffs; do
	if [ -s "$f" ]; then echo "== $f"; head -200 "$f"; fi
done
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ] || { echo "failed: ${failed_names[*]}"; exit 1; }
