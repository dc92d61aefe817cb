-- privileges.sql: roles, grants, SECURITY DEFINER hygiene and dump registration.
BEGIN;
SELECT plan(28);

SELECT has_role('lava_admin', 'the extension creates lava_admin');
SELECT has_role('lava_user', 'the extension creates lava_user');

-- nothing in schema lava is granted to PUBLIC
SELECT is((SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
		   WHERE c.relnamespace = 'lava'::regnamespace AND a.grantee = 0), 0::bigint,
	'no table, view or sequence is granted to PUBLIC');
SELECT is((SELECT count(*) FROM pg_proc p
		   WHERE p.pronamespace = 'lava'::regnamespace
			 AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))), 0::bigint,
	'no function is executable by PUBLIC');
SELECT is((SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a
		   WHERE n.nspname = 'lava' AND a.grantee = 0), 0::bigint, 'schema lava is not granted to PUBLIC');

-- every SECURITY DEFINER function pins search_path
SELECT is((SELECT array_agg(p.oid::regprocedure::text) FROM pg_proc p
		   WHERE p.pronamespace = 'lava'::regnamespace AND p.prosecdef
			 AND NOT coalesce(p.proconfig, '{}') @> '{"search_path=pg_catalog, pg_temp"}'), NULL,
	'SECURITY DEFINER functions SET search_path = pg_catalog, pg_temp');

-- lava_user: the key is the capability; no table with digests or others' data
SELECT ok(has_function_privilege('lava_user', 'lava.verify_spend_key(text)', 'EXECUTE'), 'lava_user may verify a key');
SELECT ok(NOT has_function_privilege('lava_user', 'lava.create_spend_key(jsonb)', 'EXECUTE'), 'lava_user may not create keys');
SELECT ok(NOT has_function_privilege('lava_user', 'lava.get_spend_key(uuid)', 'EXECUTE'), 'lava_user may not get keys');
SELECT ok(NOT has_function_privilege('lava_user', 'lava._admit(text, text, text, numeric)', 'EXECUTE'),
	'lava_user may not call the admission core directly');
SELECT ok(NOT has_table_privilege('lava_user', 'lava.spend_key_store', 'SELECT'), 'lava_user cannot read key digests');
SELECT ok(NOT has_table_privilege('lava_user', 'lava.key_usage_daily', 'SELECT'), 'lava_user cannot read the ledger');
SELECT ok(NOT has_table_privilege('lava_user', 'lava.deferred_settlements', 'SELECT'), 'lava_user cannot read deferred settlements');
SELECT ok(NOT has_function_privilege('lava_user', 'lava._settle_deferred()', 'EXECUTE'), 'lava_user may not make settlements');
SELECT ok(NOT has_table_privilege('lava_user', 'lava.spend_keys', 'SELECT'), 'lava_user cannot read the key view');

SELECT ok(NOT has_table_privilege('lava_user', 'lava.providers', 'SELECT'), 'lava_user cannot read providers (API keys)');
SELECT ok(NOT has_table_privilege('lava_user', 'lava.login_policies', 'SELECT'), 'lava_user cannot read login policies');
SELECT ok((SELECT relrowsecurity FROM pg_class WHERE oid = 'lava.request_store'::regclass),
	'request rows are under row-level security');
SELECT ok(has_table_privilege('lava_admin', 'lava.providers', 'SELECT'), 'lava_admin manages providers');

-- lava_admin: the admin surface, through the view and functions only
SELECT ok(has_function_privilege('lava_admin', 'lava.create_spend_key(jsonb)', 'EXECUTE'), 'lava_admin may create keys');
SELECT ok(has_table_privilege('lava_admin', 'lava.spend_keys', 'SELECT'), 'lava_admin reads the view');
SELECT ok(NOT has_table_privilege('lava_admin', 'lava.spend_key_store', 'SELECT'), 'lava_admin does not read digests directly');

-- for real: login roles in each group
CREATE ROLE lava_test_admin LOGIN IN ROLE lava_admin;
CREATE ROLE lava_test_user LOGIN IN ROLE lava_user;
CREATE ROLE lava_test_nobody LOGIN;
SET ROLE lava_test_admin;
SELECT lava.create_spend_key('{"name": "by admin"}') ->> 'key' AS k \gset
SELECT is((SELECT name FROM lava.spend_keys WHERE name = 'by admin'), 'by admin', 'an admin creates a key and sees it in the view');
RESET ROLE;
SET ROLE lava_test_user;
SELECT is(lava.verify_spend_key(:'k') ->> 'name', 'by admin', 'a user verifies a key it holds');
SELECT throws_ok($$SELECT lava.create_spend_key('{"name": "by user"}')$$, '42501', NULL, 'a user cannot create keys (42501)');
SELECT throws_ok($$SELECT * FROM lava.spend_key_store$$, '42501', NULL, 'a user cannot read the key table (42501)');
RESET ROLE;
SET ROLE lava_test_nobody;
SELECT throws_ok($$SELECT lava.verify_spend_key('lava_sk_' || repeat('a', 43))$$, '42501', NULL,
	'a role in neither group cannot use lava at all');
RESET ROLE;

-- user data is dumped by pg_dump
SELECT is((SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM pg_extension e, unnest(e.extconfig) c
		   WHERE e.extname = 'lava'),
	ARRAY['lava.deferred_settlements', 'lava.key_usage_daily', 'lava.login_policies', 'lava.models', 'lava.providers', 'lava.request_store', 'lava.spend_key_store'], 'tables holding user data are marked for pg_dump');

SELECT * FROM finish();
ROLLBACK;
