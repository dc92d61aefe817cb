-- pagination.sql: list_spend_keys pages newest first with a stable cursor.
BEGIN;
SELECT plan(12);

-- 25 keys with distinct creation times
CREATE TEMP TABLE made AS
SELECT n, (lava.create_spend_key(format('{"name": "k%s"}', n)::jsonb) ->> 'spend_key_id')::uuid AS id
FROM generate_series(1, 25) n;
UPDATE lava.spend_key_store s SET created_at = now() - (100 - m.n) * interval '1 second'
FROM made m WHERE s.spend_key_id = m.id;

CREATE TEMP TABLE p1 AS SELECT lava.list_spend_keys(NULL, 10) AS page;
SELECT is(jsonb_array_length(page -> 'data'), 10, 'page 1 has 10 keys') FROM p1;
SELECT is((page -> 'has_more')::boolean, true, 'page 1 has more') FROM p1;
SELECT is(page #>> '{data,0,name}', 'k25', 'newest first') FROM p1;
SELECT isnt(page ->> 'next_cursor', NULL, 'page 1 has a cursor') FROM p1;

-- a key created and one revoked between pages do not disturb the walk
SELECT lava.create_spend_key('{"name": "newcomer"}') IS NOT NULL AS created;
SELECT lava.revoke_spend_key(id) FROM made WHERE n = 24;

CREATE TEMP TABLE p2 AS SELECT lava.list_spend_keys((SELECT page ->> 'next_cursor' FROM p1), 10) AS page;
SELECT is(page #>> '{data,0,name}', 'k15', 'page 2 continues after page 1') FROM p2;
SELECT is(jsonb_array_length(page -> 'data'), 10, 'page 2 has 10 keys') FROM p2;
CREATE TEMP TABLE p3 AS SELECT lava.list_spend_keys((SELECT page ->> 'next_cursor' FROM p2), 10) AS page;
SELECT is(jsonb_array_length(page -> 'data'), 5, 'page 3 has the last 5') FROM p3;
SELECT is((page -> 'has_more')::boolean, false, 'and no more') FROM p3;
SELECT is(page -> 'next_cursor', 'null'::jsonb, 'no cursor on the last page') FROM p3;

-- together: every key once, in order
SELECT is((SELECT array_agg(d ->> 'name' ORDER BY ord)
		   FROM (SELECT page FROM p1 UNION ALL SELECT page FROM p2 UNION ALL SELECT page FROM p3) pages(page),
				jsonb_array_elements(page -> 'data') WITH ORDINALITY AS e(d, ord0),
				LATERAL (SELECT (d ->> 'created_at')::timestamptz) t(ts),
				LATERAL (SELECT -extract(epoch FROM t.ts)) o(ord)),
	(SELECT array_agg('k' || n ORDER BY n DESC) FROM made),
	'the three pages hold all 25 keys, newest first, none twice');
SELECT is(jsonb_array_length(lava.list_spend_keys() -> 'data'), 10, 'lim defaults to 10');
SELECT is(jsonb_array_length(lava.list_spend_keys(NULL, 100) -> 'data'), 25, 'the revoked key is never listed, the new one is');

SELECT * FROM finish();
ROLLBACK;
