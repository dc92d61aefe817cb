#!/usr/bin/env bash
# test/bench/run.sh: what `make bench` runs after building and installing.
# Runs the benchmarks named in BENCH (a comma list; default: all of
# drain,enqueue,latency,slow,memory,scale,https), each on its own throwaway cluster
# and upstream, and prints one table of every figure, each measured in this
# run against a baseline measured in this run:
#   metric | lava | baseline | ratio | target | met?
# It does not assert the targets: it exits non-zero only when a bench could
# not run.  Each bench script can also be run alone (bash test/bench/NAME.sh).
#
# Knobs (environment; the defaults are the issue's sizes):
#   drain    DRAIN_N 20000, DRAIN_CONCURRENCY 256 (also scale's), DRAIN_LOW_CONCURRENCY 64 (0: skip),
#            DRAIN_KEYS 1000,
#            WRK_SECONDS 5, DRAIN_TIMEOUT 600
#   enqueue  ENQUEUE_SECONDS 10 (split into ENQUEUE_ROUNDS 2 alternating rounds), ENQUEUE_CLIENTS 8,
#            ENQUEUE_KEYS 1000
#   latency  LATENCY_N 1000
#   slow     SLOW_N 5000, SLOW_CONCURRENCY 512, SLOW_DELAY 1, HOL_SLOW 2000, HOL_FAST 20
#   memory   MEMORY_N 10000, MEMORY_DELAY 10
#   scale    SCALE_SECONDS 10, SCALE_KEYS 1000000, SCALE_ROWS 1000000,
#            SCALE_DRAIN_N 20000, SCALE_PARTS enqueue,dequeue
#   https    HTTPS_N 20000, HTTPS_CONCURRENCY 256, HTTPS_DELAY 10, HTTPS_H2_MEMORY 512,10000,
#            HTTPS_H1_MEMORY 512
#   all      KEEP_BENCH_DIR=1 keeps each bench's temp dir (server log, nginx.conf);
#            BENCH_PROFILE=1 adds pg_stat_statements, per-function times and the
#            auto_explain plans of statements over BENCH_EXPLAIN_MS (20) to each
#            bench's output (and slows lava down); BENCH_PERF=1 records the
#            worker with perf during the drain and prints its top symbols.
. "$(dirname "$0")/lib.sh"

ALL=drain,enqueue,latency,slow,memory,scale,https
export BENCH_RESULTS=$WORK/results.tsv
: >"$BENCH_RESULTS"

IFS=, read -r -a names <<<"${BENCH:-$ALL}"
for n in "${names[@]}"; do
	[ -f "$BENCH_DIR/$n.sh" ] && [[ ",$ALL," == *",$n,"* ]] || die "unknown bench '$n' (known: $ALL)"
done
need_tools

rev=$(git -C "$LAVA_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
dirty=$(git -C "$LAVA_ROOT" status --porcelain -- src sql 2>/dev/null | wc -l)
echo "lava bench: ${names[*]}"
echo "  commit $rev$([ "$dirty" -gt 0 ] && echo " (+ $dirty uncommitted files in src/ sql/)"), $(nproc) cores," \
	"$("$PGBIN/postgres" --version), nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
echo "  load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if awk '{ exit !($1 > 1.0) }' /proc/loadavg; then
	echo "  warning: the machine is busy with other work; on $(nproc) cores the figures will be noisy"
fi

start=$(now_s)
failed=()
for n in "${names[@]}"; do
	if ! bash "$BENCH_DIR/$n.sh"; then
		failed+=("$n")
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n: the bench failed to run" "-" "-" "-" "-" "FAILED" >>"$BENCH_RESULTS"
	fi
done

echo
echo "== lava bench results ($(printf '%.0f' "$(calc "$(now_s) - $start")") s; load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
print_table "$BENCH_RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
	echo "benches that failed to run: ${failed[*]}" >&2
	exit 1
fi
