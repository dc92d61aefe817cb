/*-------------------------------------------------------------------------
 *
 * lava.h
 *	  Declarations shared by lava's C files: settings, shared memory and the
 *	  entry points each file offers to the others.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LAVA_H
#define LAVA_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "utils/uuid.h"

/* settings (lava.c) */
extern char *lava_database;
extern int	lava_max_concurrency;
extern int	lava_request_timeout_ms;
extern int	lava_max_attempts;
extern int	lava_request_ttl_s;
extern int	lava_max_rate_limited_keys;
extern int	lava_max_key_concurrency;
extern bool lava_recorder;
extern int	lava_stop_timeout_ms;
extern char *lava_ca_file;

/* rate limiting: token buckets in shared memory (ratelimit.c) */
extern Size LavaRateLimitShmemSize(void);
extern void LavaRateLimitShmemInit(void);
extern double LavaTakeToken(const pg_uuid_t *key, int rpm, int burst,
							TimestampTz now);

/* the worker's shared state, its wake-ups and DROP DATABASE (state.c) */
#define LAVA_LAST_ERROR_LEN 256
extern Size LavaStateShmemSize(void);
extern void LavaStateShmemInit(void);
extern void LavaInstallUtilityHook(void);
extern bool LavaStateBeginConnect(void);
extern void LavaStateEndConnect(void);
extern void LavaStateWorkerStarted(void);
extern void LavaStateWorkerStopped(void);
extern void LavaStateSetInFlight(int64 in_flight);
extern void LavaStateAddCounts(int64 claimed, int64 completed, int64 failed);
extern void LavaStateSetLastError(const char *message);
extern bool LavaStateLeaveRequested(pid_t worker_pid);
extern void LavaStateBumpGeneration(void);
extern void LavaStateNoteDeferred(void);
extern uint32 LavaStateDeferredNotes(void);
extern void LavaStateClearDeferred(uint32 seen);
extern pid_t LavaStateWorkerPid(void);
extern void LavaStateWakeWorker(void);
extern void LavaWakeWorkerAtCommit(void);
extern void LavaWakeAwaitersAtCommit(void);

/* the session's default key (session.c) */
extern text *LavaSessionKey(void);

/* the worker's calls in flight per key and the per-key cap (keyload.c) */
extern void LavaKeyLoadReset(void);
extern int	LavaKeyCap(void);
extern void LavaKeyLoadAdd(int64 id, const pg_uuid_t *key);
extern bool LavaKeyLoadDone(int64 id);
extern bool LavaKeyLoadAtCap(const pg_uuid_t *key);
extern int	LavaKeyLoadNearCap(int want, pg_uuid_t **keys, int **rooms);

/* saved SPI plans, array arguments and SPI checks, for worker.c and record.c (plans.c) */
extern SPIPlanPtr LavaSavedPlan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);
extern void LavaCheckSpi(int ret, int expected, const char *what);
extern Datum LavaMakeArray(Datum *values, bool *nulls, int n, Oid elemtype);

/* the fast paths of lava.prompt and of recording: direct access to lava's tables (direct.c) */
typedef struct LavaRoute
{
	Datum		provider;		/* text, as each Datum here */
	Datum		shape;
	Datum		model;
	Datum		in_price;		/* numeric */
	Datum		out_price;		/* numeric */
	int32		max_output;
	bool		in_price_null;
	bool		out_price_null;
	bool		max_output_null;
} LavaRoute;

typedef struct LavaQueueRow
{
	Datum		spend_key_id;	/* uuid */
	Datum		role_name;		/* text, as the others unless said */
	Datum		provider;
	Datum		model;
	Datum		endpoint;
	Datum		body;			/* jsonb */
	Datum		request_shape;
	Datum		input_price;	/* numeric */
	Datum		output_price;	/* numeric */
	Datum		reservation;	/* numeric */
	TimestampTz admitted_at;
	bool		input_price_null;
	bool		output_price_null;
} LavaQueueRow;

extern bool LavaDirectUsable(void);
extern bool LavaTextIs(Datum d, const char *s);
extern int	LavaCycleIndex(Datum cycle, bool isnull);
extern int	LavaDirectRoute(text *model, LavaRoute *route);
extern bool LavaDirectAdmit(text *key, const LavaRoute *route, Datum reservation,
							bool reservation_null, TimestampTz now,
							Datum *key_id, TimestampTz *admitted_at);
extern int64 LavaDirectQueue(const LavaQueueRow *row);

/* a request recorded directly, as lava._settle_many takes it */
typedef struct LavaSettleRow
{
	int64		request_id;
	Datum		spend_key_id;	/* uuid */
	TimestampTz admitted_at;
	Datum		reservation;	/* numeric */
	Datum		charge;			/* numeric */
	int64		input_tokens;
	int64		output_tokens;
} LavaSettleRow;

/* the outcome of one upstream call, as the worker records it */
typedef struct LavaOutcome
{
	int64		id;
	int32		http_status;	/* 0 when no answer arrived */
	text	   *body;			/* NULL when none */
	char	   *error;			/* NULL when none */
	double		retry_after;	/* seconds, < 0 when none */
} LavaOutcome;

extern int	LavaDirectRecord(const LavaOutcome *items, int n, TimestampTz now,
							 bool *done, LavaSettleRow *settle);

/* recording a batch of outcomes: directly, else through lava._complete (record.c) */
extern void LavaRecordOutcomes(const LavaOutcome *items, int n, int64 *completed,
							   int64 *failed, int64 *requeued);

/* the outbox from the worker to the recorder (outbox.c) */
extern Size LavaOutboxShmemSize(void);
extern void LavaOutboxShmemInit(void);
extern bool LavaOutboxTooBig(const LavaOutcome *o);
extern bool LavaOutboxPush(const LavaOutcome *o, Oid ext);
extern bool LavaOutboxBacklogged(void);
extern bool LavaOutboxEmpty(void);
extern bool LavaOutboxMayConsume(void);
extern bool LavaOutboxBeginConsume(void);
extern void LavaOutboxEndConsume(void);
extern int	LavaOutboxPeek(int max_n, Size max_bytes, LavaOutcome **items, Oid *ext,
						   uint64 **ends);
extern void LavaOutboxAdvance(uint64 end);
extern void LavaOutboxRecorderStarted(void);
extern pid_t LavaOutboxRecorderPid(void);
extern void LavaOutboxWakeRecorder(void);
extern void LavaOutboxProcessExit(void);

/* the background worker and its recorder (worker.c) */
extern PGDLLEXPORT void LavaWorkerMain(Datum main_arg);
extern PGDLLEXPORT void LavaRecorderMain(Datum main_arg);

/* the lock tranche that lava requests at start-up */
#define LAVA_LWLOCK_TRANCHE "lava"
#define LAVA_NUM_LWLOCKS 2
#define LAVA_LOCK_BUCKETS 0
#define LAVA_LOCK_STATE 1

#endif							/* LAVA_H */
