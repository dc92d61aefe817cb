/*-------------------------------------------------------------------------
 *
 * state.c
 *	  The worker's state in shared memory and the plumbing around it: who
 *	  the worker is (pid and pgprocno, never a pointer), its counters and
 *	  last error for lava.worker_status, the generation counter and
 *	  condition variable that lava.await sleeps on, waking the worker when
 *	  an enqueueing transaction commits, and asking the worker to leave its
 *	  database before DROP DATABASE (or another command that needs the
 *	  database to itself) waits for it.
 *
 * Everything but the generation is protected by the LAVA_LOCK_STATE lock of
 * lava's named LWLock tranche; the generation is an atomic so that waiters
 * read it without a lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "lava.h"

typedef struct LavaWorkerState
{
	pid_t		pid;			/* the connected worker, 0 when none */
	int			procno;			/* its pgprocno, -1 when none */
	Oid			dboid;			/* the database it serves */
	pid_t		leave_pid;		/* a worker asked to leave its database */
	pid_t		connecting_pid; /* a worker that has not connected yet */
	TimestampTz started_at;		/* when the current worker connected, 0 if
								 * never */
	int64		in_flight;
	int64		claimed;
	int64		completed;
	int64		failed;
	char		last_error[LAVA_LAST_ERROR_LEN];
	pg_atomic_uint32 deferred;	/* notes that lava.deferred_settlements may
								 * have rows; 0: none since the last look */
	pg_atomic_uint64 generation;	/* bumped when requests became terminal */
	ConditionVariable generation_cv;	/* broadcast at each bump */
} LavaWorkerState;

static LavaWorkerState *State = NULL;
static LWLock *StateLock = NULL;

static ProcessUtility_hook_type prev_process_utility = NULL;

/* backend-local: set by lava._wake_worker() / lava._wake_awaiters() */
static bool WakeWorkerAtCommit = false;
static bool WakeAwaitersAtCommit = false;
static bool NoteDeferredAtCommit = false;
static bool XactCallbackRegistered = false;

PG_FUNCTION_INFO_V1(lava_wake_worker);
PG_FUNCTION_INFO_V1(lava_wake_awaiters);
PG_FUNCTION_INFO_V1(lava_worker_generation);
PG_FUNCTION_INFO_V1(lava_wait_worker);
PG_FUNCTION_INFO_V1(lava_worker_state);
PG_FUNCTION_INFO_V1(lava_note_deferred);
PG_FUNCTION_INFO_V1(lava_deferred_noted);
PG_FUNCTION_INFO_V1(lava_deferred_here);

/* Shared memory needed for the worker state. */
Size
LavaStateShmemSize(void)
{
	return MAXALIGN(sizeof(LavaWorkerState));
}

/* Creates or attaches the worker state (called from the shmem startup hook). */
void
LavaStateShmemInit(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	State = ShmemInitStruct("lava worker state", sizeof(LavaWorkerState), &found);
	if (!found)
	{
		memset(State, 0, sizeof(LavaWorkerState));
		State->procno = -1;
		/* (rows may have stayed from before the server started: look once) */
		pg_atomic_init_u32(&State->deferred, 1);
		pg_atomic_init_u64(&State->generation, 0);
		ConditionVariableInit(&State->generation_cv);
	}
	LWLockRelease(AddinShmemInitLock);
	StateLock = &(GetNamedLWLockTranche(LAVA_LWLOCK_TRANCHE))[LAVA_LOCK_STATE].lock;
}

/* Errors out when shared memory was not set up (lava not preloaded). */
static void
CheckState(void)
{
	if (State == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lava shared memory is not initialized"),
				 errhint("Add lava to shared_preload_libraries and restart the server.")));
}

/*
 * Called by a starting worker before it connects.  Returns true when the
 * previous worker died while connecting (its database is probably missing);
 * the caller then waits for the database instead of failing again.
 */
bool
LavaStateBeginConnect(void)
{
	bool		failed_before;

	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	failed_before = State->connecting_pid != 0 && State->connecting_pid != MyProcPid;
	State->connecting_pid = MyProcPid;
	LWLockRelease(StateLock);
	return failed_before;
}

