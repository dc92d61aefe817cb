-- traffic.sql: enqueue through the admission core (no worker serves this
-- database, so requests stay queued): routing, bodies, reservations, bad
-- input, transactional enqueue, cancel, result, search, usage.
BEGIN;
SELECT plan(62);

INSERT INTO lava.providers (name, base_url, api_key, request_shape) VALUES
	('oa', 'http://127.0.0.1:9/v1', 'sk-oa-secret', 'openai'),
	('an', 'http://127.0.0.1:9/v1', 'sk-an-secret', 'anthropic'),
	('off', 'http://127.0.0.1:9/v1', NULL, 'openai');
UPDATE lava.providers SET enabled = false WHERE name = 'off';
INSERT INTO lava.models VALUES
	('oa', 'gpt-mini', 0.15, 0.60, 1000),
	('oa', 'gpt-free', NULL, NULL, NULL),
	('oa', 'gpt-nocap', 1, 2, NULL),
	('an', 'claude-s', 3, 15, 2000),
	('off', 'gpt-off', 1, 1, 10);

CREATE TEMP TABLE keys AS SELECT
	lava.create_spend_key('{"name": "t", "spend_limit": {"amount": "1.00", "cycle": "daily"}}') AS lim,
	lava.create_spend_key('{"name": "free"}') AS free,
	lava.create_spend_key('{"name": "anth", "request_shape": "anthropic"}') AS anth,
	lava.create_spend_key('{"name": "narrow", "allowed_models": ["gpt-mini"], "allowed_providers": ["oa"]}') AS narrow;
CREATE FUNCTION pg_temp.k(which text) RETURNS text LANGUAGE sql AS
	$$ SELECT (to_jsonb(keys) -> which) ->> 'key' FROM keys $$;
CREATE FUNCTION pg_temp.kid(which text) RETURNS uuid LANGUAGE sql AS
	$$ SELECT ((to_jsonb(keys) -> which) ->> 'spend_key_id')::uuid FROM keys $$;
CREATE FUNCTION pg_temp.req(id bigint) RETURNS lava.request_store LANGUAGE sql AS
	$$ SELECT * FROM lava.request_store WHERE request_id = id $$;

-- prompt: an OpenAI body with the model's cap set, and the byte bound reserved
CREATE TEMP TABLE r1 AS SELECT lava.prompt('gpt-mini', 'hello there', '{"system": "be brief", "metadata": {"run": 7}}', pg_temp.k('lim')) AS id;
SELECT is((pg_temp.req(id)).status, 'queued', 'prompt queues a request') FROM r1;
SELECT is((pg_temp.req(id)).endpoint, '/chat/completions', 'openai endpoint') FROM r1;
SELECT is((pg_temp.req(id)).body, '{"model": "gpt-mini", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}], "max_completion_tokens": 1000}'::jsonb,
	'the forwarded body: system + user message, the model''s max_output_tokens set as the cap') FROM r1;
SELECT is((pg_temp.req(id)).reservation, octet_length((pg_temp.req(id)).body::text) * 0.15 / 1000000 + 1000 * 0.60 / 1000000,
	'reservation = body bytes x input price + cap x output price') FROM r1;
SELECT is(lava.get_spend_key(pg_temp.kid('lim')) ->> 'reserved_spend', lava._money((pg_temp.req(id)).reservation),
	'the key holds the reservation') FROM r1;
SELECT is((pg_temp.req(id)).metadata, '{"run": 7}'::jsonb, 'metadata kept') FROM r1;
SELECT is(lava.result(id) ->> 'status', 'queued', 'result() returns the document') FROM r1;
SELECT ok(lava.result(id) ?& ARRAY['request_id', 'status', 'spend_key_id', 'provider', 'model', 'endpoint', 'http_status',
	'response', 'output_text', 'model_usage', 'cost', 'error', 'attempts', 'metadata', 'created_at', 'started_at', 'completed_at'],
	'the request document has every field') FROM r1;

