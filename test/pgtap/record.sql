-- record.sql: lava._record (src/record.c, src/direct.c), which the worker
-- calls, against lava._complete, the SQL it falls back to: for the same
-- outcome of twin requests (one on key A, one on key B, the keys alike) the
-- same row afterwards, the same key counters and daily ledger, and the
-- direct path taken exactly for the common answer (an OpenAI-shaped 2xx
-- with integer usage).  Which path ran is read from
-- pg_stat_get_xact_function_calls of lava._complete.
BEGIN;
SELECT plan(70);
SET LOCAL track_functions = 'all';

INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES
	('rec-oa', 'http://127.0.0.1:9/v1', NULL, 'openai'),
	('rec-an', 'http://127.0.0.1:9/v1', NULL, 'anthropic');
INSERT INTO lava.models VALUES
	('rec-oa', 'rec-gpt', 0.15, 0.60, 1000),
	('rec-oa', 'rec-odd', 0.333333, 1.1, 1000),
	('rec-an', 'rec-claude', 3, 15, 1000);
CREATE TEMP TABLE rk AS SELECT
	lava.create_spend_key('{"name": "record a", "spend_limit": {"amount": "900000000000.00", "cycle": "monthly"}}') AS a,
	lava.create_spend_key('{"name": "record b", "spend_limit": {"amount": "900000000000.00", "cycle": "monthly"}}') AS b;
CREATE FUNCTION pg_temp.k(which text) RETURNS text LANGUAGE sql AS
	$$ SELECT (to_jsonb(rk) -> which) ->> 'key' FROM rk $$;
CREATE FUNCTION pg_temp.kid(which text) RETURNS uuid LANGUAGE sql AS
	$$ SELECT ((to_jsonb(rk) -> which) ->> 'spend_key_id')::uuid FROM rk $$;
CREATE FUNCTION pg_temp.completes() RETURNS bigint LANGUAGE sql AS
	$$ SELECT COALESCE(pg_stat_get_xact_function_calls('lava._complete(bigint[],integer[],text[],text[],double precision[])'::regprocedure), 0) $$;
