# test/bench/lib.sh: helpers shared by the benchmarks in test/bench/.  Source
# it from a bench script; it sources test/lib.sh (cluster_start, free_port),
# makes the bench's temp dir, and installs a trap that stops everything the
# bench started (cluster, nginx, slow upstream, samplers), also on failure.
#
# Environment:
#   BENCH_RESULTS  file the result rows are appended to (run.sh sets it);
#                  one row: metric<TAB>lava<TAB>baseline<TAB>ratio<TAB>target<TAB>met
#   KEEP_BENCH_DIR=1  keep the temp dir (cluster log, nginx.conf, samples)

set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAVA_ROOT=${LAVA_ROOT:-$(cd "$BENCH_DIR/../.." && pwd)}
. "$LAVA_ROOT/test/lib.sh"
PY=/usr/bin/python3
BENCH_DB=lava_bench
export PGUSER=postgres

# The cluster runs as postgres, whose soft limit on open files may be 1024;
# the worker keeps lava.max_concurrency sockets open besides its files, so
# the bench raises the soft limit to the hard one for the server it starts.
as_postgres() {
	if [ "$(id -un)" = postgres ]; then
		"$@"
	else
		runuser -u postgres -- /bin/sh -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"' sh "$@"
	fi
}

WORK=$(mktemp -d /tmp/lava-bench.XXXXXX)
chmod 755 "$WORK"
_bench_pids=()

bench_cleanup() {
	local p
	for p in "${_bench_pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${_bench_pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ -n "${PGDIR:-}" ]; then cluster_stop "$PGDIR"; fi
	if [ "${KEEP_BENCH_DIR:-0}" = 1 ]; then echo "bench files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "bench: $*" >&2
	if [ -n "${PGDIR:-}" ] && [ -f "$PGDIR/data/postmaster.pid" ]; then
		echo "--- lava.worker_status, the worker in pg_stat_activity, requests by status" >&2
		psql -X -q -P pager=off -d "$BENCH_DB" -c "SELECT * FROM lava.worker_status" \
			-c "SELECT pid, state, wait_event_type, wait_event, xact_start, left(query, 80) AS query
				FROM pg_stat_activity WHERE backend_type = 'lava worker'" \
			-c "SELECT status, count(*), min(next_attempt_at) AS next_attempt FROM lava.request_store GROUP BY 1" >&2 2>&1
	fi
	if [ -n "${PGDIR:-}" ] && [ -f "$PGDIR/server.log" ]; then
		echo "--- last lines of the server log" >&2
		tail -30 "$PGDIR/server.log" >&2
	fi
	exit 1
}

# bg CMD...: starts CMD in the background; the trap stops it.  Sets BG_PID.
bg() {
	"$@" &
	BG_PID=$!
	_bench_pids+=("$BG_PID")
}

