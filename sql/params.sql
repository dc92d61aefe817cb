-- params: every malformed params document is refused with 22023 and a
-- message naming the field, and a refused call changes nothing.
CREATE EXTENSION lava;
\set VERBOSITY terse
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- create(p): the outcome of create_spend_key(p)
CREATE FUNCTION pg_temp.create(p text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.try(format('SELECT lava.create_spend_key(%L::jsonb)', p)) $$;

-- a key to update, and its document before any refused call
SELECT lava.create_spend_key('{"name": "target", "spend_limit": {"amount": "5", "cycle": "weekly"}}') ->> 'spend_key_id' AS id \gset
SELECT lava.get_spend_key(:'id') AS before \gset
SELECT count(*) AS keys_before FROM lava.spend_key_store \gset

-- the document itself
SELECT pg_temp.try('SELECT lava.create_spend_key(NULL)') AS null_document;
SELECT pg_temp.create('[]') AS array_document;
SELECT pg_temp.create('"name"') AS string_document;
SELECT pg_temp.create('42') AS number_document;
SELECT pg_temp.create('{"nme": "typo"}') AS unknown_field;
SELECT pg_temp.create('{"name": "x", "owner": "me"}') AS unknown_field_2;
-- name
SELECT pg_temp.create('{}') AS name_missing;
SELECT pg_temp.create('{"name": null}') AS name_null;
SELECT pg_temp.create('{"name": ""}') AS name_empty;
SELECT pg_temp.create('{"name": "   "}') AS name_blank;
SELECT pg_temp.create(format('{"name": "%s"}', repeat('x', 256))) AS name_too_long;
SELECT pg_temp.create('{"name": 7}') AS name_number;
SELECT pg_temp.create('{"name": ["a"]}') AS name_array;
-- status, request_shape
SELECT pg_temp.create('{"name": "x", "status": "revoked"}') AS status_unknown;
SELECT pg_temp.create('{"name": "x", "status": null}') AS status_null;
SELECT pg_temp.create('{"name": "x", "status": true}') AS status_boolean;
SELECT pg_temp.create('{"name": "x", "request_shape": "gemini"}') AS shape_unknown;
SELECT pg_temp.create('{"name": "x", "request_shape": null}') AS shape_null;
-- allow-lists
SELECT pg_temp.create('{"name": "x", "allowed_models": []}') AS models_empty_array;
SELECT pg_temp.create('{"name": "x", "allowed_models": "gpt-4o"}') AS models_string;
SELECT pg_temp.create('{"name": "x", "allowed_models": [""]}') AS models_empty_name;
SELECT pg_temp.create('{"name": "x", "allowed_models": [1, 2]}') AS models_numbers;
SELECT pg_temp.create('{"name": "x", "allowed_providers": []}') AS providers_empty_array;
SELECT pg_temp.create('{"name": "x", "allowed_providers": [null]}') AS providers_null_entry;
SELECT pg_temp.create('{"name": "x", "allowed_providers": {"openai": true}}') AS providers_object;
-- spend_limit
SELECT pg_temp.create('{"name": "x", "spend_limit": "10"}') AS spend_not_object;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"cycle": "daily"}}') AS amount_missing;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "10"}}') AS cycle_missing;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "0", "cycle": "daily"}}') AS amount_zero;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "-1", "cycle": "daily"}}') AS amount_negative;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": -5, "cycle": "daily"}}') AS amount_negative_number;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "ten", "cycle": "daily"}}') AS amount_not_numeric;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "NaN", "cycle": "daily"}}') AS amount_nan;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "Infinity", "cycle": "daily"}}') AS amount_infinity;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "1e3", "cycle": "daily"}}') AS amount_exponent;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "", "cycle": "daily"}}') AS amount_empty;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": true, "cycle": "daily"}}') AS amount_boolean;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": null, "cycle": "daily"}}') AS amount_null;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "10", "cycle": "hourly"}}') AS cycle_unknown;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "10", "cycle": null}}') AS cycle_null;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "10", "cycle": "daily", "currency": "EUR"}}') AS spend_unknown_member;
SELECT pg_temp.create('{"name": "x", "spend_limit": {"amount": "10000000000000000", "cycle": "daily"}}') AS amount_too_large;
-- request_limit
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": 0, "cycle": "daily"}}') AS count_zero;
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": 1.5, "cycle": "daily"}}') AS count_fractional;
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": "10", "cycle": "daily"}}') AS count_string;
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": -3, "cycle": "daily"}}') AS count_negative;
SELECT pg_temp.create('{"name": "x", "request_limit": {"cycle": "daily"}}') AS count_missing;
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": 10}}') AS request_cycle_missing;
SELECT pg_temp.create('{"name": "x", "request_limit": {"count": 10, "cycle": "yearly"}}') AS request_cycle_unknown;
SELECT pg_temp.create('{"name": "x", "request_limit": [10, "daily"]}') AS request_limit_array;
-- rate_limit
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": 0}}') AS rpm_zero;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": 2.5}}') AS rpm_fractional;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": 60, "burst": 0}}') AS burst_zero;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"burst": 5}}') AS burst_without_rpm;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": null}}') AS rpm_null;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": 3000000000}}') AS rpm_too_large;
SELECT pg_temp.create('{"name": "x", "rate_limit": {"rpm": 60, "window": 10}}') AS rate_unknown_member;
SELECT pg_temp.create('{"name": "x", "rate_limit": 60}') AS rate_not_object;
-- expires_at
SELECT pg_temp.create('{"name": "x", "expires_at": "2001-01-01T00:00:00Z"}') AS expires_past;
SELECT pg_temp.create('{"name": "x", "expires_at": "next tuesday"}') AS expires_unparsable;
SELECT pg_temp.create('{"name": "x", "expires_at": "tomorrow"}') AS expires_keyword;
SELECT pg_temp.create('{"name": "x", "expires_at": "2099-02-30T00:00:00Z"}') AS expires_invalid_date;
SELECT pg_temp.create('{"name": "x", "expires_at": "2099-01-01T25:00:00Z"}') AS expires_invalid_hour;
SELECT pg_temp.create('{"name": "x", "expires_at": 4102444800}') AS expires_number;
SELECT pg_temp.create('{"name": "x", "expires_at": ""}') AS expires_empty;

