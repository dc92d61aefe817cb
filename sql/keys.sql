-- keys: the life cycle of a spend key through the admin API (API.md section 1).
CREATE EXTENSION lava;
-- documents are in UTC whatever the session's zone
SET TimeZone = 'America/New_York';
\set VERBOSITY terse
-- try(sql): runs a statement and shows its SQLSTATE and message when it fails
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- create: the document with the plaintext key, shown once
SELECT lava.create_spend_key('{"name": "ci bot", "spend_limit": {"amount": "10", "cycle": "daily"},
	"request_limit": {"count": 100, "cycle": "monthly"}, "rate_limit": {"rpm": 60},
	"allowed_models": ["gpt-4o-mini", "gpt-4o-mini", "claude-haiku"], "expires_at": "2099-01-01T00:00:00"}') AS doc \gset
SELECT (:'doc'::jsonb) ->> 'key' AS key, (:'doc'::jsonb) ->> 'spend_key_id' AS id \gset
-- the key: lava_sk_ + 43 base62 characters; the preview is its first 16 characters + ****
SELECT :'key' ~ '^lava_sk_[0-9A-Za-z]{43}$' AS key_format,
	   (:'doc'::jsonb) ->> 'key_preview' = left(:'key', 16) || '****' AS preview_ok,
	   (:'doc'::jsonb) ->> 'created_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS created_at_iso_utc;
SELECT jsonb_pretty((:'doc'::jsonb) - '{key,spend_key_id,key_preview,created_at,spend_resets_at,requests_reset_at}'::text[]);
-- the period ends: next UTC midnight, first of next month
SELECT ((:'doc'::jsonb) ->> 'spend_resets_at')::timestamptz = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day' AS daily_reset,
	   ((:'doc'::jsonb) ->> 'requests_reset_at')::timestamptz = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' AS monthly_reset;

-- only the digest is stored: the plaintext is nowhere in the key table
SELECT count(*) AS rows_with_plaintext FROM lava.spend_key_store s WHERE s::text LIKE '%' || :'key' || '%';
SELECT key_digest = sha256(convert_to(:'key', 'UTF8')) AS digest_stored FROM lava.spend_key_store WHERE spend_key_id = :'id';

-- get = the same document without the key
SELECT lava.get_spend_key(:'id') = (:'doc'::jsonb) - 'key' AS get_matches_create;
-- verify: the key is usable
SELECT lava.verify_spend_key(:'key') ->> 'name' AS verified;
-- the view has the document's columns
SELECT name, status, request_shape, allowed_models, spend_limit, current_spend, remaining_spend, rate_limit
FROM lava.spend_keys WHERE spend_key_id = :'id';

-- update: absent fields unchanged, explicit null clears
SELECT jsonb_pretty(lava.update_spend_key(:'id', '{"name": "ci bot 2", "allowed_models": null, "rate_limit": {"rpm": 10, "burst": 3}}')
	- '{spend_key_id,key_preview,created_at,spend_resets_at,requests_reset_at}'::text[]);
SELECT lava.update_spend_key(:'id', '{"spend_limit": null, "request_limit": null, "expires_at": null}')
	@> '{"spend_limit": null, "request_limit": null, "expires_at": null, "remaining_spend": null, "spend_resets_at": null}' AS cleared;
SELECT lava.update_spend_key(:'id', '{}') = lava.get_spend_key(:'id') AS empty_update_changes_nothing;

-- pause: verification refuses with 55000; resume: it works again
SELECT lava.update_spend_key(:'id', '{"status": "paused"}') ->> 'status' AS status;
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.verify_spend_key(%s)$$, quote_literal(:'key'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT lava.update_spend_key(:'id', '{"status": "active"}') ->> 'status' AS status;
SELECT lava.verify_spend_key(:'key') ->> 'status' AS status;

-- rotate: a new key for the same id; the old one is refused
SELECT lava.rotate_spend_key(:'id') AS rotated \gset
SELECT (:'rotated'::jsonb) ->> 'key' AS key2 \gset
SELECT :'key2' <> :'key' AS new_value, (:'rotated'::jsonb) ->> 'spend_key_id' = :'id' AS same_id,
	   (:'rotated'::jsonb) ->> 'key_preview' = left(:'key2', 16) || '****' AS new_preview;
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.verify_spend_key(%s)$$, quote_literal(:'key'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT lava.verify_spend_key(:'key2') ->> 'spend_key_id' = :'id' AS new_key_works;

-- revoke: permanent and gone from the public surface
SELECT lava.revoke_spend_key(:'id');
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.verify_spend_key(%s)$$, quote_literal(:'key2'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT count(*) AS in_view FROM lava.spend_keys WHERE spend_key_id = :'id';
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.get_spend_key(%s)$$, quote_literal(:'id'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.update_spend_key(%s, '{"status": "active"}')$$, quote_literal(:'id'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.rotate_spend_key(%s)$$, quote_literal(:'id'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.revoke_spend_key(%s)$$, quote_literal(:'id'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT pg_temp.try($$SELECT lava.get_spend_key('00000000-0000-0000-0000-000000000000')$$) AS refused;
SELECT lava.list_spend_keys() -> 'data' AS list_after_revoke;

-- expiry: a key past expires_at is refused with 28000 but keeps its status
SELECT lava.create_spend_key('{"name": "short-lived", "expires_at": "2099-01-01"}') AS doc \gset
SELECT (:'doc'::jsonb) ->> 'key' AS key3, (:'doc'::jsonb) ->> 'spend_key_id' AS id3 \gset
SELECT (:'doc'::jsonb) ->> 'expires_at' AS date_only_is_utc_midnight;
UPDATE lava.spend_key_store SET expires_at = now() - interval '1 second' WHERE spend_key_id = :'id3';
SELECT regexp_replace(pg_temp.try(format($$SELECT lava.verify_spend_key(%s)$$, quote_literal(:'key3'))), '[0-9a-f-]{36}', '<id>', 'g') AS refused;
SELECT lava.get_spend_key(:'id3') ->> 'status' AS status_kept;

-- malformed keys are refused without echoing them
SELECT pg_temp.try($$SELECT lava.verify_spend_key('sk-not-a-lava-key')$$) AS refused;
SELECT pg_temp.try($$SELECT lava.verify_spend_key('lava_sk_' || repeat('A', 43))$$) AS refused;
SELECT pg_temp.try($$SELECT lava.verify_spend_key(NULL)$$) AS refused;

-- defaults of a minimal key
SELECT jsonb_pretty(lava.create_spend_key('{"name": "minimal"}')
	- '{key,spend_key_id,key_preview,created_at}'::text[]);
-- anthropic shape, total cycle: no reset time
SELECT d ->> 'request_shape' AS shape, d -> 'spend_limit' AS spend_limit, d ->> 'spend_resets_at' AS resets
FROM lava.create_spend_key('{"name": "anthropic", "request_shape": "anthropic", "spend_limit": {"amount": 0.5, "cycle": "total"}}') AS d;

-- leave the database as we found it
DROP EXTENSION lava;
