/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  lava.prompt() in C: the common case of queueing a prompt, in three
 *	  saved SPI plans (the route, the admission UPDATE, the queue INSERT)
 *	  instead of five PL/pgSQL frames.
 *
 *	  The fast path handles one case only: a key (given or the session's),
 *	  non-null model and prompt, options that are {} or {"max_tokens": N}
 *	  with N a plain integer from 1 to 100000000, a model that exactly one
 *	  enabled provider serves, a bounded output when the model is priced,
 *	  and an admission that the single UPDATE of lava._admit's fast path
 *	  grants.  Everything else (other options, no key, no or several routes,
 *	  a refusal, nulls) goes to lava._prompt_sql, the PL/pgSQL
 *	  implementation, before anything was written, so that each error and
 *	  each uncommon case behaves exactly as it does there.  The rows written
 *	  are the same as lava._prompt_sql writes (test/pgtap/enqueue.sql
 *	  compares them).  The admission UPDATE is lava._admit's, so the limits
 *	  hold under concurrency for the same reason: the key's row lock and
 *	  READ COMMITTED's re-check of the WHERE clause.
 *
 *	  Every statement is schema-qualified and takes its values as
 *	  parameters; the plaintext key is a parameter only.  lava.prompt stays
 *	  SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp: the
 *	  statements here are parsed (and re-parsed after an invalidation) under
 *	  that path, so a caller's search_path cannot resolve their operators to
 *	  its own.  Measured, the pinning costs ~2% of an enqueue.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "lava.h"

PG_FUNCTION_INFO_V1(lava_prompt);
PG_FUNCTION_INFO_V1(lava_cycle_start);

/* the C functions of session.c and state.c that this file calls */
extern Datum lava_session_key(PG_FUNCTION_ARGS);
extern Datum lava_wake_worker(PG_FUNCTION_ARGS);

/* the largest output cap an option may ask for (lava._body_int) */
#define LAVA_MAX_CAP 100000000

/* saved plans, prepared at the first call in a backend */
static SPIPlanPtr RoutePlan = NULL;
static SPIPlanPtr AdmitPlan = NULL;
static SPIPlanPtr InsertPlan = NULL;

/* the one route of a model (lava._route when a single provider serves it) */
static const char RouteSql[] =
"SELECT p.name, p.request_shape, m.model, m.input_price_per_mtok, m.output_price_per_mtok, m.max_output_tokens "
"FROM lava.models m JOIN lava.providers p ON p.name = m.provider "
"WHERE m.model = $1 AND p.enabled "
"LIMIT 2";

/*
 * lava._admit's fast path: $1 key, $2 provider, $3 model, $4 reservation,
 * $5 the clock.  lava._period_start(cycle, $5), which the planner inlines
 * as a CASE over the cycle with two time zone conversions and a date_trunc
 * per branch, is lava._cycle_start(cycle, $6, $7, $8) here: the start of
 * each calendar cycle's period is computed once in C (PeriodStart) and
 * passed as $6 daily, $7 weekly, $8 monthly, and the six uses per row are
 * one C call each instead of a CASE each.
 */
#define RQ_START "lava._cycle_start(s.request_cycle, $6, $7, $8)"
#define SP_START "lava._cycle_start(s.spend_cycle, $6, $7, $8)"

static const char AdmitSql[] =
"UPDATE lava.spend_key_store s SET "
"	request_period_start = GREATEST(" RQ_START ", s.request_period_start), "
"	period_requests = CASE WHEN " RQ_START " > s.request_period_start "
"						   THEN 0 ELSE s.period_requests END + 1, "
"	total_requests = s.total_requests + 1, "
"	spend_period_start = GREATEST(" SP_START ", s.spend_period_start), "
"	period_spend = CASE WHEN " SP_START " > s.spend_period_start "
"						THEN 0 ELSE s.period_spend END, "
"	reserved_spend = pg_catalog.trim_scale(s.reserved_spend + COALESCE($4, 0)), "
"	last_used_at = $5 "
"WHERE s.key_digest = lava._key_digest($1) "
"  AND s.revoked_at IS NULL "
"  AND s.status = 'active' "
"  AND (s.expires_at IS NULL OR s.expires_at > $5) "
"  AND (s.allowed_providers IS NULL OR $2 = ANY (s.allowed_providers)) "
"  AND (s.allowed_models IS NULL OR $3 = ANY (s.allowed_models)) "
"  AND (s.request_limit_count IS NULL "
"	   OR CASE WHEN " RQ_START " > s.request_period_start "
"			   THEN 0 ELSE s.period_requests END < s.request_limit_count) "
"  AND (s.spend_limit_amount IS NULL "
"	   OR ($4 IS NOT NULL "
"		   AND CASE WHEN " SP_START " > s.spend_period_start "
"					THEN 0 ELSE s.period_spend END + s.reserved_spend + $4 <= s.spend_limit_amount)) "
"RETURNING s.spend_key_id, GREATEST($5, s.spend_period_start), COALESCE($4, 0)";

/* lava._enqueue's INSERT */
static const char InsertSql[] =
"INSERT INTO lava.request_store (spend_key_id, role_name, provider, model, endpoint, method, body, "
"	request_shape, input_price, output_price, reservation, admitted_at, metadata) "
"VALUES ($1, $2, $3, $4, $5, 'POST', $6, $7, $8, $9, $10, $11, NULL) "
"RETURNING request_id";

/* Prepares the plans this backend has not prepared yet. */
static void
PreparePlans(void)
{
	Oid			route_types[1] = {TEXTOID};
	Oid			admit_types[8] = {TEXTOID, TEXTOID, TEXTOID, NUMERICOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Oid			insert_types[11] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID,
	TEXTOID, NUMERICOID, NUMERICOID, NUMERICOID, TIMESTAMPTZOID};

	LavaSavedPlan(&RoutePlan, RouteSql, 1, route_types);
	LavaSavedPlan(&AdmitPlan, AdmitSql, 8, admit_types);
	LavaSavedPlan(&InsertPlan, InsertSql, 11, insert_types);
}

/*
 * The output cap of the options when they are {} (0) or {"max_tokens": N}
 * with N written as a plain integer from 1 to LAVA_MAX_CAP; -1 for anything
 * else, which lava._prompt_sql judges.
 */
static int64
OptionsCap(Jsonb *options)
{
	JsonbValue	v;
	char	   *digits;
	int64		cap;

	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		return -1;
	if (JB_ROOT_COUNT(options) == 0)
		return 0;
	if (JB_ROOT_COUNT(options) != 1
		|| getKeyJsonValueFromContainer(&options->root, "max_tokens", strlen("max_tokens"), &v) == NULL
		|| v.type != jbvNumeric)
		return -1;
	/* numeric_out: digits only means a non-negative integer without a scale */
	digits = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
	if (strlen(digits) > 9 || strspn(digits, "0123456789") != strlen(digits))
		return -1;
	cap = strtol(digits, NULL, 10);
	if (cap < 1 || cap > LAVA_MAX_CAP)
		return -1;
	return cap;
}

/* A jsonb string value over a text's bytes. */
static void
PushString(JsonbParseState **st, JsonbIteratorToken token, const char *s, int len)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = len;
	pushJsonbValue(st, token, &v);
}

