-- Spend keys: storage, cycles, params validation and the admin API (API.md section 1).

-- One row per spend key ever created.  Only the SHA-256 digest of a key is
-- stored.  Only lava's functions write it, after validating every value
-- (lava._validate_params), so it carries no CHECK constraints: they would be
-- re-read from the catalog at every admission.  fillfactor leaves room for
-- HOT updates of the counters.  The counters are the durable truth of admission: the period
-- counters belong to the period that starts at *_period_start and are reset
-- lazily by the first admission, settlement or update after a boundary.
CREATE TABLE lava.spend_key_store (
	spend_key_id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
	key_digest bytea NOT NULL UNIQUE,
	key_preview text NOT NULL,
	name text NOT NULL,
	status text NOT NULL DEFAULT 'active',			-- active | paused
	request_shape text NOT NULL DEFAULT 'openai',	-- openai | anthropic
	allowed_providers text[],
	allowed_models text[],
	spend_limit_amount numeric,
	spend_cycle text,				-- daily | weekly | monthly | total
	request_limit_count bigint,
	request_cycle text,
	rate_rpm integer,
	rate_burst integer,
	expires_at timestamptz,
	owner_role text,			-- the role lava.login() provisioned it for, else NULL
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_used_at timestamptz,
	revoked_at timestamptz,
	spend_period_start timestamptz NOT NULL DEFAULT '-infinity',
	period_spend numeric NOT NULL DEFAULT 0,
	reserved_spend numeric NOT NULL DEFAULT 0,
	total_spend numeric NOT NULL DEFAULT 0,
	request_period_start timestamptz NOT NULL DEFAULT '-infinity',
	period_requests bigint NOT NULL DEFAULT 0,
	total_requests bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 70);
CREATE INDEX spend_key_store_list_idx ON lava.spend_key_store (created_at DESC, spend_key_id DESC)
	WHERE revoked_at IS NULL;
COMMENT ON TABLE lava.spend_key_store IS
	'spend keys: SHA-256 digests, settings and admission counters (internal; use the functions and lava.spend_keys)';
SELECT pg_catalog.pg_extension_config_dump('lava.spend_key_store', '');

-- Per key and UTC day of admission: settled requests (each request enters
-- when it reaches a terminal state), and their tokens and cost.  The ledger behind spend_key_usage() and the source from
-- which period counters are recomputed when a limit's cycle changes.
CREATE TABLE lava.key_usage_daily (
	spend_key_id uuid NOT NULL,		-- a lava.spend_key_store key (keys are never deleted)
	day date NOT NULL,
	requests bigint NOT NULL DEFAULT 0,
	input_tokens bigint NOT NULL DEFAULT 0,
	output_tokens bigint NOT NULL DEFAULT 0,
	cost numeric NOT NULL DEFAULT 0,
	PRIMARY KEY (spend_key_id, day)
) WITH (fillfactor = 70);
COMMENT ON TABLE lava.key_usage_daily IS
	'usage ledger: admitted requests and settled tokens and cost per spend key and UTC day of admission (internal)';
SELECT pg_catalog.pg_extension_config_dump('lava.key_usage_daily', '');

