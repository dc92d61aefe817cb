# http_client.sh: builds test/http_client_test.c (the libcurl multi layer of
# src/http.c, without Postgres) and runs it against the mock upstream.
. "$LAVA_ROOT/test/tap.sh"
bin="$LAVA_TEST_DIR/http_client_test"
if ! gcc -Wall -Wextra -Werror -O2 -o "$bin" "$LAVA_ROOT/test/http_client_test.c" $(pkg-config --cflags --libs libcurl) 2>"$LAVA_TEST_DIR/http_client_test.build"; then
	echo "1..1"
	echo "not ok 1 - http_client_test builds"
	cat "$LAVA_TEST_DIR/http_client_test.build" | sed 's/^/# /'
	exit 1
fi
curl -fsS -X POST "http://127.0.0.1:$MOCK_PORT/_reset" >/dev/null
exec "$bin" "$MOCK_PORT" 300