/*
 * The body lava._prompt_sql builds without options other than max_tokens:
 * {"model", "messages": [{"role": "user", "content"}]} and the cap as
 * max_tokens (anthropic) or max_completion_tokens (openai) when there is one.
 */
static Jsonb *
BuildBody(text *model, text *prompt, bool anthropic, bool has_cap, int64 cap)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushString(&st, WJB_KEY, "model", strlen("model"));
	PushString(&st, WJB_VALUE, VARDATA_ANY(model), VARSIZE_ANY_EXHDR(model));
	PushString(&st, WJB_KEY, "messages", strlen("messages"));
	pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushString(&st, WJB_KEY, "role", strlen("role"));
	PushString(&st, WJB_VALUE, "user", strlen("user"));
	PushString(&st, WJB_KEY, "content", strlen("content"));
	PushString(&st, WJB_VALUE, VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt));
	pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	if (has_cap)
	{
		JsonbValue	n;
		const char *key = anthropic ? "max_tokens" : "max_completion_tokens";

		PushString(&st, WJB_KEY, key, strlen(key));
		n.type = jbvNumeric;
		n.val.numeric = int64_to_numeric(cap);
		pushJsonbValue(&st, WJB_VALUE, &n);
	}
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * lava._reservation: trim_scale(octet_length(body::text) * input_price / 1e6
 * + cap * output_price / 1e6), with the same numeric operations in the same
 * order; NULL (returned as false) when a price is missing.
 */
