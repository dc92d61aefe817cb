/*-------------------------------------------------------------------------
 *
 * session.c
 *	  Per-session state of the traffic functions: the role that called lava
 *	  (seen through SECURITY DEFINER) and the default spend key that
 *	  lava.login() gives a session.  The key lives only in this backend's
 *	  memory: never in a setting, a table or a log line.  It takes effect at
 *	  commit of the transaction that called login().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "lava.h"

PG_FUNCTION_INFO_V1(lava_invoker);
PG_FUNCTION_INFO_V1(lava_set_session_key);
PG_FUNCTION_INFO_V1(lava_session_key);

static char *SessionKey = NULL;		/* committed default key */
static char *PendingKey = NULL;		/* set in the current transaction */
static bool CallbackRegistered = false;

/* Frees and wipes a key copy. */
static void
WipeKey(char **key)
{
	if (*key != NULL)
	{
		explicit_bzero(*key, strlen(*key));
		pfree(*key);
		*key = NULL;
	}
}

/* Makes a pending key the session's default at commit, drops it at abort. */
static void
SessionKeyXactCallback(XactEvent event, void *arg)
{
	if (PendingKey == NULL)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		WipeKey(&SessionKey);
		SessionKey = PendingKey;
		PendingKey = NULL;
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		WipeKey(&PendingKey);
}

/*
 * lava._invoker() returns text: the role that called lava, i.e. current_user
 * as it is outside any SECURITY DEFINER function (SET ROLE is honoured).
 */
Datum
lava_invoker(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(GetUserNameFromId(GetOuterUserId(), false)));
}

/* lava._set_session_key(key text): the session's default key from commit on. */
Datum
lava_set_session_key(PG_FUNCTION_ARGS)
{
	if (!CallbackRegistered)
	{
		RegisterXactCallback(SessionKeyXactCallback, NULL);
		CallbackRegistered = true;
	}
	WipeKey(&PendingKey);
	if (!PG_ARGISNULL(0))
		PendingKey = MemoryContextStrdup(TopMemoryContext,
										 text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* lava._session_key() returns text: this session's default key, or NULL. */
Datum
lava_session_key(PG_FUNCTION_ARGS)
{
	text	   *key = LavaSessionKey();

	if (key == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(key);
}

/* This session's default key (the one set in this transaction first), or NULL. */
text *
LavaSessionKey(void)
{
	if (PendingKey != NULL)
		return cstring_to_text(PendingKey);
	if (SessionKey != NULL)
		return cstring_to_text(SessionKey);
	return NULL;
}
