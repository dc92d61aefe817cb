-- admission.sql: the admission and settlement core (order of checks,
-- limits, reservations, settlement, counters, ledger).
BEGIN;
SELECT plan(38);

CREATE TEMP TABLE k AS
SELECT lava.create_spend_key('{"name": "adm", "allowed_providers": ["openai"], "allowed_models": ["gpt-4o-mini"],
	"spend_limit": {"amount": "1.00", "cycle": "daily"}, "request_limit": {"count": 3, "cycle": "daily"}}') AS doc;
CREATE TEMP TABLE a (n int, adm lava.admission);
-- helpers: the key and its id
CREATE FUNCTION pg_temp.key() RETURNS text LANGUAGE sql AS $$ SELECT doc ->> 'key' FROM k $$;
CREATE FUNCTION pg_temp.id() RETURNS uuid LANGUAGE sql AS $$ SELECT (doc ->> 'spend_key_id')::uuid FROM k $$;
CREATE FUNCTION pg_temp.doc() RETURNS jsonb LANGUAGE sql AS $$ SELECT lava.get_spend_key(pg_temp.id()) $$;

-- refusals, in the documented order
SELECT throws_ok($$SELECT lava._admit('lava_sk_' || repeat('x', 43), 'openai', 'gpt-4o-mini', 0.1)$$,
	'28000', 'unknown or revoked spend key', 'unknown key: 28000');
SELECT throws_ok($$SELECT lava._admit('nope', 'openai', 'gpt-4o-mini', 0.1)$$,
	'28000', 'malformed spend key', 'malformed key: 28000');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'anthropic', 'gpt-4o-mini', 0.1)$$,
	'42501', 'provider not allowed for this spend key', 'provider outside the allow-list: 42501');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o', 0.1)$$,
	'42501', 'model not allowed for this spend key', 'model outside the allow-list: 42501');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', NULL)$$,
	'42501', 'model has no prices and this spend key has a spend_limit', 'unpriced model with a spend_limit: 42501');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 1.01)$$,
	'53400', 'spend limit reached', 'a reservation above the whole limit: 53400');
SELECT is((pg_temp.doc() ->> 'total_requests')::int, 0, 'refused admissions counted nothing');

-- admissions hold reservations
INSERT INTO a SELECT 1, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.40);
SELECT is((adm).reservation, 0.40, 'admission returns its reservation') FROM a WHERE n = 1;
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.40', 'reserved_spend holds it');
SELECT is(pg_temp.doc() ->> 'remaining_spend', '0.60', 'remaining = amount - spent - reserved');
SELECT is((pg_temp.doc() ->> 'current_requests')::int, 1, 'current_requests counts the admission');
SELECT isnt(pg_temp.doc() ->> 'last_used_at', NULL, 'last_used_at set by an admission');
INSERT INTO a SELECT 2, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.60);
SELECT is(pg_temp.doc() ->> 'remaining_spend', '0.00', 'exactly the limit can be reserved');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.000001)$$,
	'53400', 'spend limit reached', 'nothing more fits');

-- settlement replaces the reservation by the cost
SELECT lava._settle((adm).spend_key_id, (adm).admitted_at, (adm).reservation, 0.15, 100, 50) FROM a WHERE n = 1;
SELECT is(pg_temp.doc() ->> 'current_spend', '0.15', 'settled cost is current_spend');
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.60', 'its reservation is released');
SELECT is(pg_temp.doc() ->> 'remaining_spend', '0.25', 'remaining after settlement');
-- release without cost (a cancelled request)
SELECT lava._settle((adm).spend_key_id, (adm).admitted_at, (adm).reservation, NULL) FROM a WHERE n = 2;
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.00', 'a release frees the reservation');
SELECT is(pg_temp.doc() ->> 'total_spend', '0.15', 'a release charges nothing');

