/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  lava's background processes, both connected to lava.database: the
 *	  worker, which takes queued requests to the upstream providers, and
 *	  its recorder, which records what they answered.
 *
 * The worker's loop follows worker_spi's skeleton, with a WaitEventSet that
 * also watches the HTTP client's epoll fd (src/http.h).  Each turn:
 *
 *	  1. drives curl and takes every finished call;
 *	  2. hands the outcomes to the recorder through the outbox (outbox.c);
 *		 without a recorder (lava.recorder off, or it stopped) it records
 *		 them itself in one short transaction: LavaRecordOutcomes (record.c),
 *		 and makes the settlements a recording deferred because another
 *		 transaction held a key's row (SettleDeferred);
 *	  3. while fewer than lava.max_concurrency calls are in flight, claims
 *		 more in one short transaction (lava._claim, lava._next_due) and,
 *		 after commit, hands them to curl;
 *	  4. about once a minute purges old rows: lava._purge;
 *	  5. starts the recorder if it is not running (see ManageRecorder);
 *	  6. sleeps until its latch is set (an enqueue committed), a socket is
 *		 ready, curl's deadline, the next due request, or one second.
 *
 * The recorder is a dynamic background worker that lives no longer than
 * the worker that started it.  It records the outbox's outcomes in batches
 * on the second core, while the worker claims and sends; one process
 * records at a time (the outbox's consumer), so that two never settle the
 * same keys in different orders.  An outcome leaves the outbox only when
 * the transaction that recorded it commits, so stopping the recorder loses
 * nothing: the worker, or the next recorder, records what it left.  The
 * recorder also makes the deferred settlements (SettleDeferred).
 *
 * On SIGTERM (a server shutdown, pg_terminate_backend) the worker claims
 * nothing more and, for up to lava.stop_timeout, waits for its calls in
 * flight and records every answer before it exits (StopWorker), so that a
 * clean stop sends nothing twice.
 *
 * No HTTP call is made, and nothing waits, inside a transaction; no
 * transaction or lock is held between steps, so DROP EXTENSION waits at
 * most for one short step.  When the extension is absent the worker calls
 * none of its functions and checks again every few seconds.  A request
 * left 'running' by a worker that died is settled by lava._worker_recover
 * when the next one starts, once the outbox is empty.
 *
 * Request headers carry the providers' API keys: they are wiped once curl
 * has copied them, and neither they nor any body are ever logged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "http.h"
#include "lava.h"

#define CLAIM_MAX 1000			/* most requests claimed per transaction */
#define BATCH_MAX 1000			/* most results recorded per transaction */
#define BATCH_MAX_BYTES ((Size) 64 * 1024 * 1024)	/* and their body bytes */
#define IDLE_WAIT_MS 1000		/* slow fallback when nothing is due */
#define NO_EXTENSION_WAIT_MS 5000	/* re-check for CREATE EXTENSION */
#define ERROR_BACKOFF_MS 1000	/* no transaction this soon after an error */
#define PURGE_INTERVAL_MS 60000
#define MIN_DUE_WAIT_MS 100	/* "due now", yet _claim skipped it (locked) */
#define DATABASE_POLL_MS 1000	/* waiting for lava.database to exist */
#define RECORDER_RETRY_MS 1000	/* start a stopped recorder again after */
#define RECORDER_NO_SLOT_MS 10000	/* ... or after no worker slot was free */
#define OUTBOX_WAIT_MS 10		/* recovery waits for the outbox to empty */
#define LINGER_MS 5				/* most a finished call waits for others to share
								 * its transaction */
#define STOP_RETRY_MS 10		/* stopping: try recording again after */
#define SETTLE_RETRY_MS 250		/* deferred settlements: look again after */

/* A request claimed by lava._claim, copied out of SPI, not yet submitted. */
typedef struct Claimed
{
	int64		id;
	pg_uuid_t	key;			/* the spend key it goes through */
	char	   *method;
	char	   *url;
	char	  **headers;		/* "Name: value"; hold API keys */
	int			nheaders;
	char	   *body;			/* NULL when none */
	Size		body_len;
	int			timeout_ms;
} Claimed;

typedef enum StepResult
{
	STEP_DONE,					/* committed */
	STEP_NO_EXTENSION,			/* lava is not installed: nothing was done */
	STEP_FAILED					/* rolled back; the error was logged */
} StepResult;

/* What a step does inside its transaction, with SPI connected. */
typedef void (*StepFunction) (void *arg);

typedef struct ClaimWork
{
	int			want;			/* in: how many to claim */
	Claimed    *rows;			/* out, in LoopContext */
	int			nrows;
	double		next_due;		/* out: seconds, < 0 when nothing is queued */
} ClaimWork;

typedef struct SettleWork
{
	int64		settled;		/* out */
	int64		remaining;
} SettleWork;

typedef struct CompleteWork
{
	LavaOutcome *items;			/* in */
	int			n;
	Oid			ext;			/* in: extension lava when they were claimed */
	uint64		advance_to;		/* in: outbox tail to set at commit, 0: none */
	int			dropped;		/* out: claimed under a dropped extension */
	int64		completed;		/* out */
	int64		failed;
	int64		requeued;
} CompleteWork;

static LavaHttp *Http = NULL;
static WaitEventSet *WaitSet = NULL;
static MemoryContext LoopContext = NULL;	/* reset every turn */
static MemoryContext OutcomeContext = NULL; /* reset once all are recorded */
static LavaOutcome *Outcomes = NULL;
static int	NumOutcomes = 0;
static TimestampTz FirstOutcomeAt = 0;	/* when the oldest unrecorded one came */
static int	MaxOutcomes = 0;
static bool ExtensionPresent = true;	/* as the last step found it */
static bool NeedRecover = true; /* lava._worker_recover not run yet */
static TimestampTz BackoffUntil = 0;
static bool ClaimWanted = true;	/* due requests may be waiting */
static TimestampTz NextClaimAt = 0; /* look at the queue by then anyway */
static TimestampTz LastPurge = 0;
static int64 ReportedInFlight = -1;
static bool IsRecorder = false; /* this process is the recorder */
static Oid	KnownExtOid = InvalidOid;	/* extension lava as the last step saw it */
static Oid	StepExtOid = InvalidOid;	/* ... and as the current step sees it */
static bool ExtensionRecreated = false; /* the last step found a new one */
static MemoryContext ConsumeContext = NULL; /* one outbox batch */
static uint64 AdvanceAtCommit = 0;	/* outbox tail to set when the step commits */
static bool OutboxCallbackRegistered = false;
static BackgroundWorkerHandle *Recorder = NULL; /* the worker's recorder */
static TimestampTz RecorderRetryAt = 0; /* start it again no sooner */
static bool RecorderSlotMissing = false; /* the last start found no slot */
static volatile sig_atomic_t StopRequested = false; /* SIGTERM came */
static volatile sig_atomic_t InStep = false;	/* RunStep is running a step */
static TimestampTz StopDeadline = 0;	/* StopWorker's: no step runs past it */
static int	StepErrcode = 0;	/* SQLSTATE of the last step that failed */
static TimestampTz DeferredSeenAt = 0;	/* when this process saw the note of
										 * deferred settlements; 0: not seen */

static bool InBackoff(void);

/* Frees the HTTP client and clears the shared state when the worker exits. */
static void
WorkerExit(int code, Datum arg)
{
	if (Http != NULL)
	{
		LavaHttpDestroy(Http);
		Http = NULL;
	}
	/* the recorder would exit on seeing the worker gone; no need to wait */
	if (Recorder != NULL)
		TerminateBackgroundWorker(Recorder);
	LavaOutboxProcessExit();
	LavaStateWorkerStopped();
}

/*
 * SIGINT (pg_cancel_backend) in both processes: cancels the step that runs,
 * as a statement would be cancelled.  Outside a step there is nothing to
 * cancel: a pending cancel would then end the process, and with it the
 * worker's calls in flight.
 */
static void
HandleCancel(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (InStep && !proc_exit_inprogress)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * The worker's SIGTERM handler, once it is connected: it stops at the top
 * of its loop, after recording what was answered (StopWorker).  A step
 * running now is cancelled, and none starts before StopWorker, so that no
 * wait delays the stop.
 */
static void
HandleStopRequest(SIGNAL_ARGS)
{
	StopRequested = true;
	HandleCancel(postgres_signal_arg);
}

/* Clears the recorder's shared state when it exits. */
static void
RecorderExit(int code, Datum arg)
{
	LavaOutboxProcessExit();
}

/*
 * Creates the memory contexts of either process (the recorder's results
 * context only serves ExtensionGone, which resets it).
 */
static void
CreateContexts(void)
{
	LoopContext = AllocSetContextCreate(TopMemoryContext, "lava loop",
										ALLOCSET_DEFAULT_SIZES);
	OutcomeContext = AllocSetContextCreate(TopMemoryContext, "lava results",
										   ALLOCSET_DEFAULT_SIZES);
	ConsumeContext = AllocSetContextCreate(TopMemoryContext, "lava outbox batch",
										   ALLOCSET_DEFAULT_SIZES);
}

/*
 * Pins the settings the steps are written for, whatever postgresql.conf,
 * ALTER DATABASE or ALTER ROLE say, as autovacuum does: search_path to
 * pg_catalog alone (these processes run as the bootstrap superuser, and
 * the internal functions they call resolve names through it: a database
 * owner's search_path must not lend them its types, functions or
 * operators), READ COMMITTED (the claim and the recording rely on its
 * re-check of updated rows), no lock or
 * statement timeout, under which a recording that waits for a busy key row
 * would fail and have to be tried again, and no asynchronous commit: a
 * claim must be on disk before its call is sent, or a crash loses the
 * attempt that the upstream saw.  log_lock_waits is on, so that a step
 * held up by a lock (a key row an open transaction holds) is in the log
 * with the holder's pid.  Called again after each reload.
 */
static void
PinSessionSettings(void)
{
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	/* a step that waits for a lock says so, naming who holds it */
	SetConfigOption("log_lock_waits", "on", PGC_SUSET, PGC_S_OVERRIDE);
	/* (a stronger setting, waiting for standbys, is kept) */
	if (strcmp(GetConfigOption("synchronous_commit", false, false), "off") == 0)
		SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * The head of either process's loop: a fresh loop context, interrupts, and
 * a pending configuration reload, after which the session settings are
 * pinned again.  True when it reloaded.
 */
static bool
BeginLoopTurn(void)
{
	MemoryContextReset(LoopContext);
	MemoryContextSwitchTo(LoopContext);
	CHECK_FOR_INTERRUPTS();
	if (!ConfigReloadPending)
		return false;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	PinSessionSettings();
	return true;
}

/* Gives the HTTP client the settings it reads: connection cache, CA bundle. */
static void
ApplyHttpSettings(void)
{
	LavaHttpSetMaxConnections(Http, lava_max_concurrency);
	/* taken as it is: every https call then fails, none trusts curl's CAs */
	if (lava_ca_file[0] != '\0' && access(lava_ca_file, R_OK) != 0)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("lava.ca_file \"%s\" cannot be read: %m", lava_ca_file),
				 errdetail("Every HTTPS call fails until it can be read.")));
	/* never go on with a bundle other than the one set */
	if (LavaHttpSetCaFile(Http, lava_ca_file) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("The worker could not take lava.ca_file.")));
}