-- none of the refused creates left a key behind
SELECT count(*) - :keys_before AS keys_added FROM lava.spend_key_store;

-- update: the same rules, and null for required fields is refused
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, NULL)', :'id')) AS update_null_document;
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, %L)', :'id', '{"name": null}')) AS update_name_null;
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, %L)', :'id', '{"status": null}')) AS update_status_null;
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, %L)', :'id', '{"request_shape": null}')) AS update_shape_null;
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, %L)', :'id', '{"name": "renamed", "spend_limit": {"amount": "0", "cycle": "daily"}}')) AS update_partly_bad;
SELECT pg_temp.try(format('SELECT lava.update_spend_key(%L, %L)', :'id', '{"status": "paused", "bogus": 1}')) AS update_unknown_field;
-- a refused update changed nothing, not even the valid fields it carried
SELECT lava.get_spend_key(:'id') = :'before'::jsonb AS unchanged_after_refused_updates;

-- list: lim and cursor
SELECT pg_temp.try('SELECT lava.list_spend_keys(NULL, 0)') AS lim_zero;
SELECT pg_temp.try('SELECT lava.list_spend_keys(NULL, 101)') AS lim_too_large;
SELECT pg_temp.try('SELECT lava.list_spend_keys(NULL, -1)') AS lim_negative;
SELECT pg_temp.try($$SELECT lava.list_spend_keys('not-a-cursor')$$) AS cursor_garbage;
SELECT pg_temp.try($$SELECT lava.list_spend_keys(encode('12/xyz', 'hex'))$$) AS cursor_tampered;
SELECT (lava.list_spend_keys(NULL, NULL) -> 'data') IS NOT NULL AS lim_null_means_default;

-- ids that name nothing
SELECT pg_temp.try($$SELECT lava.get_spend_key('not-a-uuid')$$) AS bad_uuid;
SELECT pg_temp.try($$SELECT lava.update_spend_key(gen_random_uuid(), '{}')$$) ~ '^P0002' AS update_unknown_id;

-- leave the database as we found it
DROP EXTENSION lava;
