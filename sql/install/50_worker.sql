-- The worker's side of the queue (API.md section 4): claim, record, recover,
-- purge.  The background worker (src/worker.c) calls these in short
-- transactions and performs the HTTP calls outside any transaction.

CREATE FUNCTION lava._setting_ms(name text)
RETURNS integer
LANGUAGE sql STABLE
AS $$ SELECT (EXTRACT(epoch FROM pg_catalog.current_setting(name)::interval) * 1000)::integer $$;
COMMENT ON FUNCTION lava._setting_ms(text) IS 'internal: a time setting in milliseconds';

-- The request headers of a provider: JSON content, its credentials in its
-- shape's header, and its extra headers.
CREATE FUNCTION lava._headers(shape text, api_key text, extra jsonb)
RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$
	SELECT ARRAY['Content-Type: application/json']
		|| CASE WHEN shape = 'anthropic' THEN
				CASE WHEN api_key IS NOT NULL THEN ARRAY['x-api-key: ' || api_key] ELSE '{}'::text[] END
				|| CASE WHEN NOT extra ? 'anthropic-version' THEN ARRAY['anthropic-version: 2023-06-01'] ELSE '{}'::text[] END
		   ELSE CASE WHEN api_key IS NOT NULL THEN ARRAY['Authorization: Bearer ' || api_key] ELSE '{}'::text[] END
		   END
		|| ARRAY(SELECT e.key || ': ' || e.value FROM pg_catalog.jsonb_each_text(extra) e)
$$;
COMMENT ON FUNCTION lava._headers(text, text, jsonb) IS 'internal: the upstream request headers of a provider';

-- Claims up to max_n due requests for sending, shared fairly between keys
-- and oldest first within a key, with FOR UPDATE SKIP LOCKED (a request
-- being cancelled is skipped).  The common
-- case (usable key without a rate limit, enabled provider) is one set-based
-- UPDATE.  The rest go one by one: a request whose key was revoked, paused
-- or expired since enqueue is cancelled; one for a disabled provider fails;
-- one whose key has no rate-limit token is put back until its token is due,
-- behind the key's earlier requests.  Claimed requests become 'running'
-- (one more attempt) and are returned with URL, headers (holding the
-- provider's API key) and body.
--
-- The worker passes its per-key cap (lava.max_key_concurrency) and, for
-- the keys that could pass it in this claim, the room each has left; a key
-- never gets more than that, so one key's backlog cannot hold every slot.
--
-- The queue's statistics are often stale (it fills and drains faster than
-- autovacuum analyses it), so the plans must not depend on them: every
-- ORDER BY matches an index, and sorting, sequential and bitmap scans and
-- hash and merge joins are disabled inside the function (and JIT, which the
-- resulting cost estimates would otherwise trigger), and joins run in the
-- order written: every statement walks an index or is driven from the
-- picked ids, each found by its key.  Such a plan suits any parameters, so
-- it is made once (generic): a custom plan per call cost about 0.3 ms.
CREATE FUNCTION lava._claim(max_n integer, key_cap integer DEFAULT NULL,
							near_keys uuid[] DEFAULT '{}', near_rooms integer[] DEFAULT '{}')
RETURNS TABLE (request_id bigint, spend_key_id uuid, method text, url text, headers text[], body text,
			   timeout_ms integer)
LANGUAGE plpgsql VOLATILE
SET enable_sort = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET join_collapse_limit = 1
SET from_collapse_limit = 1
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	r record;
	now_ts timestamptz := pg_catalog.clock_timestamp();
	wait double precision;
	timeout integer := lava._setting_ms('lava.request_timeout');
	picked bigint[];
	claimed bigint;
	keys uuid[];
	full_keys uuid[];		-- keys at their cap: none of theirs this time
	start_key uuid := pg_catalog.gen_random_uuid();
	quota integer;
	waiting jsonb := '{}';		-- per paced key: [seconds to its next token, requests already put behind it]