# stop_bg PID: stops one process started with bg.
stop_bg() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# need_tools: installs nginx and wrk from Debian when missing (as test/deps.sh does).
need_tools() {
	local missing=() p
	for p in nginx wrk; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		[ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (run as root to install them)"
		echo "bench: installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install failed"
	fi
}

# q SQL [DB]: one value (or rows) from psql, unaligned, no headers.
q() { psql -X -v ON_ERROR_STOP=1 -qAt -d "${2:-$BENCH_DB}" -c "$1"; }

# now_s: seconds since the epoch, with nanoseconds.
now_s() { date +%s.%N; }

# calc EXPR: floating-point arithmetic (awk); prints the result.
calc() { awk "BEGIN { printf \"%.12g\", $* }"; }

# BENCH_PROFILE=1 preloads pg_stat_statements (tracking nested statements)
# and makes the benches print where the time went; it slows lava down.
_profile_conf=()
if [ "${BENCH_PROFILE:-0}" = 1 ]; then
	_profile_conf=("shared_preload_libraries = 'lava,pg_stat_statements,auto_explain'" "pg_stat_statements.track = all"
		"track_functions = 'all'" "auto_explain.log_min_duration = '${BENCH_EXPLAIN_MS:-20}ms'"
		"auto_explain.log_analyze = on" "auto_explain.log_nested_statements = on" "auto_explain.log_timing = on"
		"auto_explain.log_buffers = on")
fi

# profile_reset [DB]: forgets what profile would print so far (and the log's plans).
profile_reset() {
	[ "${BENCH_PROFILE:-0}" = 1 ] || return 0
	q "SELECT pg_stat_statements_reset(), pg_stat_reset()" "${1:-$BENCH_DB}" >/dev/null
	: >"$PGDIR/server.log"
}

# profile [DB]: the statements and functions that took the most time.
profile() {
	[ "${BENCH_PROFILE:-0}" = 1 ] || return 0
	echo "  --- top statements by total time (pg_stat_statements, nested included)"
	psql -X -q -d "${1:-$BENCH_DB}" -P pager=off -c "SELECT round(total_exec_time::numeric, 0) AS total_ms, calls,
		round((total_exec_time / NULLIF(calls, 0))::numeric, 4) AS ms_per_call, rows,
		left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" | sed 's/^/  /'
	echo "  --- functions by self time (pg_stat_user_functions)"
	psql -X -q -d "${1:-$BENCH_DB}" -P pager=off -c "SELECT schemaname || '.' || funcname AS function, calls,
		round(total_time::numeric, 0) AS total_ms, round(self_time::numeric, 0) AS self_ms,
		round((self_time / NULLIF(calls, 0))::numeric, 4) AS self_ms_per_call
		FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 20" | sed 's/^/  /'
	echo "  --- plans of the statements over ${BENCH_EXPLAIN_MS:-20} ms (auto_explain)"
	"$PY" "$BENCH_DIR/explain_top.py" "$PGDIR/server.log" "${BENCH_EXPLAIN_TOP:-3}" | sed 's/^/  /'
}

# bench_cluster_start [CONF_LINE...]: a throwaway cluster (lava preloaded) in
# $WORK/pg on a free port, serving lava.database = lava_bench, with the
# settings every bench shares for lava and baseline alike.  Creates the
# database and the extension, then waits until the worker runs.
bench_cluster_start() {
	PGDIR=$WORK/pg
	PGPORT=$(free_port)
	export PGHOST=$PGDIR PGPORT
	cluster_start "$PGDIR" "$PGPORT" \
		"lava.database = '$BENCH_DB'" \
		"max_connections = 200" \
		"shared_buffers = '1GB'" \
		"max_wal_size = '8GB'" \
		"checkpoint_timeout = '30min'" \
		"log_min_messages = warning" \
		"$@" "${_profile_conf[@]}" || die "cluster_start failed"
	q "CREATE DATABASE $BENCH_DB" postgres >/dev/null || die "CREATE DATABASE failed"
	q "CREATE EXTENSION lava" >/dev/null || die "CREATE EXTENSION failed"
	if [ "${BENCH_PROFILE:-0}" = 1 ]; then q "CREATE EXTENSION pg_stat_statements" >/dev/null; fi
	wait_worker
}

# wait_worker: waits (up to 30 s) until lava.worker_status says running.
wait_worker() {
	local i
	for i in $(seq 1 300); do
		[ "$(q "SELECT running FROM lava.worker_status" 2>/dev/null)" = t ] && return 0
		sleep 0.1
	done
	die "the lava worker did not start"
}

# worker_pid: the pid of the lava worker.
worker_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lava worker'" postgres; }

# recorder_pid: the pid of the lava recorder (empty when none runs).
recorder_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lava recorder'" postgres; }

# sockets PID: the sockets a process has open
sockets() { find /proc/"$1"/fd -lname 'socket:*' 2>/dev/null | wc -l; }

# rss_of PID: a process's own memory now (RssAnon + RssFile), in MB.
rss_of() { awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { printf "%.1f", (a + f) / 1024 }' /proc/"$1"/status; }

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' /proc/"$1"/stat; }

# nginx_common DIR MAX_FILES: the head of a bench's nginx.conf, up to and
# including "http {": one worker (NGINX_WORKERS), in the foreground, its pid,
# log and temp files in DIR, long keep-alive, no access log
nginx_common() {
	local d=$1
	mkdir -p "$d/tmp"
	cat <<EOF
worker_processes ${NGINX_WORKERS:-1};
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile $2;
events { worker_connections $(($2 * 4 / 5)); multi_accept on; }
http {
	access_log off;
	keepalive_timeout 300s;
	keepalive_requests 100000000;
	client_body_temp_path $d/tmp/body;
	proxy_temp_path $d/tmp/proxy;
	fastcgi_temp_path $d/tmp/fastcgi;
	uwsgi_temp_path $d/tmp/uwsgi;
	scgi_temp_path $d/tmp/scgi;
EOF
}

# wrk_rate URL CONC: wrk POSTing the body of the newest request (with its
# headers) to URL over CONC connections for WRK_SECONDS (5); prints wrk's
# report and sets UP to its requests/s
wrk_rate() {
	local body out
	body=$(q "SELECT body::text FROM lava.request_store ORDER BY request_id DESC LIMIT 1")
	printf '%s\n' 'wrk.method = "POST"' "wrk.body = [[$body]]" 'wrk.headers["Content-Type"] = "application/json"' \
		'wrk.headers["Authorization"] = "Bearer sk-bench"' >"$WORK/post.lua"
	out=$(wrk -t2 -c"$2" -d"${WRK_SECONDS:-5}"s -s "$WORK/post.lua" "$1" 2>&1) || die "wrk failed: $out"
	echo "$out" | sed 's/^/  wrk: /'
	UP=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
	[ -n "$UP" ] || die "no Requests/sec from wrk"
}

# nginx_start: nginx on a free 127.0.0.1 port answering every request with a
# fixed chat.completions JSON with usage; sets NGINX_PORT.
NGINX_BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"bench reply"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}'
nginx_start() {
	NGINX_PORT=$(free_port)
	local d=$WORK/nginx
	mkdir -p "$d/tmp"
	cat >"$d/nginx.conf" <<EOF
$(nginx_common "$d" 20000)
	client_body_buffer_size 64k;
	server {
		listen 127.0.0.1:$NGINX_PORT backlog=4096 reuseport;
		location / {
			default_type application/json;
			return 200 '$NGINX_BODY';
		}
	}
}
EOF
	bg /usr/sbin/nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
	NGINX_PID=$BG_PID
	local i
	for i in $(seq 1 100); do
		curl -fsS -X POST -d '{}' "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	cat "$d/error.log" >&2
	die "nginx did not start"
}

# slow_start DELAY_SECONDS: test/bench/slow_upstream.py on a free port; sets SLOW_PORT.
slow_start() {
	SLOW_PORT=$(free_port)
	bg "$PY" "$BENCH_DIR/slow_upstream.py" --port "$SLOW_PORT" --delay "$1"
	SLOW_PID=$BG_PID
	local i
	for i in $(seq 1 100); do
		curl -fsS "http://127.0.0.1:$SLOW_PORT/_health" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	die "the slow upstream did not start"
}

# catalog PORT: the provider 'bench' at 127.0.0.1:PORT and the priced model
# 'bench-model' (0.15 / 0.60 USD per million tokens, max_output_tokens 16384).
catalog() {
	q "INSERT INTO lava.providers (name, base_url, api_key, request_shape)
	   VALUES ('bench', 'http://127.0.0.1:$1/v1', 'sk-bench', 'openai')
	   ON CONFLICT (name) DO UPDATE SET base_url = EXCLUDED.base_url;
	   INSERT INTO lava.models (provider, model, input_price_per_mtok, output_price_per_mtok, max_output_tokens)
	   VALUES ('bench', 'bench-model', 0.15, 0.60, 16384) ON CONFLICT DO NOTHING" "${2:-$BENCH_DB}" >/dev/null ||
		die "catalog failed"
}

# make_keys N [DB] [PARAMS]: N real spend keys with a spend limit (created
# with lava.create_spend_key), kept as bench_keys(n 1..N, k plaintext, id).
make_keys() {
	local n=$1 db=${2:-$BENCH_DB}
	local params=${3:-'{"name": "bench", "spend_limit": {"amount": "1000000.00", "cycle": "monthly"}}'}
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<SQL || die "make_keys failed"
CREATE TABLE IF NOT EXISTS bench_keys (n int PRIMARY KEY, k text NOT NULL, id uuid NOT NULL);
INSERT INTO bench_keys
SELECT g, c ->> 'key', (c ->> 'spend_key_id')::uuid
FROM generate_series((SELECT COALESCE(max(n), 0) + 1 FROM bench_keys), (SELECT COALESCE(max(n), 0) FROM bench_keys) + $n) g,
	 LATERAL lava.create_spend_key(jsonb_set('$params'::jsonb, '{name}', to_jsonb('bench ' || g))) c;
ANALYZE bench_keys;
SQL
}

# enqueue_sql N PROMPT [KEY_EXPR]: SQL that queues N prompts (bench-model,
# max_tokens 16) over the keys of bench_keys, round robin.
enqueue_sql() {
	local n=$1 prompt=$2
	local keyexpr=${3:-"(SELECT k FROM bench_keys WHERE n = 1 + (g - 1) % (SELECT count(*) FROM bench_keys))"}
	echo "SELECT count(lava.prompt('bench-model', '$prompt', '{\"max_tokens\": 16}', $keyexpr)) FROM generate_series(1, $n) g;"
}

# enqueue_committed N TEXT: queues N prompts (enqueue_sql) in one transaction
# and prints the clock read just before its COMMIT: where drain timings start.
enqueue_committed() {
	local out
	out=$(psql -X -qAt -v ON_ERROR_STOP=1 -d "$BENCH_DB" <<SQL
BEGIN;
$(enqueue_sql "$1" "$2")
SELECT extract(epoch FROM clock_timestamp());
COMMIT;
SQL
) || die "enqueue failed: $out"
	echo "$out" | tail -1
}

# drained_rate N T0 WHAT: after a drain of the last N requests queued at
# T0 (enqueue_committed's clock), dies unless every one completed (WHAT
# names the drain), and sets DRAIN_SECS, from T0 to the last completed_at,
# and RATE, requests per second
drained_rate() {
	local t_last done_ok others
	read -r t_last done_ok others < <(q "SELECT extract(epoch FROM max(completed_at)),
		count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status <> 'completed')
		FROM lava.request_store WHERE request_id > (SELECT max(request_id) FROM lava.request_store) - $1" | tr '|' ' ')
	[ "$done_ok" = "$1" ] || die "only $done_ok of $1 requests completed $3 ($others others)"
	DRAIN_SECS=$(calc "$t_last - $2")
	RATE=$(calc "$1 / $DRAIN_SECS")
}

# steady_stats [DB]: VACUUM ANALYZE, as autovacuum would have done by now on a
# server that has been running: the benches set up keys and warm up within
# seconds, and without it the planner would plan for the empty tables of
# CREATE EXTENSION (a bench measured after a bulk of new keys without it is
# measuring that, not the steady state).
steady_stats() {
	psql -X -q -v ON_ERROR_STOP=1 -d "${1:-$BENCH_DB}" -c "VACUUM ANALYZE" >/dev/null || die "VACUUM ANALYZE failed"
}

# non_terminal: how many requests are queued or running.
non_terminal() { q "SELECT count(*) FROM lava.request_store WHERE status IN ('queued', 'running')"; }

# busy: t while a request is queued or running.  It asks cheap questions
# first (the worker's in-flight count in shared memory, and whether the
# queue's partial index has a live entry) and confirms "nothing left" with
# an exact count only then, since a status = 'running' scan of a big
# lava.request_store may have no index to use.  No parallel workers and no
# JIT: it must not compete with the worker for the two cores.
busy() {
	local cheap
	cheap=$(PGOPTIONS="-c max_parallel_workers_per_gather=0 -c jit=off" q "SELECT s.in_flight > 0
		OR EXISTS (SELECT 1 FROM lava.request_store WHERE status = 'queued') FROM lava._worker_state() s")
	if [ "$cheap" != f ]; then echo t; return; fi
	PGOPTIONS="-c max_parallel_workers_per_gather=0 -c jit=off" \
		q "SELECT count(*) > 0 FROM lava.request_store WHERE status IN ('queued', 'running')"
}

# wait_drained TIMEOUT_S: polls every 50 ms until nothing is queued or
# running.  The benches take their figures from completed_at, so the poll's
# granularity does not enter them; it is kept cheap so as not to compete
# with the worker for the two cores.
wait_drained() {
	local deadline
	deadline=$(calc "$(now_s) + $1")
	while :; do
		[ "$(busy)" = f ] && return 0
		if awk "BEGIN { exit !($(now_s) > $deadline) }"; then
			echo "bench: still $(non_terminal) requests not terminal after $1 s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# rss_sampler_start FILE [INTERVAL] [PID]: samples the memory of the worker
# (or of process PID) every INTERVAL s (0.2) into FILE: epoch VmRSS_kB
# RssAnon_kB RssFile_kB RssShmem_kB.
rss_sampler_start() {
	local file=$1 interval=${2:-0.2} pid=${3:-}
	[ -n "$pid" ] || pid=$(worker_pid)
	[ -n "$pid" ] || die "no lava worker to sample"
	bg bash -c '
		while [ -r /proc/'"$pid"'/status ]; do
			awk -v t="$(date +%s.%N)" '"'"'
				/^VmRSS:/ { v = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } /^RssShmem:/ { s = $2 }
				END { if (v != "") print t, v, a, f, s }'"'"' /proc/'"$pid"'/status >>"'"$file"'" 2>/dev/null
			sleep '"$interval"'
		done'
	RSS_PID=$BG_PID
}

# burst_peak N TIMEOUT_S: queues N prompts in one transaction, polls every
# 0.2 s until none is queued or running (dies after TIMEOUT_S, or if one did
# not complete); sets PEAK, the most calls in flight (lava.worker_status),
# and PEAK_SOCKETS, the most sockets the worker had open
burst_peak() {
	local f s wpid deadline
	wpid=$(worker_pid)
	PEAK=0
	PEAK_SOCKETS=0
	q "$(enqueue_sql "$1" 'hello')" >/dev/null || die "enqueue failed"
	deadline=$(calc "$(now_s) + $2")
	while [ "$(busy)" = t ]; do
		f=$(q "SELECT in_flight FROM lava.worker_status")
		[ "${f:-0}" -gt "$PEAK" ] && PEAK=$f
		s=$(sockets "$wpid")
		[ "$s" -gt "$PEAK_SOCKETS" ] && PEAK_SOCKETS=$s
		awk "BEGIN { exit !($(now_s) > $deadline) }" && die "the queue did not drain"
		sleep 0.2
	done
	sleep 0.5
	[ "$(q "SELECT count(*) FROM lava.request_store WHERE status <> 'completed'")" = 0 ] || die "some requests did not complete"
}

# rss_max FILE [EXPR]: the largest sample, in MB, of an awk expression over
# the columns ($2 VmRSS, $3 RssAnon, $4 RssFile, $5 RssShmem); the default,
# $3 + $4, is the worker's own memory (VmRSS without the shared buffers it
# has touched, which are the server's, not the worker's).
rss_max() { awk 'BEGIN { m = 0 } { v = '"${2:-\$3 + \$4}"' } v > m { m = v } END { printf "%.1f", m / 1024 }' "$1"; }

# rss_now: the worker's own memory now (RssAnon + RssFile), in MB.
rss_now() { rss_of "$(worker_pid)"; }

# rss_report FILE WHAT IDLE_MB: the memory row of the table, and the details.
rss_report() {
	local m
	m=$(rss_max "$1")
	record "memory: worker RSS MB, $2" "$m" "$3" "$(calc "$m / $3")" "< 50 MB" "$(met "$m < 50")"
	echo "  worker memory max: VmRSS $(rss_max "$1" '$2') MB = anon $(rss_max "$1" '$3') + file $(rss_max "$1" '$4')" \
		"+ shared buffers touched $(rss_max "$1" '$5'); $(wc -l <"$1") samples"
}

# record METRIC LAVA BASELINE RATIO TARGET MET: one row of the final table.
record() {
	set -- "$1" "$2" "$3" "$(awk -v r="$4" 'BEGIN { if (r ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) printf "%.3g", r; else printf "%s", r }')" "$5" "$6"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"${BENCH_RESULTS:-$WORK/results.tsv}"
	printf '  %-44s lava=%s baseline=%s ratio=%s target=%s met=%s\n' "$@"
}

# met EXPR: "yes" when the awk expression holds, else "no".
met() { if awk "BEGIN { exit !($*) }"; then echo yes; else echo no; fi; }

# pgbench_tps ARGS...: runs pgbench, prints the TPS (excluding connection time).
pgbench_tps() {
	local out
	out=$(pgbench "$@" 2>&1) || { echo "$out" >&2; die "pgbench failed"; }
	echo "$out" >"$WORK/pgbench.last"
	echo "$out" | awk '/^tps = .*without initial connection time|^tps = .*excluding connections/ { print $3; exit }'
}

# perf_start / perf_stop: with BENCH_PERF=1 (and perf installed), records
# the lava worker's CPU profile between the two calls and prints its top
# symbols (perf report, self time, no children).
perf_start() {
	[ "${BENCH_PERF:-0}" = 1 ] || return 0
	command -v perf >/dev/null || { echo "  (BENCH_PERF=1 but no perf installed)"; return 0; }
	bg perf record -q -F 999 -g -p "$(worker_pid)" -o "$WORK/perf.data"
	PERF_PID=$BG_PID
	sleep 0.3
}
perf_stop() {
	[ -n "${PERF_PID:-}" ] || return 0
	kill -INT "$PERF_PID" 2>/dev/null
	wait "$PERF_PID" 2>/dev/null
	PERF_PID=
	echo "  --- perf: the worker's top symbols (self)"
	perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol -g none 2>/dev/null |
		grep -v '^#' | grep -v '^$' | head -"${BENCH_PERF_TOP:-30}" | sed 's/[ -]*$//; s/^/  /'
}

# bench_header NAME: a banner.
bench_header() { echo; echo "=== bench: $*"; }

# print_table FILE: the result rows as one table.
print_table() {
	echo
	awk -F'\t' '
		function num(s) { return s ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/ }
		{ r[NR, 1] = $1; r[NR, 2] = $2; r[NR, 3] = $3
		  r[NR, 4] = num($4) ? sprintf("%.3gx", $4) : $4; r[NR, 5] = $5; r[NR, 6] = $6
		  for (c = 1; c <= 6; c++) if (length(r[NR, c]) > w[c]) w[c] = length(r[NR, c]) }
		END {
			split("metric|lava|baseline|ratio|target|met?", h, "|")
			for (c = 1; c <= 6; c++) if (length(h[c]) > w[c]) w[c] = length(h[c])
			line = ""; sep = ""
			for (c = 1; c <= 6; c++) { line = line sprintf("%s%-*s", c > 1 ? " | " : "", w[c], h[c]);
				s = ""; for (i = 0; i < w[c]; i++) s = s "-"; sep = sep (c > 1 ? "-|-" : "") s }
			print line; print sep
			for (i = 1; i <= NR; i++) {
				line = ""
				for (c = 1; c <= 6; c++) line = line sprintf("%s%" (c == 1 || c == 5 ? "-" : "") "*s", c > 1 ? " | " : "", w[c], r[i, c])
				print line
			}
		}' "$1"
}