-- max_tokens option and an Anthropic provider
CREATE TEMP TABLE r2 AS SELECT lava.prompt('claude-s', 'hi', '{"max_tokens": 50, "temperature": 0.2}', pg_temp.k('free')) AS id;
SELECT is((pg_temp.req(id)).body, '{"model": "claude-s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "temperature": 0.2}'::jsonb,
	'anthropic body with max_tokens') FROM r2;
SELECT is((pg_temp.req(id)).endpoint, '/messages', 'anthropic endpoint') FROM r2;
SELECT is((pg_temp.req(id)).reservation, octet_length((pg_temp.req(id)).body::text) * 3.0 / 1000000 + 50 * 15.0 / 1000000,
	'reservation uses the given max_tokens') FROM r2;

-- chat: the body in the key's shape; n multiplies the bound
CREATE TEMP TABLE r3 AS SELECT lava.chat('{"model": "gpt-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "n": 3}', pg_temp.k('lim')) AS id;
SELECT is((pg_temp.req(id)).reservation, octet_length((pg_temp.req(id)).body::text) * 0.15 / 1000000 + 30 * 0.60 / 1000000,
	'chat with n=3 reserves three times the output cap') FROM r3;
SELECT is((pg_temp.req(id)).body ? 'max_completion_tokens', false, 'a given max_tokens is not overridden') FROM r3;
SELECT is((pg_temp.req(lava.chat('{"model": "claude-s", "messages": [{"role": "user", "content": "x"}]}', pg_temp.k('anth')))).body -> 'max_tokens',
	'2000'::jsonb, 'anthropic chat without max_tokens gets the model''s cap');
SELECT throws_ok($$SELECT lava.chat('{"model": "claude-s", "messages": [{"role": "user", "content": "x"}]}', pg_temp.k('free'))$$,
	'42704', 'model "claude-s" is not available', 'an openai-shaped key cannot chat with an anthropic-only model');
SELECT throws_ok($$SELECT lava.chat('{"model": "gpt-mini", "messages": [{"role": "user", "content": "x"}], "stream": true}', pg_temp.k('free'))$$,
	'22023', 'invalid body: "stream" is not supported by the queue', 'stream refused');
SELECT throws_ok($$SELECT lava.chat('{"model": "gpt-mini", "messages": []}', pg_temp.k('free'))$$,
	'22023', 'invalid body: "messages" must be a non-empty array', 'empty messages refused');
SELECT throws_ok($$SELECT lava.chat('{"messages": [{"role": "user", "content": "x"}]}', pg_temp.k('free'))$$,
	'22023', 'invalid body: "model" must be a string', 'chat without model refused');
SELECT throws_ok($$SELECT lava.chat('[1]', pg_temp.k('free'))$$, '22023', 'invalid body: must be a JSON object', 'non-object body refused');
SELECT throws_ok($$SELECT lava.chat('{"model": "gpt-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', pg_temp.k('free'))$$,
	'22023', 'invalid body: "max_tokens" must be an integer >= 1', 'max_tokens 0 refused');

-- prompt refusals
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{"temprature": 1}', pg_temp.k('free'))$$,
	'22023', 'invalid options: "temprature" is not a known option', 'unknown option');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{"temperature": 3}', pg_temp.k('free'))$$,
	'22023', 'invalid options: "temperature" must be a number from 0 to 2', 'temperature out of range');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{"max_tokens": "many"}', pg_temp.k('free'))$$,
	'22023', 'invalid options: "max_tokens" must be an integer >= 1', 'max_tokens not an integer');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '[]', pg_temp.k('free'))$$,
	'22023', 'invalid options: must be a JSON object', 'options not an object');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', NULL, '{}', pg_temp.k('free'))$$,
	'22023', 'invalid prompt: model and prompt must not be null', 'null prompt');
