-- claim.sql: lava._claim's shares and per-key caps, called directly (no
-- worker serves this database): the cap for keys with nothing in flight,
-- the room the worker passes for keys near their cap, oldest first within a
-- key, and the rows held back staying queued and untouched.
BEGIN;
SELECT plan(16);

INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES
	('cl', 'http://127.0.0.1:9/v1', 'sk-cl', 'openai');
INSERT INTO lava.models VALUES ('cl', 'gpt-claim', 1, 1, 10);
CREATE TEMP TABLE ck AS SELECT
	lava.create_spend_key('{"name": "claim a"}') AS a,
	lava.create_spend_key('{"name": "claim b"}') AS b;
CREATE FUNCTION pg_temp.kid(which text) RETURNS uuid LANGUAGE sql AS
	$$ SELECT ((to_jsonb(ck) -> which) ->> 'spend_key_id')::uuid FROM ck $$;
CREATE TEMP TABLE qa AS SELECT count(lava.prompt('gpt-claim', 'a ' || g, '{}', (SELECT a ->> 'key' FROM ck))) FROM generate_series(1, 5) g;
CREATE TEMP TABLE qb AS SELECT count(lava.prompt('gpt-claim', 'b ' || g, '{}', (SELECT b ->> 'key' FROM ck))) FROM generate_series(1, 3) g;
CREATE TEMP TABLE got (request_id bigint, spend_key_id uuid);
CREATE FUNCTION pg_temp.n(which text) RETURNS bigint LANGUAGE sql AS
	$$ SELECT count(*) FROM got WHERE spend_key_id = pg_temp.kid(which) $$;

-- a cap of 2 for keys with nothing in flight
SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(10, 2) c;
SELECT is(pg_temp.n('a'), 2::bigint, 'key_cap 2: key A (5 queued) gets 2 of the 10 asked');
SELECT is(pg_temp.n('b'), 2::bigint, 'key_cap 2: key B (3 queued) gets 2');
SELECT is((SELECT array_agg(request_id ORDER BY request_id) FROM got WHERE spend_key_id = pg_temp.kid('a')),
		  (SELECT (array_agg(request_id ORDER BY request_id))[1:2] FROM lava.request_store WHERE spend_key_id = pg_temp.kid('a')),
		  'a key''s oldest requests go first');
SELECT is((SELECT count(*) FROM lava.request_store WHERE status = 'running' AND attempts = 1), 4::bigint,
		  'the 4 claimed are running, one attempt each');
SELECT is((SELECT count(*) FROM lava.request_store WHERE status = 'queued' AND attempts = 0 AND started_at IS NULL), 4::bigint,
		  'the 4 held back stay queued, untouched');
SELECT is((SELECT count(*) FROM got g JOIN lava.request_store r USING (request_id, spend_key_id)), 4::bigint,
		  'each claimed row comes with its own spend_key_id');
ROLLBACK TO SAVEPOINT s;

-- the worker's room for a key near its cap
SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(10, 10, ARRAY[pg_temp.kid('a')], ARRAY[0]) c;
SELECT is(pg_temp.n('a'), 0::bigint, 'room 0: nothing of key A');
SELECT is(pg_temp.n('b'), 3::bigint, 'and key B gets all its 3, FIFO top-up included');
ROLLBACK TO SAVEPOINT s;
DELETE FROM got;

SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(10, 10, ARRAY[pg_temp.kid('a')], ARRAY[1]) c;
SELECT is(pg_temp.n('a'), 1::bigint, 'room 1: one of key A');
SELECT is(pg_temp.n('b'), 3::bigint, 'key B, not near its cap, gets all its 3');
ROLLBACK TO SAVEPOINT s;
DELETE FROM got;

-- no cap: fair shares, then the FIFO top-up
SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(3) c;
SELECT is((SELECT count(*) FROM got), 3::bigint, 'no cap: 3 asked, 3 claimed');
SELECT ok(pg_temp.n('a') >= 1 AND pg_temp.n('b') >= 1, 'both keys get a share of 3 slots');
ROLLBACK TO SAVEPOINT s;
DELETE FROM got;

SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(10) c;
SELECT is((SELECT count(*) FROM got), 8::bigint, 'no cap: every queued request when there is room');
ROLLBACK TO SAVEPOINT s;
DELETE FROM got;

-- a cap above the request: it does not bind
SAVEPOINT s;
INSERT INTO got SELECT c.request_id, c.spend_key_id FROM lava._claim(10, 64) c;
SELECT is(pg_temp.n('a'), 5::bigint, 'key_cap 64: key A gets its 5');
SELECT is(pg_temp.n('b'), 3::bigint, 'key_cap 64: key B gets its 3');
ROLLBACK TO SAVEPOINT s;
DELETE FROM got;

-- the claim is internal
SELECT ok(NOT has_function_privilege('lava_user', 'lava._claim(integer, integer, uuid[], integer[])', 'EXECUTE'),
		  'lava_user cannot call lava._claim');

SELECT * FROM finish();
ROLLBACK;
