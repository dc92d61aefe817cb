-- Providers and models (API.md section 2): where requests go and what they cost.

-- An upstream provider.  base_url ends where the provider's API paths begin
-- (https://api.openai.com/v1; lava appends /chat/completions or /messages).
-- api_key is readable by lava_admin and the worker only.
CREATE TABLE lava.providers (
	name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
	base_url text NOT NULL CHECK (base_url ~ '^https?://[^[:space:]]+[^/]$'),
	api_key text,
	request_shape text NOT NULL DEFAULT 'openai' CHECK (request_shape IN ('openai', 'anthropic')),
	headers jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(headers) = 'object'),
	enabled boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE lava.providers IS
	'upstream LLM providers: base URL, API key (lava_admin and the worker only), request shape, extra headers';
COMMENT ON COLUMN lava.providers.base_url IS 'URL where the API paths begin, without a trailing slash (e.g. https://api.openai.com/v1)';
COMMENT ON COLUMN lava.providers.api_key IS 'sent as Authorization: Bearer (openai) or x-api-key (anthropic); never shown to lava_user';
COMMENT ON COLUMN lava.providers.headers IS 'extra request headers, {"Name": "value"}';
SELECT pg_catalog.pg_extension_config_dump('lava.providers', '');

-- A model of a provider with its prices in USD per million tokens.
CREATE TABLE lava.models (
	provider text NOT NULL REFERENCES lava.providers (name) ON UPDATE CASCADE ON DELETE CASCADE,
	model text NOT NULL CHECK (pg_catalog.char_length(model) BETWEEN 1 AND 255),
	input_price_per_mtok numeric CHECK (input_price_per_mtok >= 0),
	output_price_per_mtok numeric CHECK (output_price_per_mtok >= 0),
	max_output_tokens integer CHECK (max_output_tokens >= 1),
	PRIMARY KEY (provider, model)
);
CREATE INDEX models_model_idx ON lava.models (model);
COMMENT ON TABLE lava.models IS
	'models per provider: prices in USD per million tokens and the output cap lava sets when a request has none';
SELECT pg_catalog.pg_extension_config_dump('lava.models', '');

-- Who may log in, and with which key settings (lava.login / set_login_policy).
CREATE TABLE lava.login_policies (
	role_name text PRIMARY KEY,
	params jsonb NOT NULL
);
COMMENT ON TABLE lava.login_policies IS 'spend key params that lava.login() provisions per role (internal)';
SELECT pg_catalog.pg_extension_config_dump('lava.login_policies', '');