SELECT throws_ok($$SELECT lava.prompt('no-such-model', 'x', '{}', pg_temp.k('free'))$$,
	'42704', 'model "no-such-model" is not available', 'unknown model: 42704');
SELECT throws_ok($$SELECT lava.prompt('no-such-model', 'x', '{}', 'lava_sk_' || repeat('z', 43))$$,
	'28000', 'unknown or revoked spend key', 'an unknown key is reported before an unknown model');
SELECT throws_ok($$SELECT lava.prompt('gpt-off', 'x', '{}', pg_temp.k('free'))$$,
	'42704', 'model "gpt-off" is not available', 'a disabled provider serves nothing');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{"provider": "an"}', pg_temp.k('free'))$$,
	'42704', 'model "gpt-mini" is not available', 'a provider that does not serve the model');
SELECT throws_ok($$SELECT lava.prompt('claude-s', 'x', '{}', pg_temp.k('narrow'))$$,
	'42501', 'provider not allowed for this spend key', 'provider outside the allow-list: 42501');
SELECT throws_ok($$SELECT lava.prompt('gpt-free', 'x', '{}', pg_temp.k('narrow'))$$,
	'42501', 'model not allowed for this spend key', 'model outside the allow-list: 42501');
SELECT throws_ok($$SELECT lava.prompt('gpt-free', 'x', '{}', pg_temp.k('lim'))$$,
	'42501', 'model has no prices and this spend key has a spend_limit', 'unpriced model under a spend limit');
SELECT throws_ok($$SELECT lava.prompt('gpt-nocap', 'x', '{}', pg_temp.k('free'))$$,
	'22023', 'invalid body: "max_tokens" is required', 'a priced model without any cap has no cost bound');
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{}', NULL)$$,
	'28000', 'no spend key', 'no key and no login: 28000');

-- the spend limit refuses a request whose bound does not fit
SELECT throws_ok($$SELECT lava.prompt('gpt-mini', 'x', '{"max_tokens": 2000000}', pg_temp.k('lim'))$$,
	'53400', 'spend limit reached', 'a bound over the remaining budget: 53400');

-- transactional enqueue: a rollback consumes nothing
SELECT lava.get_spend_key(pg_temp.kid('lim')) AS before_rb \gset
SAVEPOINT before_enqueue;
SELECT lava.prompt('gpt-mini', 'rolled back', '{}', pg_temp.k('lim')) IS NOT NULL AS enqueued;
ROLLBACK TO SAVEPOINT before_enqueue;
SELECT is(lava.get_spend_key(pg_temp.kid('lim')), :'before_rb'::jsonb, 'a rolled-back enqueue leaves the key untouched');
SELECT is((SELECT count(*) FROM lava.request_store WHERE body::text LIKE '%rolled back%'), 0::bigint, 'and no request row');

-- await in the enqueuing transaction would never see the worker
SELECT throws_ok($$SELECT lava.await(id, '1 second') FROM r1$$, '55000', NULL, 'await in the same transaction: 55000');

-- cancel: a queued request is cancelled and its reservation released
SELECT is(lava.cancel(id) ->> 'status', 'cancelled', 'cancel a queued request') FROM r1;
SELECT is(lava.get_spend_key(pg_temp.kid('lim')) ->> 'reserved_spend', lava._money((pg_temp.req(id)).reservation),
	'only the chat request''s reservation is still held') FROM r3;
SELECT is(lava.cancel(id) ->> 'status', 'cancelled', 'cancelling again changes nothing') FROM r1;
SELECT is((lava.get_spend_key(pg_temp.kid('lim')) ->> 'total_spend'), '0.00', 'a cancelled request costs nothing');
SELECT throws_ok($$SELECT lava.result(-1)$$, 'P0002', 'request -1 not found', 'unknown request: P0002');

