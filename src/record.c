/*-------------------------------------------------------------------------
 *
 * record.c
 *	  Recording a batch of finished calls: LavaRecordOutcomes, which the
 *	  worker calls, and lava._record(), the same for SQL (the tests).  The
 *	  common answer (an OpenAI-shaped 2xx with integer usage for a request
 *	  still running) is written directly (LavaDirectRecord in direct.c),
 *	  then settled through lava._settle_or_defer and notified, as lava._complete
 *	  does; every other outcome (retries, errors, garbage, Anthropic
 *	  answers, odd shapes) goes to lava._complete itself, in the same
 *	  transaction.  test/pgtap/record.sql compares the rows and the keys'
 *	  counters both ways.
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

static SPIPlanPtr SettlePlan = NULL;
static SPIPlanPtr CompletePlan = NULL;

/* Settles, notifies and wakes for the requests recorded directly. */
static void
SettleRecorded(const LavaSettleRow *rows, int n)
{
	Oid			types[7] = {INT8ARRAYOID, UUIDARRAYOID, TIMESTAMPTZARRAYOID, NUMERICARRAYOID,
	NUMERICARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *ats = palloc(sizeof(Datum) * n);
	Datum	   *reservations = palloc(sizeof(Datum) * n);
	Datum	   *charges = palloc(sizeof(Datum) * n);
	Datum	   *in_t = palloc(sizeof(Datum) * n);
	Datum	   *out_t = palloc(sizeof(Datum) * n);
	Datum		values[7];
	int			i;

	for (i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(rows[i].request_id);
		keys[i] = rows[i].spend_key_id;
		ats[i] = TimestampTzGetDatum(rows[i].admitted_at);
		reservations[i] = rows[i].reservation;
		charges[i] = rows[i].charge;
		in_t[i] = Int64GetDatum(rows[i].input_tokens);
		out_t[i] = Int64GetDatum(rows[i].output_tokens);
	}
	values[0] = LavaMakeArray(ids, NULL, n, INT8OID);
	values[1] = LavaMakeArray(keys, NULL, n, UUIDOID);
	values[2] = LavaMakeArray(ats, NULL, n, TIMESTAMPTZOID);
	values[3] = LavaMakeArray(reservations, NULL, n, NUMERICOID);
	values[4] = LavaMakeArray(charges, NULL, n, NUMERICOID);
	values[5] = LavaMakeArray(in_t, NULL, n, INT8OID);
	values[6] = LavaMakeArray(out_t, NULL, n, INT8OID);
	LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&SettlePlan,
												"SELECT lava._settle_or_defer($1::bigint[], $2::pg_catalog.uuid[], "
												"$3::pg_catalog.timestamptz[], $4::numeric[], $5::numeric[], "
												"$6::bigint[], $7::bigint[])",
												7, types),
								  values, NULL, false, 0),
				 SPI_OK_SELECT, "lava._settle_or_defer");

	/* lava._complete's notification, payload as jsonb_build_object prints it */
	for (i = 0; i < n; i++)
	{
		char		payload[96];

		snprintf(payload, sizeof(payload), "{\"status\": \"completed\", \"request_id\": " INT64_FORMAT "}",
				 rows[i].request_id);
		Async_Notify("lava_requests", payload);
	}
	LavaWakeAwaitersAtCommit();
}

/* lava._complete for the outcomes not recorded directly; adds its counts. */
static void
CompleteRest(const LavaOutcome *items, int n, const bool *done, int64 *completed,
			 int64 *failed, int64 *requeued)
{
	Oid			types[5] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID};
	Datum		values[5];
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *statuses = palloc(sizeof(Datum) * n);
	Datum	   *bodies = palloc(sizeof(Datum) * n);
	Datum	   *errors = palloc(sizeof(Datum) * n);
	Datum	   *retries = palloc(sizeof(Datum) * n);
	bool	   *body_nulls = palloc(sizeof(bool) * n);
	bool	   *error_nulls = palloc(sizeof(bool) * n);
	bool	   *retry_nulls = palloc(sizeof(bool) * n);
	int			m = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		const LavaOutcome *o = &items[i];

		if (done[i])
			continue;
		ids[m] = Int64GetDatum(o->id);
		statuses[m] = Int32GetDatum(o->http_status);
		body_nulls[m] = o->body == NULL;
		bodies[m] = PointerGetDatum(o->body);
		error_nulls[m] = o->error == NULL;
		errors[m] = o->error != NULL ? CStringGetTextDatum(o->error) : (Datum) 0;
		retry_nulls[m] = o->retry_after < 0;
		retries[m] = Float8GetDatum(o->retry_after);
		m++;
	}
	values[0] = LavaMakeArray(ids, NULL, m, INT8OID);
	values[1] = LavaMakeArray(statuses, NULL, m, INT4OID);
	values[2] = LavaMakeArray(bodies, body_nulls, m, TEXTOID);
	values[3] = LavaMakeArray(errors, error_nulls, m, TEXTOID);
	values[4] = LavaMakeArray(retries, retry_nulls, m, FLOAT8OID);
	LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&CompletePlan,
												"SELECT completed, failed, requeued "
												"FROM lava._complete($1::bigint[], $2::int[], $3::pg_catalog.text[], "
												"$4::pg_catalog.text[], $5::pg_catalog.float8[])", 5, types),
								  values, NULL, false, 0),
				 SPI_OK_SELECT, "lava._complete");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("lava._complete returned " UINT64_FORMAT " rows, lava expects 1",
						SPI_processed)));
	{
		bool		isnull;
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		*completed += DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull));
		*failed += DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
		*requeued += DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
	}
}

