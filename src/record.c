/*-------------------------------------------------------------------------
 *
 * record.c
 *	  lava._record(): the worker's recording of a batch of finished calls.
 *	  The common answer (an OpenAI-shaped 2xx with integer usage for a
 *	  request still running) is written directly (LavaDirectRecord in
 *	  direct.c), then settled through lava._settle_many and notified, as
 *	  lava._complete does; every other outcome (retries, errors, garbage,
 *	  Anthropic answers, odd shapes) goes to lava._complete itself, in the
 *	  same transaction.  test/pgtap/record.sql compares the rows and the
 *	  keys' counters both ways.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "lava.h"

PG_FUNCTION_INFO_V1(lava_record);

/* state.c: wakes lava.await callers when this transaction commits */
extern Datum lava_wake_awaiters(PG_FUNCTION_ARGS);

static SPIPlanPtr SettlePlan = NULL;
static SPIPlanPtr CompletePlan = NULL;

/* A one-dimensional array of n datums of type elemtype (nulls may be NULL). */
static Datum
MakeArray(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, elemtype,
											  typlen, typbyval, typalign));
}

/* The elements of a one-dimensional array argument (NULL array: none). */
static int
ArrayArg(FunctionCallInfo fcinfo, int arg, Oid elemtype, Datum **values, bool **nulls)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			n;

	if (PG_ARGISNULL(arg))
	{
		*values = NULL;
		*nulls = NULL;
		return 0;
	}
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(arg), elemtype, typlen, typbyval, typalign,
					  values, nulls, &n);
	return n;
}

/* Settles, notifies and wakes for the requests recorded directly. */
static void
SettleRecorded(const LavaSettleRow *rows, int n)
{
	Oid			types[6] = {UUIDARRAYOID, TIMESTAMPTZARRAYOID, NUMERICARRAYOID, NUMERICARRAYOID,
	INT8ARRAYOID, INT8ARRAYOID};
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *ats = palloc(sizeof(Datum) * n);
	Datum	   *reservations = palloc(sizeof(Datum) * n);
	Datum	   *charges = palloc(sizeof(Datum) * n);
	Datum	   *in_t = palloc(sizeof(Datum) * n);
	Datum	   *out_t = palloc(sizeof(Datum) * n);
	Datum		values[6];
	int			i;

	for (i = 0; i < n; i++)
	{
		keys[i] = rows[i].spend_key_id;
		ats[i] = TimestampTzGetDatum(rows[i].admitted_at);
		reservations[i] = rows[i].reservation;
		charges[i] = rows[i].charge;
		in_t[i] = Int64GetDatum(rows[i].input_tokens);
		out_t[i] = Int64GetDatum(rows[i].output_tokens);
	}
	values[0] = MakeArray(keys, NULL, n, UUIDOID);
	values[1] = MakeArray(ats, NULL, n, TIMESTAMPTZOID);
	values[2] = MakeArray(reservations, NULL, n, NUMERICOID);
	values[3] = MakeArray(charges, NULL, n, NUMERICOID);
	values[4] = MakeArray(in_t, NULL, n, INT8OID);
	values[5] = MakeArray(out_t, NULL, n, INT8OID);
	LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&SettlePlan,
												"SELECT lava._settle_many($1::uuid[], $2::timestamptz[], "
												"$3::numeric[], $4::numeric[], $5::bigint[], $6::bigint[])",
												6, types),
								  values, NULL, false, 0),
				 SPI_OK_SELECT, "lava._settle_many");

	/* lava._complete's notification, payload as jsonb_build_object prints it */
	for (i = 0; i < n; i++)
	{
		char		payload[96];

		snprintf(payload, sizeof(payload), "{\"status\": \"completed\", \"request_id\": " INT64_FORMAT "}",
				 rows[i].request_id);
		Async_Notify("lava_requests", payload);
	}
	{
		LOCAL_FCINFO(call, 0);

		InitFunctionCallInfoData(*call, NULL, 0, InvalidOid, NULL, NULL);
		lava_wake_awaiters(call);
	}
}

/*
 * lava._record(ids bigint[], http_statuses integer[], bodies text[],
 * errors text[], retry_afters double precision[], OUT completed integer,
 * OUT failed integer, OUT requeued integer): lava._complete's contract,
 * with its common case written directly.
 */