/* Creates the HTTP client and the wait set: latch, postmaster death, curl. */
static void
StartHttp(void)
{
	Http = LavaHttpCreate();
	if (Http == NULL)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("lava worker could not create its HTTP client")));
	ApplyHttpSettings();
	WaitSet = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(WaitSet, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(WaitSet, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(WaitSet, WL_SOCKET_READABLE, LavaHttpEventFd(Http), NULL, NULL);
}

/* Drops every call in flight by replacing the HTTP client. */
static void
RestartHttp(void)
{
	FreeWaitEventSet(WaitSet);
	WaitSet = NULL;
	LavaHttpDestroy(Http);
	Http = NULL;
	LavaKeyLoadReset();
	StartHttp();
}

/* Forgets every outcome not yet recorded. */
static void
ResetOutcomes(void)
{
	MemoryContextReset(OutcomeContext);
	Outcomes = NULL;
	NumOutcomes = 0;
	MaxOutcomes = 0;
}

/* Queues an outcome for recording, copying body and error. */
static void
AddOutcome(int64 id, int32 http_status, const char *body, Size body_len,
		   const char *error, double retry_after)
{
	MemoryContext old = MemoryContextSwitchTo(OutcomeContext);
	LavaOutcome *o;

	if (NumOutcomes == MaxOutcomes)
	{
		MaxOutcomes = MaxOutcomes == 0 ? 64 : MaxOutcomes * 2;
		Outcomes = Outcomes == NULL ? palloc(sizeof(LavaOutcome) * MaxOutcomes) :
			repalloc(Outcomes, sizeof(LavaOutcome) * MaxOutcomes);
	}
	if (NumOutcomes == 0)
		FirstOutcomeAt = GetCurrentTimestamp();
	o = &Outcomes[NumOutcomes++];
	o->id = id;
	o->http_status = http_status;
	o->body = body != NULL ? cstring_to_text_with_len(body, body_len) : NULL;
	o->error = error != NULL ? pstrdup(error) : NULL;
	o->retry_after = retry_after;
	MemoryContextSwitchTo(old);
}

/*
 * True when a body is valid UTF-8 holding one JSON value.  Checked here,
 * without throwing, so that lava._complete can cast every body to jsonb.
 */
static bool
IsJsonText(char *body, Size len)
{
	JsonLexContext *lex;

	if (!pg_verifymbstr(body, len, true))
		return false;
	lex = makeJsonLexContextCstringLen(body, len, GetDatabaseEncoding(), false);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * Takes every finished call from curl.  A body that is not JSON is
 * dropped (NULL); a transport error goes with http_status 0.
 */
static void
TakeResults(void)
{
	LavaHttpResult r;

	while (LavaHttpNextResult(Http, &r))
	{
		const char *body = NULL;
		Size		len = 0;
		const char *error = NULL;
		int32		status = (int32) r.http_status;

		if (r.curl_code != 0)
		{
			status = 0;
			error = r.error[0] != '\0' ? r.error : "upstream call failed";
			if (!pg_verifymbstr(error, strlen(error), true))
				error = "upstream call failed";
		}
		else if (r.body != NULL)
		{
			len = strnlen(r.body, r.body_len);
			if (!IsJsonText(r.body, len))
			{
				/* lava._complete reads a missing body as "not JSON" */
				body = NULL;
				len = 0;
			}
			else
				body = r.body;
		}
		AddOutcome((int64) r.id, status, body, len, error, r.retry_after);
		LavaHttpResultFree(&r);
		if (LavaKeyLoadDone((int64) r.id))
			ClaimWanted = true; /* its key was at its cap: it may take more */
	}
}

/*
 * The extension is gone: its requests went with it, so drop the calls in
 * flight and the unrecorded outcomes, and recover when it comes back.
 */
static void
ExtensionGone(void)
{
	int			in_flight = Http != NULL ? LavaHttpInFlight(Http) : 0;

	if (in_flight > 0 || NumOutcomes > 0)
		ereport(LOG,
				(errmsg("lava worker dropped %d upstream calls because extension lava is gone",
						in_flight + NumOutcomes)));
	if (in_flight > 0)
		RestartHttp();
	ResetOutcomes();
	NeedRecover = true;
	if (ExtensionRecreated)
	{
		/* a new one is there: recover and claim at once */
		ExtensionRecreated = false;
		ClaimWanted = true;
		return;
	}
	/* until woken, look again after a while */
	ClaimWanted = false;
	NextClaimAt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), NO_EXTENSION_WAIT_MS);
}

