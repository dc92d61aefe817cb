# https.sh: upstream calls over HTTPS, against a mock upstream that speaks
# TLS with a certificate of a CA made here.  The peer's certificate and host
# name are verified, against lava.ca_file when it is set (a bad value is
# refused with 22023 and changes nothing); a call that fails verification
# sends nothing and charges nothing; over HTTP/2 (nginx in front of the
# mock), a burst of calls shares one connection instead of opening one each.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 37

dir=$LAVA_TEST_DIR/tls
mkdir -p "$dir"
TLS_PORT=$(free_port)
H2_PORT=$(free_port)
conf=$LAVA_TEST_DIR/data/postgresql.conf
cleanup() {
	[ -n "${link:-}" ] && rm -f "$link"
	sed -i '/^lava.ca_file = /d' "$conf"
	[ -f "$dir/mock.pid" ] && kill "$(cat "$dir/mock.pid")" 2>/dev/null
	[ -f "$dir/nginx/nginx.pid" ] && kill "$(cat "$dir/nginx/nginx.pid")" 2>/dev/null
	server_set lava.ca_file
	server_set lava.max_attempts
}
trap cleanup EXIT

# a CA, a server certificate it signs for 127.0.0.1 only, a CA of nobody's
# (with the same name), and a file that holds no certificate
tls_certs "$dir" || exit 1
tls_certs "$dir/rogue" || exit 1
echo "this is not a certificate" >"$dir/junk.pem"
# and one more CA, of another name (OpenSSL then looks further for the issuer)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/other.key" \
	-out "$dir/other.pem" -days 2 -subj "/CN=lava other CA" >/dev/null 2>&1 || exit 1
