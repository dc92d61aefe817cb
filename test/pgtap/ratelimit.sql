-- ratelimit.sql: the shared-memory token bucket behind rate_limit.
BEGIN;
SELECT plan(7);
-- fresh bucket ids: buckets live in shared memory, outside any transaction
CREATE TEMP TABLE b AS SELECT gen_random_uuid() AS a1, gen_random_uuid() AS a2, gen_random_uuid() AS a3;

SELECT is(lava._take_token((SELECT a1 FROM b), 60, 3), 0::float8, 'token 1 of burst 3');
SELECT is(lava._take_token((SELECT a1 FROM b), 60, 3), 0::float8, 'token 2 of burst 3');
SELECT is(lava._take_token((SELECT a1 FROM b), 60, 3), 0::float8, 'token 3 of burst 3');
SELECT cmp_ok(lava._take_token((SELECT a1 FROM b), 60, 3), '>', 0.5::float8,
	'the 4th waits (about 1 s at 60 rpm)');
SELECT cmp_ok(lava._take_token((SELECT a1 FROM b), 60, 3), '<=', 1.0::float8,
	'and the wait is at most one refill interval');
SELECT is(lava._take_token((SELECT a2 FROM b), 60, 3), 0::float8, 'another key has its own bucket');
-- without burst the capacity is rpm
SELECT is((SELECT count(*) FROM generate_series(1, 12) g
		   WHERE lava._take_token((SELECT a3 FROM b), 10, NULL) = 0), 10::bigint,
	'burst null: capacity = rpm (10 of 12 immediate)');

SELECT * FROM finish();
ROLLBACK;