static bool
Reservation(Jsonb *body, Datum in_price, bool in_null, Datum out_price, bool out_null,
			int64 cap, Datum *result)
{
	char	   *text_form;
	Datum		million = NumericGetDatum(int64_to_numeric(1000000));
	Datum		a,
				b;

	if (in_null || out_null)
		return false;
	text_form = JsonbToCString(NULL, &body->root, VARSIZE(body));
	a = DirectFunctionCall2(numeric_mul, NumericGetDatum(int64_to_numeric(strlen(text_form))), in_price);
	a = DirectFunctionCall2(numeric_div, a, million);
	b = DirectFunctionCall2(numeric_mul, NumericGetDatum(int64_to_numeric(cap)), out_price);
	b = DirectFunctionCall2(numeric_div, b, million);
	*result = DirectFunctionCall1(numeric_trim_scale, DirectFunctionCall2(numeric_add, a, b));
	return true;
}

/*
 * lava._period_start(cycle, at) for a calendar cycle: date_trunc(unit,
 * at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', through the same functions.
 */
static Datum
PeriodStart(const char *unit, Datum at)
{
	Datum		utc = CStringGetTextDatum("UTC");
	Datum		local = DirectFunctionCall2(timestamptz_zone, utc, at);

	local = DirectFunctionCall2(timestamp_trunc, CStringGetTextDatum(unit), local);
	return DirectFunctionCall2(timestamp_zone, utc, local);
}

/*
 * lava._cycle_start(cycle text, daily timestamptz, weekly timestamptz,
 * monthly timestamptz) returns timestamptz: the start given for the cycle,
 * -infinity for 'total', no cycle or any other value (lava._period_start's
 * ELSE).
 */
Datum
lava_cycle_start(PG_FUNCTION_ARGS)
{
	int			arg = 0;

	if (!PG_ARGISNULL(0))
	{
		text	   *cycle = PG_GETARG_TEXT_PP(0);
		const char *c = VARDATA_ANY(cycle);
		int			len = VARSIZE_ANY_EXHDR(cycle);

		if (len == 5 && memcmp(c, "daily", 5) == 0)
			arg = 1;
		else if (len == 6 && memcmp(c, "weekly", 6) == 0)
			arg = 2;
		else if (len == 7 && memcmp(c, "monthly", 7) == 0)
			arg = 3;
	}
	if (arg == 0)
		PG_RETURN_TIMESTAMPTZ(DT_NOBEGIN);
	if (PG_ARGISNULL(arg))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(PG_GETARG_DATUM(arg));
}

/*
 * Calls lava._prompt_sql with this call's arguments and returns its result.
 * The call is counted in pg_stat_user_functions (track_functions = 'pl'),
 * as the executor counts the calls it makes: how often the fast path
 * declined is visible there.
 */
static Datum
Fallback(FunctionCallInfo fcinfo)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID};
	Oid			fn;
	FmgrInfo	flinfo;
	PgStat_FunctionCallUsage fcusage;
	LOCAL_FCINFO(call, 4);
	Datum		result;
	int			i;

	fn = LookupFuncName(list_make2(makeString("lava"), makeString("_prompt_sql")), 4, argtypes, false);
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*call, &flinfo, 4, fcinfo->fncollation, NULL, NULL);
	for (i = 0; i < 4; i++)
	{
		call->args[i].value = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		call->args[i].isnull = PG_ARGISNULL(i);
	}
	pgstat_init_function_usage(call, &fcusage);
	result = FunctionCallInvoke(call);
	pgstat_end_function_usage(&fcusage, true);
	fcinfo->isnull = call->isnull;
	return result;
}

/* The key of this call: the argument, else the session's; NULL if none. */
static text *
CallKey(FunctionCallInfo fcinfo)
{
	LOCAL_FCINFO(call, 0);
	Datum		key;

	if (!PG_ARGISNULL(3))
		return PG_GETARG_TEXT_PP(3);
	InitFunctionCallInfoData(*call, NULL, 0, InvalidOid, NULL, NULL);
	key = lava_session_key(call);
	return call->isnull ? NULL : DatumGetTextPP(key);
}

/*
 * lava.prompt(model text, prompt text, options jsonb, spend_key text)
 * returns bigint: the request id.
 */