/*
 * True when extension lava exists; StepExtOid is then its OID.  It holds a
 * share lock on the extension until commit, so that DROP EXTENSION cannot
 * remove the functions this step is about to call (it waits for the step
 * instead).
 */
static bool
ExtensionReady(void)
{
	Oid			ext = get_extension_oid("lava", true);

	StepExtOid = InvalidOid;
	if (!OidIsValid(ext))
		return false;
	LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
	/* it may have been dropped while we waited for the lock */
	if (get_extension_oid("lava", true) != ext)
		return false;
	StepExtOid = ext;
	return true;
}

/*
 * Runs fn in one transaction with SPI connected and a snapshot pushed,
 * unless the extension is missing (see ExtensionGone).  An error is
 * logged, stored as the last error and rolled back; transactions then
 * pause for a second.  Once the worker is asked to stop, no step runs until
 * StopWorker sets its deadline, nor after it, and every wait in a step
 * ends at the deadline.
 */
static StepResult
RunStep(const char *activity, StepFunction fn, void *arg)
{
	volatile StepResult result = STEP_DONE;

	InStep = true;
	/* asked to stop: no step until StopWorker, and none past its deadline */
	if (StopRequested &&
		(StopDeadline == 0 || GetCurrentTimestamp() >= StopDeadline))
	{
		InStep = false;
		QueryCancelPending = false;
		StepErrcode = ERRCODE_QUERY_CANCELED;
		return STEP_FAILED;
	}
	/* while stopping, a wait of any kind ends at the deadline (as a cancel) */
	if (StopDeadline != 0)
		enable_timeout_at(STATEMENT_TIMEOUT, StopDeadline);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("lava worker could not connect to SPI")));
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
		if (!ExtensionReady())
			result = STEP_NO_EXTENSION;
		else if (!IsRecorder && OidIsValid(KnownExtOid) && StepExtOid != KnownExtOid)
		{
			/* dropped and created again: what was claimed went with it */
			KnownExtOid = StepExtOid;
			ExtensionRecreated = true;
			result = STEP_NO_EXTENSION;
		}
		else
		{
			KnownExtOid = StepExtOid;
			fn(arg);
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(LoopContext);
		edata = CopyErrorData();
		StepErrcode = edata->sqlerrcode;
		/* cancelled by the stop request itself: no error, the stop goes on */
		if (!(StopRequested && StopDeadline == 0 &&
			  edata->sqlerrcode == ERRCODE_QUERY_CANCELED))
		{
			EmitErrorReport();
			LavaStateSetLastError(edata->message);
			BackoffUntil = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   ERROR_BACKOFF_MS);
		}
		FlushErrorState();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
		FreeErrorData(edata);
		result = STEP_FAILED;
	}
	PG_END_TRY();
	InStep = false;
	if (StopDeadline != 0)
		disable_timeout(STATEMENT_TIMEOUT, false);
	/* a cancel that came too late for the step, and what caused it */
	QueryCancelPending = false;
	(void) get_timeout_indicator(STATEMENT_TIMEOUT, true);
	(void) get_timeout_indicator(LOCK_TIMEOUT, true);
	MemoryContextSwitchTo(LoopContext);
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (result == STEP_NO_EXTENSION)
		ExtensionGone();
	if (result != STEP_FAILED)
		ExtensionPresent = result == STEP_DONE;
	return result;
}

/* Errors out unless the result's columns have the types the worker reads. */
static void
CheckColumns(TupleDesc desc, const Oid *types, int ntypes, const char *what)
{
	int			i;

	if (desc->natts != ntypes)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s returned %d columns, the worker expects %d",
						what, desc->natts, ntypes)));
	for (i = 0; i < ntypes; i++)
	{
		if (SPI_gettypeid(desc, i + 1) != types[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column %d of %s has type %s, the worker expects %s",
							i + 1, what, format_type_be(SPI_gettypeid(desc, i + 1)),
							format_type_be(types[i]))));
	}
}

/* An integer column of the first result row (int2, int4 or int8); 0 if NULL. */
static int64
ResultInt(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		return 0;
	switch (SPI_gettypeid(SPI_tuptable->tupdesc, col))
	{
		case INT2OID:
			return DatumGetInt16(d);
		case INT4OID:
			return DatumGetInt32(d);
		case INT8OID:
			return DatumGetInt64(d);
		default:
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column %d of a lava function result is not an integer", col)));
	}
	return 0;					/* keep the compiler quiet */
}

/* Copies a text datum into LoopContext, NUL-terminated. */
static char *
CopyText(Datum d, Size *len)
{
	text	   *t = DatumGetTextPP(d);
	Size		n = VARSIZE_ANY_EXHDR(t);
	char	   *s = MemoryContextAlloc(LoopContext, n + 1);

	memcpy(s, VARDATA_ANY(t), n);
	s[n] = '\0';
	if (len != NULL)
		*len = n;
	return s;
}

