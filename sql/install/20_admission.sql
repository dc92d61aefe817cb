-- The admission and settlement core (API.md section 1, "Admission"): the one
-- place every path that spends through a key (the queue now, the HTTP gateway
-- later) calls.  Both run in the caller's transaction: a rollback undoes them.

-- What an admission hands back to its caller, who keeps it with the request
-- until settlement.
CREATE TYPE lava.admission AS (
	spend_key_id uuid,
	admitted_at timestamptz,
	reservation numeric,
	request_shape text,
	rate_rpm integer,
	rate_burst integer
);
COMMENT ON TYPE lava.admission IS 'internal: the result of admitting one request through a spend key';

-- Admits one request through `spend_key` for `provider`/`model`, reserving
-- `reservation` USD (NULL: the model has no prices).  Checks, in order: the
-- key exists and is not revoked, has not expired and is active, the
-- allow-lists, the request limit, the spend limit.  On success it counts the
-- request, holds the reservation and sets last_used_at (the daily ledger gets
-- the request when it is settled); on failure it raises and changes nothing.
-- The key's row lock serialises admissions per key, so no interleaving can
-- admit more than the limits allow.  The rate limit is not taken here: the
-- queue takes a token when it dispatches.
CREATE FUNCTION lava._admit(spend_key text, provider text, model text, reservation numeric)
RETURNS lava.admission
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	k lava.spend_key_store;
	at timestamptz;
	rq_start timestamptz;
	sp_start timestamptz;
	cur_requests bigint;
	cur_spend numeric;
	a lava.admission;
