-- The worker's side of the queue (API.md section 4): claim, record, recover,
-- purge.  The background worker (src/worker.c) calls these in short
-- transactions and performs the HTTP calls outside any transaction.

CREATE FUNCTION lava._setting_ms(name text)
RETURNS integer
LANGUAGE sql STABLE
AS $$ SELECT (EXTRACT(epoch FROM pg_catalog.current_setting(name)::interval) * 1000)::integer $$;
COMMENT ON FUNCTION lava._setting_ms(text) IS 'internal: a time setting in milliseconds';

-- Claims up to max_n due requests for sending: FOR UPDATE SKIP LOCKED, so a
-- request being cancelled is skipped.  A request whose key was revoked,
-- paused or expired since enqueue is cancelled here; one whose key has no
-- rate-limit token is put back until its token is due; the rest become
-- 'running' (one more attempt) and are returned with their URL, headers
-- (holding the provider's API key) and body.
CREATE FUNCTION lava._claim(max_n integer)
RETURNS TABLE (request_id bigint, method text, url text, headers text[], body text, timeout_ms integer)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	r record;
	now_ts timestamptz := pg_catalog.clock_timestamp();
	wait double precision;
	timeout integer := lava._setting_ms('lava.request_timeout');
	waiting jsonb := '{}';		-- per paced key: [seconds to its next token, requests already put behind it]
	h text[];
BEGIN
	FOR r IN
		SELECT q.request_id AS id, q.spend_key_id, q.endpoint, q.method, q.body, q.provider,
			   k.status AS key_status, k.revoked_at, k.expires_at, k.rate_rpm, k.rate_burst,
			   p.base_url, p.api_key, p.request_shape, p.headers AS extra, p.enabled
		FROM lava.request_store q
		JOIN lava.spend_key_store k ON k.spend_key_id = q.spend_key_id
		LEFT JOIN lava.providers p ON p.name = q.provider
		WHERE q.status = 'queued' AND q.next_attempt_at <= now_ts
		ORDER BY q.next_attempt_at, q.request_id
		LIMIT max_n
		FOR UPDATE OF q SKIP LOCKED
	LOOP
		IF r.revoked_at IS NOT NULL OR r.key_status <> 'active' OR r.expires_at <= now_ts THEN
			PERFORM lava._finish(r.id, 'cancelled',
				CASE WHEN r.revoked_at IS NOT NULL THEN 'spend key was revoked after the request was queued'
					 WHEN r.key_status <> 'active' THEN 'spend key was paused after the request was queued'
					 ELSE 'spend key expired before the request was sent' END, NULL);
			CONTINUE;
		END IF;
		IF r.enabled IS NOT TRUE THEN
			PERFORM lava._finish(r.id, 'error',
				pg_catalog.format('provider "%s" was disabled or removed after the request was queued', r.provider), NULL);
			CONTINUE;
		END IF;
		IF r.rate_rpm IS NOT NULL THEN
			IF waiting ? r.spend_key_id::text THEN
				wait := 1;		-- the bucket is known to be empty: no token for this one either
			ELSE
				wait := lava._take_token(r.spend_key_id, r.rate_rpm, r.rate_burst);
			END IF;
			IF wait > 0 THEN
				-- queue behind the key's earlier requests, one refill interval apart
				waiting := pg_catalog.jsonb_set(waiting, ARRAY[r.spend_key_id::text], pg_catalog.to_jsonb(ARRAY[
					COALESCE((waiting #>> ARRAY[r.spend_key_id::text, '0'])::float8, wait),
					COALESCE((waiting #>> ARRAY[r.spend_key_id::text, '1'])::float8 + 1, 0)]));
				UPDATE lava.request_store s
				SET next_attempt_at = now_ts + pg_catalog.make_interval(secs =>
					(waiting #>> ARRAY[r.spend_key_id::text, '0'])::float8
					+ (waiting #>> ARRAY[r.spend_key_id::text, '1'])::float8 * 60.0 / r.rate_rpm)
				WHERE s.request_id = r.id;
				CONTINUE;
			END IF;
		END IF;

		UPDATE lava.request_store s
		SET status = 'running', attempts = s.attempts + 1, started_at = COALESCE(s.started_at, now_ts)
		WHERE s.request_id = r.id;

		h := ARRAY['Content-Type: application/json'];
		IF r.request_shape = 'anthropic' THEN
			IF r.api_key IS NOT NULL THEN
				h := h || ('x-api-key: ' || r.api_key);
			END IF;
			IF NOT r.extra ? 'anthropic-version' THEN
				h := h || 'anthropic-version: 2023-06-01'::text;
			END IF;
		ELSIF r.api_key IS NOT NULL THEN
			h := h || ('Authorization: Bearer ' || r.api_key);
		END IF;
		h := h || ARRAY(SELECT e.key || ': ' || e.value FROM pg_catalog.jsonb_each_text(r.extra) e ORDER BY e.key);

		request_id := r.id;
		method := r.method;
		url := r.base_url || r.endpoint;
		headers := h;
		body := r.body::text;
		timeout_ms := timeout;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION lava._claim(integer) IS
	'internal (worker): claims due requests for sending, cancelling those whose key became unusable and pacing rate-limited keys';

-- Seconds until the earliest queued request is due (0 when one is due now,
-- NULL when the queue is empty): the worker's next wake-up.
CREATE FUNCTION lava._next_due()
RETURNS double precision
LANGUAGE sql STABLE
AS $$
	SELECT GREATEST(0, EXTRACT(epoch FROM min(next_attempt_at) - pg_catalog.clock_timestamp()))::float8
	FROM lava.request_store WHERE status = 'queued'
	HAVING pg_catalog.count(*) > 0
$$;
COMMENT ON FUNCTION lava._next_due() IS 'internal (worker): seconds until the next queued request is due';

-- Output text of a provider response in either shape.
CREATE FUNCTION lava._output_text(shape text, response jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT CASE
		WHEN shape = 'anthropic' THEN
			(SELECT pg_catalog.string_agg(c ->> 'text', '' ORDER BY o)
			 FROM pg_catalog.jsonb_array_elements(CASE WHEN pg_catalog.jsonb_typeof(response -> 'content') = 'array'
													   THEN response -> 'content' ELSE '[]' END) WITH ORDINALITY AS e(c, o)
			 WHERE c ->> 'type' = 'text')
		ELSE response #>> '{choices,0,message,content}'
	END
$$;
COMMENT ON FUNCTION lava._output_text(text, jsonb) IS 'internal: the assistant text of an OpenAI or Anthropic response';

-- Records the outcomes of finished HTTP calls, one array element each
-- (http_status 0 with an error text for a network error or timeout):
-- retries (429, 5xx, network errors) go back to the queue with exponential
-- backoff and jitter (at least Retry-After) while attempts remain; a 2xx is
-- completed and charged its exact cost from the usage (the reservation when
-- usage is missing or the body is not JSON); anything else is an error and
-- charged nothing.  Each terminal request is settled and notified once.
CREATE FUNCTION lava._complete(ids bigint[], http_statuses integer[], bodies text[], errors text[],
							   retry_afters double precision[],
							   OUT completed integer, OUT failed integer, OUT requeued integer)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	i integer;
	q lava.request_store;
	st integer;
	resp jsonb;
	in_t bigint;
	out_t bigint;
	in_c numeric;
	out_c numeric;
	note text;
	backoff double precision;
	max_attempts integer := pg_catalog.current_setting('lava.max_attempts')::integer;
BEGIN
	completed := 0;
	failed := 0;
	requeued := 0;
	FOR i IN 1 .. COALESCE(pg_catalog.array_length(ids, 1), 0) LOOP
		SELECT * INTO q FROM lava.request_store s WHERE s.request_id = ids[i] AND s.status = 'running' FOR UPDATE;
		CONTINUE WHEN NOT FOUND;
		st := COALESCE(http_statuses[i], 0);
		resp := NULL;
		IF bodies[i] IS NOT NULL THEN
			BEGIN
				resp := bodies[i]::jsonb;
			EXCEPTION WHEN OTHERS THEN
				resp := NULL;
			END;
		END IF;

		-- retry?
		IF (st = 0 OR st = 429 OR st >= 500) AND q.attempts < max_attempts THEN
			backoff := LEAST(30, 0.5 * 2 ^ (q.attempts - 1)) * (0.5 + pg_catalog.random() / 2);
			IF retry_afters[i] IS NOT NULL THEN
				backoff := GREATEST(backoff, LEAST(retry_afters[i], 3600));
			END IF;
			UPDATE lava.request_store s SET status = 'queued', http_status = NULLIF(st, 0),
				next_attempt_at = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => backoff),
				error = pg_catalog.format('attempt %s failed: %s; retrying', q.attempts,
										  COALESCE(errors[i], 'HTTP ' || st))
			WHERE s.request_id = q.request_id;
			requeued := requeued + 1;
			CONTINUE;
		END IF;

		IF st BETWEEN 200 AND 299 THEN
			IF resp IS NULL THEN
				UPDATE lava.request_store s SET http_status = st WHERE s.request_id = q.request_id;
				PERFORM lava._finish(q.request_id, 'error',
					COALESCE(errors[i], 'upstream answered with a body that is not JSON')
					|| '; the reservation was charged', q.reservation);
				failed := failed + 1;
				CONTINUE;
			END IF;
			in_t := COALESCE(resp #>> '{usage,prompt_tokens}', resp #>> '{usage,input_tokens}')::bigint;
			out_t := COALESCE(resp #>> '{usage,completion_tokens}', resp #>> '{usage,output_tokens}')::bigint;
			IF q.request_shape = 'anthropic' AND in_t IS NOT NULL THEN
				in_t := in_t + COALESCE((resp #>> '{usage,cache_creation_input_tokens}')::bigint, 0)
							 + COALESCE((resp #>> '{usage,cache_read_input_tokens}')::bigint, 0);
			END IF;
			IF in_t IS NULL OR out_t IS NULL THEN
				in_c := NULL;
				out_c := NULL;
				note := 'upstream response has no usage; the reservation was charged';
			ELSE
				in_c := pg_catalog.trim_scale(in_t * COALESCE(q.input_price, 0) / 1000000);
				out_c := pg_catalog.trim_scale(out_t * COALESCE(q.output_price, 0) / 1000000);
				note := NULL;
			END IF;
			UPDATE lava.request_store s SET http_status = st, response = resp,
				output_text = lava._output_text(q.request_shape, resp),
				input_tokens = in_t, output_tokens = out_t, input_cost = in_c, output_cost = out_c
			WHERE s.request_id = q.request_id;
			PERFORM lava._finish(q.request_id, 'completed', note,
								 CASE WHEN note IS NULL THEN in_c + out_c ELSE q.reservation END, in_t, out_t);
			completed := completed + 1;
		ELSE
			UPDATE lava.request_store s SET http_status = NULLIF(st, 0), response = resp WHERE s.request_id = q.request_id;
			PERFORM lava._finish(q.request_id, 'error',
				CASE WHEN errors[i] IS NOT NULL THEN
						 pg_catalog.format('%s (after %s attempts)', errors[i], q.attempts)
					 ELSE pg_catalog.format('upstream answered HTTP %s%s%s', st,
							COALESCE(': ' || COALESCE(resp #>> '{error,message}', resp #>> '{error,error,message}'), ''),
							CASE WHEN st = 429 OR st >= 500 THEN pg_catalog.format(' (after %s attempts)', q.attempts) ELSE '' END)
				END, NULL);
			failed := failed + 1;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION lava._complete(bigint[], integer[], text[], text[], double precision[]) IS
	'internal (worker): records finished calls: retry, complete with exact cost, or fail';

-- The crash rule, applied when a worker starts: a request still 'running'
-- was in flight when the previous worker or the server died.  It was never
-- settled, so it cannot have been charged.  It goes back to the queue if it
-- has attempts left (the interrupted one counts), else it ends in error and
-- its reservation is released.  Settlement happens once, at the terminal
-- state, so nothing is ever charged twice.
CREATE FUNCTION lava._worker_recover()
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	max_attempts integer := pg_catalog.current_setting('lava.max_attempts')::integer;
	r record;
	n integer := 0;
BEGIN
	FOR r IN SELECT s.request_id, s.attempts FROM lava.request_store s WHERE s.status = 'running' FOR UPDATE LOOP
		IF r.attempts < max_attempts THEN
			UPDATE lava.request_store s SET status = 'queued', next_attempt_at = pg_catalog.clock_timestamp(),
				error = pg_catalog.format('attempt %s was interrupted by a worker restart; retrying', r.attempts)
			WHERE s.request_id = r.request_id;
		ELSE
			PERFORM lava._finish(r.request_id, 'error',
				pg_catalog.format('attempt %s was interrupted by a worker restart and no attempts are left', r.attempts), NULL);
		END IF;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION lava._worker_recover() IS
	'internal (worker): requeues or fails the requests that were in flight when a worker died';

-- Deletes finished request rows older than ttl_seconds (10,000 at a time).
-- Their accounting stays in the key counters and the daily ledger.
CREATE FUNCTION lava._purge(ttl_seconds integer)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
	WITH gone AS (
		DELETE FROM lava.request_store s WHERE s.request_id IN (
			SELECT o.request_id FROM lava.request_store o
			WHERE o.status IN ('completed', 'error', 'cancelled')
			  AND o.completed_at < pg_catalog.now() - pg_catalog.make_interval(secs => ttl_seconds)
			LIMIT 10000)
		RETURNING 1)
	SELECT pg_catalog.count(*)::integer FROM gone
$$;
COMMENT ON FUNCTION lava._purge(integer) IS 'internal (worker): purges finished requests older than lava.request_ttl';

CREATE FUNCTION lava._worker_state(OUT running boolean, OUT pid integer, OUT in_flight bigint, OUT completed bigint,
								   OUT failed bigint, OUT started_at timestamptz, OUT last_error text)
RETURNS record
AS 'MODULE_PATHNAME', 'lava_worker_state'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._worker_state() IS 'internal: the worker''s state in shared memory';

CREATE VIEW lava.worker_status AS
SELECT s.running, s.pid,
	   (SELECT pg_catalog.count(*) FROM lava.request_store q WHERE q.status = 'queued') AS queued,
	   s.in_flight, s.completed, s.failed, s.started_at, s.last_error
FROM lava._worker_state() s;
COMMENT ON VIEW lava.worker_status IS
	'what the worker is doing: running, pid, queued, in flight, completed and failed counts since start, last error';
