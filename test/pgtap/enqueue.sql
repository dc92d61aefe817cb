-- enqueue.sql: lava.prompt's C fast path (src/enqueue.c, src/direct.c) against
-- lava._prompt_sql, the PL/pgSQL implementation it falls back to: the same
-- rows and key counters for the same inputs, the fallback taken for each
-- uncommon case (and so the same errors), and the limits held on the fast
-- path; the tables' shape checked before direct access, and every index
-- kept.  Which path ran is read from pg_stat_get_xact_function_calls: the
-- C code counts its calls of lava._prompt_sql like the executor would.
BEGIN;
SELECT plan(126);
SET LOCAL track_functions = 'all';

INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES
	('oa', 'http://127.0.0.1:9/v1', NULL, 'openai'),
	('an', 'http://127.0.0.1:9/v1', NULL, 'anthropic'),
	('dup1', 'http://127.0.0.1:9/v1', NULL, 'openai'),
	('dup2', 'http://127.0.0.1:9/v1', NULL, 'openai'),
	('off', 'http://127.0.0.1:9/v1', NULL, 'openai');
UPDATE lava.providers SET enabled = false WHERE name = 'off';
INSERT INTO lava.models VALUES
	('oa', 'gpt-mini', 0.15, 0.60, 1000),
	('oa', 'gpt-free', NULL, NULL, NULL),
	('oa', 'gpt-freecap', NULL, NULL, 77),
	('oa', 'gpt-nocap', 1, 2, NULL),
	('oa', 'gpt-odd', 0.333333, 1.1, 3),
	('an', 'claude-s', 3, 15, 2000),
	('an', 'claude-nocap', 3, 15, NULL),
	('dup1', 'gpt-dup', 1, 1, 10),
	('dup2', 'gpt-dup', 2, 2, 10),
	('off', 'gpt-off', 1, 1, 10),
	('oa', 'gpt-shadowed', 1, 1, 10),
	('off', 'gpt-shadowed', 9, 9, 10);

CREATE TEMP TABLE keys AS SELECT
	lava.create_spend_key('{"name": "fast", "spend_limit": {"amount": "1000.00", "cycle": "monthly"}}') AS fast,
	lava.create_spend_key('{"name": "slow", "spend_limit": {"amount": "1000.00", "cycle": "monthly"}}') AS slow,
	lava.create_spend_key('{"name": "free"}') AS free,
	lava.create_spend_key('{"name": "three", "request_limit": {"count": 3, "cycle": "daily"}}') AS three,
	lava.create_spend_key('{"name": "tight", "spend_limit": {"amount": "0.0016", "cycle": "total"}}') AS tight,
	lava.create_spend_key('{"name": "narrow", "allowed_models": ["gpt-mini"]}') AS narrow,
	lava.create_spend_key('{"name": "paused"}') AS paused,
	lava.create_spend_key('{"name": "expired"}') AS expired,
	lava.create_spend_key('{"name": "revoked"}') AS revoked,
	lava.create_spend_key('{"name": "only-an", "allowed_providers": ["an"]}') AS only_an;
CREATE FUNCTION pg_temp.k(which text) RETURNS text LANGUAGE sql AS
	$$ SELECT (to_jsonb(keys) -> which) ->> 'key' FROM keys $$;
CREATE FUNCTION pg_temp.kid(which text) RETURNS uuid LANGUAGE sql AS
	$$ SELECT ((to_jsonb(keys) -> which) ->> 'spend_key_id')::uuid FROM keys $$;
DO $$ BEGIN PERFORM lava.update_spend_key(pg_temp.kid('paused'), '{"status": "paused"}'); END $$;
DO $$ BEGIN PERFORM lava.revoke_spend_key(pg_temp.kid('revoked')); END $$;
UPDATE lava.spend_key_store SET expires_at = now() - interval '1 second' WHERE spend_key_id = pg_temp.kid('expired');

-- how many times lava.prompt fell back to lava._prompt_sql in this transaction
CREATE FUNCTION pg_temp.fallbacks() RETURNS bigint LANGUAGE sql AS
	$$ SELECT COALESCE(pg_stat_get_xact_function_calls('lava._prompt_sql(text,text,jsonb,text)'::regprocedure), 0) $$;