BEGIN
	IF reservation < 0 THEN
		PERFORM lava._raise('22023', 'invalid reservation: must not be negative', NULL, NULL);
	END IF;

	-- Fast path: one UPDATE that checks everything in its WHERE clause.  Under
	-- READ COMMITTED a concurrent admission makes it wait for the row lock and
	-- re-check the WHERE clause against the row that admission left, so the
	-- limits hold exactly.  A key "ahead" of our clock (another admission
	-- rolled the period over after we read the clock) counts us in its period.
	at := pg_catalog.clock_timestamp();
	UPDATE lava.spend_key_store s SET
		request_period_start = GREATEST(lava._period_start(s.request_cycle, at), s.request_period_start),
		period_requests = CASE WHEN lava._period_start(s.request_cycle, at) > s.request_period_start
							   THEN 0 ELSE s.period_requests END + 1,
		total_requests = s.total_requests + 1,
		spend_period_start = GREATEST(lava._period_start(s.spend_cycle, at), s.spend_period_start),
		period_spend = CASE WHEN lava._period_start(s.spend_cycle, at) > s.spend_period_start
							THEN 0 ELSE s.period_spend END,
		reserved_spend = pg_catalog.trim_scale(s.reserved_spend + COALESCE(reservation, 0)),
		last_used_at = at
	WHERE s.key_digest = lava._key_digest(spend_key)
	  AND s.revoked_at IS NULL
	  AND s.status = 'active'
	  AND (s.expires_at IS NULL OR s.expires_at > at)
	  AND (s.allowed_providers IS NULL OR provider = ANY (s.allowed_providers))
	  AND (s.allowed_models IS NULL OR model = ANY (s.allowed_models))
	  AND (s.request_limit_count IS NULL
		   OR CASE WHEN lava._period_start(s.request_cycle, at) > s.request_period_start
				   THEN 0 ELSE s.period_requests END < s.request_limit_count)
	  AND (s.spend_limit_amount IS NULL
		   OR (reservation IS NOT NULL
			   AND CASE WHEN lava._period_start(s.spend_cycle, at) > s.spend_period_start
						THEN 0 ELSE s.period_spend END + s.reserved_spend + reservation <= s.spend_limit_amount))
	RETURNING s.spend_key_id, GREATEST(at, s.spend_period_start), COALESCE(reservation, 0), s.request_shape,
			  s.rate_rpm, s.rate_burst
	INTO a;
	IF FOUND THEN
		RETURN a;
	END IF;

	-- Slow path: find out why (and raise), or admit if a concurrent change
	-- made the request admissible meanwhile.
	k := lava._usable_key(spend_key, true, NULL);
	at := pg_catalog.clock_timestamp();

	IF k.allowed_providers IS NOT NULL AND (provider IS NULL OR provider <> ALL (k.allowed_providers)) THEN
		PERFORM lava._raise('42501', 'provider not allowed for this spend key',
							pg_catalog.format('Provider "%s" is not in the allowed_providers of spend key %s.',
											  COALESCE(provider, '(none)'), k.spend_key_id), NULL);
	END IF;
	IF k.allowed_models IS NOT NULL AND (model IS NULL OR model <> ALL (k.allowed_models)) THEN
		PERFORM lava._raise('42501', 'model not allowed for this spend key',
							pg_catalog.format('Model "%s" is not in the allowed_models of spend key %s.',
											  COALESCE(model, '(none)'), k.spend_key_id), NULL);
	END IF;

	rq_start := lava._period_start(k.request_cycle, at);
	cur_requests := CASE WHEN rq_start > k.request_period_start THEN 0 ELSE k.period_requests END;
	IF k.request_limit_count IS NOT NULL AND cur_requests >= k.request_limit_count THEN
		PERFORM lava._raise('53400', 'request limit reached',
							pg_catalog.format('Spend key %s admitted %s of %s requests in its %s period.',
											  k.spend_key_id, cur_requests, k.request_limit_count, k.request_cycle),
							CASE WHEN k.request_cycle = 'total' THEN 'The limit never resets; raise it with lava.update_spend_key.'
								 ELSE pg_catalog.format('The period resets at %s.', lava._iso(lava._period_end(k.request_cycle, at))) END);
	END IF;

	sp_start := lava._period_start(k.spend_cycle, at);
	cur_spend := CASE WHEN sp_start > k.spend_period_start THEN 0 ELSE k.period_spend END;
	IF k.spend_limit_amount IS NOT NULL THEN
		IF reservation IS NULL THEN
			PERFORM lava._raise('42501', 'model has no prices and this spend key has a spend_limit',
								pg_catalog.format('Model "%s" of provider "%s" has no input or output price in lava.models.',
												  COALESCE(model, '(none)'), COALESCE(provider, '(none)')),
								'Set the model''s prices in lava.models, or use a key without a spend_limit.');
		END IF;
		IF cur_spend + k.reserved_spend + reservation > k.spend_limit_amount THEN
			PERFORM lava._raise('53400', 'spend limit reached',
								pg_catalog.format('Spend key %s has %s of %s USD spent and %s reserved in its %s period; this request needs up to %s.',
												  k.spend_key_id, lava._money(cur_spend), lava._money(k.spend_limit_amount),
												  lava._money(k.reserved_spend), k.spend_cycle, lava._money(reservation)),
								CASE WHEN k.spend_cycle = 'total' THEN 'Lower max_tokens, or raise the limit with lava.update_spend_key.'
									 ELSE pg_catalog.format('Lower max_tokens, or wait for the period to reset at %s.',
															lava._iso(lava._period_end(k.spend_cycle, at))) END);
		END IF;
	END IF;

	UPDATE lava.spend_key_store s SET
		request_period_start = rq_start,
		period_requests = cur_requests + 1,
		total_requests = s.total_requests + 1,
		spend_period_start = sp_start,
		period_spend = cur_spend,
		reserved_spend = pg_catalog.trim_scale(s.reserved_spend + COALESCE(reservation, 0)),
		last_used_at = at
	WHERE s.spend_key_id = k.spend_key_id;

	RETURN ROW(k.spend_key_id, at, COALESCE(reservation, 0), k.request_shape, k.rate_rpm, k.rate_burst)::lava.admission;
END
$$;
COMMENT ON FUNCTION lava._admit(text, text, text, numeric) IS
	'internal: the admission core; admits one request through a spend key or raises why not';