/* Copies one row of lava._claim into c (in LoopContext). */
static void
CopyClaimed(HeapTuple tup, TupleDesc desc, Claimed *c)
{
	bool		isnull;
	Datum		d;

	memset(c, 0, sizeof(*c));
	d = SPI_getbinval(tup, desc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lava._claim returned a NULL request_id")));
	c->id = DatumGetInt64(d);

	d = SPI_getbinval(tup, desc, 2, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lava._claim returned a NULL spend_key_id")));
	memcpy(&c->key, DatumGetUUIDP(d), sizeof(pg_uuid_t));

	d = SPI_getbinval(tup, desc, 3, &isnull);
	c->method = isnull ? NULL : CopyText(d, NULL);

	d = SPI_getbinval(tup, desc, 4, &isnull);
	c->url = isnull ? MemoryContextStrdup(LoopContext, "") : CopyText(d, NULL);

	d = SPI_getbinval(tup, desc, 5, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &nulls, &n);
		c->headers = MemoryContextAlloc(LoopContext, sizeof(char *) * Max(n, 1));
		for (i = 0; i < n; i++)
		{
			if (!nulls[i])
				c->headers[c->nheaders++] = CopyText(elems[i], NULL);
		}
	}

	d = SPI_getbinval(tup, desc, 6, &isnull);
	c->body = isnull ? NULL : CopyText(d, &c->body_len);

	d = SPI_getbinval(tup, desc, 7, &isnull);
	c->timeout_ms = isnull ? lava_request_timeout_ms : DatumGetInt32(d);
}

static SPIPlanPtr ClaimPlan = NULL;
static SPIPlanPtr NextDuePlan = NULL;

/*
 * The claim step: lava._claim($1, the per-key cap, the keys near it and
 * their room) and lava._next_due().
 */
static void
ClaimStep(void *arg)
{
	static const Oid claim_types[] = {INT8OID, UUIDOID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTOID, INT4OID};
	ClaimWork  *w = (ClaimWork *) arg;
	Oid			argtypes[4] = {INT4OID, INT4OID, UUIDARRAYOID, INT4ARRAYOID};
	Datum		values[4];
	pg_uuid_t  *near_keys;
	int		   *near_rooms;
	int			nnear;
	Datum	   *key_datums;
	Datum	   *room_datums;
	int			cap = LavaKeyCap();
	bool		isnull;
	Datum		d;
	uint64		i;

	nnear = LavaKeyLoadNearCap(w->want, &near_keys, &near_rooms);
	key_datums = palloc(sizeof(Datum) * Max(nnear, 1));
	room_datums = palloc(sizeof(Datum) * Max(nnear, 1));
	for (i = 0; i < nnear; i++)
	{
		key_datums[i] = UUIDPGetDatum(&near_keys[i]);
		room_datums[i] = Int32GetDatum(near_rooms[i]);
	}
	values[0] = Int32GetDatum(w->want);
	values[1] = Int32GetDatum(cap);
	values[2] = LavaMakeArray(key_datums, NULL, nnear, UUIDOID);
	values[3] = LavaMakeArray(room_datums, NULL, nnear, INT4OID);
	LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&ClaimPlan,
												"SELECT request_id, spend_key_id, method, url, headers, body, timeout_ms "
												"FROM lava._claim($1::int, $2::int, $3::pg_catalog.uuid[], $4::int[])",
												4, argtypes),
								  values, NULL, false, 0),
				 SPI_OK_SELECT, "lava._claim");
	CheckColumns(SPI_tuptable->tupdesc, claim_types, lengthof(claim_types), "lava._claim");
	w->rows = MemoryContextAlloc(LoopContext, sizeof(Claimed) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
		CopyClaimed(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &w->rows[i]);
	w->nrows = (int) SPI_processed;

	/* a full claim: more is due now, no need to look when */
	if (w->nrows == w->want)
	{
		w->next_due = 0;
		return;
	}
	LavaCheckSpi(SPI_execute_plan(LavaSavedPlan(&NextDuePlan, "SELECT lava._next_due()", 0, NULL),
								  NULL, NULL, false, 1),
				 SPI_OK_SELECT, "lava._next_due");
	w->next_due = -1;
	if (SPI_processed == 1 && SPI_gettypeid(SPI_tuptable->tupdesc, 1) == FLOAT8OID)
	{
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			w->next_due = Max(DatumGetFloat8(d), 0.0);
	}
}

/* Moves the outbox's tail past a recorded batch once its transaction commits. */
static void
OutboxXactCallback(XactEvent event, void *arg)
{
	if (AdvanceAtCommit == 0)
		return;
	if (event == XACT_EVENT_COMMIT)
		LavaOutboxAdvance(AdvanceAtCommit);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		AdvanceAtCommit = 0;
}

/*
 * The record step: the outcomes recorded (record.c), lava._complete's counts
 * out; those claimed under an extension since dropped are dropped.
 */
static void
CompleteStep(void *arg)
{
	CompleteWork *w = (CompleteWork *) arg;

	if (w->ext == StepExtOid)
		LavaRecordOutcomes(w->items, w->n, &w->completed, &w->failed, &w->requeued);
	else
		w->dropped = w->n;
	if (w->advance_to > 0)
	{
		if (!OutboxCallbackRegistered)
		{
			RegisterXactCallback(OutboxXactCallback, NULL);
			OutboxCallbackRegistered = true;
		}
		AdvanceAtCommit = w->advance_to;
	}
}

/* The recovery step: lava._worker_recover(). */
static void
RecoverStep(void *arg)
{
	LavaCheckSpi(SPI_execute_with_args("SELECT lava._worker_recover()", 0, NULL, NULL, NULL, false, 1),
				 SPI_OK_SELECT, "lava._worker_recover");
	*(int64 *) arg = SPI_processed == 1 ? ResultInt(1) : 0;
}

/* The settle step: lava._settle_deferred(). */
static void
SettleStep(void *arg)
{
	SettleWork *w = (SettleWork *) arg;

	LavaCheckSpi(SPI_execute_with_args("SELECT settled, remaining FROM lava._settle_deferred()",
									   0, NULL, NULL, NULL, false, 1),
				 SPI_OK_SELECT, "lava._settle_deferred");
	if (SPI_processed == 1)
	{
		w->settled = ResultInt(1);
		w->remaining = ResultInt(2);
	}
}

/* The purge step: lava._purge(lava.request_ttl). */
static void
PurgeStep(void *arg)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];

	values[0] = Int32GetDatum(lava_request_ttl_s);
	LavaCheckSpi(SPI_execute_with_args("SELECT lava._purge($1::int)", 1, argtypes, values, NULL, false, 1),
				 SPI_OK_SELECT, "lava._purge");
	*(int64 *) arg = SPI_processed == 1 ? ResultInt(1) : 0;
}