-- a request row as text, without what differs between two calls (id, times)
CREATE FUNCTION pg_temp.row_of(id bigint) RETURNS text LANGUAGE sql AS $$
	SELECT concat_ws(' | ', r.status, r.role_name, r.provider, r.model, r.endpoint, r.method, r.body::text,
					 r.request_shape, r.input_price::text, r.output_price::text, r.reservation::text,
					 r.metadata::text, r.attempts, pg_column_size(r.body))
	FROM lava.request_store r WHERE r.request_id = id $$;
-- the error a statement raises: SQLSTATE, message, detail, hint
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text; msg text; det text; hin text;
BEGIN
	EXECUTE q;
	RETURN NULL;
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
	RETURN concat_ws(' / ', st, msg, det, hin);
END $$;
-- lava.prompt and lava._prompt_sql on the same arguments, with keys that
-- start equal (fast and slow): both rows and both keys' counters compared;
-- returns the number of fallbacks taken by the lava.prompt call.
CREATE TEMP TABLE pairs (label text, fast_row text, slow_row text, fast_key text, slow_key text, fell_back bigint,
						 fast_at timestamptz, fast_clock timestamptz);
CREATE FUNCTION pg_temp.pair(label text, model text, prompt text, options jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	before bigint := pg_temp.fallbacks();
	t0 timestamptz := clock_timestamp();
	f bigint := lava.prompt(model, prompt, options, pg_temp.k('fast'));
	n bigint := pg_temp.fallbacks() - before;
	s bigint := lava._prompt_sql(model, prompt, options, pg_temp.k('slow'));
BEGIN
	INSERT INTO pairs SELECT label, pg_temp.row_of(f), pg_temp.row_of(s),
		(SELECT concat_ws(' | ', period_requests, total_requests, reserved_spend, period_spend, spend_period_start, request_period_start)
		 FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('fast')),
		(SELECT concat_ws(' | ', period_requests, total_requests, reserved_spend, period_spend, spend_period_start, request_period_start)
		 FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('slow')),
		n, (SELECT admitted_at FROM lava.request_store WHERE request_id = f), t0;
END $$;

-- the same rows, and the fast path taken, for the inputs it handles
DO $$ BEGIN PERFORM pg_temp.pair('openai, max_tokens', 'gpt-mini', 'hello', '{"max_tokens": 16}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('openai, model cap', 'gpt-mini', 'hello', '{}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('anthropic, max_tokens', 'claude-s', 'hi', '{"max_tokens": 50}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('anthropic, model cap', 'claude-s', 'hi', '{}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('odd prices, rounding', 'gpt-odd', 'x', '{"max_tokens": 7}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('largest max_tokens', 'gpt-mini', 'x', '{"max_tokens": 100000000}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('a prompt to escape', 'gpt-mini', E'quote " backslash \\ tab \t newline \n unicode é € 😀 <>&''', '{"max_tokens": 1}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('a long prompt', 'gpt-mini', repeat('long prompt ', 5000), '{"max_tokens": 3}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('disabled provider not a route', 'gpt-shadowed', 'x', '{}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('max_tokens 1e2 (jsonb keeps 100)', 'gpt-mini', 'x', '{"max_tokens": 1e2}'); END $$;
-- (unpriced models need keys without a spend limit)
DO $$ BEGIN PERFORM lava.update_spend_key(pg_temp.kid(w), '{"spend_limit": null}') FROM unnest(ARRAY['fast', 'slow']) w; END $$;
DO $$ BEGIN PERFORM pg_temp.pair('uncapped unpriced: no cap in the body', 'gpt-free', 'x', '{}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('unpriced with a cap', 'gpt-freecap', 'x', '{}'); END $$;
DO $$ BEGIN PERFORM pg_temp.pair('unpriced, max_tokens', 'gpt-free', 'x', '{"max_tokens": 5}'); END $$;

-- periods that rolled over since the keys' last admission: counters reset by both paths
UPDATE lava.spend_key_store SET
	request_cycle = 'daily', request_limit_count = 5, period_requests = 5,
	request_period_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '2 days',
	spend_cycle = 'weekly', spend_limit_amount = 10, period_spend = 9.9999, reserved_spend = 0,
	spend_period_start = date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 week'
WHERE spend_key_id IN (pg_temp.kid('fast'), pg_temp.kid('slow'));
DO $$ BEGIN PERFORM pg_temp.pair('periods rolled over', 'gpt-mini', 'x', '{"max_tokens": 9}'); END $$;
-- and a monthly request cycle, a total spend cycle
UPDATE lava.spend_key_store SET request_cycle = 'monthly', spend_cycle = 'total'
WHERE spend_key_id IN (pg_temp.kid('fast'), pg_temp.kid('slow'));
DO $$ BEGIN PERFORM pg_temp.pair('monthly and total cycles', 'gpt-mini', 'x', '{"max_tokens": 9}'); END $$;

SELECT is(fast_row, slow_row, 'same row: ' || label) FROM pairs ORDER BY label;
SELECT is(fast_key, slow_key, 'same key counters after: ' || label) FROM pairs ORDER BY label;
SELECT is(fell_back, 0::bigint, 'fast path taken: ' || label) FROM pairs ORDER BY label;
SELECT ok(fast_at BETWEEN fast_clock AND clock_timestamp(), 'admitted_at is the clock at admission: ' || label)
FROM pairs WHERE label = 'openai, max_tokens';
SELECT is((SELECT count(*) FROM lava.request_store WHERE created_at = now() AND next_attempt_at = now()
		   AND spend_key_id = pg_temp.kid('fast')), (SELECT count(*) FROM pairs),
	'the fast path''s rows are created and due at now(), as the columns'' defaults');

-- role_name is the invoker, not the owner of the SECURITY DEFINER function
CREATE ROLE lava_enqueue_tap_app;
GRANT lava_user TO lava_enqueue_tap_app;
SELECT pg_temp.k('free') AS free_key \gset
SET LOCAL ROLE lava_enqueue_tap_app;
SELECT lava.prompt('gpt-mini', 'as an app', '{"max_tokens": 2}', :'free_key') AS app_id \gset
RESET ROLE;
SELECT is((SELECT role_name FROM lava.request_store WHERE request_id = :app_id), 'lava_enqueue_tap_app',
	'role_name is the invoker');

-- the session key (lava.login) is used by the fast path too
DO $$ BEGIN PERFORM lava._set_session_key(pg_temp.k('free')); END $$;
CREATE TEMP TABLE f0 AS SELECT pg_temp.fallbacks() AS n;
CREATE TEMP TABLE s1 AS SELECT lava.prompt('gpt-mini', 'via session', '{"max_tokens": 2}') AS request_id;
SELECT is(pg_temp.fallbacks(), (SELECT n FROM f0), 'the session key: fast path');
SELECT is((SELECT spend_key_id FROM lava.request_store r JOIN s1 USING (request_id)), pg_temp.kid('free'),
	'the session key: spent through it');
DO $$ BEGIN PERFORM lava._set_session_key(NULL); END $$;

-- each uncommon case falls back, so lava.prompt returns or raises what lava._prompt_sql does
CREATE TEMP TABLE odd (label text, model text, prompt text, options jsonb, key text);
INSERT INTO odd VALUES
	('system option', 'gpt-mini', 'x', '{"system": "be brief", "max_tokens": 3}', 'free'),
	('temperature option', 'gpt-mini', 'x', '{"temperature": 0.5}', 'free'),
	('provider option', 'gpt-mini', 'x', '{"provider": "oa"}', 'free'),
	('metadata option', 'gpt-mini', 'x', '{"metadata": {"a": 1}}', 'free'),
	('max_tokens null', 'gpt-mini', 'x', '{"max_tokens": null}', 'free'),
	('several providers serve the model', 'gpt-dup', 'x', '{}', 'free');
CREATE TEMP TABLE odd_done AS
SELECT o.label, pg_temp.fallbacks() AS before,
	   pg_temp.row_of(lava.prompt(o.model, o.prompt, o.options, pg_temp.k(o.key))) AS fast_row,
	   pg_temp.fallbacks() AS after,
	   pg_temp.row_of(lava._prompt_sql(o.model, o.prompt, o.options, pg_temp.k(o.key))) AS slow_row
FROM odd o;
SELECT is(after - before, 1::bigint, 'falls back: ' || label) FROM odd_done ORDER BY label;
SELECT is(fast_row, slow_row, 'same row through the fallback: ' || label) FROM odd_done ORDER BY label;

-- errors: the same SQLSTATE, message, detail and hint as lava._prompt_sql
CREATE TEMP TABLE bad (label text, args text, sqlstate text);
INSERT INTO bad VALUES
	('unknown option', $$'gpt-mini', 'x', '{"bogus": 1}', pg_temp.k('free')$$, '22023'),
	('max_tokens 0', $$'gpt-mini', 'x', '{"max_tokens": 0}', pg_temp.k('free')$$, '22023'),
	('max_tokens 16.0', $$'gpt-mini', 'x', '{"max_tokens": 16.0}', pg_temp.k('free')$$, '22P02'),
	('max_tokens 1.5', $$'gpt-mini', 'x', '{"max_tokens": 1.5}', pg_temp.k('free')$$, '22023'),
	('max_tokens a string', $$'gpt-mini', 'x', '{"max_tokens": "16"}', pg_temp.k('free')$$, '22023'),
	('max_tokens too large', $$'gpt-mini', 'x', '{"max_tokens": 100000001}', pg_temp.k('free')$$, '22023'),
	('max_tokens negative', $$'gpt-mini', 'x', '{"max_tokens": -3}', pg_temp.k('free')$$, '22023'),
	('options an array', $$'gpt-mini', 'x', '[]', pg_temp.k('free')$$, '22023'),
	('null model', $$NULL, 'x', '{}', pg_temp.k('free')$$, '22023'),
	('null prompt', $$'gpt-mini', NULL, '{}', pg_temp.k('free')$$, '22023'),
	('no key, no session key', $$'gpt-mini', 'x', '{}', NULL$$, '28000'),
	('malformed key', $$'gpt-mini', 'x', '{}', 'lava_sk_short'$$, '28000'),
	('unknown key', $$'gpt-mini', 'x', '{}', 'lava_sk_' || repeat('A', 43)$$, '28000'),
	('paused key', $$'gpt-mini', 'x', '{}', pg_temp.k('paused')$$, '55000'),
	('expired key', $$'gpt-mini', 'x', '{}', pg_temp.k('expired')$$, '28000'),
	('revoked key', $$'gpt-mini', 'x', '{}', pg_temp.k('revoked')$$, '28000'),
	('provider not allowed', $$'gpt-mini', 'x', '{}', pg_temp.k('only_an')$$, '42501'),
	('model not allowed', $$'claude-s', 'x', '{}', pg_temp.k('narrow')$$, '42501'),
	('unknown model', $$'gpt-nope', 'x', '{}', pg_temp.k('free')$$, '42704'),
	('disabled provider only', $$'gpt-off', 'x', '{}', pg_temp.k('free')$$, '42704'),
	('priced, no cap', $$'gpt-nocap', 'x', '{}', pg_temp.k('free')$$, '22023'),
	('anthropic, no cap', $$'claude-nocap', 'x', '{}', pg_temp.k('free')$$, '22023'),
	('unpriced model, spend limit', $$'gpt-free', 'x', '{}', pg_temp.k('tight')$$, '42501');
SELECT is(pg_temp.err('SELECT lava.prompt(' || args || ')'), pg_temp.err('SELECT lava._prompt_sql(' || args || ')'),
	'same error: ' || label) FROM bad ORDER BY label;
SELECT is(left(pg_temp.err('SELECT lava.prompt(' || args || ')'), 5), sqlstate, 'raises ' || sqlstate || ': ' || label)
FROM bad WHERE label IN ('unknown option', 'no key, no session key', 'paused key', 'unknown model', 'model not allowed')
ORDER BY label;

-- the limits hold on the fast path: three requests admitted, the fourth refused
CREATE TEMP TABLE f1 AS SELECT pg_temp.fallbacks() AS n;
DO $$ BEGIN PERFORM lava.prompt('gpt-mini', 'x', '{"max_tokens": 1}', pg_temp.k('three')) FROM generate_series(1, 3); END $$;
SELECT is(pg_temp.fallbacks(), (SELECT n FROM f1), 'request limit: three admitted on the fast path');
SELECT is(pg_temp.err($$SELECT lava.prompt('gpt-mini', 'x', '{"max_tokens": 1}', pg_temp.k('three'))$$),
	pg_temp.err($$SELECT lava._prompt_sql('gpt-mini', 'x', '{"max_tokens": 1}', pg_temp.k('three'))$$),
	'request limit: the fourth refused with lava._prompt_sql''s error');
SELECT is(left(pg_temp.err($$SELECT lava.prompt('gpt-mini', 'x', '{"max_tokens": 1}', pg_temp.k('three'))$$), 29),
	'53400 / request limit reached', 'request limit: 53400');
SELECT is((SELECT period_requests FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('three')), 3::bigint,
	'request limit: the key counted three');
-- spend: each request reserves 100 body bytes x 0.15 + 1000 x 0.60 per million = 0.000615 USD; 0.0016 holds two
DO $$ BEGIN PERFORM lava.prompt('gpt-mini', 'x', '{}', pg_temp.k('tight')) FROM generate_series(1, 2); END $$;
SELECT is((SELECT reserved_spend FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('tight')), 0.00123,
	'spend limit: two reservations held');
SELECT is(left(pg_temp.err($$SELECT lava.prompt('gpt-mini', 'x', '{}', pg_temp.k('tight'))$$), 25),
	'53400 / spend limit reach', 'spend limit: the third refused');
SELECT is((SELECT count(*) FROM lava.request_store WHERE spend_key_id = pg_temp.kid('tight')), 2::bigint,
	'spend limit: two requests queued, the refused one not');

-- the tables' shape is checked: a column with a default, or a trigger, that
-- direct access would not honour sends lava.prompt to lava._prompt_sql, and
-- the fast path comes back once they are gone
CREATE FUNCTION pg_temp.fell_back(key text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	before bigint := pg_temp.fallbacks();
BEGIN
	PERFORM lava.prompt('gpt-mini', 'shape', '{"max_tokens": 1}', pg_temp.k(key));
	RETURN pg_temp.fallbacks() - before;
END $$;
ALTER TABLE lava.request_store ADD COLUMN tap_extra integer DEFAULT 7;
SELECT is(pg_temp.fell_back('free'), 1::bigint, 'a new column with a default: falls back');
SELECT is((SELECT tap_extra FROM lava.request_store ORDER BY request_id DESC LIMIT 1), 7,
	'a new column with a default: the row has the default');
ALTER TABLE lava.request_store DROP COLUMN tap_extra;
SELECT is(pg_temp.fell_back('free'), 0::bigint, 'the column dropped: fast path again');
CREATE TEMP TABLE tap_seen (request_id bigint);
CREATE FUNCTION pg_temp.seen() RETURNS trigger LANGUAGE plpgsql AS
	$$ BEGIN INSERT INTO pg_temp.tap_seen VALUES (NEW.request_id); RETURN NEW; END $$;
CREATE TRIGGER tap_seen AFTER INSERT ON lava.request_store FOR EACH ROW EXECUTE FUNCTION pg_temp.seen();
SELECT is(pg_temp.fell_back('free'), 1::bigint, 'a trigger on lava.request_store: falls back');
SELECT is((SELECT count(*) FROM tap_seen), 1::bigint, 'a trigger on lava.request_store: it fired');
DROP TRIGGER tap_seen ON lava.request_store;
SELECT is(pg_temp.fell_back('free'), 0::bigint, 'the trigger dropped: fast path again');
-- a NULL counter (NOT NULL dropped): never read by the fast path, which falls back
SAVEPOINT null_counter;
ALTER TABLE lava.spend_key_store ALTER COLUMN period_spend DROP NOT NULL;
UPDATE lava.spend_key_store SET period_spend = NULL WHERE spend_key_id = pg_temp.kid('free');
SELECT pg_temp.fell_back('free') AS null_fell_back \gset
ROLLBACK TO SAVEPOINT null_counter;
SELECT is(:null_fell_back::bigint, 1::bigint, 'a NULL counter on the key: falls back');
CREATE TRIGGER tap_seen_key BEFORE UPDATE ON lava.spend_key_store FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
SELECT is(pg_temp.fell_back('free'), 1::bigint, 'a trigger on lava.spend_key_store: falls back');
DROP TRIGGER tap_seen_key ON lava.spend_key_store;

-- the key's row updated until it leaves its page (no pruning inside one
-- transaction): updates that are not HOT insert index entries, and every
-- index of both tables still holds every row (amcheck's heapallindexed)
CREATE EXTENSION amcheck;
CREATE TEMP TABLE hot0 AS SELECT (ctid::text::point)[0] AS page, pg_temp.fallbacks() AS n
	FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('free');
DO $$ BEGIN PERFORM lava.prompt('gpt-mini', 'page', '{"max_tokens": 1}', pg_temp.k('free')) FROM generate_series(1, 300); END $$;
SELECT isnt((SELECT (ctid::text::point)[0] FROM lava.spend_key_store WHERE spend_key_id = pg_temp.kid('free')),
	(SELECT page FROM hot0), 'the key''s row moved to another page: some updates were not HOT');
SELECT is(pg_temp.fallbacks(), (SELECT n FROM hot0), 'the fast path took all 300, across pages');
SELECT is((SELECT total_requests - (SELECT count(*) FROM lava.request_store r WHERE r.spend_key_id = s.spend_key_id)
		   FROM lava.spend_key_store s WHERE spend_key_id = pg_temp.kid('free')), 0::bigint,
	'the key counted each request queued');
SELECT lives_ok(format('SELECT bt_index_check(%L::regclass, true)', i), 'index holds every row: ' || i)
FROM unnest(ARRAY['lava.spend_key_store_pkey', 'lava.spend_key_store_key_digest_key', 'lava.spend_key_store_list_idx',
				  'lava.request_store_pkey', 'lava.request_store_queue_idx', 'lava.request_store_key_queue_idx',
				  'lava.request_store_finished_idx']) i;

-- a read-only transaction: lava._prompt_sql's error (25006), nothing written
CREATE TEMP TABLE ro0 AS SELECT count(*) AS n FROM lava.request_store;
SAVEPOINT read_only;
SET LOCAL transaction_read_only = on;
SELECT pg_temp.err($$SELECT lava.prompt('gpt-mini', 'x', '{"max_tokens": 1}', pg_temp.k('free'))$$) AS ro_err \gset
ROLLBACK TO SAVEPOINT read_only;
SELECT is(left(:'ro_err', 5), '25006', 'a read-only transaction: refused with 25006');
SELECT is((SELECT count(*) FROM lava.request_store), (SELECT n FROM ro0), 'a read-only transaction: nothing queued');

-- lava._cycle_start, given the calendar periods' starts, is lava._period_start
SELECT is(lava._cycle_start(c, lava._period_start('daily', t), lava._period_start('weekly', t), lava._period_start('monthly', t)),
		  lava._period_start(c, t), 'lava._cycle_start = lava._period_start for cycle ' || COALESCE(c, 'NULL'))
FROM unnest(ARRAY['daily', 'weekly', 'monthly', 'total', NULL, 'Daily']) c, (SELECT timestamptz '2026-03-01 00:30:00+05' AS t) x;

-- the C function keeps the contract's signature and security properties
SELECT is((SELECT prosecdef FROM pg_proc WHERE oid = 'lava.prompt(text,text,jsonb,text)'::regprocedure), true,
	'lava.prompt is SECURITY DEFINER');
SELECT is((SELECT proconfig FROM pg_proc WHERE oid = 'lava.prompt(text,text,jsonb,text)'::regprocedure),
	ARRAY['search_path=pg_catalog, pg_temp'], 'lava.prompt pins search_path');
SELECT ok(NOT has_function_privilege('public', 'lava._prompt_sql(text,text,jsonb,text)', 'EXECUTE'),
	'lava._prompt_sql is not granted to PUBLIC');

SELECT * FROM finish();
ROLLBACK;
