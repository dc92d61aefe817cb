/*-------------------------------------------------------------------------
 *
 * plans.c
 *	  SPI helpers of the background worker (worker.c, record.c): statements
 *	  prepared once per process and kept, the array arguments they take,
 *	  and the check of what SPI returned.  (lava.prompt's fast path uses no
 *	  SPI: see direct.c.)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/array.h"
#include "utils/lsyscache.h"

#include "lava.h"

/*
 * The saved plan in *slot, prepared and kept on first use (inside an SPI
 * connection).  The plan cache re-plans it when the objects it uses change,
 * for example when the extension is dropped and created again.
 */
SPIPlanPtr
LavaSavedPlan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("lava could not prepare \"%s\": %s",
							sql, SPI_result_code_string(SPI_result))));
		if (SPI_keepplan(plan) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("lava could not keep the plan of \"%s\"", sql)));
		*slot = plan;
	}
	return *slot;
}

/* Errors out unless SPI returned the expected code. */
void
LavaCheckSpi(int ret, int expected, const char *what)
{
	if (ret != expected)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("lava: %s failed: %s", what, SPI_result_code_string(ret))));
}

/* A one-dimensional array of n datums of type elemtype (nulls may be NULL). */
Datum
LavaMakeArray(Datum *values, bool *nulls, int n, Oid elemtype)
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