/* Updates the counters and wakes lava.await after a committed _complete. */
static void
AfterComplete(const CompleteWork *w)
{
	LavaStateAddCounts(0, w->completed, w->failed);
	if (w->completed + w->failed > 0)
		LavaStateBumpGeneration();
	if (w->requeued > 0)
	{
		/* for their next due time */
		if (IsRecorder)
			LavaStateWakeWorker();
		else
			ClaimWanted = true;
	}
	if (w->dropped > 0)
		ereport(LOG,
				(errmsg("lava %s dropped %d results of requests claimed before extension lava was dropped",
						IsRecorder ? "recorder" : "worker", w->dropped)));
	if (w->failed > 0)
	{
		const char *error = NULL;
		int32		status = 0;
		int			i;
		char		msg[LAVA_LAST_ERROR_LEN];

		for (i = 0; i < w->n; i++)
		{
			if (w->items[i].error != NULL)
				error = w->items[i].error;
			else if (w->items[i].http_status < 200 || w->items[i].http_status > 299)
				status = w->items[i].http_status;
		}
		if (error != NULL)
			snprintf(msg, sizeof(msg), INT64_FORMAT " requests failed; last upstream error: %s",
					 w->failed, error);
		else if (status != 0)
			snprintf(msg, sizeof(msg), INT64_FORMAT " requests failed; last upstream HTTP status: %d",
					 w->failed, status);
		else
			snprintf(msg, sizeof(msg), INT64_FORMAT " requests failed", w->failed);
		LavaStateSetLastError(msg);
	}
}

/*
 * Records n outcomes in one transaction.  For outcomes taken from the
 * outbox, end is where its tail goes when the transaction commits.
 */
static StepResult
CompleteBatch(LavaOutcome *items, int n, Oid ext, uint64 end)
{
	CompleteWork w;
	StepResult	r;

	memset(&w, 0, sizeof(w));
	w.items = items;
	w.n = n;
	w.ext = ext;
	w.advance_to = end;
	r = RunStep(IsRecorder ? "lava recorder: recording results" : "lava worker: recording results",
				CompleteStep, &w);
	if (r == STEP_DONE)
		AfterComplete(&w);
	return r;
}

/*
 * True when the step that just failed may succeed if tried again later: it
 * was cancelled (by pg_cancel_backend, a stop, or the stop's deadline),
 * timed out on a lock, lost a deadlock or a serialization conflict, or
 * found the database read-only for now (default_transaction_read_only).
 * The outcomes are not at fault then.
 */
static bool
FailureMayPass(void)
{
	return StepErrcode == ERRCODE_QUERY_CANCELED ||
		StepErrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		StepErrcode == ERRCODE_READ_ONLY_SQL_TRANSACTION ||
		StepErrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		StepErrcode == ERRCODE_T_R_DEADLOCK_DETECTED;
}

/*
 * Records a batch of outcomes of requests claimed under extension ext (for
 * outcomes from the outbox, ends[i] is the outbox position past item i);
 * *done is how many of the first ones are recorded or dropped.  When the
 * batch fails, each outcome is tried alone, so that one the SQL side cannot
 * take does not lose the others; one that still fails is recorded as a
 * bare error.  If even that fails, the rest is dropped: those requests stay
 * 'running' until the worker restarts.  A failure that may pass
 * (FailureMayPass) is not the outcomes': the rest is left for a later try.
 */
static StepResult
RecordBatch(LavaOutcome *items, int n, Oid ext, const uint64 *ends, int *done)
{
	StepResult	r = CompleteBatch(items, n, ext, ends != NULL ? ends[n - 1] : 0);
	int			i;

	*done = 0;
	if (r != STEP_FAILED)
		*done = n;
	if (r != STEP_FAILED || FailureMayPass())
		return r;
	for (i = 0; i < n; i++)
	{
		LavaOutcome bare;

		if (n > 1)
		{
			r = CompleteBatch(&items[i], 1, ext, ends != NULL ? ends[i] : 0);
			if (r == STEP_NO_EXTENSION)
				return r;
			if (r == STEP_DONE)
			{
				*done = i + 1;
				continue;
			}
			if (FailureMayPass())
				return r;
		}
		bare.id = items[i].id;
		bare.http_status = 0;
		bare.body = NULL;
		bare.error = "lava could not record the upstream answer";
		bare.retry_after = -1;
		r = CompleteBatch(&bare, 1, ext, ends != NULL ? ends[i] : 0);
		if (r == STEP_NO_EXTENSION)
			return r;
		if (r == STEP_FAILED && FailureMayPass())
			return r;
		if (r == STEP_FAILED)
		{
			*done = n;
			if (ends != NULL)
				LavaOutboxAdvance(ends[n - 1]);
			ereport(WARNING,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("lava %s dropped %d results it could not record",
							IsRecorder ? "recorder" : "worker", n - i),
					 errdetail("Their requests stay 'running' until the worker restarts.")));
			return r;
		}
		*done = i + 1;
	}
	return STEP_DONE;
}

/*
 * Records every outcome taken so far, in batches of BATCH_MAX /
 * BATCH_MAX_BYTES, as the outbox's consumer: one process records at a time,
 * so that two never settle the same keys in different orders.  When the
 * recorder is the consumer, the outcomes wait for room in the outbox.
 */
static void
RecordOutcomes(void)
{
	int			start = 0;

	if (!LavaOutboxBeginConsume())
		return;
	while (start < NumOutcomes)
	{
		int			n = 0;
		int			done;
		Size		bytes = 0;
		StepResult	r;

		while (start + n < NumOutcomes && n < BATCH_MAX)
		{
			LavaOutcome *o = &Outcomes[start + n];
			Size		size = o->body != NULL ? VARSIZE(o->body) : 0;

			if (n > 0 && bytes + size > BATCH_MAX_BYTES)
				break;
			bytes += size;
			n++;
		}
		r = RecordBatch(&Outcomes[start], n, KnownExtOid, NULL, &done);
		if (r == STEP_NO_EXTENSION)
			break;				/* ExtensionGone dropped them all */
		if (done < n)
		{
			/* a failure that may pass: keep the rest for a later try */
			start += done;
			memmove(Outcomes, Outcomes + start, sizeof(LavaOutcome) * (NumOutcomes - start));
			NumOutcomes -= start;
			LavaOutboxEndConsume();
			return;
		}
		start += n;
	}
	ResetOutcomes();
	LavaOutboxEndConsume();
	if (!LavaOutboxEmpty())
		LavaOutboxWakeRecorder();
}

/* True when a recorder runs to take the outcomes. */
static bool
RecorderReady(void)
{
	return lava_recorder && LavaOutboxRecorderPid() != 0;
}

/*
 * Hands the outcomes taken so far to the recorder, as many as the outbox
 * has room for.  The rest, and any too big for the outbox, stay for the
 * worker to record (RecordOutcomes) or to hand over later.
 */
