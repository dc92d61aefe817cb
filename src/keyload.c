/*-------------------------------------------------------------------------
 *
 * keyload.c
 *	  The worker's count of upstream calls in flight per spend key, and the
 *	  per-key cap (lava.max_key_concurrency) that keeps one key from holding
 *	  every slot.
 *
 * The fair shares of lava._claim divide the slots that are free at claim
 * time; they cannot help a key that arrives when one key's backlog already
 * holds all lava.max_concurrency slots: it would wait a whole upstream
 * latency for the first slot to free.  So one key may hold at most
 * lava.max_key_concurrency slots (by default all but a sixteenth), and the
 * rest stays free for other keys.  The worker tells lava._claim which keys
 * are near their cap and how much room each has left.
 *
 * The counts live in process-local hash tables: they describe this
 * worker's curl handles, which die with the process.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "lava.h"

/* one call in flight: its request and the key it spends through */
typedef struct CallEntry
{
	int64		id;				/* hash key */
	pg_uuid_t	key;
} CallEntry;

/* one key with calls in flight */
typedef struct KeyEntry
{
	pg_uuid_t	key;			/* hash key */
	int			calls;
} KeyEntry;

static HTAB *Calls = NULL;
static HTAB *Keys = NULL;

/* Creates the (empty) tables, or empties them. */
void
LavaKeyLoadReset(void)
{
	HASHCTL		ctl;

	if (Calls != NULL)
		hash_destroy(Calls);
	if (Keys != NULL)
		hash_destroy(Keys);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(CallEntry);
	ctl.hcxt = TopMemoryContext;
	Calls = hash_create("lava calls in flight", 1024, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(KeyEntry);
	ctl.hcxt = TopMemoryContext;
	Keys = hash_create("lava keys in flight", 256, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The most calls one key may have in flight under the current settings. */
int
LavaKeyCap(void)
{
	int			cap = lava_max_key_concurrency;

	if (cap <= 0)
		cap = lava_max_concurrency - lava_max_concurrency / 16;
	return Max(1, Min(cap, lava_max_concurrency));
}

/* Counts a call submitted for request id through key. */
void
LavaKeyLoadAdd(int64 id, const pg_uuid_t *key)
{
	CallEntry  *c;
	KeyEntry   *k;
	bool		found;

	if (Calls == NULL)
		LavaKeyLoadReset();
	c = hash_search(Calls, &id, HASH_ENTER, &found);
	if (found)
		return;					/* counted already */
	c->key = *key;
	k = hash_search(Keys, key, HASH_ENTER, &found);
	k->calls = found ? k->calls + 1 : 1;
}

/*
 * Uncounts the finished call of request id.  True when its key was at its
 * cap: the key may have queued work that a claim can take now.
 */
bool
LavaKeyLoadDone(int64 id)
{
	CallEntry  *c;
	KeyEntry   *k;
	bool		was_capped = false;

	if (Calls == NULL)
		return false;
	c = hash_search(Calls, &id, HASH_FIND, NULL);
	if (c == NULL)
		return false;
	k = hash_search(Keys, &c->key, HASH_FIND, NULL);
	if (k != NULL)
	{
		was_capped = k->calls >= LavaKeyCap();
		if (--k->calls <= 0)
			hash_search(Keys, &c->key, HASH_REMOVE, NULL);
	}
	hash_search(Calls, &id, HASH_REMOVE, NULL);
	return was_capped;
}

/* True when key has as many calls in flight as its cap allows. */
bool
LavaKeyLoadAtCap(const pg_uuid_t *key)
{
	KeyEntry   *k;

	if (Keys == NULL)
		return false;
	k = hash_search(Keys, key, HASH_FIND, NULL);
	return k != NULL && k->calls >= LavaKeyCap();
}

/*
 * The keys that could pass their cap in a claim of up to want requests,
 * with the room each has left (0 when at the cap): palloc'd arrays in the
 * current memory context, their length returned.
 */
int
LavaKeyLoadNearCap(int want, pg_uuid_t **keys, int **rooms)
{
	HASH_SEQ_STATUS seq;
	KeyEntry   *k;
	int			cap = LavaKeyCap();
	int			n = 0;
	int			max;

	*keys = NULL;
	*rooms = NULL;
	if (Keys == NULL || hash_get_num_entries(Keys) == 0)
		return 0;
	max = (int) hash_get_num_entries(Keys);
	*keys = palloc(sizeof(pg_uuid_t) * max);
	*rooms = palloc(sizeof(int) * max);
	hash_seq_init(&seq, Keys);
	while ((k = hash_seq_search(&seq)) != NULL)
	{
		if (k->calls + want > cap && n < max)
		{
			(*keys)[n] = k->key;
			(*rooms)[n] = Max(0, cap - k->calls);
			n++;
		}
	}
	return n;
}