/* Forgets a connection attempt: the worker connected, or saw its database. */
void
LavaStateEndConnect(void)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	State->connecting_pid = 0;
	LWLockRelease(StateLock);
}

/* Records that this process is the connected worker; counters restart. */
void
LavaStateWorkerStarted(void)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	State->connecting_pid = 0;
	State->leave_pid = 0;
	State->pid = MyProcPid;
	State->procno = MyProc->pgprocno;
	State->dboid = MyDatabaseId;
	State->started_at = GetCurrentTimestamp();
	State->in_flight = 0;
	State->claimed = 0;
	State->completed = 0;
	State->failed = 0;
	LWLockRelease(StateLock);
}

/* Records that the worker is gone (a before_shmem_exit callback calls it). */
void
LavaStateWorkerStopped(void)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	if (State->pid == MyProcPid)
	{
		State->pid = 0;
		State->procno = -1;
		State->in_flight = 0;
	}
	if (State->leave_pid == MyProcPid)
		State->leave_pid = 0;
	LWLockRelease(StateLock);
}

/* Sets the number of upstream calls in flight. */
void
LavaStateSetInFlight(int64 in_flight)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	State->in_flight = in_flight;
	LWLockRelease(StateLock);
}

/* Adds to the claimed / completed / failed counters. */
void
LavaStateAddCounts(int64 claimed, int64 completed, int64 failed)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	State->claimed += claimed;
	State->completed += completed;
	State->failed += failed;
	LWLockRelease(StateLock);
}

/* Records the worker's last error (truncated; never headers or bodies). */
void
LavaStateSetLastError(const char *message)
{
	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	strlcpy(State->last_error, message ? message : "", sizeof(State->last_error));
	LWLockRelease(StateLock);
}

/* True when a backend asked the worker with this pid to leave its database. */
bool
LavaStateLeaveRequested(pid_t worker_pid)
{
	bool		leave;

	LWLockAcquire(StateLock, LW_SHARED);
	leave = State->leave_pid == worker_pid;
	LWLockRelease(StateLock);
	return leave;
}

/* Wakes every lava.await: requests may have become terminal. */
void
LavaStateBumpGeneration(void)
{
	pg_atomic_fetch_add_u64(&State->generation, 1);
	ConditionVariableBroadcast(&State->generation_cv);
}

/* The connected worker's pid, 0 when none. */
pid_t
LavaStateWorkerPid(void)
{
	pid_t		pid;

	LWLockAcquire(StateLock, LW_SHARED);
	pid = State->pid;
	LWLockRelease(StateLock);
	return pid;
}

/* Sets the worker's latch, if a worker runs. */
static void
WakeWorker(void)
{
	int			procno;

	LWLockAcquire(StateLock, LW_SHARED);
	procno = State->procno;
	LWLockRelease(StateLock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Wakes the worker now (the recorder, after it requeued requests). */
void
LavaStateWakeWorker(void)
{
	WakeWorker();
}

/* Acts on the wake-up requests of a transaction once it has committed. */
static void
WakeXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (WakeWorkerAtCommit)
				WakeWorker();
			if (WakeAwaitersAtCommit)
				LavaStateBumpGeneration();
			if (NoteDeferredAtCommit)
				LavaStateNoteDeferred();
			WakeWorkerAtCommit = false;
			WakeAwaitersAtCommit = false;
			NoteDeferredAtCommit = false;
			break;
		case XACT_EVENT_PREPARE:
			/*
			 * (no callback comes at COMMIT PREPARED, but a transaction that
			 * deferred settlements cannot get here: each deferral comes with
			 * a NOTIFY on lava_requests, which PREPARE refuses)
			 */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			WakeWorkerAtCommit = false;
			WakeAwaitersAtCommit = false;
			NoteDeferredAtCommit = false;
			break;
		default:
			break;
	}
}

/* Registers WakeXactCallback once per backend. */
static void
RegisterWakeCallback(void)
{
	CheckState();
	if (!XactCallbackRegistered)
	{
		RegisterXactCallback(WakeXactCallback, NULL);
		XactCallbackRegistered = true;
	}
}

/*
 * lava._wake_worker() returns void: wakes the worker when the calling
 * transaction commits (nothing happens if it aborts), so that it sees the
 * requests this transaction queued.
 */