static void
HandOff(void)
{
	int			kept = 0;
	int			i;

	for (i = 0; i < NumOutcomes; i++)
	{
		if (LavaOutboxPush(&Outcomes[i], KnownExtOid))
			continue;
		if (!LavaOutboxTooBig(&Outcomes[i]))
			break;				/* no room now: these wait */
		Outcomes[kept++] = Outcomes[i];
	}
	if (i > kept)
		LavaOutboxWakeRecorder();	/* some were handed over */
	if (kept == 0 && i == NumOutcomes)
	{
		ResetOutcomes();
		return;
	}
	memmove(Outcomes + kept, Outcomes + i, sizeof(LavaOutcome) * (NumOutcomes - i));
	NumOutcomes = kept + (NumOutcomes - i);
}

/*
 * True when results wait to be recorded in such numbers that the worker
 * should claim no more until they are: half the outbox, or as many as
 * lava.max_concurrency in the worker's own hands.  Claiming gives way to
 * recording, so that a slow recorder (or a stopped one) bounds what a
 * crash or a shutdown can leave unrecorded.
 */
static bool
RecordingBehind(void)
{
	return NumOutcomes >= lava_max_concurrency || LavaOutboxBacklogged();
}

/*
 * Milliseconds until SettleDeferred is due (0: now), or -1 when no note of
 * deferred settlements is pending.  The first call that sees a note starts
 * its SETTLE_RETRY_MS.
 */
static long
SettleWaitMs(void)
{
	TimestampTz now;

	if (LavaStateDeferredNotes() == 0)
	{
		DeferredSeenAt = 0;
		return -1;
	}
	now = GetCurrentTimestamp();
	if (DeferredSeenAt == 0)
		DeferredSeenAt = now;
	return Max(SETTLE_RETRY_MS - TimestampDifferenceMilliseconds(DeferredSeenAt, now), 0);
}

/*
 * True when the worker makes the deferred settlements itself: no recorder
 * runs, and the extension is there with its start-up recovery done.
 */
static bool
WorkerSettles(void)
{
	return !RecorderReady() && ExtensionPresent && !NeedRecover;
}

/* timeout, cut to when SettleDeferred is due (at least 1 ms) */
static long
SettleTimeout(long timeout)
{
	long		ms = SettleWaitMs();

	return ms < 0 ? timeout : Min(timeout, Max(ms, 1));
}

/*
 * Records the outcomes in the outbox, batch by batch, unless another
 * process is its consumer: the recorder, or the worker while none runs.
 */
static void
ConsumeOutbox(void)
{
	if (!LavaOutboxBeginConsume())
		return;
	while (!InBackoff())
	{
		LavaOutcome *items;
		uint64	   *ends;
		Oid			ext;
		int			n;
		int			done;
		StepResult	r;

		MemoryContextSwitchTo(ConsumeContext);
		n = LavaOutboxPeek(BATCH_MAX, BATCH_MAX_BYTES, &items, &ext, &ends);
		MemoryContextSwitchTo(LoopContext);
		if (n == 0)
			break;
		/* (what is not done stays in the outbox, whose tail moves at commits) */
		r = RecordBatch(items, n, ext, ends, &done);
		if (r == STEP_NO_EXTENSION)
			LavaOutboxAdvance(ends[n - 1]); /* their requests went with it */
		MemoryContextReset(ConsumeContext);
		if (r != STEP_DONE)
			break;
		if (SettleWaitMs() == 0)
		{
			/* a busy outbox must not keep SettleDeferred off; back at once */
			SetLatch(MyLatch);
			break;
		}
	}
	LavaOutboxEndConsume();
}

/*
 * Makes the settlements that recordings deferred because another
 * transaction held a key's row (lava._settle_deferred), SETTLE_RETRY_MS
 * after a note of them was seen and every SETTLE_RETRY_MS while any remain.
 * The notes are cleared only by a look that found none left, so a process
 * that dies during its look leaves them for the next.  As the outbox's
 * consumer: one process settles at a time.
 */
static void
SettleDeferred(void)
{
	SettleWork	w;
	StepResult	r;
	uint32		seen;

	if (SettleWaitMs() != 0 || InBackoff())
		return;
	/* (the next look is due SETTLE_RETRY_MS from now, whatever happens) */
	DeferredSeenAt = GetCurrentTimestamp();
	if (!LavaOutboxBeginConsume())
		return;
	/* (read as the consumer, the only process that clears the notes) */
	seen = LavaStateDeferredNotes();
	memset(&w, 0, sizeof(w));
	r = RunStep(IsRecorder ? "lava recorder: settling deferred settlements" :
				"lava worker: settling deferred settlements", SettleStep, &w);
	if (r == STEP_NO_EXTENSION || (r == STEP_DONE && w.remaining == 0))
		LavaStateClearDeferred(seen);
	LavaOutboxEndConsume();
}

/*
 * Starts the recorder (a dynamic background worker that lives no longer
 * than this worker) when lava.recorder is on and the start-up recovery is
 * done, starts it again a second after it stopped, and stops it when
 * lava.recorder is turned off.
 */
static void
ManageRecorder(void)
{
	BackgroundWorker bgw;
	MemoryContext old;
	pid_t		pid;

	if (Recorder != NULL)
	{
		BgwHandleStatus st = GetBackgroundWorkerPid(Recorder, &pid);

		if (st == BGWH_STOPPED || st == BGWH_POSTMASTER_DIED)
		{
			pfree(Recorder);
			Recorder = NULL;
			RecorderRetryAt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RECORDER_RETRY_MS);
		}
		else if (!lava_recorder)
			TerminateBackgroundWorker(Recorder);
		return;
	}
	if (!lava_recorder || NeedRecover || !ExtensionPresent || GetCurrentTimestamp() < RecorderRetryAt)
		return;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "lava");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "LavaRecorderMain");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "lava recorder");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "lava recorder");
	bgw.bgw_main_arg = Int32GetDatum(MyProcPid);
	memcpy(bgw.bgw_extra, &MyDatabaseId, sizeof(Oid));
	bgw.bgw_notify_pid = MyProcPid;
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (!RegisterDynamicBackgroundWorker(&bgw, &Recorder))
	{
		Recorder = NULL;
		RecorderRetryAt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RECORDER_NO_SLOT_MS);
		/* said once, not at every retry */
		if (!RecorderSlotMissing)
			ereport(LOG,
					(errmsg("lava worker could not start its recorder and records results itself"),
					 errhint("Raise max_worker_processes: lava needs two background worker slots.")));
		RecorderSlotMissing = true;
	}
	else
		RecorderSlotMissing = false;
	MemoryContextSwitchTo(old);
}

/*
 * Settles what a previous worker left 'running'; nothing is in flight yet.
 * Outcomes still in the outbox are recorded first: their requests are
 * among those rows.
 */
static void
Recover(void)
{
	int64		n = 0;

	if (!LavaOutboxEmpty())
	{
		NextClaimAt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), OUTBOX_WAIT_MS);
		ClaimWanted = false;
		return;
	}

	if (RunStep("lava worker: recovering", RecoverStep, &n) != STEP_DONE)
		return;
	NeedRecover = false;
	if (n > 0)
	{
		ereport(LOG,
				(errmsg("lava worker requeued or failed " INT64_FORMAT " requests left running by a previous worker", n)));
		LavaStateBumpGeneration();
	}
}