BEGIN
	-- (No ANALYZE here: every statement below has a fixed, index-driven
	-- shape whatever the statistics say, and autovacuum analyses the table
	-- at 5% of change on the other core.  Analysing here, when the table
	-- had changed by more than its size, stalled a claim for about 100 ms
	-- and cost a drain about 4% of its throughput, measured.)

	-- Fair shares: up to 64 keys (and no more than max_n) with queued work, found by a loose index
	-- scan from a random point of the key space (wrapping around), each get
	-- an equal share of the free slots, oldest requests first.  So a key with
	-- a deep backlog of slow requests does not hold up another key's.
	keys := ARRAY(
		WITH RECURSIVE ks(k, n) AS (
			(SELECT q.spend_key_id, 1 FROM lava.request_store q
			 WHERE q.status = 'queued' AND q.spend_key_id >= start_key
			 ORDER BY q.spend_key_id LIMIT 1)
			UNION ALL
			SELECT (SELECT q.spend_key_id FROM lava.request_store q
					WHERE q.status = 'queued' AND q.spend_key_id > ks.k
					ORDER BY q.spend_key_id LIMIT 1), ks.n + 1
			FROM ks WHERE ks.k IS NOT NULL AND ks.n < LEAST(64, max_n))
		SELECT ks.k FROM ks WHERE ks.k IS NOT NULL);
	IF pg_catalog.cardinality(keys) < LEAST(64, max_n) THEN
		keys := keys || ARRAY(
			WITH RECURSIVE ks(k, n) AS (
				(SELECT q.spend_key_id, 1 FROM lava.request_store q
				 WHERE q.status = 'queued' AND q.spend_key_id < start_key
				 ORDER BY q.spend_key_id LIMIT 1)
				UNION ALL
				SELECT (SELECT q.spend_key_id FROM lava.request_store q
						WHERE q.status = 'queued' AND q.spend_key_id > ks.k AND q.spend_key_id < start_key
						ORDER BY q.spend_key_id LIMIT 1), ks.n + 1
				FROM ks WHERE ks.k IS NOT NULL AND ks.n < LEAST(64, max_n) - pg_catalog.cardinality(keys))
			SELECT ks.k FROM ks WHERE ks.k IS NOT NULL);
	END IF;
	IF pg_catalog.cardinality(keys) = 0 THEN
		RETURN;
	END IF;
	quota := GREATEST(1, CEIL(max_n::numeric / pg_catalog.cardinality(keys)))::integer;
	full_keys := ARRAY(SELECT n.k FROM ROWS FROM (pg_catalog.unnest(near_keys), pg_catalog.unnest(near_rooms)) AS n(k, room) WHERE n.room <= 0);
	picked := ARRAY(
		SELECT t.request_id
		FROM pg_catalog.unnest(keys) AS kk(k)
		CROSS JOIN LATERAL (
			-- (a range, not =, so that only the key index gives this order:
			-- with = the queue index would qualify and scan every key's rows)
			SELECT q.request_id FROM lava.request_store q
			WHERE q.spend_key_id >= kk.k AND q.spend_key_id <= kk.k
			  AND q.status = 'queued' AND q.next_attempt_at <= now_ts
			ORDER BY q.spend_key_id, q.next_attempt_at, q.request_id
			LIMIT LEAST(quota, COALESCE(near_rooms[pg_catalog.array_position(near_keys, kk.k)], key_cap, quota))
			FOR UPDATE SKIP LOCKED) t
		LIMIT max_n);
	-- slots the shares left free go to the oldest due requests of any key
	IF pg_catalog.cardinality(picked) < max_n THEN
		picked := picked || ARRAY(
			SELECT q.request_id FROM lava.request_store q
			WHERE q.status = 'queued' AND q.next_attempt_at <= now_ts AND q.request_id <> ALL (picked)
			  AND q.spend_key_id <> ALL (full_keys)
			ORDER BY q.next_attempt_at, q.request_id
			LIMIT max_n - pg_catalog.cardinality(picked)
			FOR UPDATE SKIP LOCKED);
	END IF;
	-- Per-key caps (lava.max_key_concurrency): keep, in claim order, no more
	-- of a key's requests than the room it has left (key_cap for a key with
	-- nothing in flight); the rows left out stay queued.
	IF key_cap IS NOT NULL AND pg_catalog.cardinality(picked) > 0
	   AND (max_n > key_cap OR pg_catalog.cardinality(near_keys) > 0) THEN
		picked := ARRAY(
			SELECT c.id FROM (
				SELECT u.id, u.ord,
					   pg_catalog.row_number() OVER (PARTITION BY q.spend_key_id ORDER BY u.ord) AS rn,
					   COALESCE(near_rooms[pg_catalog.array_position(near_keys, q.spend_key_id)], key_cap) AS room
				FROM pg_catalog.unnest(picked) WITH ORDINALITY AS u(id, ord)
				JOIN lava.request_store q ON q.request_id = u.id) c
			WHERE c.rn <= c.room
			ORDER BY c.ord);
	END IF;
	IF pg_catalog.cardinality(picked) = 0 THEN
		RETURN;
	END IF;

	-- (driven from the picked ids: a join that starts from the key table
	-- makes a generic plan probe the queue once per key)
	-- (the headers once per provider, not once per request)
	RETURN QUERY
	WITH p AS MATERIALIZED (
		SELECT pr.name, pr.base_url, lava._headers(pr.request_shape, pr.api_key, pr.headers) AS h
		FROM lava.providers pr WHERE pr.enabled)
	UPDATE lava.request_store s
	SET status = 'running', attempts = s.attempts + 1, started_at = COALESCE(s.started_at, now_ts)
	FROM (SELECT q.ctid AS tid, q.request_id, p.base_url, p.h
		  FROM pg_catalog.unnest(picked) AS u(id)
		  JOIN lava.request_store q ON q.request_id = u.id
		  JOIN lava.spend_key_store k ON k.spend_key_id = q.spend_key_id
		  JOIN p ON p.name = q.provider
		  WHERE k.revoked_at IS NULL AND k.status = 'active' AND (k.expires_at IS NULL OR k.expires_at > now_ts)
			AND k.rate_rpm IS NULL) c
	-- (the row found above, by its ctid: no second walk of the primary key
	-- through the row's older versions; the rows are locked by this
	-- transaction since the pick, so the ctid is theirs)
	WHERE s.ctid = c.tid
	RETURNING s.request_id, s.spend_key_id, s.method, c.base_url || s.endpoint, c.h, s.body::text, timeout;
	GET DIAGNOSTICS claimed = ROW_COUNT;
	IF claimed = pg_catalog.cardinality(picked) THEN
		RETURN;		-- the common case took them all
	END IF;

	FOR r IN
		SELECT q.request_id AS id, q.spend_key_id, q.endpoint, q.method, q.body, q.provider,
			   k.status AS key_status, k.revoked_at, k.expires_at, k.rate_rpm, k.rate_burst,
			   p.base_url, p.api_key, p.request_shape, p.headers AS extra, p.enabled
		FROM pg_catalog.unnest(picked) WITH ORDINALITY AS u(id, ord)
		JOIN lava.request_store q ON q.request_id = u.id
		JOIN lava.spend_key_store k ON k.spend_key_id = q.spend_key_id
		LEFT JOIN lava.providers p ON p.name = q.provider
		WHERE q.status = 'queued'
		ORDER BY u.ord
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

		UPDATE lava.request_store s
		SET status = 'running', attempts = s.attempts + 1, started_at = COALESCE(s.started_at, now_ts)
		WHERE s.request_id = r.id;
		request_id := r.id;
		spend_key_id := r.spend_key_id;
		method := r.method;
		url := r.base_url || r.endpoint;
		headers := lava._headers(r.request_shape, r.api_key, r.extra);
		body := r.body::text;
		timeout_ms := timeout;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION lava._claim(integer, integer, uuid[], integer[]) IS
	'internal (worker): claims due requests for sending, cancelling those whose key became unusable and pacing rate-limited keys';

