#!/usr/bin/env bash
# test/bench/https.sh: lava over HTTPS, as it talks to real providers.
#
# nginx terminates TLS (a test CA made here, trusted through lava.ca_file,
# a bundle of Debian's CAs and this one)
# on two ports: one offers HTTP/2 (ALPN h2, 128 streams per connection, as
# provider front ends do), the other HTTP/1.1 only.  On both, /fast/ answers
# a fixed chat.completions JSON at once and /slow/ passes the call to the
# slow upstream, which answers after HTTPS_DELAY = 10 s.
#
# - drain: HTTPS_N = 20,000 prompts queued in one transaction, timed from
#   COMMIT to the last completed_at, at lava.max_concurrency
#   HTTPS_CONCURRENCY = 256, over HTTP/2 and over HTTP/1.1.  The baseline is
#   wrk over HTTPS (HTTP/1.1, one TLS connection per slot) against the same
#   nginx at the same concurrency.
# - memory: the worker's RssAnon + RssFile with calls in flight to /slow/:
#   HTTPS_H2_MEMORY = "512,10000" calls over HTTP/2 and HTTPS_H1_MEMORY =
#   "512" over HTTP/1.1 (each call then has a TLS connection of its own).
. "$(dirname "$0")/lib.sh"

N=${HTTPS_N:-20000}
CONC=${HTTPS_CONCURRENCY:-256}
DELAY=${HTTPS_DELAY:-10}
H2_MEMORY=${HTTPS_H2_MEMORY:-512,10000}
H1_MEMORY=${HTTPS_H1_MEMORY:-512}

bench_header "https: drain ($N queued, conc $CONC) and memory in flight ($DELAY s upstream), HTTP/2 and HTTP/1.1 over TLS"
need_tools
tls_certs "$WORK/tls" || die "could not make the test certificates"
# lava's bundle: Debian's (about 140 CAs) and the test CA, as a private
# bundle usually is; curl keeps one parsed store of it for all connections
cat /etc/ssl/certs/ca-certificates.crt "$WORK/tls/ca.pem" >"$WORK/tls/bundle.pem" || die "no CA bundle"
slow_start "$DELAY"

# nginx with TLS: H2_PORT (http2 on) and H1_PORT (HTTP/1.1 only)
H2_PORT=$(free_port)
H1_PORT=$(free_port)
d=$WORK/nginx-tls
mkdir -p "$d"
tls_server() {
	cat <<EOF
	server {
		listen 127.0.0.1:$1 ssl $2 backlog=4096;
		ssl_certificate $WORK/tls/srv.pem;
		ssl_certificate_key $WORK/tls/srv.key;
		location /fast/ {
			default_type application/json;
			return 200 '$NGINX_BODY';
		}
		location /slow/ {
			proxy_pass http://slow/;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_read_timeout 300s;
		}
	}
EOF
}
cat >"$d/nginx.conf" <<EOF
$(nginx_common "$d" 40000)
	upstream slow { server 127.0.0.1:$SLOW_PORT; keepalive 20000; }
$(tls_server "$H2_PORT" http2)
$(tls_server "$H1_PORT" "")
}
EOF
bg /usr/sbin/nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
for i in $(seq 1 100); do
	curl -fsS --cacert "$WORK/tls/ca.pem" -X POST -d '{}' "https://127.0.0.1:$H1_PORT/fast/v1/chat/completions" >/dev/null 2>&1 && break
	sleep 0.05
done
[ "$(curl -sS --http2 --cacert "$WORK/tls/ca.pem" -o /dev/null -w '%{http_version}' -X POST -d '{}' \
	"https://127.0.0.1:$H2_PORT/fast/v1/chat/completions")" = 2 ] || { cat "$d/error.log" >&2; die "nginx does not serve HTTP/2 over TLS"; }

bench_cluster_start "lava.max_concurrency = $CONC" "lava.request_timeout = '300s'" "lava.ca_file = '$WORK/tls/bundle.pem'"
catalog "$H2_PORT"
make_keys 1000

# use URL: points the provider 'bench' at URL (https://...)
use() { q "UPDATE lava.providers SET base_url = '$1' WHERE name = 'bench'" >/dev/null || die "could not set the base URL"; }
# concurrency N: sets lava.max_concurrency and waits for the worker to read it
concurrency() {
	{ q "ALTER SYSTEM SET lava.max_concurrency = $1" postgres && q "SELECT pg_reload_conf()" postgres; } >/dev/null ||
		die "could not set lava.max_concurrency"
	sleep 1
}

use "https://127.0.0.1:$H2_PORT/fast/v1"
q "$(enqueue_sql 1000 'warm up')" >/dev/null || die "warm-up enqueue failed"
wait_drained 120 || die "warm-up did not drain"
steady_stats
idle_rss=$(rss_now)
echo "  worker memory idle, after a warm-up over HTTPS: $idle_rss MB"

# drain WHAT URL: queues $N prompts at URL, waits for them; sets RATE
drain() {
	local t0 wpid cpu0 cpu1
	use "$2"
	wpid=$(worker_pid)
	cpu0=$(cpu_ticks "$wpid")
	t0=$(enqueue_committed "$N" hello) || exit 1
	wait_drained 600 || die "the queue did not drain"
	cpu1=$(cpu_ticks "$wpid")
	drained_rate "$N" "$t0" "over $1"
	echo "  $1: drained $N in $(printf %.3f "$DRAIN_SECS") s: $(printf '%.0f' "$RATE") requests/s;" \
		"worker CPU $(printf %.0f "$(calc "($cpu1 - $cpu0) / $(getconf CLK_TCK) * 1000000 / $N")") us per request," \
		"$(sockets "$wpid") sockets open after it"
}

drain "HTTP/2" "https://127.0.0.1:$H2_PORT/fast/v1"
RATE_H2=$RATE
drain "HTTP/1.1" "https://127.0.0.1:$H1_PORT/fast/v1"
RATE_H1=$RATE

wrk_rate "https://127.0.0.1:$H1_PORT/fast/v1/chat/completions" "$CONC"
record "https drain: requests/s, HTTP/2 (conc $CONC)" "$(printf '%.0f' "$RATE_H2")" "$(printf '%.0f' "$UP")" \
	"$(calc "$RATE_H2 / $UP")" "(report)" "-"
record "https drain: requests/s, HTTP/1.1 (conc $CONC)" "$(printf '%.0f' "$RATE_H1")" "$(printf '%.0f' "$UP")" \
	"$(calc "$RATE_H1 / $UP")" "(report)" "-"

# in_flight WHAT URL M: M calls in flight to URL; the memory row
in_flight() {
	concurrency "$3"
	use "$2"
	rss_sampler_start "$WORK/rss.${1//\//}.$3"
	burst_peak "$3" 600
	stop_bg "$RSS_PID"
	echo "  $1, $3 calls: in flight at most $PEAK, the worker's sockets at most $PEAK_SOCKETS;" \
		"after the burst $(rss_now) MB"
	rss_report "$WORK/rss.${1//\//}.$3" "https $1, $PEAK in flight" "$idle_rss"
}

IFS=, read -r -a h2_sizes <<<"$H2_MEMORY"
for m in "${h2_sizes[@]}"; do in_flight "HTTP/2" "https://127.0.0.1:$H2_PORT/slow/v1" "$m"; done
IFS=, read -r -a h1_sizes <<<"$H1_MEMORY"
for m in "${h1_sizes[@]}"; do in_flight "HTTP/1.1" "https://127.0.0.1:$H1_PORT/slow/v1" "$m"; done
