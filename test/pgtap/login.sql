-- login.sql: login policies, the session default key, and row-level privacy
-- of requests between two roles.
BEGIN;
SELECT plan(20);

INSERT INTO lava.providers (name, base_url, request_shape) VALUES ('lp', 'http://127.0.0.1:9/v1', 'openai');
INSERT INTO lava.models VALUES ('lp', 'm1', 1, 2, 100), ('lp', 'm2', 1, 2, 100);
CREATE ROLE lava_t_alice LOGIN IN ROLE lava_user;
CREATE ROLE lava_t_bob LOGIN IN ROLE lava_user;
CREATE ROLE lava_t_admin LOGIN IN ROLE lava_admin;

-- policies
SELECT is(lava.set_login_policy('lava_t_alice', '{"allowed_models": ["m1", "m2"], "spend_limit": {"amount": "5", "cycle": "daily"}, "rate_limit": {"rpm": 10}}')
	-> 'allowed_models', '["m1", "m2"]'::jsonb, 'an admin sets a login policy');
SELECT throws_ok($$SELECT lava.set_login_policy('lava_t_bob', '{"spend_limit": {"amount": "0"}}')$$, '22023', NULL,
	'a policy is validated like key params');
SELECT lava.set_login_policy('lava_t_bob', '{"name": "bob agent"}');

SET ROLE lava_t_alice;
SELECT throws_ok($$SELECT lava.set_login_policy('lava_t_alice', NULL)$$, '42501', NULL, 'a user cannot change policies');
SELECT throws_ok($$SELECT lava.login('{"spend_limit": {"amount": "6", "cycle": "daily"}}')$$, '42501',
	'login params may not widen the policy: "spend_limit"', 'params may not raise the spend limit');
SELECT throws_ok($$SELECT lava.login('{"allowed_models": ["m3"]}')$$, '42501',
	'login params may not widen the policy: "allowed_models"', 'params may not add models');
SELECT throws_ok($$SELECT lava.login('{"allowed_models": null}')$$, '42501',
	'login params may not widen the policy: "allowed_models"', 'params may not lift the allow-list');
SELECT throws_ok($$SELECT lava.login('{"rate_limit": {"rpm": 11}}')$$, '42501',
	'login params may not widen the policy: "rate_limit"', 'params may not raise the rate');
CREATE TEMP TABLE alice AS SELECT lava.login('{"allowed_models": ["m1"], "spend_limit": {"amount": "2", "cycle": "daily"}}') AS doc;
SELECT is(doc -> 'allowed_models', '["m1"]'::jsonb, 'params narrow the models') FROM alice;
SELECT is(doc -> 'spend_limit', '{"amount": "2.00", "cycle": "daily"}'::jsonb, 'and the spend limit') FROM alice;
SELECT is(doc -> 'rate_limit', '{"rpm": 10, "burst": null}'::jsonb, 'the policy''s other settings stay') FROM alice;
SELECT is(doc ->> 'name', 'login: lava_t_alice', 'a default name') FROM alice;
-- the session default key
CREATE TEMP TABLE a_req AS SELECT lava.prompt('m1', 'from alice') AS id;
GRANT SELECT ON a_req, alice TO PUBLIC;
SELECT is((SELECT spend_key_id::text FROM lava.requests WHERE request_id = a_req.id), doc ->> 'spend_key_id',
	'prompt without spend_key uses the login key') FROM a_req, alice;
SELECT is((SELECT count(*) FROM pg_settings WHERE setting LIKE 'lava_sk_%'), 0::bigint, 'the session key is in no setting');
SELECT is((SELECT count(*) FROM lava.requests), 1::bigint, 'alice sees her request');
RESET ROLE;

SET ROLE lava_t_bob;
SELECT is((SELECT count(*) FROM lava.requests), 0::bigint, 'bob does not see alice''s requests');
SELECT throws_ok(format('SELECT lava.result(%s)', id), 'P0002', NULL, 'nor can he read one by id') FROM a_req;
SELECT throws_ok(format('SELECT lava.cancel(%s)', id), 'P0002', NULL, 'nor cancel it') FROM a_req;
SELECT throws_ok($$SELECT * FROM lava.login_policies$$, '42501', NULL, 'policies are not readable by users');
RESET ROLE;

SET ROLE lava_t_admin;
SELECT is((SELECT count(*) FROM lava.requests r WHERE r.request_id IN (SELECT id FROM a_req)), 1::bigint, 'an admin sees every request');
RESET ROLE;

CREATE ROLE lava_t_carol LOGIN IN ROLE lava_user;
SET ROLE lava_t_carol;
SELECT throws_ok($$SELECT lava.login()$$, '42501', 'no login policy for role "lava_t_carol"', 'a role without a policy is refused');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