Datum
lava_wake_worker(PG_FUNCTION_ARGS)
{
	LavaWakeWorkerAtCommit();
	PG_RETURN_VOID();
}

/* Wakes the worker when the current transaction commits (lava._wake_worker). */
void
LavaWakeWorkerAtCommit(void)
{
	/* a queue in another database is not the worker's: no wake-up for it */
	if (State != NULL && OidIsValid(State->dboid) && State->dboid != MyDatabaseId)
		return;
	RegisterWakeCallback();
	WakeWorkerAtCommit = true;
}

/*
 * lava._wake_awaiters() returns void: bumps the generation when the calling
 * transaction commits, so that lava.await sessions re-check at once (for a
 * request that a backend, not the worker, made terminal).
 */
Datum
lava_wake_awaiters(PG_FUNCTION_ARGS)
{
	LavaWakeAwaitersAtCommit();
	PG_RETURN_VOID();
}

/* Wakes lava.await callers when the current transaction commits (lava._wake_awaiters). */
void
LavaWakeAwaitersAtCommit(void)
{
	RegisterWakeCallback();
	WakeAwaitersAtCommit = true;
}

/*
 * lava._note_deferred() returns void: notes, when the calling transaction
 * commits, that it deferred settlements, so that the process that records
 * comes back for them.  At commit, not before: a look that starts after
 * the note then sees the rows, and one that started before cannot clear it
 * (LavaStateClearDeferred), so no deferral is missed, whichever process
 * made it.
 */
Datum
lava_note_deferred(PG_FUNCTION_ARGS)
{
	RegisterWakeCallback();
	NoteDeferredAtCommit = true;
	PG_RETURN_VOID();
}

/*
 * lava._deferred_noted() returns boolean: true when settlements may be
 * deferred (a note is pending, or this transaction will note some), so
 * that a settlement looks for those of the keys it locked only then.
 */
Datum
lava_deferred_noted(PG_FUNCTION_ARGS)
{
	CheckState();
	PG_RETURN_BOOL(NoteDeferredAtCommit || LavaStateDeferredNotes() != 0);
}

/*
 * lava._deferred_here() returns boolean: true when the current transaction
 * has deferred settlements, so that it does not wait for a held key again.
 */
Datum
lava_deferred_here(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(NoteDeferredAtCommit);
}

/* Notes that lava.deferred_settlements may have rows. */
void
LavaStateNoteDeferred(void)
{
	CheckState();
	/* (never wraps to 0: a note stays a note) */
	if (pg_atomic_add_fetch_u32(&State->deferred, 1) == 0)
		pg_atomic_write_u32(&State->deferred, 1);
}

/* The notes of deferred settlements: 0 when none is pending. */
uint32
LavaStateDeferredNotes(void)
{
	return pg_atomic_read_u32(&State->deferred);
}

/*
 * Clears the notes, as read before a look that found no deferred
 * settlement left, unless a note came since.  A process that dies during
 * its look leaves them.
 */
void
LavaStateClearDeferred(uint32 seen)
{
	(void) pg_atomic_compare_exchange_u32(&State->deferred, &seen, 0);
}

/* lava._worker_generation() returns bigint: the current generation. */
Datum
lava_worker_generation(PG_FUNCTION_ARGS)
{
	CheckState();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&State->generation));
}

/*
 * lava._wait_worker(last_seen bigint, timeout_ms integer) returns bigint:
 * sleeps until the generation differs from last_seen or timeout_ms have
 * passed, and returns the generation.  Interruptible.
 */