Datum
lava_prompt(PG_FUNCTION_ARGS)
{
	text	   *model;
	text	   *prompt;
	text	   *key;
	int64		cap;
	bool		has_cap;
	Datum		route[6];
	bool		route_null[6];
	bool		anthropic;
	Jsonb	   *body;
	Datum		reservation = (Datum) 0;
	bool		reservation_null;
	Datum		admit_values[8];
	char		admit_nulls[8];
	Datum		insert_values[11];
	char		insert_nulls[11];
	Datum		admission[3];
	bool		isnull;
	int64		request_id;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		return Fallback(fcinfo);
	key = CallKey(fcinfo);
	if (key == NULL)
		return Fallback(fcinfo);
	model = PG_GETARG_TEXT_PP(0);
	prompt = PG_GETARG_TEXT_PP(1);
	/* strings near what jsonb can hold (256 MB): lava._prompt_sql judges */
	if (VARSIZE_ANY_EXHDR(model) > JENTRY_OFFLENMASK / 4 || VARSIZE_ANY_EXHDR(prompt) > JENTRY_OFFLENMASK / 4)
		return Fallback(fcinfo);
	cap = OptionsCap(PG_GETARG_JSONB_P(2));
	if (cap < 0)
		return Fallback(fcinfo);
	has_cap = cap > 0;

	LavaCheckSpi(SPI_connect(), SPI_OK_CONNECT, "SPI_connect");
	PreparePlans();

	/* the route: exactly one enabled provider serves the model */
	{
		Datum		v[1] = {PointerGetDatum(model)};

		/* (not read-only: a snapshot of now, as lava._prompt_sql takes) */
		LavaCheckSpi(SPI_execute_plan(RoutePlan, v, NULL, false, 2), SPI_OK_SELECT, "route lookup");
	}
	if (SPI_processed != 1)
	{
		SPI_finish();
		return Fallback(fcinfo);
	}
	for (i = 0; i < 6; i++)
		route[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &route_null[i]);
	if (route_null[0] || route_null[1] || route_null[2])
	{
		SPI_finish();
		return Fallback(fcinfo);
	}
	anthropic = strcmp(TextDatumGetCString(route[1]), "anthropic") == 0;

	/* the cap: the option, else the model's; required when priced or anthropic */
	if (!has_cap && !route_null[5])
	{
		cap = DatumGetInt32(route[5]);
		has_cap = true;
	}
	if (!has_cap && (anthropic || !route_null[4]))
	{
		SPI_finish();
		return Fallback(fcinfo);
	}

	body = BuildBody(model, prompt, anthropic, has_cap, cap);
	reservation_null = !Reservation(body, route[3], route_null[3], route[4], route_null[4],
									has_cap ? cap : 0, &reservation);

	/* the admission: lava._admit's fast path, else lava._prompt_sql finds out why */
	admit_values[0] = PointerGetDatum(key);
	admit_values[1] = route[0];
	admit_values[2] = route[2];
	admit_values[3] = reservation;
	admit_values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	admit_values[5] = PeriodStart("day", admit_values[4]);
	admit_values[6] = PeriodStart("week", admit_values[4]);
	admit_values[7] = PeriodStart("month", admit_values[4]);
	memset(admit_nulls, ' ', sizeof(admit_nulls));
	if (reservation_null)
		admit_nulls[3] = 'n';
	LavaCheckSpi(SPI_execute_plan(AdmitPlan, admit_values, admit_nulls, false, 0),
				 SPI_OK_UPDATE_RETURNING, "admission");
	if (SPI_processed != 1)
	{
		SPI_finish();
		return Fallback(fcinfo);
	}
	for (i = 0; i < 3; i++)
		admission[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &isnull);

	/* the queue row */
	insert_values[0] = admission[0];
	insert_values[1] = CStringGetTextDatum(GetUserNameFromId(GetOuterUserId(), false));
	insert_values[2] = route[0];
	insert_values[3] = route[2];
	insert_values[4] = CStringGetTextDatum(anthropic ? "/messages" : "/chat/completions");
	insert_values[5] = JsonbPGetDatum(body);
	insert_values[6] = route[1];
	insert_values[7] = route[3];
	insert_values[8] = route[4];
	insert_values[9] = admission[2];
	insert_values[10] = admission[1];
	memset(insert_nulls, ' ', sizeof(insert_nulls));
	if (route_null[3])
		insert_nulls[7] = 'n';
	if (route_null[4])
		insert_nulls[8] = 'n';
	LavaCheckSpi(SPI_execute_plan(InsertPlan, insert_values, insert_nulls, false, 1),
				 SPI_OK_INSERT_RETURNING, "queueing the request");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("lava: queueing the request inserted " UINT64_FORMAT " rows, not 1", SPI_processed)));
	request_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	/* the worker wakes when this transaction commits */
	{
		LOCAL_FCINFO(call, 0);

		InitFunctionCallInfoData(*call, NULL, 0, InvalidOid, NULL, NULL);
		lava_wake_worker(call);
	}
	PG_RETURN_INT64(request_id);
}
