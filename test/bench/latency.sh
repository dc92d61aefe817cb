#!/usr/bin/env bash
# test/bench/latency.sh: on an idle system, LATENCY_N (1,000) sequential
# prompts through the nginx upstream, one at a time from one psql session:
# each `SELECT lava.prompt(...)` commits (autocommit), then
# `SELECT lava.await(id)` returns once the request is completed.  The latency
# is measured client-side, by psql's \timing of the await: from the return of
# the prompt's COMMIT to the return of lava.await (one round trip included).
# For information it also gives the server-side created_at -> completed_at
# (created_at is the start of the prompt's transaction).  The baseline column
# is the same percentile of N sequential requests to nginx alone (one
# keep-alive connection, the same body).
. "$(dirname "$0")/lib.sh"

N=${LATENCY_N:-1000}

bench_header "latency: $N sequential prompts, commit -> completed, idle system, nginx upstream"
need_tools
bench_cluster_start
nginx_start
catalog "$NGINX_PORT"
make_keys 1
key=$(q "SELECT k FROM bench_keys WHERE n = 1")

gen() {
	local n=$1 i
	echo "\\set key '$key'"
	for i in $(seq 1 "$n"); do
		echo "SELECT lava.prompt('bench-model', 'hello', '{\"max_tokens\": 16}', :'key') AS id \\gset"
		echo "\\timing on"
		echo "SELECT lava.await(:id, '30 seconds') ->> 'status' AS st \\gset"
		echo "\\timing off"
		echo "\\if :{?st}"
		echo "\\else"
		echo "\\echo missing-status"
		echo "\\endif"
	done
}
gen 100 >"$WORK/warm.sql"
gen "$N" >"$WORK/lat.sql"
psql -X -qAt -v ON_ERROR_STOP=1 -d "$BENCH_DB" -f "$WORK/warm.sql" >/dev/null || die "warm-up failed"
steady_stats
first=$(q "SELECT COALESCE(max(request_id), 0) FROM lava.request_store")
psql -X -qAt -v ON_ERROR_STOP=1 -d "$BENCH_DB" -f "$WORK/lat.sql" >"$WORK/lat.out" || die "latency run failed"
sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' "$WORK/lat.out" >"$WORK/lat.ms"
[ "$(wc -l <"$WORK/lat.ms")" = "$N" ] || die "expected $N timings, got $(wc -l <"$WORK/lat.ms")"
[ "$(q "SELECT count(*) FROM lava.request_store WHERE request_id > $first AND status = 'completed'")" = "$N" ] ||
	die "not every request completed"

# pct FILE P: the P-th percentile (nearest rank) of the numbers in FILE
pct() { sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; print v[i] }'; }
p50=$(pct "$WORK/lat.ms" 50)
p95=$(pct "$WORK/lat.ms" 95)
p99=$(pct "$WORK/lat.ms" 99)
pmax=$(pct "$WORK/lat.ms" 100)
echo "  client, commit -> await returned (ms): p50 $p50  p95 $p95  p99 $p99  max $pmax"
q "SELECT extract(epoch FROM completed_at - created_at) * 1000 FROM lava.request_store
   WHERE request_id > $first" >"$WORK/srv.ms"
echo "  server, created_at -> completed_at (ms): p50 $(pct "$WORK/srv.ms" 50)  p95 $(pct "$WORK/srv.ms" 95)" \
	" p99 $(pct "$WORK/srv.ms" 99)  max $(pct "$WORK/srv.ms" 100)"

# the upstream alone: N sequential POSTs on one keep-alive connection
body=$(q "SELECT body::text FROM lava.request_store ORDER BY request_id DESC LIMIT 1")
"$PY" - "$NGINX_PORT" "$N" "$body" >"$WORK/up.ms" <<'EOF' || die "upstream timing failed"
import http.client, sys, time
port, n, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
c = http.client.HTTPConnection("127.0.0.1", port)
hdr = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
for i in range(n):
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, hdr)
    r = c.getresponse()
    r.read()
    assert r.status == 200
    print("%.3f" % ((time.perf_counter() - t) * 1000))
EOF
up50=$(pct "$WORK/up.ms" 50)
up99=$(pct "$WORK/up.ms" 99)
echo "  upstream alone (one keep-alive connection, ms): p50 $up50  p99 $up99"

record "latency: p50 ms, commit -> completed" "$p50" "$up50" "$(calc "$p50 / $up50")" "< 5 ms" "$(met "$p50 < 5")"
record "latency: p99 ms, commit -> completed" "$p99" "$up99" "$(calc "$p99 / $up99")" "< 20 ms" "$(met "$p99 < 20")"
record "latency: p95 / max ms" "$p95 / $pmax" "-" "-" "(report)" "-"
profile
