# worker_pacing.sh: a key's rate_limit paces the queue: dispatch times never
# run ahead of the token bucket (burst 2, then one per second at 60 rpm),
# and another key's requests are not held up meanwhile.
. "$LAVA_ROOT/test/tap.sh"
export TEST_DB=lava_it
plan 5

q "INSERT INTO lava.providers (name, base_url, api_key) VALUES ('pace_oa', 'http://127.0.0.1:$MOCK_PORT/v1', 'sk-p')" >/dev/null
q "INSERT INTO lava.models VALUES ('pace_oa', 'gpt-pace', 1, 1, 10)" >/dev/null
slow=$(q "SELECT lava.create_spend_key('{\"name\": \"paced\", \"rate_limit\": {\"rpm\": 60, \"burst\": 2}}') ->> 'key'")
fast=$(q "SELECT lava.create_spend_key('{\"name\": \"unpaced\"}') ->> 'key'")
curl -fsS -X POST "http://127.0.0.1:$MOCK_PORT/_reset" >/dev/null

psql -X -q -d $TEST_DB -v ON_ERROR_STOP=1 >/dev/null <<SQL
BEGIN;
SELECT lava.prompt('gpt-pace', '#id=paced' || g, '{}', '$slow') FROM generate_series(1, 6) g;
SELECT lava.prompt('gpt-pace', '#id=unpaced' || g, '{}', '$fast') FROM generate_series(1, 3) g;
COMMIT;
SQL
await_all; ok $? "all requests finished"

times() { mock_log "'#id=$1' in json.dumps(r['body'])" | /usr/bin/python3 -c 'import json,sys; print(" ".join("%.3f" % r["time"] for r in json.load(sys.stdin)))'; }
paced=$(times paced)
unpaced=$(times unpaced)
diag "paced arrivals: $paced"
diag "unpaced arrivals: $unpaced"
is "$(echo $paced | wc -w)" 6 "the paced key's 6 requests were sent"
# the k-th dispatch (0-based) may come no earlier than (k - burst + 1) refill intervals after the first
is "$(/usr/bin/python3 -c "
t = sorted(float(x) for x in '$paced'.split())
print(all(t[k] - t[0] >= (k - 1) * 1.0 - 0.05 for k in range(2, len(t))))")" True "dispatch times never exceed the bucket (burst 2, then 1/s)"
is "$(/usr/bin/python3 -c "
t = sorted(float(x) for x in '$paced'.split())
print(t[-1] - t[0] < 8)")" True "and the queue keeps pace with it (6 requests in under 8 s)"
is "$(/usr/bin/python3 -c "
p = sorted(float(x) for x in '$paced'.split()); u = sorted(float(x) for x in '$unpaced'.split())
print(len(u) == 3 and u[-1] < p[2])")" True "the other key was served while the paced key waited"
