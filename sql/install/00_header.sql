-- lava install script (assembled from sql/install/*.sql by the Makefile)
\echo Use "CREATE EXTENSION lava" to load this file. \quit

-- The two roles lava's privileges are granted to.  Roles are cluster-wide
-- objects: they are created when absent and left in place by DROP EXTENSION.
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'lava_admin') THEN
		CREATE ROLE lava_admin NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'lava_user') THEN
		CREATE ROLE lava_user NOLOGIN;
	END IF;
END
$roles$;

COMMENT ON SCHEMA lava IS 'lava: LLM spend keys, limits and the request queue';
REVOKE ALL ON SCHEMA lava FROM PUBLIC;
GRANT USAGE ON SCHEMA lava TO lava_admin, lava_user;

-- lava._raise(sqlstate, message, detail, hint): raises an error whose
-- statement text is kept out of the server log (it may hold a spend key).
CREATE FUNCTION lava._raise(sqlstate text, message text, detail text DEFAULT NULL, hint text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'lava_raise'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lava._raise(text, text, text, text) IS
	'internal: raises an error without logging the statement text';

-- Money as a decimal string with at least two decimals ("10.00", "0.000125").
CREATE FUNCTION lava._money(amount numeric)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT pg_catalog.round(pg_catalog.trim_scale(amount),
						  GREATEST(2, pg_catalog.scale(pg_catalog.trim_scale(amount))))::text
$$;
COMMENT ON FUNCTION lava._money(numeric) IS 'internal: formats USD as a decimal string';

-- Timestamps in JSON documents: ISO 8601 in UTC, whatever the session's TimeZone.
-- (STABLE like to_char, so that the planner inlines it)
CREATE FUNCTION lava._iso(ts timestamptz)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
	SELECT pg_catalog.to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
COMMENT ON FUNCTION lava._iso(timestamptz) IS 'internal: formats a timestamp as ISO 8601 UTC';