# private keys readable by their owner only (the CA's is trusted below)
chmod 600 "$dir"/*.key "$dir"/rogue/*.key
chown -R postgres: "$dir"
chmod 755 "$dir"

/usr/bin/python3 "$LAVA_ROOT/test/mock_upstream.py" --port "$TLS_PORT" --pidfile "$dir/mock.pid" \
	--tls-cert "$dir/srv.pem" --tls-key "$dir/srv.key" >"$dir/mock.log" 2>&1 &
for i in $(seq 1 100); do
	curl -fsS --cacert "$dir/ca.pem" "https://127.0.0.1:$TLS_PORT/_health" >/dev/null 2>&1 && break
	sleep 0.1
done
# tls_log FILTER_PY / tls_count TAG: mock_log and mock_count for the TLS mock
tls_log() { MOCK_URL=https://127.0.0.1:$TLS_PORT MOCK_CACERT=$dir/ca.pem mock_log "$1"; }
tls_count() { MOCK_URL=https://127.0.0.1:$TLS_PORT MOCK_CACERT=$dir/ca.pem mock_count "$1"; }

q "INSERT INTO lava.providers (name, base_url, api_key) VALUES
	('tls_ip', 'https://127.0.0.1:$TLS_PORT/v1', 'sk-tls-secret-1'),
	('tls_name', 'https://localhost:$TLS_PORT/v1', 'sk-tls-secret-2') ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tls_ip', 'gpt-tls', 1, 2, 10), ('tls_name', 'gpt-tls-name', 1, 2, 10) ON CONFLICT DO NOTHING" >/dev/null
created=$(q "SELECT lava.create_spend_key('{\"name\": \"tls\", \"spend_limit\": {\"amount\": \"1.00\", \"cycle\": \"total\"}}')")
key=$(q "SELECT '$created'::jsonb ->> 'key'")
kid=$(q "SELECT '$created'::jsonb ->> 'spend_key_id'")
# one attempt per request: a refused certificate would otherwise be retried
server_set lava.max_attempts 1
sleep 0.5

# ask MODEL TAG: enqueues a prompt, waits for it, prints "status|error"
ask() {
	local id
	id=$(q "SELECT lava.prompt('$1', 'hello #in=10 #out=5 #id=$2', '{}', '$key')")
	q "SELECT r ->> 'status', r ->> 'error' FROM lava.await($id, '20 seconds') r"
}
# set_ca VALUE: ALTER SYSTEM SET lava.ca_file, printing the SQLSTATE of a refusal
set_ca() {
	psql -X -qAt -v VERBOSITY=verbose -d postgres -c "ALTER SYSTEM SET lava.ca_file = '$1'" 2>&1 |
		sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p'
}

# bad values: refused with 22023, nothing written
is "$(set_ca ca.pem)" 22023 "a relative lava.ca_file is refused (22023)"
is "$(set_ca "$dir/missing.pem")" 22023 "a lava.ca_file that does not exist is refused (22023)"
is "$(set_ca "$dir")" 22023 "a directory as lava.ca_file is refused (22023)"
psql -X -qAt -v VERBOSITY=verbose -d postgres -c "ALTER SYSTEM SET lava.ca_file = '$dir/missing.pem'" 2>&1 |
	grep -q "is not a regular file the server can read"
ok $? "the refusal says why"
is "$(q "SELECT count(*) FROM pg_file_settings WHERE name = 'lava.ca_file'")" 0 \
	"the refused values left postgresql.auto.conf alone"

# no lava.ca_file: curl's own bundle, which does not know this CA
r=$(ask gpt-tls t-nobundle)
is "${r%%|*}" error "without lava.ca_file, the test CA's server is refused"
echo "$r" | grep -q "SSL certificate problem"
ok $? "the error says the certificate was refused ($r)"
is "$(tls_count '#id=t-nobundle')" 0 "nothing reached the server: the handshake failed before the request"

# the right CA
server_set lava.ca_file "'$dir/ca.pem'"
sleep 0.5
is "$(q "SHOW lava.ca_file")" "$dir/ca.pem" "lava.ca_file set with ALTER SYSTEM"
id=$(q "SELECT lava.prompt('gpt-tls', 'hello #in=10 #out=5 #text=over-tls #id=t-ok', '{}', '$key')")
is "$(q "SELECT r ->> 'status' || '/' || (r ->> 'output_text') || '/' || (r ->> 'cost') FROM lava.await($id, '20 seconds') r")" \
	"completed/over-tls/0.00002" "with lava.ca_file the call completes over TLS, and is charged (10 x 1 + 5 x 2 per million)"
is "$(tls_count '#id=t-ok')" 1 "the server got it once"
auth=$(tls_log "'#id=t-ok' in json.dumps(r['body'])" |
	/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["headers"]["authorization"])')
is "$auth" "Bearer sk-tls-secret-1" "the provider's API key went inside TLS"

# a certificate for another host name
r=$(ask gpt-tls-name t-name)
is "${r%%|*}" error "a certificate for 127.0.0.1 is refused for https://localhost"
echo "$r" | grep -q "no alternative certificate subject name matches target host name 'localhost'"
ok $? "the error names the host name mismatch"
is "$(tls_count '#id=t-name')" 0 "and nothing reached the server"

# another CA: the configured bundle replaces curl's, it does not add to it
server_set lava.ca_file "'$dir/rogue/ca.pem'"
sleep 0.5
r=$(ask gpt-tls t-rogue)
is "${r%%|*}" error "a bundle holding only another CA refuses the server (a reload changes the bundle)"
is "$(tls_count '#id=t-rogue')" 0 "nothing reached the server"

# a readable file that holds no certificate: each call fails, nothing is charged
server_set lava.ca_file "'$dir/junk.pem'"
sleep 0.5
r=$(ask gpt-tls t-junk)
is "${r%%|*}" error "a lava.ca_file without certificates fails the call"
is "$(tls_count '#id=t-junk')" 0 "nothing reached the server"
is "$(q "SELECT (lava.get_spend_key('$kid') ->> 'current_spend') || ' ' || (lava.get_spend_key('$kid') ->> 'reserved_spend')")" \
	"0.00002 0.00" "the key paid for the one call that went through, and holds no reservation"
is "$(key_balanced "$kid")" t "its counters equal its requests and its ledger"
grep -q "sk-tls-secret" "$LAVA_TEST_DIR/server.log"
is $? 1 "no provider API key in the server log"

# curl's CA directory: Debian's curl reads its bundle and the directory
# /etc/ssl/certs; lava gives curl the bundle alone (see http.c).  For the
# next checks only, the test CA is copied into that directory under its
# subject hash (as c_rehash names it), with a first line that marks it as
# ours, and removed right after (or by the exit trap; a copy left by a
# killed run is removed first).
certs=/etc/ssl/certs
if [ -d "$certs" ] && [ -w "$certs" ]; then
	grep -l '^lava test CA, test/integration/https.sh' "$certs"/* 2>/dev/null | xargs -r rm -f
	hash=$(openssl x509 -hash -noout -in "$dir/ca.pem")
	n=0
	while [ -e "$certs/$hash.$n" ] || [ -L "$certs/$hash.$n" ]; do n=$((n + 1)); done
	{ echo "lava test CA, test/integration/https.sh"; cat "$dir/ca.pem"; } >"$certs/$hash.$n" && link=$certs/$hash.$n
	server_set lava.ca_file
	sleep 0.5
	r=$(ask gpt-tls t-dir)
	is "${r%%|*}" error "with the test CA only in $certs and no lava.ca_file, the server is refused: the directory is not read ($r)"
	server_set lava.ca_file "'$dir/other.pem'"
	sleep 0.5
	r=$(ask gpt-tls t-dir-other)
	is "${r%%|*}" error "with lava.ca_file set, $certs is not read either ($r)"
	# a path the postmaster takes from postgresql.conf at start-up or reload,
	# and that cannot be read: fail closed, never back to curl's own CAs
	server_set lava.ca_file
	echo "lava.ca_file = '$dir/missing.pem'" >>"$conf"
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	r=$(ask gpt-tls t-missing)
	echo "$r" | grep -q "^error|error setting certificate file: $dir/\(\./\)\?missing.pem"
	ok $? "an unreadable lava.ca_file in postgresql.conf fails the call on that file, not on curl's CAs ($r)"
	grep -q "lava.ca_file \"$dir/missing.pem\" cannot be read" "$LAVA_TEST_DIR/server.log"
	ok $? "and the worker warns of it in the log"
	# a relative path there too (the check for an absolute path is ALTER SYSTEM's)
	sed -i '/^lava.ca_file = /d' "$conf"
	echo "lava.ca_file = 'missing.pem'" >>"$conf"
	q "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	r=$(ask gpt-tls t-relative)
	echo "$r" | grep -q "^error|error setting certificate file: \(\./\)\?missing.pem"
	ok $? "so does a relative one ($r)"
	sed -i '/^lava.ca_file = /d' "$conf"
	q "SELECT pg_reload_conf()" >/dev/null
	rm -f "$link"
	link=
else
	for t in 1 2 3 4 5; do echo "ok $((_tap_n + t)) # skip $certs is not writable"; done
	_tap_n=$((_tap_n + 5))
fi

# a bundle rewritten in place is read again at the next reload: curl keeps
# the store it read for a bundle, but not across a change lava sees
cp "$dir/other.pem" "$dir/edit.pem"
server_set lava.ca_file "'$dir/edit.pem'"
sleep 0.5
is "$(ask gpt-tls t-edit1 | cut -d'|' -f1)" error "a bundle holding another CA refuses the server"
cp "$dir/ca.pem" "$dir/edit.pem"
q "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
r=$(ask gpt-tls t-edit2)
is "${r%%|*}" completed "once it holds the test CA and the server reloads, the server is accepted ($r)"

# HTTP/2: nginx terminates TLS with h2 in front of the plain mock; 30 calls
# of 0.8 s sent together share one connection (CURLOPT_PIPEWAIT)
server_set lava.ca_file "'$dir/ca.pem'"
mkdir -p "$dir/nginx/tmp"
cat >"$dir/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 1024; }
http {
	log_format conn '\$connection \$server_protocol \$status';
	access_log $dir/nginx/access.log conn;
	client_body_temp_path $dir/nginx/tmp/body;
	proxy_temp_path $dir/nginx/tmp/proxy;
	fastcgi_temp_path $dir/nginx/tmp/fastcgi;
	uwsgi_temp_path $dir/nginx/tmp/uwsgi;
	scgi_temp_path $dir/nginx/tmp/scgi;
	client_body_buffer_size 1m;
	server {
		listen 127.0.0.1:$H2_PORT ssl http2;
		ssl_certificate $dir/srv.pem;
		ssl_certificate_key $dir/srv.key;
		location / {
			proxy_pass http://127.0.0.1:$MOCK_PORT;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
EOF
/usr/sbin/nginx -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf" || cat "$dir/nginx/error.log"
q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('tls_h2', 'https://127.0.0.1:$H2_PORT/v1', 'sk-tls-h2')
	ON CONFLICT DO NOTHING" >/dev/null
q "INSERT INTO lava.models VALUES ('tls_h2', 'gpt-h2', 1, 2, 10) ON CONFLICT DO NOTHING" >/dev/null
sleep 0.5
# burst N LATENCY_MS: N calls to gpt-h2 sent together; three tests (all
# completed, all over HTTP/2 in nginx's log); sets conns to the number of
# connections nginx saw, and empties its log
burst() {
	local ids
	ids=$(q "SELECT string_agg(lava.prompt('gpt-h2', 'burst $1 ' || g || ' #latency_ms=$2 #in=10 #out=5', '{}', '$key')::text, ',')
		FROM generate_series(1, $1) g")
	q "SELECT lava.await(i, '30 seconds') FROM unnest('{$ids}'::bigint[]) i" >/dev/null
	is "$(count_status "$ids" completed)" "$1" "$1 calls over HTTP/2 completed"
	is "$(awk '$2 == "HTTP/2.0" && $3 == 200' "$dir/nginx/access.log" | wc -l)" "$1" "nginx served all $1 over HTTP/2"
	conns=$(awk '{print $1}' "$dir/nginx/access.log" | sort -u | wc -l)
	diag "connections used for $1 concurrent calls: $conns"
	: >"$dir/nginx/access.log"
	kill -USR1 "$(cat "$dir/nginx/nginx.pid")"
	sleep 0.3
}
burst 30 800
[ "$conns" -le 2 ]
ok $? "they shared one connection, not one each ($conns)"

# a request body larger than curl's send buffer (16 KiB), which an HTTP/2
# body goes through, arrives whole
id=$(q "SELECT lava.prompt('gpt-h2', 'big body #id=t-bigbody ' || repeat('x', 100000), '{}', '$key')")
q "SELECT lava.await($id, '30 seconds')" >/dev/null
is "$(q "SELECT status FROM lava.request_store WHERE request_id = $id")/$(mock_log "'#id=t-bigbody' in json.dumps(r['body'])" |
	/usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["body"]["messages"][0]["content"]))')" \
	"completed/100023" "a 100 KB prompt over HTTP/2 completes, the upstream got all of it"
: >"$dir/nginx/access.log"
kill -USR1 "$(cat "$dir/nginx/nginx.pid")"
sleep 0.3

# the origin is now known to answer over HTTP/2: 200 calls sent together take
# at most lava.max_concurrency / 50 + 1 = 6 connections; curl 7.88 alone
# opens one connection for each call that finds the open ones full (101)
burst 200 1500
[ "$conns" -le 7 ]
ok $? "they took at most 7 connections ($conns)"
# the first burst's connection, on the handle for origins not known to be
# HTTP/2, was closed once that handle had no call left: only the bounded
# HTTP/2 connections stay open
open_conns=$(ss -Htn state established "( dport = :$H2_PORT )" | wc -l)
diag "connections open to the HTTP/2 origin after the bursts: $open_conns"
[ "$open_conns" -le 6 ]
ok $? "at most 6 stay open ($open_conns)"