Datum
lava_record(PG_FUNCTION_ARGS)
{
	Datum	   *ids,
			   *statuses,
			   *bodies,
			   *errors,
			   *retries;
	bool	   *id_nulls,
			   *status_nulls,
			   *body_nulls,
			   *error_nulls,
			   *retry_nulls;
	int			n;
	int64	   *id_v;
	int32	   *status_v;
	text	  **body_v;
	bool	   *has_error;
	bool	   *done;
	LavaSettleRow *settle;
	int			recorded = 0;
	int			completed = 0,
				failed = 0,
				requeued = 0;
	TupleDesc	desc;
	Datum		result[3];
	bool		result_nulls[3] = {false, false, false};
	int			i;

	n = ArrayArg(fcinfo, 0, INT8OID, &ids, &id_nulls);
	if (ArrayArg(fcinfo, 1, INT4OID, &statuses, &status_nulls) != n ||
		ArrayArg(fcinfo, 2, TEXTOID, &bodies, &body_nulls) != n ||
		ArrayArg(fcinfo, 3, TEXTOID, &errors, &error_nulls) != n ||
		ArrayArg(fcinfo, 4, FLOAT8OID, &retries, &retry_nulls) != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("lava._record needs five arrays of the same length")));

	id_v = palloc(sizeof(int64) * Max(n, 1));
	status_v = palloc(sizeof(int32) * Max(n, 1));
	body_v = palloc(sizeof(text *) * Max(n, 1));
	has_error = palloc(sizeof(bool) * Max(n, 1));
	done = palloc0(sizeof(bool) * Max(n, 1));
	settle = palloc(sizeof(LavaSettleRow) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		/* a NULL id or status: not the common case */
		id_v[i] = id_nulls[i] ? 0 : DatumGetInt64(ids[i]);
		status_v[i] = status_nulls[i] ? 0 : DatumGetInt32(statuses[i]);
		body_v[i] = body_nulls[i] ? NULL : DatumGetTextPP(bodies[i]);
		has_error[i] = !error_nulls[i] || id_nulls[i] || status_nulls[i];
	}

	/* the common answers, directly (lava._complete reads its clock first too) */
	if (n > 0 && !XactReadOnly && !IsInParallelMode() && LavaDirectUsable())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		recorded = LavaDirectRecord(n, id_v, status_v, body_v, has_error, GetCurrentTimestamp(),
									done, settle);
		PopActiveSnapshot();
	}

	LavaCheckSpi(SPI_connect(), SPI_OK_CONNECT, "SPI_connect");
	if (recorded > 0)
	{
		SettleRecorded(settle, recorded);
		completed += recorded;
	}

	/* the rest: lava._complete */
	if (recorded < n)
	{
		Oid			types[5] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID};
		Datum		values[5];
		int			m = 0;

		for (i = 0; i < n; i++)
		{
			if (done[i])
				continue;
			ids[m] = ids[i];
			id_nulls[m] = id_nulls[i];
			statuses[m] = statuses[i];
			status_nulls[m] = status_nulls[i];
			bodies[m] = bodies[i];
			body_nulls[m] = body_nulls[i];
			errors[m] = errors[i];
			error_nulls[m] = error_nulls[i];
			retries[m] = retries[i];
			retry_nulls[m] = retry_nulls[i];
			m++;
		}
		values[0] = MakeArray(ids, id_nulls, m, INT8OID);
		values[1] = MakeArray(statuses, status_nulls, m, INT4OID);
		values[2] = MakeArray(bodies, body_nulls, m, TEXTOID);
		values[3] = MakeArray(errors, error_nulls, m, TEXTOID);
		values[4] = MakeArray(retries, retry_nulls, m, FLOAT8OID);
		LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&CompletePlan,
													"SELECT completed, failed, requeued "
													"FROM lava._complete($1::bigint[], $2::int[], $3::text[], "
													"$4::text[], $5::float8[])", 5, types),
									  values, NULL, false, 0),
					 SPI_OK_SELECT, "lava._complete");
		if (SPI_processed == 1)
		{
			bool		isnull;

			completed += DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			failed += DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
			requeued += DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		}
	}
	SPI_finish();

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("lava._record must return a composite")));
	result[0] = Int32GetDatum(completed);
	result[1] = Int32GetDatum(failed);
	result[2] = Int32GetDatum(requeued);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), result, result_nulls)));
}
