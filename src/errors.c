/*-------------------------------------------------------------------------
 *
 * errors.c
 *	  lava._raise(): the error helper of lava's SQL functions.  Unlike
 *	  PL/pgSQL's RAISE it marks the error so that the server log omits the
 *	  statement text, which may contain a plaintext spend key, and without
 *	  CONTEXT lines that would only show lava's internal PL/pgSQL frames.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(lava_raise);

/* lava._raise(sqlstate text, message text, detail text, hint text): never returns. */
Datum
lava_raise(PG_FUNCTION_ARGS)
{
	char	   *state = PG_ARGISNULL(0) ? "XX000" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *message = PG_ARGISNULL(1) ? "lava error" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *detail = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *hint = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));

	if (strlen(state) != 5)
		state = "XX000";
	/* the caller's PL/pgSQL frames are lava's internals, not the user's context */
	error_context_stack = NULL;
	ereport(ERROR,
			(errcode(MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4])),
			 errmsg_internal("%s", message),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0,
			 errhidestmt(true)));
	PG_RETURN_VOID();
}