/*
 * Records n outcomes in the current transaction: the common answers
 * directly, then settled and notified; the rest through lava._complete.
 * Sets how many completed, failed and went back to the queue.
 */
void
LavaRecordOutcomes(const LavaOutcome *items, int n, int64 *completed, int64 *failed,
				   int64 *requeued)
{
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));
	LavaSettleRow *settle = palloc(sizeof(LavaSettleRow) * Max(n, 1));
	int			recorded = 0;

	*completed = *failed = *requeued = 0;
	/* the common answers, directly (lava._complete reads its clock first too) */
	if (n > 0 && !XactReadOnly && !IsInParallelMode() && LavaDirectUsable())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		recorded = LavaDirectRecord(items, n, GetCurrentTimestamp(), done, settle);
		PopActiveSnapshot();
	}

	LavaCheckSpi(SPI_connect(), SPI_OK_CONNECT, "SPI_connect");
	if (recorded > 0)
	{
		SettleRecorded(settle, recorded);
		*completed += recorded;
	}
	if (recorded < n)
		CompleteRest(items, n, done, completed, failed, requeued);
	SPI_finish();
}

/*
 * lava._record(ids bigint[], http_statuses integer[], bodies text[],
 * errors text[], retry_afters double precision[], OUT completed integer,
 * OUT failed integer, OUT requeued integer): lava._complete's contract,
 * with its common case written directly (LavaRecordOutcomes).  A NULL id
 * matches no request, as in lava._complete; a NULL status is 0 and a NULL
 * retry_after none, as lava._complete reads them.
 */
Datum
lava_record(PG_FUNCTION_ARGS)
{
	ArrayType  *arrays[5];
	Oid			elemtypes[5] = {INT8OID, INT4OID, TEXTOID, TEXTOID, FLOAT8OID};
	Datum	   *values[5];
	bool	   *nulls[5];
	int			counts[5];
	LavaOutcome *items;
	int			n = 0;
	int64		completed,
				failed,
				requeued;
	TupleDesc	desc;
	Datum		result[3];
	bool		result_nulls[3] = {false, false, false};
	int			i;

	for (i = 0; i < 5; i++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;

		counts[i] = 0;
		values[i] = NULL;
		nulls[i] = NULL;
		if (PG_ARGISNULL(i))
			continue;
		arrays[i] = PG_GETARG_ARRAYTYPE_P(i);
		get_typlenbyvalalign(elemtypes[i], &typlen, &typbyval, &typalign);
		deconstruct_array(arrays[i], elemtypes[i], typlen, typbyval, typalign,
						  &values[i], &nulls[i], &counts[i]);
	}
	for (i = 1; i < 5; i++)
		if (counts[i] != counts[0])
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("lava._record needs five arrays of the same length")));

	items = palloc(sizeof(LavaOutcome) * Max(counts[0], 1));
	for (i = 0; i < counts[0]; i++)
	{
		LavaOutcome *o = &items[n];

		if (nulls[0][i])
			continue;
		o->id = DatumGetInt64(values[0][i]);
		o->http_status = nulls[1][i] ? 0 : DatumGetInt32(values[1][i]);
		o->body = nulls[2][i] ? NULL : DatumGetTextPP(values[2][i]);
		o->error = nulls[3][i] ? NULL : TextDatumGetCString(values[3][i]);
		o->retry_after = nulls[4][i] ? -1 : DatumGetFloat8(values[4][i]);
		n++;
	}
	LavaRecordOutcomes(items, n, &completed, &failed, &requeued);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("lava._record must return a composite")));
	result[0] = Int32GetDatum((int32) completed);
	result[1] = Int32GetDatum((int32) failed);
	result[2] = Int32GetDatum((int32) requeued);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), result, result_nulls)));
}