-- Settles admitted requests, one array element each: releases each
-- reservation and, when its cost is not NULL, charges the cost to the period
-- the request was admitted in and to the lifetime totals; a NULL cost
-- releases without charging (a request cancelled before it was sent).
-- Either way each request enters the daily ledger under its day of
-- admission.  One UPDATE per key and one upsert per key and day, whatever
-- the number of requests: the worker settles its batches through it.
-- The key rows are updated first, then the ledger rows: the order every
-- settlement takes (and the recording's key locks come first too), so that
-- two settlements of one key never wait for each other crosswise.
-- Works on revoked keys too.
CREATE FUNCTION lava._settle_many(spend_key_ids uuid[], admitted_ats timestamptz[], reservations numeric[],
								  costs numeric[], input_tokens bigint[], output_tokens bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE
-- (driven from the arrays, each key found by its primary key, in the order
-- written, whatever the statistics say)
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
	now_ts timestamptz := pg_catalog.clock_timestamp();
BEGIN
	UPDATE lava.spend_key_store k SET
		reserved_spend = pg_catalog.trim_scale(GREATEST(k.reserved_spend - a.reserved, 0)),
		spend_period_start = GREATEST(lava._period_start(k.spend_cycle, now_ts), k.spend_period_start),
		period_spend = pg_catalog.trim_scale(
			CASE WHEN lava._period_start(k.spend_cycle, now_ts) > k.spend_period_start THEN 0 ELSE k.period_spend END
			+ a.current_cost),
		total_spend = pg_catalog.trim_scale(k.total_spend + a.total_cost)
	FROM (SELECT d.id, COALESCE(sum(d.reservation), 0) AS reserved, COALESCE(sum(d.cost), 0) AS total_cost,
				 COALESCE(sum(d.cost) FILTER (WHERE d.admitted_at >=
					 GREATEST(lava._period_start(k2.spend_cycle, now_ts), k2.spend_period_start)), 0) AS current_cost
		  FROM unnest(spend_key_ids, admitted_ats, reservations, costs) AS d(id, admitted_at, reservation, cost)
		  JOIN lava.spend_key_store k2 ON k2.spend_key_id = d.id
		  GROUP BY d.id) a
	WHERE k.spend_key_id = a.id;

	INSERT INTO lava.key_usage_daily AS dl (spend_key_id, day, requests, input_tokens, output_tokens, cost)
	SELECT d.id, (d.admitted_at AT TIME ZONE 'UTC')::date, pg_catalog.count(*),
		   COALESCE(sum(d.in_t) FILTER (WHERE d.cost IS NOT NULL), 0),
		   COALESCE(sum(d.out_t) FILTER (WHERE d.cost IS NOT NULL), 0),
		   pg_catalog.trim_scale(COALESCE(sum(d.cost), 0))
	FROM unnest(spend_key_ids, admitted_ats, costs, input_tokens, output_tokens) AS d(id, admitted_at, cost, in_t, out_t)
	GROUP BY 1, 2
	ON CONFLICT ON CONSTRAINT key_usage_daily_pkey DO UPDATE SET
		requests = dl.requests + EXCLUDED.requests,
		input_tokens = dl.input_tokens + EXCLUDED.input_tokens,
		output_tokens = dl.output_tokens + EXCLUDED.output_tokens,
		cost = pg_catalog.trim_scale(dl.cost + EXCLUDED.cost);
END
$$;
COMMENT ON FUNCTION lava._settle_many(uuid[], timestamptz[], numeric[], numeric[], bigint[], bigint[]) IS
	'internal: the settlement core; replaces reservations by actual costs, or releases them, in bulk';

-- Settlements that the recording of answers could not make at once,
-- because another transaction held the key's row: typically an application
-- that enqueued on the key and has not committed yet.  Each request is
-- already terminal, with its cost; only the key's counters and the daily
-- ledger wait for it.  Until then the key keeps the request's reservation,
-- the request's upper bound, so admission errs on the safe side.
-- lava._settle_deferred makes them once the row is free (the worker's
-- recorder tries every 250 ms); lava.spend_key_usage and the recount of a
-- changed limit count them as they count requests in flight.
CREATE TABLE lava.deferred_settlements (
	request_id bigint PRIMARY KEY,
	spend_key_id uuid NOT NULL,
	admitted_at timestamptz NOT NULL,
	reservation numeric NOT NULL,
	cost numeric,					-- NULL: released without a charge
	input_tokens bigint,
	output_tokens bigint,
	deferred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX deferred_settlements_key_idx ON lava.deferred_settlements (spend_key_id);
COMMENT ON TABLE lava.deferred_settlements IS
	'settlements of terminal requests that wait for their key''s row to be free (internal)';
SELECT pg_catalog.pg_extension_config_dump('lava.deferred_settlements', '');

-- Notes in shared memory that settlements were deferred, so that the
-- worker or its recorder comes back for them.
CREATE FUNCTION lava._note_deferred()
RETURNS void
AS 'MODULE_PATHNAME', 'lava_note_deferred'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._note_deferred() IS
	'internal: tells the worker that lava.deferred_settlements has rows';

-- True when the current transaction has deferred settlements (it then
-- waits for no held key again: lava._settle_or_defer).
CREATE FUNCTION lava._deferred_here()
RETURNS boolean
AS 'MODULE_PATHNAME', 'lava_deferred_here'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._deferred_here() IS
	'internal: true when this transaction has deferred settlements';

-- True while a note of deferred settlements is pending (lava._note_deferred):
-- only then may lava.deferred_settlements have rows.
CREATE FUNCTION lava._deferred_noted()
RETURNS boolean
AS 'MODULE_PATHNAME', 'lava_deferred_noted'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._deferred_noted() IS
	'internal: false when lava.deferred_settlements has had no row since the worker last looked';

-- Locks a key's row for the rest of the transaction, waiting at most 20 ms
-- for another transaction that holds it: true when this one has it (or the
-- key does not exist), false when the wait ran out.  A busy key, whose row
-- one short enqueue after another takes, gets its turn in the lock queue;
-- a row that an open transaction holds is given up.
CREATE FUNCTION lava._lock_key_briefly(id uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET lock_timeout = '20ms'
AS $$
BEGIN
	PERFORM 1 FROM lava.spend_key_store s WHERE s.spend_key_id = id FOR NO KEY UPDATE;
	RETURN true;
EXCEPTION WHEN lock_not_available THEN
	RETURN false;
END
$$;
COMMENT ON FUNCTION lava._lock_key_briefly(uuid) IS
	'internal: locks a key row, waiting at most 20 ms; false when another transaction keeps it';

-- Locks the rows of `keys` for the rest of the transaction: every row free
-- now at once, in key order, without waiting; then, in random order, a
-- brief wait (lava._lock_key_briefly) for at most max_waits of the others,
-- so that held keys cost a recording at most max_waits x 20 ms, and one
-- held for long takes no other key's turn for good.  Returns the keys
-- locked, and those without a row (nothing could ever free them).
CREATE FUNCTION lava._lock_keys(keys uuid[], max_waits integer)
RETURNS uuid[]
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $$
DECLARE
	got uuid[];
	k uuid;
BEGIN
	SELECT pg_catalog.array_agg(l.id) INTO got
	FROM (SELECT s.spend_key_id AS id FROM lava.spend_key_store s WHERE s.spend_key_id = ANY (keys)
		  ORDER BY s.spend_key_id FOR NO KEY UPDATE OF s SKIP LOCKED) l;
	got := COALESCE(got, '{}');
	IF pg_catalog.cardinality(got) = pg_catalog.cardinality(keys) THEN
		RETURN got;
	END IF;
	got := got || ARRAY(SELECT x.id FROM unnest(keys) AS x(id)
						WHERE NOT EXISTS (SELECT 1 FROM lava.spend_key_store s WHERE s.spend_key_id = x.id));
	FOR k IN
		SELECT x.id FROM unnest(keys) AS x(id)
		WHERE x.id <> ALL (got)
		ORDER BY pg_catalog.random() LIMIT max_waits
	LOOP
		IF lava._lock_key_briefly(k) THEN
			got := got || k;
		END IF;
	END LOOP;
	RETURN got;
END
$$;
COMMENT ON FUNCTION lava._lock_keys(uuid[], integer) IS
	'internal: locks the key rows free now, and waits briefly for a few of the others';

-- lava._settle_many, waiting at most 20 ms for any row another transaction
-- holds (then lock_not_available, 55P03).
CREATE FUNCTION lava._settle_many_briefly(spend_key_ids uuid[], admitted_ats timestamptz[], reservations numeric[],
										  costs numeric[], input_tokens bigint[], output_tokens bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET lock_timeout = '20ms'
AS $$
BEGIN
	PERFORM lava._settle_many(spend_key_ids, admitted_ats, reservations, costs, input_tokens, output_tokens);
END
$$;
COMMENT ON FUNCTION lava._settle_many_briefly(uuid[], timestamptz[], numeric[], numeric[], bigint[], bigint[]) IS
	'internal: lava._settle_many with a 20 ms lock timeout';

-- Makes the deferred settlements of `keys`, whose rows the caller holds
-- locked, through lava._settle_many_briefly; returns how many.
CREATE FUNCTION lava._settle_deferred_of(keys uuid[])
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $$
DECLARE
	n integer;
	s_keys uuid[];
	s_ats timestamptz[];
	s_reservations numeric[];
	s_costs numeric[];
	s_in bigint[];
	s_out bigint[];
BEGIN
	WITH gone AS (
		DELETE FROM lava.deferred_settlements q WHERE q.spend_key_id = ANY (keys)
		RETURNING q.spend_key_id, q.admitted_at, q.reservation, q.cost, q.input_tokens, q.output_tokens
	)
	SELECT pg_catalog.count(*), pg_catalog.array_agg(g.spend_key_id), pg_catalog.array_agg(g.admitted_at),
		   pg_catalog.array_agg(g.reservation), pg_catalog.array_agg(g.cost), pg_catalog.array_agg(g.input_tokens),
		   pg_catalog.array_agg(g.output_tokens)
	INTO n, s_keys, s_ats, s_reservations, s_costs, s_in, s_out
	FROM gone g;
	IF n > 0 THEN
		PERFORM lava._settle_many_briefly(s_keys, s_ats, s_reservations, s_costs, s_in, s_out);
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION lava._settle_deferred_of(uuid[]) IS
	'internal: makes the deferred settlements of keys whose rows the caller holds';

-- How terminal requests are settled (one array element each, as
-- lava._settle_many, with the request ids): by the recording of answers,
-- the start-up recovery and lava._finish.  Commonly in one go
-- (lava._settle_many_briefly, in a subtransaction): every key's row is
-- free, or is within 20 ms in its lock queue (a busy key, whose row one
-- short enqueue after another takes).  Else it defers them all to
-- lava.deferred_settlements, locks the keys' rows that it can
-- (lava._lock_keys: those free now, and a brief wait for a few taken
-- ones), and makes those keys' deferred settlements at once
-- (lava._settle_deferred_of): the others stay deferred.  Either way, the
-- locked keys' earlier deferred settlements come along (so that a busy key
-- is settled whenever one of its answers is recorded).  So an application's open transaction
-- on one key holds back that key's counters only, never the recording of
-- other keys' answers.  Returns how many were deferred.
CREATE FUNCTION lava._settle_or_defer(request_ids bigint[], spend_key_ids uuid[], admitted_ats timestamptz[],
									  reservations numeric[], costs numeric[], input_tokens bigint[],
									  output_tokens bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
	keys uuid[];
	got uuid[];
	n integer;
BEGIN
	-- (a transaction that deferred already, having waited, waits no more)
	IF NOT lava._deferred_here() THEN
		BEGIN
			PERFORM lava._settle_many_briefly(spend_key_ids, admitted_ats, reservations, costs, input_tokens,
											  output_tokens);
			-- (a look into lava.deferred_settlements only while it may have rows)
			IF lava._deferred_noted() THEN
				PERFORM lava._settle_deferred_of(ARRAY(SELECT DISTINCT x.id FROM unnest(spend_key_ids) AS x(id)));
			END IF;
			RETURN 0;
		EXCEPTION WHEN lock_not_available THEN
			NULL;				-- a row stays held: lock those free, defer the rest
		END;
	END IF;

	SELECT pg_catalog.array_agg(DISTINCT x.id) INTO keys FROM unnest(spend_key_ids) AS x(id);
	IF keys IS NULL THEN
		RETURN 0;
	END IF;
	got := lava._lock_keys(keys, CASE WHEN lava._deferred_here() THEN 0 ELSE 3 END);
	INSERT INTO lava.deferred_settlements (request_id, spend_key_id, admitted_at, reservation, cost,
										   input_tokens, output_tokens)
	SELECT x.rid, x.id, x.admitted_at, x.reservation, x.cost, x.in_t, x.out_t
	FROM unnest(request_ids, spend_key_ids, admitted_ats, reservations, costs, input_tokens, output_tokens)
		 AS x(rid, id, admitted_at, reservation, cost, in_t, out_t);
	-- (the key rows are held: only another lock, say on a ledger row, could wait)
	PERFORM lava._settle_deferred_of(got);
	SELECT pg_catalog.count(*) INTO n FROM unnest(spend_key_ids) AS x(id) WHERE x.id <> ALL (got);
	IF n > 0 THEN
		PERFORM lava._note_deferred();
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION lava._settle_or_defer(bigint[], uuid[], timestamptz[], numeric[], numeric[], bigint[], bigint[]) IS
	'internal: settles what it can lock now, defers the settlements of keys another transaction holds';

-- Makes the deferred settlements whose keys' rows it can lock
-- (lava._lock_keys: those free now, and a brief wait for a few others).
-- Returns how many it made and how many remain.  The worker, or its
-- recorder, calls it while any may remain.
CREATE FUNCTION lava._settle_deferred(OUT settled integer, OUT remaining integer)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $$
DECLARE
	keys uuid[];
BEGIN
	settled := 0;
	SELECT pg_catalog.array_agg(DISTINCT q.spend_key_id) INTO keys FROM lava.deferred_settlements q;
	IF keys IS NOT NULL THEN
		settled := lava._settle_deferred_of(lava._lock_keys(keys, 3));
	END IF;
	SELECT pg_catalog.count(*) INTO remaining FROM lava.deferred_settlements;
END
$$;
COMMENT ON FUNCTION lava._settle_deferred() IS
	'internal (worker): makes the deferred settlements whose keys are free; says how many remain';

-- Settles one admitted request (lava._settle_many for one), refusing a
-- negative cost or an unknown key.
CREATE FUNCTION lava._settle(spend_key_id uuid, admitted_at timestamptz, reservation numeric,
							 cost numeric, input_tokens bigint DEFAULT 0, output_tokens bigint DEFAULT 0)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
	IF cost < 0 THEN
		PERFORM lava._raise('22023', 'invalid cost: must not be negative', NULL, NULL);
	END IF;
	IF NOT EXISTS (SELECT 1 FROM lava.spend_key_store s WHERE s.spend_key_id = _settle.spend_key_id) THEN
		PERFORM lava._raise('P0002', pg_catalog.format('spend key %s not found', spend_key_id), NULL, NULL);
	END IF;
	PERFORM lava._settle_many(ARRAY[spend_key_id], ARRAY[admitted_at], ARRAY[reservation], ARRAY[cost],
							  ARRAY[input_tokens], ARRAY[output_tokens]);
END
$$;
COMMENT ON FUNCTION lava._settle(uuid, timestamptz, numeric, numeric, bigint, bigint) IS
	'internal: settles one admitted request through lava._settle_many';

CREATE FUNCTION lava._take_token(spend_key_id uuid, rpm integer, burst integer)
RETURNS double precision
AS 'MODULE_PATHNAME', 'lava_take_token'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._take_token(uuid, integer, integer) IS
	'internal: takes a token from a key''s rate-limit bucket in shared memory; 0 when taken, else seconds to wait';