/* Hands one claimed request to curl; a refusal becomes an outcome. */
static void
Submit(Claimed *c)
{
	LavaHttpRequest req;
	char		err[256];
	int			i;

	memset(&req, 0, sizeof(req));
	req.id = c->id;
	req.method = c->method;
	req.url = c->url;
	req.headers = (const char *const *) c->headers;
	req.nheaders = c->nheaders;
	req.body = c->body;
	req.body_len = c->body_len;
	req.timeout_ms = c->timeout_ms;
	if (LavaHttpSubmit(Http, &req, err, sizeof(err)) != 0)
	{
		char		msg[sizeof(err) + 64];

		snprintf(msg, sizeof(msg), "could not start the upstream call: %s", err);
		AddOutcome(c->id, 0, NULL, 0, msg, -1);
	}
	else
		LavaKeyLoadAdd(c->id, &c->key);
	/* curl has its own copy now; these hold API keys */
	for (i = 0; i < c->nheaders; i++)
		explicit_bzero(c->headers[i], strlen(c->headers[i]));
}

/*
 * Claims as many requests as there is room for and submits them.  Then
 * ClaimWanted says whether more may be waiting (_claim gave all it was
 * asked), and NextClaimAt when to look again: when the next queued request
 * is due, or after IDLE_WAIT_MS.
 */
static void
ClaimAndSubmit(void)
{
	ClaimWork	w;
	double		wait_ms = IDLE_WAIT_MS;
	int			i;

	memset(&w, 0, sizeof(w));
	w.want = Min(lava_max_concurrency - LavaHttpInFlight(Http), CLAIM_MAX);
	if (w.want <= 0)
		return;					/* a finished call makes room */
	if (RecordingBehind())
		return;					/* recording makes room */
	if (RunStep("lava worker: claiming requests", ClaimStep, &w) != STEP_DONE)
		return;

	if (w.next_due >= 0)
		wait_ms = Min(wait_ms, Max(ceil(w.next_due * 1000.0), MIN_DUE_WAIT_MS));
	NextClaimAt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (long) wait_ms);
	ClaimWanted = w.nrows == w.want;
	if (w.nrows > 0)
		LavaStateAddCounts(w.nrows, 0, 0);
	for (i = 0; i < w.nrows; i++)
		Submit(&w.rows[i]);
	/*
	 * A key that reached its cap may have had rows held back, and with them
	 * other keys' due rows: look again.
	 */
	for (i = 0; i < w.nrows && !ClaimWanted; i++)
		if (LavaKeyLoadAtCap(&w.rows[i].key))
			ClaimWanted = true;
}

/* Purges old finished requests. */
static void
Purge(void)
{
	int64		n = 0;

	LastPurge = GetCurrentTimestamp();
	if (RunStep("lava worker: purging", PurgeStep, &n) == STEP_DONE && n > 0)
		ereport(DEBUG1,
				(errmsg_internal("lava worker purged " INT64_FORMAT " old requests", n)));
}

/* True while transactions pause after an error. */
static bool
InBackoff(void)
{
	return BackoffUntil != 0 && GetCurrentTimestamp() < BackoffUntil;
}

/*
 * True when pg_database has the database.  Without a database only shared
 * catalogs can be read, and only by heap scan (as the autovacuum launcher
 * does): an index scan would read pg_class.
 */
static bool
DatabaseExists(const char *dbname)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		found = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tup))->datname), dbname) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/*
 * The previous worker could not connect to lava.database, which is probably
 * missing: connect to no database, look for it every few seconds, and exit
 * (to be restarted, connected) once it exists.  Never returns.
 */
static void
WaitForDatabase(void)
{
	char		msg[LAVA_LAST_ERROR_LEN];

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("lava worker");
	snprintf(msg, sizeof(msg), "could not connect to database \"%s\"", lava_database);
	LavaStateSetLastError(msg);
	ereport(LOG,
			(errmsg("lava worker is waiting for database \"%s\" to exist", lava_database)));
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		/* (no HTTP client yet: StartHttp gives it the settings read here) */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (DatabaseExists(lava_database))
		{
			LavaStateEndConnect();
			ereport(LOG,
					(errmsg("lava worker found database \"%s\" and restarts to connect to it",
							lava_database)));
			proc_exit(1);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 DATABASE_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Whether the finished calls should be recorded now.  Under load they are
 * gathered into larger transactions (half of lava.max_concurrency, or
 * LINGER_MS after the first), since each transaction has a fixed cost; the
 * last call in flight, or a lone one, is recorded at once.
 */
static bool
OutcomesReady(void)
{
	if (NumOutcomes == 0)
		return false;
	if (LavaHttpInFlight(Http) == 0 || NumOutcomes >= Max(1, lava_max_concurrency / 2))
		return true;
	return TimestampDifferenceExceeds(FirstOutcomeAt, GetCurrentTimestamp(), LINGER_MS);
}

/* How long the loop may sleep: until the first thing that will be due. */
static long
NextTimeout(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = ExtensionPresent ? IDLE_WAIT_MS : NO_EXTENSION_WAIT_MS;
	long		http_ms = LavaHttpTimeoutMs(Http);

	if (http_ms >= 0)
		timeout = Min(timeout, http_ms);
	if (BackoffUntil > now)
		return Min(timeout, Max(1, TimestampDifferenceMilliseconds(now, BackoffUntil)));
	if (NumOutcomes > 0)
	{
		/* (with a recorder, or while it finishes a batch, they wait for room) */
		if (OutcomesReady() && !RecorderReady() && LavaOutboxMayConsume())
			return 0;
		timeout = Min(timeout, LINGER_MS);
	}
	if (RecordingBehind())
		return Min(timeout, LINGER_MS);
	if (WorkerSettles())
		timeout = SettleTimeout(timeout);
	if (LavaHttpInFlight(Http) < lava_max_concurrency)
	{
		if (ClaimWanted || NextClaimAt <= now)
			return 0;
		timeout = Min(timeout, TimestampDifferenceMilliseconds(now, NextClaimAt));
	}
	return timeout;
}

/* Sleeps up to timeout ms for the latch, a curl socket or postmaster death. */
static void
WaitForWork(long timeout)
{
	WaitEvent	events[3];
	int			n;
	int			i;

	n = WaitEventSetWait(WaitSet, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
	for (i = 0; i < n; i++)
	{
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			ClaimWanted = true; /* an enqueue may have committed */
		}
	}
}

/*
 * Stops the worker after SIGTERM (a server shutdown, pg_terminate_backend):
 * it claims nothing more and, for up to lava.stop_timeout, waits for its
 * calls in flight and records every answer, the outbox's included, so that
 * a restart sends none of those requests again.  Lock waits end at the
 * deadline too.  Answers still unrecorded then stay in the outbox for the
 * next worker (a server stop loses them), and calls still in flight are
 * dropped: the next worker's recovery sends them again.  Never returns.
 */
static void
StopWorker(void)
{
	int			in_flight = LavaHttpInFlight(Http);

	StopDeadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), lava_stop_timeout_ms);

	/* it exits on SIGTERM, leaving the outbox to this process */
	if (Recorder != NULL)
		TerminateBackgroundWorker(Recorder);
	if (lava_stop_timeout_ms > 0 && in_flight > 0)
		ereport(LOG,
				(errmsg("lava worker is stopping and waits up to %d ms for %d calls in flight",
						lava_stop_timeout_ms, in_flight)));

	for (;;)
	{
		long		remaining;
		long		timeout;
		bool		unrecorded;

		MemoryContextReset(LoopContext);
		MemoryContextSwitchTo(LoopContext);
		LavaHttpDrive(Http);
		TakeResults();
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), StopDeadline);
		if (remaining <= 0)
			break;

		unrecorded = NumOutcomes > 0 || !LavaOutboxEmpty();
		if (unrecorded && LavaOutboxMayConsume())
		{
			/* (RunStep ends their waits at the deadline) */
			BackoffUntil = 0;
			if (NumOutcomes > 0)
				RecordOutcomes();
			BackoffUntil = 0;
			ConsumeOutbox();
			unrecorded = NumOutcomes > 0 || !LavaOutboxEmpty();
		}
		if (!unrecorded && LavaHttpInFlight(Http) == 0)
			break;

		/* wait for an answer, or for the recorder to let the outbox go */
		timeout = LavaHttpTimeoutMs(Http);
		if (timeout < 0 || timeout > remaining)
			timeout = remaining;
		if (unrecorded)
			timeout = Min(timeout, STOP_RETRY_MS);
		WaitForWork(timeout);
	}

	/* what could not be recorded waits in the outbox for the next worker */
	if (NumOutcomes > 0)
		HandOff();
	in_flight = LavaHttpInFlight(Http);
	if (NumOutcomes > 0)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("lava worker stopped with %d answers it could neither record nor hand over", NumOutcomes),
				 errdetail("Their requests are sent again when the worker starts.")));
	if (!LavaOutboxEmpty() && lava_stop_timeout_ms == 0)
		ereport(LOG,
				(errmsg("lava worker stopped at once (lava.stop_timeout is 0) and left answers unrecorded"),
				 errdetail("The next worker records them, unless the server stops first: their requests are then sent again.")));
	else if (!LavaOutboxEmpty())
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("lava worker stopped before it could record every answer"),
				 errdetail("The next worker records them, unless the server stops first: their requests are then sent again."),
				 errhint("Look for a transaction that holds spend key rows locked, or raise lava.stop_timeout.")));
	if (in_flight > 0)
		ereport(LOG,
				(errmsg("lava worker stopped with %d calls in flight", in_flight),
				 errdetail("The next worker sends their requests again.")));
	else
		ereport(LOG,
				(errmsg("lava worker stopped")));
	proc_exit(1);
}