-- the request limit: 3 per day, 2 used
INSERT INTO a SELECT 3, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.01);
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.01)$$,
	'53400', 'request limit reached', 'the 4th request of the day is refused');
SELECT is((pg_temp.doc() ->> 'current_requests')::int, 3, 'the refused one is not counted');

-- the daily ledger matches the counters
SELECT results_eq($$SELECT requests, input_tokens, output_tokens, cost FROM lava.key_usage_daily WHERE spend_key_id = pg_temp.id()$$,
	$$VALUES (2::bigint, 100::bigint, 50::bigint, 0.15::numeric)$$,
	'daily ledger: the two settled requests (charged and released), tokens and cost; the third is still in flight');

-- lazy rollover: pretend the stored periods started yesterday
UPDATE lava.spend_key_store SET spend_period_start = spend_period_start - interval '1 day',
	request_period_start = request_period_start - interval '1 day' WHERE spend_key_id = pg_temp.id();
SELECT is(pg_temp.doc() ->> 'current_spend', '0.00', 'a passed period reads as zero spend');
SELECT is((pg_temp.doc() ->> 'current_requests')::int, 0, 'and zero requests');
SELECT is(pg_temp.doc() ->> 'reserved_spend', '0.01', 'in-flight reservations still hold budget');
INSERT INTO a SELECT 4, lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0.99);
SELECT is((pg_temp.doc() ->> 'current_requests')::int, 1, 'admission after the boundary starts a new period');
-- the request admitted in the old period settles into the old period only
SELECT lava._settle((adm).spend_key_id, (adm).admitted_at - interval '1 day', (adm).reservation, 0.01) FROM a WHERE n = 3;
SELECT is(pg_temp.doc() ->> 'current_spend', '0.00', 'an old period''s cost does not count in the new one');
SELECT is(pg_temp.doc() ->> 'total_spend', '0.16', 'but counts in the lifetime total');

-- changing the cycle recomputes the current counters from the ledger
SELECT lives_ok($$SELECT lava.update_spend_key(pg_temp.id(), '{"spend_limit": {"amount": "5", "cycle": "monthly"}}')$$, 'cycle changed');
SELECT is(pg_temp.doc() ->> 'current_spend',
	(SELECT lava._money(sum(cost)) FROM lava.key_usage_daily WHERE spend_key_id = pg_temp.id()
	   AND day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date),
	'daily -> monthly: this month''s settled cost (by admission day) is current');
SELECT lives_ok($$SELECT lava.update_spend_key(pg_temp.id(), '{"spend_limit": null}')$$, 'limit cleared');
SELECT is(pg_temp.doc() ->> 'current_spend', pg_temp.doc() ->> 'total_spend', 'no limit: current = lifetime total');

-- paused and expired keys are refused before anything else
SELECT lives_ok($$SELECT lava.update_spend_key(pg_temp.id(), '{"status": "paused"}')$$, 'paused');
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'anthropic', 'x', 0)$$,
	'55000', 'spend key is paused', 'paused: 55000 (before the allow-lists)');
UPDATE lava.spend_key_store SET expires_at = now() - interval '1 minute' WHERE spend_key_id = pg_temp.id();
SELECT throws_ok($$SELECT lava._admit(pg_temp.key(), 'openai', 'gpt-4o-mini', 0)$$,
	'28000', 'spend key has expired', 'expired: 28000');

-- a revoked key's reservations still settle
SELECT is(lava.revoke_spend_key(pg_temp.id()), '{"success": true}'::jsonb, 'revoked');
SELECT lives_ok($$SELECT lava._settle((adm).spend_key_id, (adm).admitted_at, (adm).reservation, 0.5) FROM a WHERE n = 4$$,
	'settlement works on a revoked key');
SELECT is((SELECT total_spend FROM lava.spend_key_store WHERE spend_key_id = pg_temp.id()), 0.66::numeric,
	'and is accounted');

SELECT * FROM finish();
ROLLBACK;