-- Seconds until the earliest queued request is due (0 when one is due now,
-- NULL when the queue is empty): the worker's next wake-up.
-- The first entry of the queue index, whatever the statistics say: with
-- stale ones (a big table analysed while its queue was empty) the planner
-- would otherwise read every queued row through a bitmap scan.
CREATE FUNCTION lava._next_due()
RETURNS double precision
LANGUAGE sql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET jit = off
AS $$
	SELECT GREATEST(0, EXTRACT(epoch FROM d.m - pg_catalog.clock_timestamp()))::float8
	FROM (SELECT q.next_attempt_at AS m FROM lava.request_store q WHERE q.status = 'queued'
		  ORDER BY q.next_attempt_at LIMIT 1) d
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

-- A token count from a usage member: a JSON integer, else NULL.
CREATE FUNCTION lava._tokens(v text)
RETURNS bigint
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN v ~ '^[0-9]{1,15}$' THEN v::bigint END $$;
COMMENT ON FUNCTION lava._tokens(text) IS 'internal: a token count, or NULL when it is not an integer';

-- Records the outcomes of finished HTTP calls, one array element each
-- (http_status 0 with an error text for a network error or timeout; a NULL
-- body for one that was not JSON), in a few set-based statements:
--   retry: 429, 5xx and network errors while attempts remain go back to the
--     queue after min(30 s, 0.5 s x 2^(attempt-1)) x U(0.5, 1), and never
--     before Retry-After (capped at an hour);
--   completed: a 2xx with JSON, charged its exact cost from the usage and
--     the admission-time prices, or its reservation when usage is missing;
--   error: a 2xx that is not JSON (charged its reservation: the upstream did
--     the work), or any other answer (charged nothing).
-- Each terminal request settles its reservation once, through
-- lava._settle_or_defer (the key counters, its cost in the period it was
-- admitted in, the daily ledger; deferred while another transaction holds
-- the key's row), and is notified.
CREATE FUNCTION lava._complete(ids bigint[], http_statuses integer[], bodies text[], errors text[],
							   retry_afters double precision[],
							   OUT completed integer, OUT failed integer, OUT requeued integer)
LANGUAGE plpgsql VOLATILE
-- (every statement is driven from the arrays, a few hundred rows at most,
-- each found by its primary key, in the order written: whatever the
-- statistics say, which for the running rows are usually "none")
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET join_collapse_limit = 1
SET from_collapse_limit = 1
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
	max_attempts integer := pg_catalog.current_setting('lava.max_attempts')::integer;
	now_ts timestamptz := pg_catalog.clock_timestamp();
	done_ids bigint[];
	done_statuses text[];
	key_ids uuid[];
	admitted_ats timestamptz[];
	reservations numeric[];
	charges numeric[];
	in_tokens bigint[];
	out_tokens bigint[];
BEGIN
	WITH u AS MATERIALIZED (
		SELECT x.id, COALESCE(x.st, 0) AS st, x.body::jsonb AS resp, x.err, x.ra
		FROM unnest(ids, http_statuses, bodies, errors, retry_afters) AS x(id, st, body, err, ra)
	),
	c AS (
		SELECT r.tid, r.request_id, r.attempts, r.reservation, r.request_shape, u.st, u.resp, u.err, u.ra,
			   CASE WHEN (u.st = 0 OR u.st = 429 OR u.st >= 500) AND r.attempts < max_attempts THEN 'retry'
					WHEN u.st BETWEEN 200 AND 299 AND u.resp IS NULL THEN 'garbage'
					WHEN u.st BETWEEN 200 AND 299 THEN 'completed'
					ELSE 'error' END AS outcome,
			   t.in_t, t.out_t,
			   pg_catalog.trim_scale(t.in_t * COALESCE(r.input_price, 0) / 1000000) AS in_c,
			   pg_catalog.trim_scale(t.out_t * COALESCE(r.output_price, 0) / 1000000) AS out_c
		FROM u
		-- (each outcome's row by its primary key: a LATERAL fenced by OFFSET
		-- 0, so that stale statistics, which usually count no running rows,
		-- cannot turn the join around into a scan of the whole table)
		CROSS JOIN LATERAL (
			SELECT r.ctid AS tid, r.request_id, r.attempts, r.reservation, r.request_shape, r.input_price, r.output_price
			FROM lava.request_store r WHERE r.request_id = u.id AND r.status = 'running' OFFSET 0) r
		CROSS JOIN LATERAL (
			SELECT lava._tokens(COALESCE(u.resp #>> '{usage,prompt_tokens}', u.resp #>> '{usage,input_tokens}'))
				   + CASE WHEN r.request_shape = 'anthropic' THEN
						 COALESCE(lava._tokens(u.resp #>> '{usage,cache_creation_input_tokens}'), 0)
						 + COALESCE(lava._tokens(u.resp #>> '{usage,cache_read_input_tokens}'), 0)
					 ELSE 0 END AS in_t,
				   lava._tokens(COALESCE(u.resp #>> '{usage,completion_tokens}', u.resp #>> '{usage,output_tokens}')) AS out_t
		) t
	),
	p AS MATERIALIZED (
		SELECT c.*,
			   CASE WHEN c.outcome = 'completed' AND c.in_t IS NOT NULL AND c.out_t IS NOT NULL THEN c.in_c + c.out_c
					WHEN c.outcome IN ('completed', 'garbage') THEN c.reservation END AS charge,
			   c.outcome = 'completed' AND c.in_t IS NOT NULL AND c.out_t IS NOT NULL AS has_usage
		FROM c
	),
	upd AS (
		UPDATE lava.request_store s SET
			status = CASE p.outcome WHEN 'retry' THEN 'queued' WHEN 'completed' THEN 'completed' ELSE 'error' END,
			http_status = NULLIF(p.st, 0),
			response = p.resp,
			output_text = CASE WHEN p.outcome <> 'completed' THEN NULL
							   WHEN p.request_shape = 'anthropic' THEN lava._output_text(p.request_shape, p.resp)
							   ELSE p.resp #>> '{choices,0,message,content}' END,
			input_tokens = CASE WHEN p.has_usage THEN p.in_t END,
			output_tokens = CASE WHEN p.has_usage THEN p.out_t END,
			input_cost = CASE WHEN p.has_usage THEN p.in_c END,
			output_cost = CASE WHEN p.has_usage THEN p.out_c END,
			cost = CASE WHEN p.outcome = 'retry' THEN s.cost ELSE pg_catalog.trim_scale(COALESCE(p.charge, 0)) END,
			next_attempt_at = CASE WHEN p.outcome = 'retry' THEN now_ts + pg_catalog.make_interval(secs =>
				GREATEST(LEAST(30, 0.5 * 2 ^ (p.attempts - 1)) * (0.5 + pg_catalog.random() / 2), LEAST(COALESCE(p.ra, 0), 3600)))
				ELSE s.next_attempt_at END,
			completed_at = CASE WHEN p.outcome = 'retry' THEN NULL ELSE now_ts END,
			error = CASE p.outcome
				WHEN 'retry' THEN pg_catalog.format('attempt %s failed: %s; retrying', p.attempts, COALESCE(p.err, 'HTTP ' || p.st))
				WHEN 'garbage' THEN 'upstream answered with a body that is not JSON; the reservation was charged'
				WHEN 'completed' THEN CASE WHEN NOT p.has_usage THEN 'upstream response has no usage; the reservation was charged' END
				ELSE CASE WHEN p.err IS NOT NULL THEN pg_catalog.format('%s (after %s attempts)', p.err, p.attempts)
					 ELSE pg_catalog.format('upstream answered HTTP %s%s%s', p.st,
							COALESCE(': ' || COALESCE(p.resp #>> '{error,message}', p.resp #>> '{error,error,message}'), ''),
							CASE WHEN p.st = 429 OR p.st >= 500 THEN pg_catalog.format(' (after %s attempts)', p.attempts) ELSE '' END)
					 END
				END
		FROM p
		-- (the row the join above found, by its ctid alone: no second walk
		-- of the primary key, and no filter the statistics could misjudge.
		-- Only the worker changes a running row; a row changed meanwhile
		-- fails the ctid recheck and is skipped)
		WHERE s.ctid = p.tid
		RETURNING s.request_id, s.spend_key_id, s.admitted_at, s.reservation, s.status, p.outcome, p.charge,
				  s.input_tokens, s.output_tokens
	)
	SELECT COALESCE(sum(1) FILTER (WHERE upd.outcome = 'completed'), 0),
		   COALESCE(sum(1) FILTER (WHERE upd.outcome IN ('error', 'garbage')), 0),
		   COALESCE(sum(1) FILTER (WHERE upd.outcome = 'retry'), 0),
		   pg_catalog.array_agg(upd.request_id) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.status) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.spend_key_id) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.admitted_at) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.reservation) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.charge) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.input_tokens) FILTER (WHERE upd.outcome <> 'retry'),
		   pg_catalog.array_agg(upd.output_tokens) FILTER (WHERE upd.outcome <> 'retry')
	INTO completed, failed, requeued, done_ids, done_statuses, key_ids, admitted_ats, reservations, charges,
		 in_tokens, out_tokens
	FROM upd;

	-- every terminal request: settled once, notified, awaiters woken
	IF done_ids IS NOT NULL THEN
		PERFORM lava._settle_or_defer(done_ids, key_ids, admitted_ats, reservations, charges, in_tokens, out_tokens);
		PERFORM pg_catalog.pg_notify('lava_requests',
			pg_catalog.jsonb_build_object('request_id', n.id, 'status', n.status)::text)
		FROM unnest(done_ids, done_statuses) AS n(id, status);
		PERFORM lava._wake_awaiters();
	END IF;
END
$$;
COMMENT ON FUNCTION lava._complete(bigint[], integer[], text[], text[], double precision[]) IS
	'internal (worker): records finished calls: retry, complete with exact cost, or fail; settles in bulk';

-- How the worker records (src/record.c, which the worker calls in C, and
-- this is its SQL face, for the tests): lava._complete's contract, with its
-- common case (an OpenAI-shaped 2xx with integer usage for a running
-- request) written directly (src/direct.c) and settled through
-- lava._settle_or_defer; every other outcome goes to lava._complete.
CREATE FUNCTION lava._record(ids bigint[], http_statuses integer[], bodies text[], errors text[],
							 retry_afters double precision[],
							 OUT completed integer, OUT failed integer, OUT requeued integer)
AS 'MODULE_PATHNAME', 'lava_record'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._record(bigint[], integer[], text[], text[], double precision[]) IS
	'internal (worker): lava._complete with the common successful answer recorded directly';

-- The crash rule, applied when a worker starts: a request still 'running'
-- was in flight when the previous worker or the server died.  It was never
-- settled, so it cannot have been charged.  It goes back to the queue if it
-- has attempts left (the interrupted one counts), else it ends in error and
-- its reservation is released.  Settlement happens once, at the terminal
-- state, so nothing is ever charged twice; lava._finish settles through
-- lava._settle_or_defer, so that a key row an application holds open
-- defers that key's releases instead of holding up the worker's start.
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
								   OUT failed bigint, OUT started_at timestamptz, OUT last_error text,
								   OUT recorder_pid integer)
RETURNS record
AS 'MODULE_PATHNAME', 'lava_worker_state'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._worker_state() IS 'internal: the state of the worker and its recorder in shared memory';

CREATE VIEW lava.worker_status AS
SELECT s.running, s.pid,
	   (SELECT pg_catalog.count(*) FROM lava.request_store q WHERE q.status = 'queued') AS queued,
	   s.in_flight, s.completed, s.failed, s.started_at, s.last_error, s.recorder_pid,
	   (SELECT pg_catalog.count(*) FROM lava.deferred_settlements d) AS deferred_settlements
FROM lava._worker_state() s;
COMMENT ON VIEW lava.worker_status IS
	'what the worker is doing: running, pid, queued, in flight, completed and failed counts since start, last error, its recorder''s pid (NULL when none runs), and the settlements deferred while a key''s row was held';