/* The worker's entry point (bgw_function_name). */
void
LavaWorkerMain(Datum main_arg)
{
	/* (until it is connected, SIGTERM ends it at once, waits included) */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGINT, HandleCancel);
	BackgroundWorkerUnblockSignals();

	if (LavaStateBeginConnect())
		WaitForDatabase();
	BackgroundWorkerInitializeConnection(lava_database, NULL, 0);
	pqsignal(SIGTERM, HandleStopRequest);
	PinSessionSettings();
	LavaStateWorkerStarted();
	/* (deferred settlements may have come with a restore: look once) */
	LavaStateNoteDeferred();
	before_shmem_exit(WorkerExit, (Datum) 0);
	pgstat_report_appname("lava worker");

	CreateContexts();
	StartHttp();
	LastPurge = GetCurrentTimestamp();
	ereport(LOG,
			(errmsg("lava worker started on database \"%s\"", lava_database)));

	for (;;)
	{
		int64		in_flight;

		if (BeginLoopTurn())
			ApplyHttpSettings();
		if (StopRequested)
			StopWorker();
		if (LavaStateLeaveRequested(MyProcPid))
		{
			ereport(LOG,
					(errmsg("lava worker is leaving database \"%s\" for a command that needs it alone",
							lava_database)));
			proc_exit(1);
		}

		LavaHttpDrive(Http);
		TakeResults();

		if (NumOutcomes > 0 && RecorderReady())
			HandOff();
		if (OutcomesReady() && !InBackoff())
			RecordOutcomes();
		if (!RecorderReady() && !InBackoff() && !LavaOutboxEmpty())
			ConsumeOutbox();	/* what a recorder that stopped left */
		if (WorkerSettles())
			SettleDeferred();
		if ((ClaimWanted || GetCurrentTimestamp() >= NextClaimAt) && !InBackoff())
		{
			if (NeedRecover)
				Recover();
			if (!NeedRecover && !InBackoff())
				ClaimAndSubmit();
		}
		if (ExtensionPresent && !InBackoff() &&
			TimestampDifferenceExceeds(LastPurge, GetCurrentTimestamp(), PURGE_INTERVAL_MS))
			Purge();
		ManageRecorder();

		in_flight = LavaHttpInFlight(Http);
		if (in_flight != ReportedInFlight)
		{
			LavaStateSetInFlight(in_flight);
			ReportedInFlight = in_flight;
		}

		WaitForWork(NextTimeout());
	}
}

/*
 * The recorder's entry point (bgw_function_name): started by the worker
 * whose pid is main_arg, connected to its database (in bgw_extra), it
 * records the outcomes the worker puts in the outbox, on the other core.
 * It exits when that worker is gone or asked to leave, or when
 * lava.recorder is turned off; whatever it has not recorded stays in the
 * outbox for the worker.
 */
void
LavaRecorderMain(Datum main_arg)
{
	pid_t		worker_pid = DatumGetInt32(main_arg);
	Oid			dboid;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGINT, HandleCancel);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	PinSessionSettings();
	IsRecorder = true;
	before_shmem_exit(RecorderExit, (Datum) 0);
	CreateContexts();
	LavaOutboxRecorderStarted();
	/* (named once the worker can hand it outcomes) */
	pgstat_report_appname("lava recorder");

	for (;;)
	{
		long		timeout = IDLE_WAIT_MS;
		TimestampTz now;

		(void) BeginLoopTurn();
		if (!lava_recorder || LavaStateWorkerPid() != worker_pid ||
			LavaStateLeaveRequested(worker_pid))
			proc_exit(0);

		ResetLatch(MyLatch);
		if (!InBackoff())
			ConsumeOutbox();
		SettleDeferred();

		now = GetCurrentTimestamp();
		if (BackoffUntil > now)
			timeout = Max(1, TimestampDifferenceMilliseconds(now, BackoffUntil));
		else
			timeout = SettleTimeout(timeout);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
	}
}
