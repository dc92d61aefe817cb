# test/lib.sh: shell helpers shared by the test runner, the demo and the
# integration tests: a throwaway PostgreSQL 15 cluster run as the postgres
# user, and the mock upstream.  Source it; it defines functions only.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGXS_DIR=$(dirname "$(dirname "$(dirname "$("$PGBIN/pg_config" --pgxs)")")")
LAVA_ROOT=${LAVA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# as_postgres CMD...: runs a command as the postgres user (Postgres refuses root).
as_postgres() {
	if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cluster_start DIR PORT [CONF_LINE...]: initdb + start a cluster in DIR/data
# with lava preloaded; its socket is in DIR, its log is DIR/server.log.
cluster_start() {
	local dir=$1 port=$2
	shift 2
	mkdir -p "$dir"
	chown postgres: "$dir"
	chmod 755 "$dir"
	as_postgres "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log"; return 1; }
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$dir'"
		echo "shared_preload_libraries = 'lava'"
		echo "fsync = off"
		echo "max_connections = 120"
		echo "log_line_prefix = '%m [%p] %q%a '"
		echo "log_min_messages = info"
		for line in "$@"; do echo "$line"; done
	} >>"$dir/data/postgresql.conf"
	as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
		{ cat "$dir/server.log"; return 1; }
}

# cluster_stop DIR: stops the cluster in DIR if it runs.
cluster_stop() {
	local dir=$1
	if [ -f "$dir/data/postmaster.pid" ]; then
		as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
			as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
}

# mock_start DIR PORT: starts test/mock_upstream.py on 127.0.0.1:PORT.
mock_start() {
	local dir=$1 port=$2
	/usr/bin/python3 "$LAVA_ROOT/test/mock_upstream.py" --port "$port" --pidfile "$dir/mock.pid" \
		>"$dir/mock.log" 2>&1 &
	local i
	for i in $(seq 1 100); do
		curl -fsS "http://127.0.0.1:$port/_health" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "mock upstream did not start" >&2
	cat "$dir/mock.log" >&2
	return 1
}

# mock_stop DIR: stops the mock upstream started by mock_start.
mock_stop() {
	local dir=$1
	if [ -f "$dir/mock.pid" ]; then
		kill "$(cat "$dir/mock.pid")" 2>/dev/null || true
		rm -f "$dir/mock.pid"
	fi
}

# tls_certs DIR: a test CA (DIR/ca.pem, ca.key) and a server certificate it
# signs for 127.0.0.1 only (DIR/srv.pem, srv.key), all P-256, valid 2 days.
tls_certs() {
	local d=$1
	local newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
	mkdir -p "$d"
	(
		cd "$d" &&
			openssl req -x509 "${newkey[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=lava test CA" \
				-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign &&
			openssl req "${newkey[@]}" -keyout srv.key -out srv.csr -subj "/CN=127.0.0.1" &&
			printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf &&
			openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf
	) >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; return 1; }
}
