/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  Token buckets for spend keys' rate_limit, kept in shared memory so that
 *	  every process (the worker, backends, a later gateway) takes tokens from
 *	  the same bucket atomically.  A bucket holds `burst` tokens (or `rpm`
 *	  when burst is null) and refills at rpm tokens per 60 seconds.  Buckets
 *	  start full and are not durable: after a restart every key starts with
 *	  a full bucket.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "lava.h"

typedef struct LavaBucket
{
	pg_uuid_t	key;			/* hash key: spend_key_id */
	double		tokens;			/* tokens available at `updated` */
	TimestampTz updated;
	int			rpm;
	int			capacity;
} LavaBucket;

static HTAB *LavaBuckets = NULL;

PG_FUNCTION_INFO_V1(lava_take_token);

/* Shared memory needed for the bucket table. */
Size
LavaRateLimitShmemSize(void)
{
	return hash_estimate_size(lava_max_rate_limited_keys, sizeof(LavaBucket));
}

/* Creates or attaches the bucket table (called from the shmem startup hook). */
void
LavaRateLimitShmemInit(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(pg_uuid_t);
	info.entrysize = sizeof(LavaBucket);
	LavaBuckets = ShmemInitHash("lava rate-limit buckets",
								lava_max_rate_limited_keys,
								lava_max_rate_limited_keys,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/* Refills a bucket up to `now`. */
static void
Refill(LavaBucket *b, TimestampTz now)
{
	if (now > b->updated)
	{
		double		elapsed = (double) (now - b->updated) / USECS_PER_SEC;

		b->tokens += elapsed * b->rpm / 60.0;
		if (b->tokens > b->capacity)
			b->tokens = b->capacity;
		b->updated = now;
	}
}

/* Drops one bucket that is full again (equivalent to having none); false if none is. */
static bool
EvictFullBucket(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	LavaBucket *b;

	hash_seq_init(&seq, LavaBuckets);
	while ((b = hash_seq_search(&seq)) != NULL)
	{
		Refill(b, now);
		if (b->tokens >= b->capacity)
		{
			pg_uuid_t	victim = b->key;

			hash_seq_term(&seq);
			hash_search(LavaBuckets, &victim, HASH_REMOVE, NULL);
			return true;
		}
	}
	return false;
}

/*
 * Takes one token from the key's bucket.  Returns 0 when a token was taken,
 * otherwise the number of seconds until one will be available (nothing is
 * taken then).
 */
double
LavaTakeToken(const pg_uuid_t *key, int rpm, int burst, TimestampTz now)
{
	LWLock	   *lock = &(GetNamedLWLockTranche(LAVA_LWLOCK_TRANCHE))[LAVA_LOCK_BUCKETS].lock;
	LavaBucket *b;
	bool		found;
	int			capacity = burst > 0 ? burst : rpm;
	double		wait;

	if (rpm <= 0)
		return 0;
	if (LavaBuckets == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lava shared memory is not initialized"),
				 errhint("Add lava to shared_preload_libraries and restart the server.")));

	LWLockAcquire(lock, LW_EXCLUSIVE);
	b = hash_search(LavaBuckets, key, HASH_ENTER_NULL, &found);
	if (b == NULL && EvictFullBucket(now))
		b = hash_search(LavaBuckets, key, HASH_ENTER_NULL, &found);
	if (b == NULL)
	{
		LWLockRelease(lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many rate-limited spend keys are active"),
				 errdetail("All %d token buckets in shared memory are in use.",
						   lava_max_rate_limited_keys),
				 errhint("Raise lava.max_rate_limited_keys and restart the server.")));
	}
	if (!found)
	{
		b->tokens = capacity;
		b->updated = now;
	}
	else
		Refill(b, now);
	/* a changed limit applies at once */
	b->rpm = rpm;
	b->capacity = capacity;
	if (b->tokens > capacity)
		b->tokens = capacity;

	if (b->tokens >= 1.0)
	{
		b->tokens -= 1.0;
		wait = 0;
	}
	else
		wait = (1.0 - b->tokens) * 60.0 / rpm;
	LWLockRelease(lock);
	return wait;
}

/*
 * lava._take_token(spend_key_id uuid, rpm int, burst int) returns float8:
 * SQL access to LavaTakeToken; 0 when a token was taken, else seconds to wait.
 */
Datum
lava_take_token(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *key = PG_GETARG_UUID_P(0);
	int			rpm = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	int			burst = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2);

	PG_RETURN_FLOAT8(LavaTakeToken(key, rpm, burst, GetCurrentTimestamp()));
}