-- Start of the calendar period (UTC) of `cycle` that contains `ts`;
-- -infinity for 'total' or no cycle.
CREATE FUNCTION lava._period_start(cycle text, ts timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE cycle
		WHEN 'daily' THEN pg_catalog.date_trunc('day', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		WHEN 'weekly' THEN pg_catalog.date_trunc('week', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		WHEN 'monthly' THEN pg_catalog.date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		ELSE '-infinity'::timestamptz
	END
$$;
COMMENT ON FUNCTION lava._period_start(text, timestamptz) IS
	'internal: start of the UTC calendar period of a cycle containing a time';

-- End of that period (when the counters reset); NULL for 'total' or no cycle.
CREATE FUNCTION lava._period_end(cycle text, ts timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE cycle
		WHEN 'daily' THEN (pg_catalog.date_trunc('day', ts AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
		WHEN 'weekly' THEN (pg_catalog.date_trunc('week', ts AT TIME ZONE 'UTC') + interval '1 week') AT TIME ZONE 'UTC'
		WHEN 'monthly' THEN (pg_catalog.date_trunc('month', ts AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
	END
$$;
COMMENT ON FUNCTION lava._period_end(text, timestamptz) IS
	'internal: end of the UTC calendar period of a cycle containing a time';

CREATE FUNCTION lava._generate_key()
RETURNS text
AS 'MODULE_PATHNAME', 'lava_generate_key'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION lava._generate_key() IS
	'internal: a new spend key, lava_sk_ + 43 base62 characters from pg_strong_random';

-- SHA-256 digest under which a key is stored and looked up.
-- (STABLE like convert_to, so that the planner inlines it)
CREATE FUNCTION lava._key_digest(spend_key text)
RETURNS bytea
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.sha256(pg_catalog.convert_to(spend_key, 'UTF8')) $$;
COMMENT ON FUNCTION lava._key_digest(text) IS 'internal: SHA-256 digest of a spend key';

-- The public preview of a key: lava_sk_ + 8 characters + ****.
CREATE FUNCTION lava._key_preview(spend_key text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.left(spend_key, 16) || '****' $$;
COMMENT ON FUNCTION lava._key_preview(text) IS 'internal: lava_sk_ + first 8 random characters + ****';

-- The public view: one row per key that is not revoked, with the period
-- counters as they stand now (a passed period boundary reads as zero).
CREATE VIEW lava.spend_keys AS
SELECT k.spend_key_id,
	   k.key_preview,
	   k.name,
	   k.status,
	   k.request_shape,
	   k.allowed_models,
	   k.allowed_providers,
	   CASE WHEN k.spend_limit_amount IS NOT NULL THEN
		   pg_catalog.jsonb_build_object('amount', lava._money(k.spend_limit_amount), 'cycle', k.spend_cycle)
	   END AS spend_limit,
	   s.current_spend,
	   k.total_spend,
	   CASE WHEN k.request_limit_count IS NOT NULL THEN
		   pg_catalog.jsonb_build_object('count', k.request_limit_count, 'cycle', k.request_cycle)
	   END AS request_limit,
	   r.current_requests,
	   k.total_requests,
	   CASE WHEN k.rate_rpm IS NOT NULL THEN
		   pg_catalog.jsonb_build_object('rpm', k.rate_rpm, 'burst', k.rate_burst)
	   END AS rate_limit,
	   k.expires_at,
	   k.last_used_at,
	   k.created_at,
	   k.reserved_spend,
	   CASE WHEN k.spend_limit_amount IS NOT NULL THEN
		   GREATEST(k.spend_limit_amount - s.current_spend - k.reserved_spend, 0)
	   END AS remaining_spend,
	   lava._period_end(k.spend_cycle, pg_catalog.now()) AS spend_resets_at,
	   lava._period_end(k.request_cycle, pg_catalog.now()) AS requests_reset_at
FROM lava.spend_key_store k,
	 LATERAL (SELECT CASE WHEN lava._period_start(k.spend_cycle, pg_catalog.now()) > k.spend_period_start
					 THEN 0 ELSE k.period_spend END AS current_spend) s,
	 LATERAL (SELECT CASE WHEN lava._period_start(k.request_cycle, pg_catalog.now()) > k.request_period_start
					 THEN 0 ELSE k.period_requests END AS current_requests) r
WHERE k.revoked_at IS NULL;
COMMENT ON VIEW lava.spend_keys IS
	'spend keys that are not revoked, one row each, columns = the spend key document''s fields';

-- The spend key document (JSON) of a row of lava.spend_keys.
CREATE FUNCTION lava._key_document(k lava.spend_keys)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
	SELECT pg_catalog.jsonb_build_object(
		'spend_key_id', k.spend_key_id,
		'key_preview', k.key_preview,
		'name', k.name,
		'status', k.status,
		'request_shape', k.request_shape,
		'allowed_models', pg_catalog.to_jsonb(k.allowed_models),
		'allowed_providers', pg_catalog.to_jsonb(k.allowed_providers),
		'spend_limit', k.spend_limit,
		'current_spend', lava._money(k.current_spend),
		'total_spend', lava._money(k.total_spend),
		'request_limit', k.request_limit,
		'current_requests', k.current_requests,
		'total_requests', k.total_requests,
		'rate_limit', k.rate_limit,
		'expires_at', lava._iso(k.expires_at),
		'last_used_at', lava._iso(k.last_used_at),
		'created_at', lava._iso(k.created_at))
		|| pg_catalog.jsonb_build_object(
		'reserved_spend', lava._money(k.reserved_spend),
		'remaining_spend', lava._money(k.remaining_spend),
		'spend_resets_at', lava._iso(k.spend_resets_at),
		'requests_reset_at', lava._iso(k.requests_reset_at))
$$;
COMMENT ON FUNCTION lava._key_document(lava.spend_keys) IS 'internal: the spend key document of a key';

-- The document of one key that is not revoked (NULL when there is none).
CREATE FUNCTION lava._document_of(id uuid)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$ SELECT lava._key_document(v) FROM lava.spend_keys v WHERE v.spend_key_id = id $$;
COMMENT ON FUNCTION lava._document_of(uuid) IS 'internal: the spend key document of a key id';

-- Raises 22023 for an invalid params document, naming the field.
CREATE FUNCTION lava._params_error(field text, problem text)
RETURNS void
LANGUAGE sql VOLATILE
AS $$
	SELECT lava._raise('22023',
					   pg_catalog.format('invalid spend key params: "%s" %s', field, problem),
					   NULL,
					   'See the params table of lava''s README for the accepted fields and values.')
$$;
COMMENT ON FUNCTION lava._params_error(text, text) IS 'internal: raises 22023 naming a params field';

-- A JSON value that must be a non-empty array of non-empty strings; returns it as text[] (deduplicated, in order).
CREATE FUNCTION lava._params_name_list(field text, v jsonb)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
	result text[] := '{}';
	e jsonb;
BEGIN
	IF pg_catalog.jsonb_typeof(v) <> 'array' THEN
		PERFORM lava._params_error(field, 'must be a non-empty array of names, or null');
	END IF;
	IF pg_catalog.jsonb_array_length(v) = 0 THEN
		PERFORM lava._params_error(field, 'must not be an empty array (use null to allow all)');
	END IF;
	FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(v) AS x LOOP
		IF pg_catalog.jsonb_typeof(e) <> 'string' OR pg_catalog.length(e #>> '{}') NOT BETWEEN 1 AND 255
		   OR pg_catalog.btrim(e #>> '{}') = '' THEN
			PERFORM lava._params_error(field, 'must contain only non-empty strings of at most 255 characters');
		END IF;
		IF NOT (e #>> '{}') = ANY (result) THEN
			result := result || (e #>> '{}');
		END IF;
	END LOOP;
	RETURN result;
END
$$;
COMMENT ON FUNCTION lava._params_name_list(text, jsonb) IS 'internal: validates an allow-list';

-- A JSON integer >= 1 (no fraction, no string) or an error naming the field.
CREATE FUNCTION lava._params_count(field text, v jsonb, maximum numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
	n numeric;
BEGIN
	IF v IS NULL OR pg_catalog.jsonb_typeof(v) <> 'number' THEN
		PERFORM lava._params_error(field, 'must be an integer >= 1');
	END IF;
	n := (v #>> '{}')::numeric;
	IF n <> pg_catalog.trunc(n) OR n < 1 THEN
		PERFORM lava._params_error(field, 'must be an integer >= 1');
	END IF;
	IF n > maximum THEN
		PERFORM lava._params_error(field, pg_catalog.format('must be at most %s', maximum));
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION lava._params_count(text, jsonb, numeric) IS 'internal: validates a positive integer field';

-- A cycle name or an error naming the field.
CREATE FUNCTION lava._params_cycle(field text, v jsonb)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
	IF v IS NULL THEN
		PERFORM lava._params_error(field, 'is required');
	END IF;
	IF pg_catalog.jsonb_typeof(v) <> 'string' OR (v #>> '{}') NOT IN ('daily', 'weekly', 'monthly', 'total') THEN
		PERFORM lava._params_error(field, 'must be one of "daily", "weekly", "monthly", "total"');
	END IF;
	RETURN v #>> '{}';
END
$$;
COMMENT ON FUNCTION lava._params_cycle(text, jsonb) IS 'internal: validates a cycle';

-- Fails on members of object `v` other than `allowed`, naming the first.
CREATE FUNCTION lava._params_members(field text, v jsonb, allowed text[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
	k text;
BEGIN
	SELECT x INTO k FROM pg_catalog.jsonb_object_keys(v) AS x WHERE x <> ALL (allowed) ORDER BY x LIMIT 1;
	IF k IS NOT NULL THEN
		PERFORM lava._params_error(CASE WHEN field IS NULL THEN k ELSE field || '.' || k END,
								   'is not a known field');
	END IF;
END
$$;
COMMENT ON FUNCTION lava._params_members(text, jsonb, text[]) IS 'internal: refuses unknown fields';

-- A limit object of params: false for an explicit null; true for an object
-- with only `members`, `required` among them; 22023 naming the field else.
CREATE FUNCTION lava._params_object(field text, v jsonb, members text[], required text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
	IF pg_catalog.jsonb_typeof(v) = 'null' THEN
		RETURN false;
	END IF;
	IF pg_catalog.jsonb_typeof(v) <> 'object' THEN
		PERFORM lava._params_error(field, pg_catalog.format('must be an object {"%s"} or null',
															 pg_catalog.array_to_string(members, '", "')));
	END IF;
	PERFORM lava._params_members(field, v, members);
	IF NOT v ? required THEN
		PERFORM lava._params_error(field || '.' || required, 'is required');
	END IF;
	RETURN true;
END
$$;
COMMENT ON FUNCTION lava._params_object(text, jsonb, text[], text) IS 'internal: validates the frame of a limit object';

-- Validates a params document (create: `creating` true) and returns it
-- normalised: only the fields present, each in its stored form.  Refuses
-- with 22023 naming the field; see README for the rules.
CREATE FUNCTION lava._validate_params(params jsonb, creating boolean)
RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	out jsonb := '{}';
	v jsonb;
	amount numeric;
	ts timestamptz;
	s text;
BEGIN
	IF params IS NULL OR pg_catalog.jsonb_typeof(params) <> 'object' THEN
		PERFORM lava._raise('22023', 'invalid spend key params: the document must be a JSON object',
							pg_catalog.format('Got %s.', COALESCE(pg_catalog.jsonb_typeof(params), 'NULL')), NULL);
	END IF;
	PERFORM lava._params_members(NULL, params,
		ARRAY['name', 'status', 'request_shape', 'allowed_providers', 'allowed_models',
			  'spend_limit', 'request_limit', 'rate_limit', 'expires_at']);

	-- name, status, request_shape: strings, never null
	IF creating AND NOT params ? 'name' THEN
		PERFORM lava._params_error('name', 'is required');
	END IF;
	IF params ? 'name' THEN
		v := params -> 'name';
		IF pg_catalog.jsonb_typeof(v) <> 'string' OR pg_catalog.char_length(v #>> '{}') NOT BETWEEN 1 AND 255
		   OR pg_catalog.btrim(v #>> '{}') = '' THEN
			PERFORM lava._params_error('name', 'must be a string of 1 to 255 characters, not blank');
		END IF;
		out := out || pg_catalog.jsonb_build_object('name', v);
	END IF;
	IF params ? 'status' THEN
		v := params -> 'status';
		IF pg_catalog.jsonb_typeof(v) <> 'string' OR (v #>> '{}') NOT IN ('active', 'paused') THEN
			PERFORM lava._params_error('status', 'must be "active" or "paused"');
		END IF;
		out := out || pg_catalog.jsonb_build_object('status', v);
	END IF;
	IF params ? 'request_shape' THEN
		v := params -> 'request_shape';
		IF pg_catalog.jsonb_typeof(v) <> 'string' OR (v #>> '{}') NOT IN ('openai', 'anthropic') THEN
			PERFORM lava._params_error('request_shape', 'must be "openai" or "anthropic"');
		END IF;
		out := out || pg_catalog.jsonb_build_object('request_shape', v);
	END IF;

	-- allow-lists
	IF params ? 'allowed_providers' THEN
		v := params -> 'allowed_providers';
		out := out || pg_catalog.jsonb_build_object('allowed_providers',
			CASE WHEN pg_catalog.jsonb_typeof(v) = 'null' THEN NULL
				 ELSE pg_catalog.to_jsonb(lava._params_name_list('allowed_providers', v)) END);
	END IF;
	IF params ? 'allowed_models' THEN
		v := params -> 'allowed_models';
		out := out || pg_catalog.jsonb_build_object('allowed_models',
			CASE WHEN pg_catalog.jsonb_typeof(v) = 'null' THEN NULL
				 ELSE pg_catalog.to_jsonb(lava._params_name_list('allowed_models', v)) END);
	END IF;

	-- spend_limit {amount, cycle}
	IF params ? 'spend_limit' THEN
		v := params -> 'spend_limit';
		IF NOT lava._params_object('spend_limit', v, ARRAY['amount', 'cycle'], 'amount') THEN
			out := out || '{"spend_limit": null}';
		ELSE
			IF pg_catalog.jsonb_typeof(v -> 'amount') = 'null' THEN
				PERFORM lava._params_error('spend_limit.amount', 'is required');
			END IF;
			IF pg_catalog.jsonb_typeof(v -> 'amount') = 'number' THEN
				amount := (v ->> 'amount')::numeric;
			ELSIF pg_catalog.jsonb_typeof(v -> 'amount') = 'string'
				  AND (v ->> 'amount') ~ '^[0-9]{1,15}(\.[0-9]{1,12})?$' THEN
				amount := (v ->> 'amount')::numeric;
			ELSE
				PERFORM lava._params_error('spend_limit.amount',
					'must be a decimal string such as "10.00" (at most 15 digits before the point and 12 after)');
			END IF;
			IF amount <= 0 THEN
				PERFORM lava._params_error('spend_limit.amount', 'must be greater than 0');
			END IF;
			IF amount >= 1e15 OR pg_catalog.scale(amount) > 12 THEN
				PERFORM lava._params_error('spend_limit.amount',
					'must be below 1000000000000000 with at most 12 decimals');
			END IF;
			out := out || pg_catalog.jsonb_build_object('spend_limit', pg_catalog.jsonb_build_object(
				'amount', amount, 'cycle', lava._params_cycle('spend_limit.cycle', v -> 'cycle')));
		END IF;
	END IF;

	-- request_limit {count, cycle}
	IF params ? 'request_limit' THEN
		v := params -> 'request_limit';
		IF NOT lava._params_object('request_limit', v, ARRAY['count', 'cycle'], 'count') THEN
			out := out || '{"request_limit": null}';
		ELSE
			out := out || pg_catalog.jsonb_build_object('request_limit', pg_catalog.jsonb_build_object(
				'count', lava._params_count('request_limit.count', v -> 'count', 9223372036854775807),
				'cycle', lava._params_cycle('request_limit.cycle', v -> 'cycle')));
		END IF;
	END IF;

	-- rate_limit {rpm, burst}
	IF params ? 'rate_limit' THEN
		v := params -> 'rate_limit';
		IF NOT lava._params_object('rate_limit', v, ARRAY['rpm', 'burst'], 'rpm') THEN
			out := out || '{"rate_limit": null}';
		ELSE
			out := out || pg_catalog.jsonb_build_object('rate_limit', pg_catalog.jsonb_build_object(
				'rpm', lava._params_count('rate_limit.rpm', v -> 'rpm', 2147483647),
				'burst', CASE WHEN pg_catalog.jsonb_typeof(v -> 'burst') IS DISTINCT FROM 'null'
							  AND v ? 'burst'
							  THEN lava._params_count('rate_limit.burst', v -> 'burst', 2147483647) END));
		END IF;
	END IF;

	-- expires_at: ISO 8601, UTC when no offset is given, in the future
	IF params ? 'expires_at' THEN
		v := params -> 'expires_at';
		IF pg_catalog.jsonb_typeof(v) = 'null' THEN
			out := out || '{"expires_at": null}';
		ELSE
			s := v #>> '{}';
			IF pg_catalog.jsonb_typeof(v) <> 'string' OR s !~
			   '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$' THEN
				PERFORM lava._params_error('expires_at', 'must be an ISO 8601 timestamp such as "2030-01-31T00:00:00Z", or null');
			END IF;
			BEGIN
				IF s ~ '(Z|z|[+-]\d{2}(:?\d{2})?)$' AND s ~ '[T ]' THEN
					ts := s::timestamptz;
				ELSE
					ts := s::timestamp AT TIME ZONE 'UTC';
				END IF;
			EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format OR invalid_time_zone_displacement_value THEN
				PERFORM lava._params_error('expires_at', 'is not a valid timestamp');
			END;
			IF ts <= pg_catalog.now() THEN
				PERFORM lava._params_error('expires_at', 'must be in the future');
			END IF;
			out := out || pg_catalog.jsonb_build_object('expires_at', ts);
		END IF;
	END IF;
	RETURN out;
END
$$;
COMMENT ON FUNCTION lava._validate_params(jsonb, boolean) IS
	'internal: validates a spend key params document and returns it normalised';

-- Raises P0002 for an id that names no key, or a revoked one.
CREATE FUNCTION lava._not_found(id uuid)
RETURNS void
LANGUAGE sql VOLATILE
AS $$
	SELECT lava._raise('P0002', pg_catalog.format('spend key %s not found', id),
					   'No spend key has this id, or it was revoked.', NULL)
$$;
COMMENT ON FUNCTION lava._not_found(uuid) IS 'internal: raises the not-found error of a key id';

-- Applies a validated params document to a key row (update and create share it).
-- A changed spend or request cycle recomputes that period's counters from the ledger.
CREATE FUNCTION lava._apply_params(id uuid, p jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	k lava.spend_key_store;
	ledger record;
	start timestamptz;
BEGIN
	UPDATE lava.spend_key_store SET
		name = CASE WHEN p ? 'name' THEN p ->> 'name' ELSE name END,
		status = CASE WHEN p ? 'status' THEN p ->> 'status' ELSE status END,
		request_shape = CASE WHEN p ? 'request_shape' THEN p ->> 'request_shape' ELSE request_shape END,
		allowed_providers = CASE WHEN NOT p ? 'allowed_providers' THEN allowed_providers
			WHEN pg_catalog.jsonb_typeof(p -> 'allowed_providers') = 'null' THEN NULL
			ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text(p -> 'allowed_providers')) END,
		allowed_models = CASE WHEN NOT p ? 'allowed_models' THEN allowed_models
			WHEN pg_catalog.jsonb_typeof(p -> 'allowed_models') = 'null' THEN NULL
			ELSE ARRAY(SELECT pg_catalog.jsonb_array_elements_text(p -> 'allowed_models')) END,
		spend_limit_amount = CASE WHEN p ? 'spend_limit' THEN (p #>> '{spend_limit,amount}')::numeric
			ELSE spend_limit_amount END,
		spend_cycle = CASE WHEN p ? 'spend_limit' THEN p #>> '{spend_limit,cycle}' ELSE spend_cycle END,
		request_limit_count = CASE WHEN p ? 'request_limit' THEN (p #>> '{request_limit,count}')::bigint
			ELSE request_limit_count END,
		request_cycle = CASE WHEN p ? 'request_limit' THEN p #>> '{request_limit,cycle}' ELSE request_cycle END,
		rate_rpm = CASE WHEN p ? 'rate_limit' THEN (p #>> '{rate_limit,rpm}')::integer ELSE rate_rpm END,
		rate_burst = CASE WHEN p ? 'rate_limit' THEN (p #>> '{rate_limit,burst}')::integer ELSE rate_burst END,
		expires_at = CASE WHEN p ? 'expires_at' THEN (p ->> 'expires_at')::timestamptz ELSE expires_at END
	WHERE spend_key_id = id
	RETURNING * INTO k;

	IF p ? 'spend_limit' THEN
		start := lava._period_start(k.spend_cycle, pg_catalog.now());
		IF start IS DISTINCT FROM k.spend_period_start THEN
			ledger := lava._ledger_since(id, start);
			UPDATE lava.spend_key_store SET spend_period_start = start, period_spend = ledger.cost
			WHERE spend_key_id = id;
		END IF;
	END IF;
	IF p ? 'request_limit' THEN
		start := lava._period_start(k.request_cycle, pg_catalog.now());
		IF start IS DISTINCT FROM k.request_period_start THEN
			ledger := lava._ledger_since(id, start);
			UPDATE lava.spend_key_store SET request_period_start = start, period_requests = ledger.requests
			WHERE spend_key_id = id;
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION lava._apply_params(uuid, jsonb) IS 'internal: applies validated params to a key';

-- Inserts a new key for `owner` (NULL for admin-made keys) and returns its document with `key`.
CREATE FUNCTION lava._create_key(params jsonb, owner text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	p jsonb := lava._validate_params(params, true);
	plaintext text := lava._generate_key();
	id uuid;
BEGIN
	INSERT INTO lava.spend_key_store (key_digest, key_preview, name, owner_role)
	VALUES (lava._key_digest(plaintext), lava._key_preview(plaintext), p ->> 'name', owner)
	RETURNING spend_key_id INTO id;
	PERFORM lava._apply_params(id, p);
	RETURN lava._document_of(id) || pg_catalog.jsonb_build_object('key', plaintext);
END
$$;
COMMENT ON FUNCTION lava._create_key(jsonb, text) IS 'internal: creates a key and returns its document with the plaintext';

CREATE FUNCTION lava.create_spend_key(params jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT lava._create_key(params, NULL) $$;
COMMENT ON FUNCTION lava.create_spend_key(jsonb) IS
	'creates a spend key; returns its document with the plaintext `key`, shown this once';

CREATE FUNCTION lava.get_spend_key(spend_key_id uuid)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	doc jsonb := lava._document_of(spend_key_id);
BEGIN
	IF doc IS NULL THEN
		PERFORM lava._not_found(spend_key_id);
	END IF;
	RETURN doc;
END
$$;
COMMENT ON FUNCTION lava.get_spend_key(uuid) IS 'the document of a spend key that is not revoked';

-- Opaque list cursor: hex of "<created_at in epoch microseconds>/<id>".
CREATE FUNCTION lava._encode_cursor(created timestamptz, id uuid)
RETURNS text
LANGUAGE sql STABLE
AS $$
	SELECT pg_catalog.encode(pg_catalog.convert_to(
		(EXTRACT(epoch FROM created) * 1000000)::bigint::text || '/' || id::text, 'UTF8'), 'hex')
$$;
COMMENT ON FUNCTION lava._encode_cursor(timestamptz, uuid) IS 'internal: encodes a list position';

CREATE FUNCTION lava.list_spend_keys(cursor text DEFAULT NULL, lim integer DEFAULT 10)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := COALESCE(lim, 10);
	after_ts timestamptz := 'infinity';
	after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
	decoded text;
	rows jsonb;
	more boolean;
	last_ts timestamptz;
	last_id uuid;
BEGIN
	IF n NOT BETWEEN 1 AND 100 THEN
		PERFORM lava._raise('22023', 'invalid lim: must be between 1 and 100',
							pg_catalog.format('Got %s.', n), NULL);
	END IF;
	IF cursor IS NOT NULL THEN
		BEGIN
			decoded := pg_catalog.convert_from(pg_catalog.decode(cursor, 'hex'), 'UTF8');
			after_ts := 'epoch'::timestamptz
				+ pg_catalog.split_part(decoded, '/', 1)::bigint * interval '1 microsecond';
			after_id := pg_catalog.split_part(decoded, '/', 2)::uuid;
		EXCEPTION WHEN OTHERS THEN
			decoded := NULL;
		END;
		IF decoded IS NULL OR decoded !~ '^-?[0-9]+/[0-9a-f-]{36}$' THEN
			PERFORM lava._raise('22023', 'invalid cursor',
								'The cursor must be a next_cursor value returned by lava.list_spend_keys.', NULL);
		END IF;
	END IF;

	SELECT COALESCE(pg_catalog.jsonb_agg(p.doc ORDER BY p.rn) FILTER (WHERE p.rn <= n), '[]'),
		   pg_catalog.count(*) > n,
		   (pg_catalog.array_agg(p.created_at ORDER BY p.rn) FILTER (WHERE p.rn <= n))[n],
		   (pg_catalog.array_agg(p.spend_key_id ORDER BY p.rn) FILTER (WHERE p.rn <= n))[n]
	INTO rows, more, last_ts, last_id
	FROM (SELECT k.created_at, k.spend_key_id, lava._key_document(k) AS doc,
				 pg_catalog.row_number() OVER (ORDER BY k.created_at DESC, k.spend_key_id DESC) AS rn
		  FROM lava.spend_keys k
		  WHERE (k.created_at, k.spend_key_id) < (after_ts, after_id)
		  ORDER BY k.created_at DESC, k.spend_key_id DESC
		  LIMIT n + 1) p;

	RETURN pg_catalog.jsonb_build_object(
		'data', rows,
		'has_more', more,
		'next_cursor', CASE WHEN more THEN lava._encode_cursor(last_ts, last_id) END);
END
$$;
COMMENT ON FUNCTION lava.list_spend_keys(text, integer) IS
	'spend keys that are not revoked, newest first, lim (1..100) per page; pass next_cursor to continue';

CREATE FUNCTION lava.update_spend_key(spend_key_id uuid, params jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id uuid := spend_key_id;
	p jsonb;
BEGIN
	PERFORM 1 FROM lava.spend_key_store k WHERE k.spend_key_id = id AND k.revoked_at IS NULL FOR UPDATE;
	IF NOT FOUND THEN
		PERFORM lava._not_found(id);
	END IF;
	p := lava._validate_params(params, false);
	PERFORM lava._apply_params(id, p);
	RETURN lava._document_of(id);
END
$$;
COMMENT ON FUNCTION lava.update_spend_key(uuid, jsonb) IS
	'changes a spend key''s settings: an absent field is unchanged, an explicit null clears it';

CREATE FUNCTION lava.rotate_spend_key(spend_key_id uuid)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id uuid := spend_key_id;
	plaintext text := lava._generate_key();
BEGIN
	UPDATE lava.spend_key_store k
	SET key_digest = lava._key_digest(plaintext), key_preview = lava._key_preview(plaintext)
	WHERE k.spend_key_id = id AND k.revoked_at IS NULL;
	IF NOT FOUND THEN
		PERFORM lava._not_found(id);
	END IF;
	RETURN lava._document_of(id) || pg_catalog.jsonb_build_object('key', plaintext);
END
$$;
COMMENT ON FUNCTION lava.rotate_spend_key(uuid) IS
	'gives a spend key a new value (returned once); the old value stops working at commit';

CREATE FUNCTION lava.revoke_spend_key(spend_key_id uuid)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id uuid := spend_key_id;
BEGIN
	UPDATE lava.spend_key_store k SET revoked_at = pg_catalog.now()
	WHERE k.spend_key_id = id AND k.revoked_at IS NULL;
	IF NOT FOUND THEN
		PERFORM lava._not_found(id);
	END IF;
	RETURN '{"success": true}'::jsonb;
END
$$;
COMMENT ON FUNCTION lava.revoke_spend_key(uuid) IS
	'revokes a spend key for good; its usage stays in the ledger';

-- Finds a usable key by its plaintext and locks its row (admission) or not
-- (verification), judging expiry at `at` (NULL: the clock once the row
-- is locked).  Raises 28000 for a malformed, unknown, revoked or
-- expired key and 55000 for a paused one; never names the key.
CREATE FUNCTION lava._usable_key(spend_key text, lock_row boolean, at timestamptz)
RETURNS lava.spend_key_store
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	k lava.spend_key_store;
BEGIN
	-- (a bounded repetition such as {40,200} costs the regex engine ~30 us a call)
	IF spend_key IS NULL OR pg_catalog.left(spend_key, 8) <> 'lava_sk_'
	   OR pg_catalog.length(spend_key) NOT BETWEEN 48 AND 208
	   OR pg_catalog.substr(spend_key, 9) !~ '^[0-9A-Za-z]+$' THEN
		PERFORM lava._raise('28000', 'malformed spend key',
							'A spend key is lava_sk_ followed by at least 40 letters and digits.', NULL);
	END IF;
	IF lock_row THEN
		SELECT * INTO k FROM lava.spend_key_store s
		WHERE s.key_digest = lava._key_digest(spend_key) AND s.revoked_at IS NULL FOR UPDATE;
	ELSE
		SELECT * INTO k FROM lava.spend_key_store s
		WHERE s.key_digest = lava._key_digest(spend_key) AND s.revoked_at IS NULL;
	END IF;
	IF NOT FOUND THEN
		PERFORM lava._raise('28000', 'unknown or revoked spend key',
							'No usable spend key has this value.', NULL);
	END IF;
	at := COALESCE(at, pg_catalog.clock_timestamp());
	IF k.expires_at IS NOT NULL AND k.expires_at <= at THEN
		PERFORM lava._raise('28000', 'spend key has expired',
							pg_catalog.format('Spend key %s expired at %s.', k.spend_key_id, lava._iso(k.expires_at)),
							'Set a later expires_at with lava.update_spend_key, or use another key.');
	END IF;
	IF k.status <> 'active' THEN
		PERFORM lava._raise('55000', 'spend key is paused',
							pg_catalog.format('Spend key %s has status "%s".', k.spend_key_id, k.status),
							'Set its status to "active" with lava.update_spend_key.');
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION lava._usable_key(text, boolean, timestamptz) IS
	'internal: looks a plaintext key up and refuses unusable ones';

CREATE FUNCTION lava.verify_spend_key(spend_key text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k lava.spend_key_store := lava._usable_key(spend_key, false, pg_catalog.now());
BEGIN
	RETURN lava._document_of(k.spend_key_id);
END
$$;
COMMENT ON FUNCTION lava.verify_spend_key(text) IS
	'the document of a spend key that is usable now; 28000 when unknown, revoked, expired or malformed, 55000 when paused';