-- call: any endpoint of an allowed provider
SELECT is((pg_temp.req(lava.call('oa', '/embeddings', '{"model": "gpt-free", "input": "x"}', 'post', pg_temp.k('free')))).method,
	'POST', 'call normalises the method');
SELECT is((pg_temp.req(lava.call('oa', '/models', NULL, 'GET', pg_temp.k('free')))).body, NULL, 'GET without body');
SELECT throws_ok($$SELECT lava.call('oa', 'models', NULL, 'GET', pg_temp.k('free'))$$, '22023', NULL, 'path must start with /');
SELECT throws_ok($$SELECT lava.call('oa', '/../admin', NULL, 'GET', pg_temp.k('free'))$$, '22023', NULL, 'no .. in paths');
SELECT throws_ok($$SELECT lava.call('oa', '/x', NULL, 'TRACE', pg_temp.k('free'))$$, '22023', 'invalid method "TRACE"', 'unknown method');
SELECT throws_ok($$SELECT lava.call('oa', '/x', '{}', 'GET', pg_temp.k('free'))$$, '22023', 'invalid body: a GET request has no body', 'GET with a body');
SELECT throws_ok($$SELECT lava.call('nope', '/x', NULL, 'GET', pg_temp.k('free'))$$, '42704', 'provider "nope" is not available', 'unknown provider');
SELECT throws_ok($$SELECT lava.call('oa', '/x', NULL, 'GET', pg_temp.k('narrow'))$$, '42501', 'model not allowed for this spend key',
	'a model allow-list refuses calls without a model');

-- search: what a key may use, with a ready chat body
SELECT results_eq($$SELECT provider, model FROM lava.search(NULL, pg_temp.k('free'))$$,
	$$VALUES ('oa', 'gpt-free'), ('oa', 'gpt-mini'), ('oa', 'gpt-nocap')$$, 'search: the openai-shaped models of enabled providers');
SELECT results_eq($$SELECT model FROM lava.search('MINI', pg_temp.k('free'))$$, $$VALUES ('gpt-mini')$$, 'search matches case-insensitively');
SELECT results_eq($$SELECT model FROM lava.search(NULL, pg_temp.k('lim'))$$, $$VALUES ('gpt-mini'), ('gpt-nocap')$$,
	'a key with a spend limit sees only priced models');
SELECT results_eq($$SELECT model FROM lava.search(NULL, pg_temp.k('anth'))$$, $$VALUES ('claude-s')$$, 'an anthropic key sees anthropic models');
SELECT lives_ok($$SELECT lava.chat(example, pg_temp.k('free')) FROM lava.search('gpt-mini', pg_temp.k('free'))$$,
	'the example is a working lava.chat body');

-- usage per UTC day
SELECT is(jsonb_array_length(lava.spend_key_usage(pg_temp.kid('lim'), now() - interval '2 days') -> 'items'), 3,
	'one item per UTC day in the range');
SELECT is((lava.spend_key_usage(pg_temp.kid('lim'), now() - interval '1 hour') #>> '{totals,total_requests}')::int, 2,
	'totals count the admitted requests (the cancelled one too)');
SELECT throws_ok($$SELECT lava.spend_key_usage(pg_temp.kid('lim'), now(), now() - interval '1 day')$$, '22023', NULL, 'end before start');

-- lava.request_ttl: finished rows are purged, their accounting stays
SELECT lava.get_spend_key(pg_temp.kid('lim')) AS before_purge \gset
UPDATE lava.request_store SET completed_at = now() - interval '2 days' FROM r1 WHERE request_id = r1.id;
SELECT is(lava._purge(86400), 1, 'one finished request older than the ttl is purged');
SELECT is((SELECT count(*) FROM lava.request_store r JOIN r1 ON r.request_id = r1.id), 0::bigint, 'its row is gone');
SELECT is(lava.get_spend_key(pg_temp.kid('lim')), :'before_purge'::jsonb, 'the key''s accounting is unchanged');

SELECT * FROM finish();
ROLLBACK;
