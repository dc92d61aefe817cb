/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  lava.prompt() in C: the common case of queueing a prompt, with direct
 *	  table access (direct.c) for the route, the admission and the queue
 *	  row instead of five PL/pgSQL frames or three SQL statements.
 *
 *	  The fast path handles one case only: a key (given or the session's),
 *	  non-null model and prompt, options that are {} or {"max_tokens": N}
 *	  with N a plain integer from 1 to 100000000, a model that exactly one
 *	  enabled provider serves, a bounded output when the model is priced,
 *	  and an admission that lava._admit's fast path grants.  Everything
 *	  else (other options, no key, no or several routes, a refusal, nulls)
 *	  goes to lava._prompt_sql, the PL/pgSQL implementation, before anything
 *	  was written, so that each error and each uncommon case behaves exactly
 *	  as it does there.  The rows written are the same as lava._prompt_sql
 *	  writes (test/pgtap/enqueue.sql compares them), and the limits hold
 *	  under concurrency for the same reason: the key's row lock, taken on
 *	  its newest version before the limits are checked.
 *
 *	  The plaintext key is only hashed here.  lava.prompt stays SECURITY
 *	  DEFINER with search_path pinned to pg_catalog, pg_temp, like every
 *	  function that writes lava's tables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/snapmgr.h"
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


/* the largest output cap an option may ask for (lava._body_int) */
#define LAVA_MAX_CAP 100000000

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
 * lava._cycle_start(cycle text, daily timestamptz, weekly timestamptz,
 * monthly timestamptz) returns timestamptz: the start given for the cycle,
 * -infinity for 'total', no cycle or any other value (lava._period_start's
 * ELSE).
 */
Datum
lava_cycle_start(PG_FUNCTION_ARGS)
{
	int			arg = LavaCycleIndex(PG_GETARG_DATUM(0), PG_ARGISNULL(0));

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
	if (!PG_ARGISNULL(3))
		return PG_GETARG_TEXT_PP(3);
	return LavaSessionKey();
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
	LavaRoute	route;
	int			routes;
	bool		anthropic;
	Jsonb	   *body;
	Datum		reservation = (Datum) 0;
	bool		reservation_null;
	TimestampTz now;
	LavaQueueRow row;
	int64		request_id;

	/*
	 * Direct access bypasses the executor's read-only check: a read-only
	 * transaction (or a standby) gets lava._prompt_sql's error instead.
	 */
	if (XactReadOnly || IsInParallelMode() ||
		PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
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
	if (cap < 0 || !LavaDirectUsable())
		return Fallback(fcinfo);
	has_cap = cap > 0;

	/* a snapshot of now, as each statement of lava._prompt_sql takes */
	PushActiveSnapshot(GetTransactionSnapshot());

	/* the route: exactly one enabled provider serves the model */
	routes = LavaDirectRoute(model, &route);
	if (routes != 1)
	{
		PopActiveSnapshot();
		return Fallback(fcinfo);
	}
	anthropic = LavaTextIs(route.shape, "anthropic");

	/* the cap: the option, else the model's; required when priced or anthropic */
	if (!has_cap && !route.max_output_null)
	{
		cap = route.max_output;
		has_cap = true;
	}
	if (!has_cap && (anthropic || !route.out_price_null))
	{
		PopActiveSnapshot();
		return Fallback(fcinfo);
	}

	body = BuildBody(model, prompt, anthropic, has_cap, cap);
	reservation_null = !Reservation(body, route.in_price, route.in_price_null,
									route.out_price, route.out_price_null,
									has_cap ? cap : 0, &reservation);

	/* the admission: lava._admit's fast path, else lava._prompt_sql finds out why */
	now = GetCurrentTimestamp();
	if (!LavaDirectAdmit(key, &route, reservation, reservation_null, now,
						 &row.spend_key_id, &row.admitted_at))
	{
		PopActiveSnapshot();
		return Fallback(fcinfo);
	}

	/* the queue row */
	row.role_name = CStringGetTextDatum(GetUserNameFromId(GetOuterUserId(), false));
	row.provider = route.provider;
	row.model = route.model;
	row.endpoint = CStringGetTextDatum(anthropic ? "/messages" : "/chat/completions");
	row.body = JsonbPGetDatum(body);
	row.request_shape = route.shape;
	row.input_price = route.in_price;
	row.input_price_null = route.in_price_null;
	row.output_price = route.out_price;
	row.output_price_null = route.out_price_null;
	row.reservation = reservation_null ? NumericGetDatum(int64_to_numeric(0)) : reservation;
	request_id = LavaDirectQueue(&row);
	PopActiveSnapshot();

	/* the worker wakes when this transaction commits */
	LavaWakeWorkerAtCommit();
	PG_RETURN_INT64(request_id);
}