Datum
lava_wait_worker(PG_FUNCTION_ARGS)
{
	uint64		last_seen;
	int32		timeout_ms;
	TimestampTz start;
	uint64		generation;

	CheckState();
	generation = pg_atomic_read_u64(&State->generation);
	if (PG_ARGISNULL(0))
		PG_RETURN_INT64((int64) generation);
	last_seen = (uint64) PG_GETARG_INT64(0);
	timeout_ms = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	start = GetCurrentTimestamp();

	ConditionVariablePrepareToSleep(&State->generation_cv);
	for (;;)
	{
		long		elapsed;

		CHECK_FOR_INTERRUPTS();
		generation = pg_atomic_read_u64(&State->generation);
		if (generation != last_seen)
			break;
		elapsed = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
		if (elapsed >= timeout_ms)
			break;
		(void) ConditionVariableTimedSleep(&State->generation_cv,
										   timeout_ms - elapsed,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_INT64((int64) generation);
}

/*
 * lava._worker_state(OUT running, OUT pid, OUT in_flight, OUT completed,
 * OUT failed, OUT started_at, OUT last_error, OUT recorder_pid) returns
 * record: a snapshot of the shared worker state for lava.worker_status.
 */
Datum
lava_worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[8];
	bool		nulls[8] = {false};
	LavaWorkerState copy;
	pid_t		recorder = LavaOutboxRecorderPid();

	CheckState();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	tupdesc = BlessTupleDesc(tupdesc);

	LWLockAcquire(StateLock, LW_SHARED);
	memcpy(&copy, State, offsetof(LavaWorkerState, generation));
	LWLockRelease(StateLock);

	values[0] = BoolGetDatum(copy.pid > 0);
	values[1] = Int32GetDatum((int32) copy.pid);
	nulls[1] = copy.pid <= 0;
	values[2] = Int64GetDatum(copy.in_flight);
	values[3] = Int64GetDatum(copy.completed);
	values[4] = Int64GetDatum(copy.failed);
	values[5] = TimestampTzGetDatum(copy.started_at);
	nulls[5] = copy.started_at == 0;
	copy.last_error[sizeof(copy.last_error) - 1] = '\0';
	values[6] = CStringGetTextDatum(copy.last_error);
	nulls[6] = copy.last_error[0] == '\0';
	values[7] = Int32GetDatum((int32) recorder);
	nulls[7] = recorder <= 0;

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * The database a utility statement needs to itself (no other session
 * connected), or NULL: DROP DATABASE, ALTER DATABASE RENAME, ALTER DATABASE
 * SET TABLESPACE and CREATE DATABASE ... TEMPLATE.
 */
static const char *
DatabaseNeededAlone(Node *parsetree, bool in_xact_block)
{
	ListCell   *lc;

	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			return in_xact_block ? NULL : ((DropdbStmt *) parsetree)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) parsetree)->subname;
			return NULL;
		case T_AlterDatabaseStmt:
			if (in_xact_block)
				return NULL;
			foreach(lc, ((AlterDatabaseStmt *) parsetree)->options)
			{
				if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
					return ((AlterDatabaseStmt *) parsetree)->dbname;
			}
			return NULL;
		case T_CreatedbStmt:
			if (in_xact_block)
				return NULL;
			foreach(lc, ((CreatedbStmt *) parsetree)->options)
			{
				DefElem    *opt = (DefElem *) lfirst(lc);

				if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
					return defGetString(opt);
			}
			return NULL;
		default:
			return NULL;
	}
}

/*
 * Asks the worker to leave lava.database when the statement needs that
 * database alone and the caller owns it, so that the command does not wait
 * for (and fail on) the worker's connection.  The worker exits and the
 * postmaster starts it again after bgw_restart_time.
 */
static void
AskWorkerToLeave(Node *parsetree, bool in_xact_block)
{
	const char *dbname;
	Oid			dboid;
	int			procno;

	if (State == NULL || lava_database == NULL)
		return;
	dbname = DatabaseNeededAlone(parsetree, in_xact_block);
	if (dbname == NULL || strcmp(dbname, lava_database) != 0)
		return;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || !pg_database_ownercheck(dboid, GetUserId()))
		return;

	LWLockAcquire(StateLock, LW_EXCLUSIVE);
	procno = State->procno;
	if (State->pid > 0)
		State->leave_pid = State->pid;
	LWLockRelease(StateLock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	/* the recorder leaves with it */
	LavaOutboxWakeRecorder();
}

/* ProcessUtility hook: see AskWorkerToLeave. */
static void
LavaProcessUtility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	AskWorkerToLeave(pstmt->utilityStmt,
					 context != PROCESS_UTILITY_TOPLEVEL || IsTransactionBlock());

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Installs the ProcessUtility hook (from _PG_init), chaining the previous one. */
void
LavaInstallUtilityHook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = LavaProcessUtility;
}