-- a queued request, then claimed as the worker would
CREATE FUNCTION pg_temp.running(model text, which text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	id bigint := lava.prompt(model, 'record me', '{"max_tokens": 20}', pg_temp.k(which));
BEGIN
	UPDATE lava.request_store SET status = 'running', attempts = 1, started_at = now() WHERE request_id = id;
	RETURN id;
END $$;
-- a request row as text, without what differs between twins (id, key, times)
CREATE FUNCTION pg_temp.row_of(id bigint) RETURNS text LANGUAGE sql AS $$
	SELECT concat_ws(' | ', r.status, r.http_status, r.response::text, r.output_text, r.input_tokens, r.output_tokens,
					 r.input_cost::text, r.output_cost::text, r.cost::text, r.error, r.attempts,
					 r.completed_at IS NOT NULL, r.next_attempt_at > r.created_at, r.reservation::text)
	FROM lava.request_store r WHERE r.request_id = id $$;
CREATE FUNCTION pg_temp.key_of(which text) RETURNS text LANGUAGE sql AS $$
	SELECT concat_ws(' | ', s.period_spend::text, s.reserved_spend::text, s.total_spend::text, s.period_requests,
					 s.total_requests,
					 (SELECT string_agg(concat_ws(',', d.day, d.requests, d.input_tokens, d.output_tokens, d.cost::text), ';')
					  FROM lava.key_usage_daily d WHERE d.spend_key_id = s.spend_key_id))
	FROM lava.spend_key_store s WHERE s.spend_key_id = pg_temp.kid(which) $$;

-- one outcome, through lava._record for key A's twin and lava._complete for B's
CREATE TEMP TABLE cases (label text, model text, st integer, body text, err text, ra float8, not_running boolean,
						 direct boolean);
INSERT INTO cases VALUES
	('plain answer', 'rec-gpt', 200,
	 '{"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}',
	 NULL, NULL, false, true),
	('odd prices, rounding', 'rec-odd', 200,
	 '{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}', NULL, NULL, false, true),
	('201, escapes and unicode', 'rec-gpt', 201,
	 '{"choices": [{"message": {"content": "quote \" backslash \\ tab \t é € 😀"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}',
	 NULL, NULL, false, true),
	('content null', 'rec-gpt', 200,
	 '{"choices": [{"message": {"content": null, "tool_calls": []}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
	 NULL, NULL, false, true),
	('no choices', 'rec-gpt', 200, '{"usage": {"prompt_tokens": 3, "completion_tokens": 0}}', NULL, NULL, false, true),
	('empty choices', 'rec-gpt', 200, '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}', NULL, NULL, false, true),
	('15-digit usage', 'rec-gpt', 200,
	 '{"choices": [{"message": {"content": "big"}}], "usage": {"prompt_tokens": 999999999999999, "completion_tokens": 1}}',
	 NULL, NULL, false, true),
	('no usage', 'rec-gpt', 200, '{"choices": [{"message": {"content": "x"}}]}', NULL, NULL, false, false),
	('usage 1.5', 'rec-gpt', 200, '{"usage": {"prompt_tokens": 1.5, "completion_tokens": 1}}', NULL, NULL, false, false),
	('usage as a string', 'rec-gpt', 200, '{"usage": {"prompt_tokens": "12", "completion_tokens": 1}}', NULL, NULL, false, false),
	('16-digit usage', 'rec-gpt', 200, '{"usage": {"prompt_tokens": 1000000000000000, "completion_tokens": 1}}', NULL, NULL, false, false),
	('anthropic usage names', 'rec-gpt', 200, '{"usage": {"input_tokens": 4, "output_tokens": 2}}', NULL, NULL, false, false),
	('content an object', 'rec-gpt', 200,
	 '{"choices": [{"message": {"content": {"a": 1}}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}', NULL, NULL, false, false),
	('choices an object', 'rec-gpt', 200,
	 '{"choices": {"0": {"message": {"content": "x"}}}, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}', NULL, NULL, false, false),
	('an array body', 'rec-gpt', 200, '[1, 2]', NULL, NULL, false, false),
	('anthropic request', 'rec-claude', 200,
	 '{"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 4, "output_tokens": 2}}', NULL, NULL, false, false),
	('not JSON (garbage)', 'rec-gpt', 200, NULL, NULL, NULL, false, false),
	('503, retried', 'rec-gpt', 503, '{"error": {"message": "busy"}}', NULL, 2, false, false),
	('404, failed', 'rec-gpt', 404, '{"error": {"message": "no such model"}}', NULL, NULL, false, false),
	('network error', 'rec-gpt', 0, NULL, 'connection reset', NULL, false, false),
	('2xx with an error text', 'rec-gpt', 200,
	 '{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}', 'partial body', NULL, false, false),
	('request no longer running', 'rec-gpt', 200,
	 '{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}', NULL, NULL, true, false);

CREATE TEMP TABLE results (label text, direct boolean, a_row text, b_row text, a_key text, b_key text,
						   a_counts text, b_counts text, fallbacks bigint);
CREATE FUNCTION pg_temp.run(c cases) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	ra bigint := pg_temp.running(c.model, 'a');
	rb bigint := pg_temp.running(c.model, 'b');
	before bigint;
	ca text;
	cb text;
BEGIN
	IF c.not_running THEN
		UPDATE lava.request_store SET status = 'queued' WHERE request_id IN (ra, rb);
	END IF;
	before := pg_temp.completes();
	SELECT concat_ws(',', r.completed, r.failed, r.requeued) INTO ca
	FROM lava._record(ARRAY[ra], ARRAY[c.st], ARRAY[c.body], ARRAY[c.err], ARRAY[c.ra]) r;
	INSERT INTO results (label, direct, fallbacks) VALUES (c.label, c.direct, pg_temp.completes() - before);
	SELECT concat_ws(',', r.completed, r.failed, r.requeued) INTO cb
	FROM lava._complete(ARRAY[rb], ARRAY[c.st], ARRAY[c.body], ARRAY[c.err], ARRAY[c.ra]) r;
	UPDATE results SET a_row = pg_temp.row_of(ra), b_row = pg_temp.row_of(rb),
		a_key = pg_temp.key_of('a'), b_key = pg_temp.key_of('b'), a_counts = ca, b_counts = cb
	WHERE label = c.label;
END $$;
SELECT count(pg_temp.run(c)) FROM cases c \gset

SELECT is(a_row, b_row, 'same row: ' || label) FROM results ORDER BY label;
SELECT is(a_key, b_key, 'same key counters and ledger after: ' || label) FROM results
WHERE label IN ('plain answer', 'odd prices, rounding', '15-digit usage', 'no usage', 'not JSON (garbage)',
				'503, retried', 'request no longer running') ORDER BY label;
SELECT is(a_counts, b_counts, 'same counts returned: ' || label) FROM results
WHERE label IN ('plain answer', 'no usage', '503, retried', '404, failed', 'request no longer running') ORDER BY label;
SELECT is(fallbacks, CASE WHEN direct THEN 0 ELSE 1 END::bigint,
		  CASE WHEN direct THEN 'recorded directly: ' ELSE 'through lava._complete: ' END || label)
FROM results WHERE label IN ('plain answer', 'content null', 'no choices', '15-digit usage', 'no usage',
							 'usage as a string', 'anthropic request', '503, retried', 'request no longer running')
ORDER BY label;
SELECT is((SELECT status FROM lava.request_store r WHERE r.spend_key_id = pg_temp.kid('a') AND r.output_text = 'hello'),
		  'completed', 'the plain answer is completed');

-- a batch that mixes both: one call, the same rows and the same counts
CREATE TEMP TABLE batch AS
SELECT c.*, pg_temp.running(c.model, 'a') AS ida, pg_temp.running(c.model, 'b') AS idb
FROM cases c WHERE NOT c.not_running;
SELECT is((SELECT concat_ws(',', r.completed, r.failed, r.requeued)
		   FROM lava._record((SELECT array_agg(ida ORDER BY label) FROM batch), (SELECT array_agg(st ORDER BY label) FROM batch),
							 (SELECT array_agg(body ORDER BY label) FROM batch), (SELECT array_agg(err ORDER BY label) FROM batch),
							 (SELECT array_agg(ra ORDER BY label) FROM batch)) r),
		  (SELECT concat_ws(',', r.completed, r.failed, r.requeued)
		   FROM lava._complete((SELECT array_agg(idb ORDER BY label) FROM batch), (SELECT array_agg(st ORDER BY label) FROM batch),
							   (SELECT array_agg(body ORDER BY label) FROM batch), (SELECT array_agg(err ORDER BY label) FROM batch),
							   (SELECT array_agg(ra ORDER BY label) FROM batch)) r),
		  'a mixed batch: the same counts');
SELECT is(pg_temp.row_of(ida), pg_temp.row_of(idb), 'a mixed batch, same row: ' || label) FROM batch ORDER BY label;
SELECT is(pg_temp.key_of('a'), pg_temp.key_of('b'), 'a mixed batch: the same key counters and ledger');

-- a trigger on lava.request_store, which direct access would not fire: all
-- through lava._complete (and the trigger fires); direct again once dropped
CREATE TEMP TABLE seen (request_id bigint);
CREATE FUNCTION pg_temp.seen() RETURNS trigger LANGUAGE plpgsql AS
	$$ BEGIN INSERT INTO pg_temp.seen VALUES (NEW.request_id); RETURN NEW; END $$;
CREATE TRIGGER record_seen AFTER UPDATE ON lava.request_store FOR EACH ROW EXECUTE FUNCTION pg_temp.seen();
CREATE FUNCTION pg_temp.record_one() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	id bigint := pg_temp.running('rec-gpt', 'a');
	before bigint := pg_temp.completes();
BEGIN
	PERFORM lava._record(ARRAY[id], ARRAY[200],
		ARRAY['{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'], ARRAY[NULL::text], ARRAY[NULL::float8]);
	RETURN pg_temp.completes() - before;
END $$;
DELETE FROM seen;
SELECT is(pg_temp.record_one(), 1::bigint, 'a trigger on lava.request_store: recorded through lava._complete');
SELECT ok((SELECT count(*) FROM seen) >= 1, 'a trigger on lava.request_store: it fired');
DROP TRIGGER record_seen ON lava.request_store;
SELECT is(pg_temp.record_one(), 0::bigint, 'the trigger dropped: recorded directly again');

SELECT * FROM finish();
ROLLBACK;
