-- deferred.sql: settlements deferred while another transaction held a key's
-- row (lava.deferred_settlements).  Until they are made, the key keeps
-- their reservations, the usage report counts them (requests, tokens and
-- cost) and the recount of a changed limit counts them as requests in
-- flight; lava._settle_deferred makes them as lava._settle_many would have,
-- once.  lava._settle_or_defer defers nothing when every key's row is free,
-- and takes a locked key's earlier deferred settlements along.
-- (The deferral itself needs a second transaction holding the row: see
-- test/integration/worker_fairness.sh.)
BEGIN;
SELECT plan(27);

CREATE TEMP TABLE k AS
SELECT lava.create_spend_key('{"name": "deferred", "spend_limit": {"amount": "1.00", "cycle": "total"},
	"request_limit": {"count": 10, "cycle": "total"}}') AS doc;
CREATE TEMP TABLE a (n int, adm lava.admission);
CREATE FUNCTION pg_temp.key() RETURNS text LANGUAGE sql AS $$ SELECT doc ->> 'key' FROM k $$;
CREATE FUNCTION pg_temp.id() RETURNS uuid LANGUAGE sql AS $$ SELECT (doc ->> 'spend_key_id')::uuid FROM k $$;
CREATE FUNCTION pg_temp.doc() RETURNS jsonb LANGUAGE sql AS $$ SELECT lava.get_spend_key(pg_temp.id()) $$;
CREATE FUNCTION pg_temp.usage() RETURNS jsonb LANGUAGE sql AS
	$$ SELECT lava.spend_key_usage(pg_temp.id(), now() - interval '1 day', now() + interval '1 day') -> 'totals' $$;

-- two admitted requests, finished, whose settlements were deferred: one
-- charged 0.10 for 100 + 50 tokens, one released (cancelled: no cost)
INSERT INTO a SELECT g, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.30) FROM generate_series(1, 2) g;
INSERT INTO lava.deferred_settlements (request_id, spend_key_id, admitted_at, reservation, cost, input_tokens, output_tokens)
SELECT -n, (adm).spend_key_id, (adm).admitted_at, (adm).reservation, CASE n WHEN 1 THEN 0.10 END, 100, 50 FROM a;

SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.60', 'deferred: the key keeps both reservations');
SELECT is(pg_temp.doc() ->> 'total_spend', '0.00', 'and has charged nothing yet');
SELECT is(pg_temp.usage() ->> 'total_requests', '2', 'the usage report counts both requests');
SELECT is(pg_temp.usage() ->> 'total_cost', '0.10', 'and the deferred cost');
SELECT is(pg_temp.usage() ->> 'total_usage_tokens', '150', 'and the charged request''s tokens only');
SELECT is((SELECT (cost, requests)::text FROM lava._ledger_since(pg_temp.id(), '-infinity')), '(0,2)',
	'the recount of a changed limit counts them as requests, not yet as spend');

-- a changed cycle recounts the period from the ledger: the deferred
-- requests count, their cost comes with their settlement
SELECT lava.update_spend_key(pg_temp.id(), '{"spend_limit": {"amount": "1.00", "cycle": "daily"},
	"request_limit": {"count": 10, "cycle": "daily"}}');
SELECT is(pg_temp.doc() ->> 'current_spend', '0.00', 'recounted spend: nothing settled yet');
SELECT is((pg_temp.doc() ->> 'current_requests')::int, 2, 'recounted requests: both');

SELECT is((SELECT (settled, remaining)::text FROM lava._settle_deferred()), '(2,0)',
	'lava._settle_deferred makes both (the key row is free) and none remains');
SELECT is((SELECT count(*)::int FROM lava.deferred_settlements WHERE spend_key_id = pg_temp.id()), 0,
	'they leave lava.deferred_settlements');
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.00', 'both reservations are released');
SELECT is(pg_temp.doc() ->> 'total_spend', '0.10', 'the cost is charged');
SELECT is(pg_temp.doc() ->> 'current_spend', '0.10', 'to the period the request was admitted in');
SELECT results_eq($$SELECT requests, input_tokens, output_tokens, cost FROM lava.key_usage_daily WHERE spend_key_id = pg_temp.id()$$,
	$$VALUES (2::bigint, 100::bigint, 50::bigint, 0.10::numeric)$$, 'the ledger has both, the tokens of the charged one');
SELECT is(pg_temp.usage() ->> 'total_requests', '2', 'the usage report still counts 2 requests');
SELECT is(pg_temp.usage() ->> 'total_cost', '0.10', 'and 0.10, not twice');
SELECT is((SELECT (settled, remaining)::text FROM lava._settle_deferred()), '(0,0)', 'a second call finds nothing to do');

-- lava._settle_or_defer with every key's row free: settles at once
INSERT INTO a SELECT 3, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.20);
SELECT is(lava._settle_or_defer(ARRAY[-3::bigint], ARRAY[(adm).spend_key_id], ARRAY[(adm).admitted_at],
								ARRAY[(adm).reservation], ARRAY[0.05], ARRAY[10::bigint], ARRAY[5::bigint]), 0,
	'lava._settle_or_defer with the key row free defers nothing') FROM a WHERE n = 3;
SELECT is(pg_temp.doc() ->> 'total_spend', '0.15', 'and charges the cost at once');
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.00', 'and releases the reservation');
SELECT is(lava._settle_or_defer('{}', '{}', '{}', '{}', '{}', '{}', '{}'), 0, 'nothing to settle: nothing deferred');

-- a recording that locks a key settles the key's earlier deferred
-- settlements along with its own (a busy key is settled whenever one of
-- its answers is recorded)
INSERT INTO a SELECT g, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.10) FROM generate_series(5, 6) g;
INSERT INTO lava.deferred_settlements (request_id, spend_key_id, admitted_at, reservation, cost, input_tokens, output_tokens)
SELECT -5, (adm).spend_key_id, (adm).admitted_at, (adm).reservation, 0.02, 3, 4 FROM a WHERE n = 5;
SELECT is(lava._settle_or_defer(ARRAY[-6::bigint], ARRAY[(adm).spend_key_id], ARRAY[(adm).admitted_at],
								ARRAY[(adm).reservation], ARRAY[0.03], ARRAY[5::bigint], ARRAY[6::bigint]), 0,
	'a recording with a deferred settlement of its key pending defers nothing') FROM a, lava._note_deferred() WHERE n = 6;
SELECT is((SELECT count(*)::int FROM lava.deferred_settlements WHERE spend_key_id = pg_temp.id()), 0,
	'and takes the pending one along');
SELECT is(pg_temp.doc() ->> 'total_spend', '0.20', 'both are charged (0.15 + 0.02 + 0.03)');
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.00', 'both reservations are released');
SELECT results_eq($$SELECT sum(requests), sum(input_tokens), sum(output_tokens), sum(cost) FROM lava.key_usage_daily WHERE spend_key_id = pg_temp.id()$$,
	$$VALUES (5::numeric, 118::numeric, 65::numeric, 0.20::numeric)$$, 'the ledger has all five, once');
SELECT is(lava._settle_or_defer(ARRAY[-4::bigint], ARRAY[gen_random_uuid()], ARRAY[now()], ARRAY[0.1],
								ARRAY[0.1], ARRAY[1::bigint], ARRAY[1::bigint]), 0,
	'a key without a row is not waited for (nothing could ever free it)');

SELECT * FROM finish();
ROLLBACK;
