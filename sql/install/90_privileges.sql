-- Privileges: nothing for PUBLIC; the admin surface for lava_admin, the
-- traffic surface for lava_user.  Internal functions (_*) stay with the
-- owner, except the pure formatting helpers the public views call, whose
-- EXECUTE privilege is checked against the reader of the view.
REVOKE ALL ON ALL TABLES IN SCHEMA lava FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA lava FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA lava FROM PUBLIC;
REVOKE ALL ON TYPE lava.admission FROM PUBLIC;

GRANT SELECT ON lava.spend_keys TO lava_admin;
GRANT EXECUTE ON FUNCTION
	lava.create_spend_key(jsonb),
	lava.get_spend_key(uuid),
	lava.list_spend_keys(text, integer),
	lava.update_spend_key(uuid, jsonb),
	lava.rotate_spend_key(uuid),
	lava.revoke_spend_key(uuid),
	lava.verify_spend_key(text)
TO lava_admin;
GRANT EXECUTE ON FUNCTION lava.verify_spend_key(text) TO lava_user;
GRANT EXECUTE ON FUNCTION
	lava._money(numeric),
	lava._iso(timestamptz),
	lava._period_start(text, timestamptz),
	lava._period_end(text, timestamptz)
TO lava_admin, lava_user;

-- catalog: lava_admin manages it; lava_user reads models (never providers' API keys)
GRANT SELECT, INSERT, UPDATE, DELETE ON lava.providers, lava.models TO lava_admin;
GRANT SELECT ON lava.models TO lava_user;

-- traffic: the spend key is the capability
GRANT EXECUTE ON FUNCTION
	lava.prompt(text, text, jsonb, text),
	lava.chat(jsonb, text),
	lava.call(text, text, jsonb, text, text),
	lava.search(text, text),
	lava.login(jsonb),
	lava.result(bigint),
	lava.await(bigint, interval),
	lava.cancel(bigint)
TO lava_user, lava_admin;
GRANT EXECUTE ON FUNCTION
	lava.set_login_policy(regrole, jsonb),
	lava.spend_key_usage(uuid, timestamptz, timestamptz),
	lava._worker_state()
TO lava_admin;

-- requests: row-level security shows a role its own rows (lava_admin all);
-- the view is security_invoker, so the reader needs SELECT on the table
GRANT SELECT ON lava.request_store, lava.requests TO lava_user, lava_admin;
GRANT SELECT ON lava.worker_status TO lava_admin;
