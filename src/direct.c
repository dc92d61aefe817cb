/*-------------------------------------------------------------------------
 *
 * direct.c
 *	  Direct table access for the two hot paths.  lava.prompt's fast path
 *	  (enqueue.c): the route of a model read through the indexes of
 *	  lava.models and lava.providers, the admission as a lock and update of
 *	  the key's row in lava.spend_key_store, and the queue row inserted into
 *	  lava.request_store.  The worker's recording (record.c): a common
 *	  answer written into its request's row.  No parser, planner or
 *	  executor start per row: the rows are found by index scans under a
 *	  fresh snapshot and written with the primitives logical replication
 *	  applies changes with (ExecSimpleRelationUpdate and
 *	  ExecSimpleRelationInsert), which keep the indexes, the NOT NULL
 *	  constraints and the statistics as an UPDATE or INSERT would.
 *
 *	  The admission follows what READ COMMITTED does for lava._admit's
 *	  UPDATE: the key's row is found under the snapshot, locked in its
 *	  newest version (waiting for a concurrent writer, as the UPDATE would),
 *	  and the conditions are checked on that newest version.  Under
 *	  REPEATABLE READ a concurrent update is a serialization failure, as for
 *	  the UPDATE.  So the limits hold under concurrency for the same reason
 *	  they hold on the SQL path: the key's row lock.  A recorded answer's row
 *	  is locked as the snapshot found it; a row changed meanwhile is left to
 *	  lava._complete, which skips it as its UPDATE by ctid would.
 *
 *	  Every check here may only say "not on the fast path": a key that is
 *	  not admitted, a model with no or several routes, an answer of another
 *	  shape, or tables whose shape is not the one this file knows (a column
 *	  added, a trigger, an index missing) send the work to the SQL
 *	  implementation (lava._prompt_sql, lava._complete) before anything of
 *	  it was written, and it decides.  The shape is checked once per backend
 *	  and again after any invalidation of these relations.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/executor.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "lava.h"

/* the columns of lava.spend_key_store that the admission reads or writes */
enum
{
	K_ID, K_DIGEST, K_STATUS, K_ALLOWED_PROVIDERS, K_ALLOWED_MODELS,
	K_SPEND_LIMIT, K_SPEND_CYCLE, K_REQUEST_LIMIT, K_REQUEST_CYCLE,
	K_EXPIRES_AT, K_LAST_USED_AT, K_REVOKED_AT, K_SPEND_PERIOD_START,
	K_PERIOD_SPEND, K_RESERVED_SPEND, K_REQUEST_PERIOD_START,
	K_PERIOD_REQUESTS, K_TOTAL_REQUESTS, K_NCOLS
};

/* the columns of lava.request_store that the queue row sets */
enum
{
	R_REQUEST_ID, R_STATUS, R_SPEND_KEY_ID, R_ROLE_NAME, R_PROVIDER, R_MODEL,
	R_ENDPOINT, R_METHOD, R_BODY, R_REQUEST_SHAPE, R_INPUT_PRICE,
	R_OUTPUT_PRICE, R_RESERVATION, R_ADMITTED_AT, R_ATTEMPTS, R_CREATED_AT,
	R_NEXT_ATTEMPT_AT, R_NCOLS
};

/* the columns of lava.request_store that recording an answer reads or writes */
enum
{
	C_REQUEST_ID, C_STATUS, C_SPEND_KEY_ID, C_REQUEST_SHAPE, C_INPUT_PRICE,
	C_OUTPUT_PRICE, C_RESERVATION, C_ADMITTED_AT, C_HTTP_STATUS, C_RESPONSE,
	C_OUTPUT_TEXT, C_INPUT_TOKENS, C_OUTPUT_TOKENS, C_INPUT_COST,
	C_OUTPUT_COST, C_COST, C_ERROR, C_COMPLETED_AT, C_NCOLS
};

/* the columns of lava.models and lava.providers that the route reads */
enum
{
	M_PROVIDER, M_MODEL, M_INPUT_PRICE, M_OUTPUT_PRICE, M_MAX_OUTPUT, M_NCOLS
};
enum
{
	P_NAME, P_SHAPE, P_ENABLED, P_NCOLS
};

typedef struct ColumnSpec
{
	const char *name;
	Oid			type;
} ColumnSpec;

static const ColumnSpec KeyColumns[K_NCOLS] = {
	{"spend_key_id", UUIDOID}, {"key_digest", BYTEAOID}, {"status", TEXTOID},
	{"allowed_providers", TEXTARRAYOID}, {"allowed_models", TEXTARRAYOID},
	{"spend_limit_amount", NUMERICOID}, {"spend_cycle", TEXTOID},
	{"request_limit_count", INT8OID}, {"request_cycle", TEXTOID},
	{"expires_at", TIMESTAMPTZOID}, {"last_used_at", TIMESTAMPTZOID},
	{"revoked_at", TIMESTAMPTZOID}, {"spend_period_start", TIMESTAMPTZOID},
	{"period_spend", NUMERICOID}, {"reserved_spend", NUMERICOID},
	{"request_period_start", TIMESTAMPTZOID}, {"period_requests", INT8OID},
	{"total_requests", INT8OID}
};

static const ColumnSpec RequestColumns[R_NCOLS] = {
	{"request_id", INT8OID}, {"status", TEXTOID}, {"spend_key_id", UUIDOID},
	{"role_name", TEXTOID}, {"provider", TEXTOID}, {"model", TEXTOID},
	{"endpoint", TEXTOID}, {"method", TEXTOID}, {"body", JSONBOID},
	{"request_shape", TEXTOID}, {"input_price", NUMERICOID},
	{"output_price", NUMERICOID}, {"reservation", NUMERICOID},
	{"admitted_at", TIMESTAMPTZOID}, {"attempts", INT4OID},
	{"created_at", TIMESTAMPTZOID}, {"next_attempt_at", TIMESTAMPTZOID}
};

static const ColumnSpec RecordColumns[C_NCOLS] = {
	{"request_id", INT8OID}, {"status", TEXTOID}, {"spend_key_id", UUIDOID},
	{"request_shape", TEXTOID}, {"input_price", NUMERICOID},
	{"output_price", NUMERICOID}, {"reservation", NUMERICOID},
	{"admitted_at", TIMESTAMPTZOID}, {"http_status", INT4OID},
	{"response", JSONBOID}, {"output_text", TEXTOID}, {"input_tokens", INT8OID},
	{"output_tokens", INT8OID}, {"input_cost", NUMERICOID},
	{"output_cost", NUMERICOID}, {"cost", NUMERICOID}, {"error", TEXTOID},
	{"completed_at", TIMESTAMPTZOID}
};

static const ColumnSpec ModelColumns[M_NCOLS] = {
	{"provider", TEXTOID}, {"model", TEXTOID}, {"input_price_per_mtok", NUMERICOID},
	{"output_price_per_mtok", NUMERICOID}, {"max_output_tokens", INT4OID}
};

static const ColumnSpec ProviderColumns[P_NCOLS] = {
	{"name", TEXTOID}, {"request_shape", TEXTOID}, {"enabled", BOOLOID}
};

/* what this backend knows of the four tables, until an invalidation */
typedef struct DirectCache
{
	bool		valid;			/* built since the last invalidation */
	bool		usable;			/* the tables have the expected shape */
	Oid			keys;
	Oid			keys_digest_idx;
	Oid			requests;
	Oid			requests_seq;
	Oid			requests_pkey;
	Oid			models;
	Oid			models_model_idx;
	Oid			providers;
	Oid			providers_name_idx;
	AttrNumber	k[K_NCOLS];
	AttrNumber	r[R_NCOLS];
	AttrNumber	c[C_NCOLS];
	AttrNumber	m[M_NCOLS];
	AttrNumber	p[P_NCOLS];
} DirectCache;

static DirectCache Cache;
static bool CallbackRegistered = false;

/* Forgets the cache when one of its relations (or every relation) changes. */
static void
DirectInvalidate(Datum arg, Oid relid)
{
	if (!Cache.valid)
		return;
	if (relid == InvalidOid || relid == Cache.keys || relid == Cache.requests ||
		relid == Cache.models || relid == Cache.providers ||
		relid == Cache.keys_digest_idx || relid == Cache.models_model_idx ||
		relid == Cache.providers_name_idx || relid == Cache.requests_seq ||
		relid == Cache.requests_pkey)
		Cache.valid = false;
}

/*
 * The attribute numbers of the columns in spec, in out; false unless each
 * exists with its type.
 */
static bool
FindColumns(Relation rel, const ColumnSpec *spec, int n, AttrNumber *out)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < n; i++)
	{
		AttrNumber	att = attnameAttNum(rel, spec[i].name, false);

		if (att <= 0 || TupleDescAttr(desc, att - 1)->atttypid != spec[i].type)
			return false;
		out[i] = att;
	}
	return true;
}

/* True when index is a btree on rel's column att alone. */
static bool
IndexOnColumn(Oid index, Oid rel, AttrNumber att, bool unique)
{
	Relation	idx;
	bool		ok;

	if (!OidIsValid(index))
		return false;
	idx = index_open(index, AccessShareLock);
	ok = idx->rd_index->indrelid == rel && idx->rd_index->indnatts == 1 &&
		idx->rd_index->indkey.values[0] == att && idx->rd_rel->relam == BTREE_AM_OID &&
		RelationGetIndexPredicate(idx) == NIL && (!unique || idx->rd_index->indisunique);
	index_close(idx, AccessShareLock);
	return ok;
}

/*
 * True when every column of lava.request_store that the queue row does not
 * set may be NULL and has no default: what an INSERT would store there.
 */
static bool
OtherColumnsNullable(Relation rel, const AttrNumber *set, int n)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			a,
				i;

	for (a = 1; a <= desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a - 1);
		bool		ours = false;

		if (att->attisdropped)
			continue;
		for (i = 0; i < n; i++)
			ours |= set[i] == a;
		if (!ours && (att->attnotnull || att->atthasdef || att->attgenerated || att->attidentity))
			return false;
	}
	return true;
}

/* True when rel has no CHECK constraint and no generated column to run on a write. */
static bool
NothingToRun(Relation rel)
{
	TupleConstr *constr = rel->rd_att->constr;

	return constr == NULL || (constr->num_check == 0 && !constr->has_generated_stored);
}

/* Opens relid for the cache check; NULL when it is gone. */
static Relation
OpenForCheck(Oid relid)
{
	return OidIsValid(relid) ? try_table_open(relid, AccessShareLock) : NULL;
}

/* Builds the cache: the relations, their indexes and columns, and whether usable. */
static void
BuildCache(void)
{
	Oid			nsp = get_namespace_oid("lava", true);
	Relation	keys = NULL,
				requests = NULL,
				models = NULL,
				providers = NULL;
	bool		ok;

	if (!CallbackRegistered)
	{
		CacheRegisterRelcacheCallback(DirectInvalidate, (Datum) 0);
		CallbackRegistered = true;
	}
	memset(&Cache, 0, sizeof(Cache));
	Cache.valid = true;
	if (!OidIsValid(nsp))
		return;
	Cache.keys = get_relname_relid("spend_key_store", nsp);
	Cache.requests = get_relname_relid("request_store", nsp);
	Cache.models = get_relname_relid("models", nsp);
	Cache.providers = get_relname_relid("providers", nsp);
	Cache.keys_digest_idx = get_relname_relid("spend_key_store_key_digest_key", nsp);
	Cache.models_model_idx = get_relname_relid("models_model_idx", nsp);
	Cache.providers_name_idx = get_relname_relid("providers_pkey", nsp);
	Cache.requests_pkey = get_relname_relid("request_store_pkey", nsp);

	keys = OpenForCheck(Cache.keys);
	requests = OpenForCheck(Cache.requests);
	models = OpenForCheck(Cache.models);
	providers = OpenForCheck(Cache.providers);
	ok = keys && requests && models && providers &&
		FindColumns(keys, KeyColumns, K_NCOLS, Cache.k) &&
		FindColumns(requests, RequestColumns, R_NCOLS, Cache.r) &&
		FindColumns(requests, RecordColumns, C_NCOLS, Cache.c) &&
		NothingToRun(requests) &&
		IndexOnColumn(Cache.requests_pkey, Cache.requests, Cache.c[C_REQUEST_ID], true) &&
		FindColumns(models, ModelColumns, M_NCOLS, Cache.m) &&
		FindColumns(providers, ProviderColumns, P_NCOLS, Cache.p) &&
		OtherColumnsNullable(requests, Cache.r, R_NCOLS) &&
		keys->rd_rel->relkind == RELKIND_RELATION && requests->rd_rel->relkind == RELKIND_RELATION &&
		NothingToRun(keys) &&
		IndexOnColumn(Cache.keys_digest_idx, Cache.keys, Cache.k[K_DIGEST], true) &&
		IndexOnColumn(Cache.models_model_idx, Cache.models, Cache.m[M_MODEL], false) &&
		IndexOnColumn(Cache.providers_name_idx, Cache.providers, Cache.p[P_NAME], true);
	if (ok)
	{
		Cache.requests_seq = getIdentitySequence(Cache.requests, Cache.r[R_REQUEST_ID], true);
		ok = OidIsValid(Cache.requests_seq);
	}
	if (keys)
		table_close(keys, AccessShareLock);
	if (requests)
		table_close(requests, AccessShareLock);
	if (models)
		table_close(models, AccessShareLock);
	if (providers)
		table_close(providers, AccessShareLock);
	Cache.usable = ok;
}

/* True when the fast path may use direct access (building the cache if needed). */
bool
LavaDirectUsable(void)
{
	if (!Cache.valid)
		BuildCache();
	return Cache.usable;
}

/*
 * Opens the relation of the cache in *relid to read it, or to write it
 * (mode RowExclusiveLock); NULL when direct access is not possible: the
 * relation is gone, its shape changed, row security is forced on its owner,
 * or it is to be written and has triggers or rules, which direct access
 * does not fire.  Invalidations that arrive with the lock rebuild the cache
 * first.
 */
static Relation
OpenDirect(const Oid *relid, LOCKMODE mode)
{
	Oid			want;
	Relation	rel;

	if (!LavaDirectUsable())
		return NULL;
	want = *relid;
	rel = try_table_open(want, mode);
	if (rel == NULL)
	{
		Cache.valid = false;
		return NULL;
	}
	if (!LavaDirectUsable() || *relid != want || rel->rd_rel->relforcerowsecurity ||
		(mode == RowExclusiveLock && (rel->trigdesc != NULL || rel->rd_rel->relhasrules)))
	{
		table_close(rel, mode);
		return NULL;
	}
	return rel;
}

/* A text index scan key on the first column of idx. */
static void
TextKey(ScanKey key, Relation idx, Datum value)
{
	ScanKeyEntryInitialize(key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ, value);
}

/* Whether two text or bytea datums hold the same bytes, whatever their headers. */
static bool
VarlenaEqual(Datum a, Datum b)
{
	text	   *x = DatumGetTextPP(a);
	text	   *y = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(x) == VARSIZE_ANY_EXHDR(y) &&
		memcmp(VARDATA_ANY(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(x)) == 0;
}

/* Whether a text datum holds exactly the characters of s. */
bool
LavaTextIs(Datum d, const char *s)
{
	text	   *t = DatumGetTextPP(d);
	size_t		len = strlen(s);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/*
 * The provider's request shape, copied, when the provider exists and is
 * enabled under snap; else (Datum) 0.
 */
static Datum
EnabledProviderShape(Relation providers, Relation idx, Datum name, Snapshot snap,
					 TupleTableSlot *slot)
{
	ScanKeyData key;
	IndexScanDesc scan;
	Datum		shape = (Datum) 0;

	TextKey(&key, idx, name);
	scan = index_beginscan(providers, idx, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		enabled = slot_getattr(slot, Cache.p[P_ENABLED], &isnull);

		if (!isnull && DatumGetBool(enabled))
		{
			shape = slot_getattr(slot, Cache.p[P_SHAPE], &isnull);
			shape = isnull ? (Datum) 0 : datumCopy(shape, false, -1);
		}
	}
	index_endscan(scan);
	ExecClearTuple(slot);
	return shape;
}

/*
 * The routes of model under the active snapshot: the rows of lava.models for
 * it whose provider is enabled, at most two, the first in *route.  Returns
 * how many (0, 1 or 2), as the route query with LIMIT 2 would; -1 when
 * direct access is not possible.
 */
int
LavaDirectRoute(text *model, LavaRoute *route)
{
	Snapshot	snap = GetActiveSnapshot();
	Relation	models,
				providers,
				midx,
				pidx;
	TupleTableSlot *mslot,
			   *pslot;
	ScanKeyData key;
	IndexScanDesc scan;
	int			n = 0;

	models = OpenDirect(&Cache.models, AccessShareLock);
	if (models == NULL)
		return -1;
	providers = OpenDirect(&Cache.providers, AccessShareLock);
	if (providers == NULL)
	{
		table_close(models, NoLock);
		return -1;
	}
	midx = index_open(Cache.models_model_idx, AccessShareLock);
	pidx = index_open(Cache.providers_name_idx, AccessShareLock);
	mslot = table_slot_create(models, NULL);
	pslot = table_slot_create(providers, NULL);

	TextKey(&key, midx, PointerGetDatum(model));
	scan = index_beginscan(models, midx, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	while (n < 2 && index_getnext_slot(scan, ForwardScanDirection, mslot))
	{
		bool		isnull;
		Datum		provider = slot_getattr(mslot, Cache.m[M_PROVIDER], &isnull);
		Datum		shape;
		Datum		v;

		if (isnull)
			continue;
		shape = EnabledProviderShape(providers, pidx, provider, snap, pslot);
		if (shape == (Datum) 0)
			continue;
		if (n++ > 0)
			break;
		route->provider = datumCopy(provider, false, -1);
		route->shape = shape;
		v = slot_getattr(mslot, Cache.m[M_MODEL], &isnull);
		route->model = datumCopy(v, false, -1);
		v = slot_getattr(mslot, Cache.m[M_INPUT_PRICE], &route->in_price_null);
		route->in_price = route->in_price_null ? (Datum) 0 : datumCopy(v, false, -1);
		v = slot_getattr(mslot, Cache.m[M_OUTPUT_PRICE], &route->out_price_null);
		route->out_price = route->out_price_null ? (Datum) 0 : datumCopy(v, false, -1);
		v = slot_getattr(mslot, Cache.m[M_MAX_OUTPUT], &route->max_output_null);
		route->max_output = route->max_output_null ? 0 : DatumGetInt32(v);
	}
	index_endscan(scan);

	ExecDropSingleTupleTableSlot(mslot);
	ExecDropSingleTupleTableSlot(pslot);
	index_close(pidx, NoLock);
	index_close(midx, NoLock);
	table_close(providers, NoLock);
	table_close(models, NoLock);
	return n;
}

/* lava._key_digest(key): SHA-256 of the key's UTF-8 bytes, as a bytea. */
static bytea *
KeyDigest(text *key)
{
	const char *s = VARDATA_ANY(key);
	int			len = VARSIZE_ANY_EXHDR(key);
	char	   *utf8 = pg_server_to_any(s, len, PG_UTF8);
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	bytea	   *digest = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);

	if (utf8 != s)
		len = strlen(utf8);
	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) utf8, len) < 0 ||
		pg_cryptohash_final(ctx, (uint8 *) VARDATA(digest), PG_SHA256_DIGEST_LENGTH) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the digest of a spend key: %s",
						pg_cryptohash_error(ctx))));
	pg_cryptohash_free(ctx);
	SET_VARSIZE(digest, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	if (utf8 != s)
		pfree(utf8);
	return digest;
}

/* NULL or an element equal to value: "value = ANY (array)" is true. */
static bool
Allowed(Datum array, bool isnull, Datum value)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				i;

	if (isnull)
		return true;
	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i] && VarlenaEqual(elems[i], value))
			return true;
	return false;
}

/*
 * Which calendar cycle a cycle text names: 1 daily, 2 weekly, 3 monthly, 0
 * for NULL or anything else (lava._period_start's ELSE: -infinity).
 */
int
LavaCycleIndex(Datum cycle, bool isnull)
{
	if (isnull)
		return 0;
	if (LavaTextIs(cycle, "daily"))
		return 1;
	if (LavaTextIs(cycle, "weekly"))
		return 2;
	if (LavaTextIs(cycle, "monthly"))
		return 3;
	return 0;
}

/*
 * lava._period_start(cycle, at) for a calendar cycle: date_trunc(unit,
 * at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', through the same functions.
 */
static TimestampTz
PeriodStart(const char *unit, TimestampTz at)
{
	Datum		utc = CStringGetTextDatum("UTC");
	Datum		local = DirectFunctionCall2(timestamptz_zone, utc, TimestampTzGetDatum(at));

	local = DirectFunctionCall2(timestamp_trunc, CStringGetTextDatum(unit), local);
	return DatumGetTimestampTz(DirectFunctionCall2(timestamp_zone, utc, local));
}

/*
 * The start of the current period of a cycle at now: lava._period_start.
 * starts[] keeps the calendar ones computed so far (0: not yet).
 */
static TimestampTz
CycleStart(Datum cycle, bool isnull, TimestampTz now, TimestampTz starts[3])
{
	static const char *const units[3] = {"day", "week", "month"};
	int			i = LavaCycleIndex(cycle, isnull);

	if (i == 0)
		return DT_NOBEGIN;
	if (starts[i - 1] == 0)
		starts[i - 1] = PeriodStart(units[i - 1], now);
	return starts[i - 1];
}

/* An executor state to write rel with, as logical replication's apply does. */
static EState *
WriteState(Relation rel, Snapshot snap, ResultRelInfo **rri)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	*rri = makeNode(ResultRelInfo);
	InitResultRelInfo(*rri, rel, 1, NULL, 0);
	estate->es_output_cid = GetCurrentCommandId(true);
	estate->es_snapshot = snap;
	ExecOpenIndices(*rri, false);
	return estate;
}

/* Ends what WriteState began. */
static void
EndWriteState(EState *estate, ResultRelInfo *rri)
{
	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
}

/*
 * lava._admit's fast path on the key's row: admits one request of provider
 * and model with reservation (NULL: not priced) at now.  On admission
 * the row's counters are updated and the key's id and the admission time
 * are returned; false (nothing written) when the key is unknown or the
 * request is not admitted, or direct access is not possible.
 */
bool
LavaDirectAdmit(text *key, const LavaRoute *route, Datum reservation, bool reservation_null,
				TimestampTz now, Datum *key_id, TimestampTz *admitted_at)
{
	Snapshot	snap = GetActiveSnapshot();
	bytea	   *digest = KeyDigest(key);
	Relation	requests,
				rel,
				idx;
	TupleTableSlot *slot,
			   *newslot;
	ScanKeyData skey;
	IndexScanDesc scan;
	TM_FailureData tmfd;
	ItemPointerData tid;
	bool		found;
	bool		admitted = false;
	Datum	   *v;
	bool	   *null;
	const AttrNumber *k = Cache.k;

	/*
	 * Both tables the fast path writes are locked before anything is
	 * written, so that neither can change its shape (or gain a trigger)
	 * before the queue row is in.
	 */
	requests = OpenDirect(&Cache.requests, RowExclusiveLock);
	if (requests == NULL)
		return false;
	table_close(requests, NoLock);
	rel = OpenDirect(&Cache.keys, RowExclusiveLock);
	if (rel == NULL)
		return false;
	idx = index_open(Cache.keys_digest_idx, RowExclusiveLock);
	slot = table_slot_create(rel, NULL);

	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_BYTEAEQ, PointerGetDatum(digest));
	scan = index_beginscan(rel, idx, snap, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);

	/* the newest version, locked: what the UPDATE's re-check would see */
	if (found)
		tid = slot->tts_tid;
	if (found &&
		table_tuple_lock(rel, &tid, snap, slot, GetCurrentCommandId(true),
						 LockTupleNoKeyExclusive, LockWaitBlock,
						 TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd) == TM_Ok)
	{
		TimestampTz starts[3] = {0, 0, 0};
		TimestampTz rq_start,
					sp_start,
					rq_period,
					sp_period;
		bool		rq_reset,
					sp_reset;
		Datum		zero = NumericGetDatum(int64_to_numeric(0));
		Datum		res = reservation_null ? zero : reservation;
		int64		period_requests;
		Datum		period_spend;

		slot_getallattrs(slot);
		v = slot->tts_values;
		null = slot->tts_isnull;
		/* the counters of a NULL-free row only: the SQL path judges anything else */
		if (null[k[K_ID] - 1] || null[k[K_PERIOD_REQUESTS] - 1] || null[k[K_PERIOD_SPEND] - 1] ||
			null[k[K_RESERVED_SPEND] - 1] || null[k[K_TOTAL_REQUESTS] - 1] ||
			null[k[K_REQUEST_PERIOD_START] - 1] || null[k[K_SPEND_PERIOD_START] - 1])
			goto done;
		rq_start = CycleStart(v[k[K_REQUEST_CYCLE] - 1], null[k[K_REQUEST_CYCLE] - 1], now, starts);
		sp_start = CycleStart(v[k[K_SPEND_CYCLE] - 1], null[k[K_SPEND_CYCLE] - 1], now, starts);
		rq_period = DatumGetTimestampTz(v[k[K_REQUEST_PERIOD_START] - 1]);
		sp_period = DatumGetTimestampTz(v[k[K_SPEND_PERIOD_START] - 1]);
		rq_reset = rq_start > rq_period;
		sp_reset = sp_start > sp_period;
		period_requests = rq_reset ? 0 : DatumGetInt64(v[k[K_PERIOD_REQUESTS] - 1]);
		period_spend = sp_reset ? zero : v[k[K_PERIOD_SPEND] - 1];

		/* lava._admit's WHERE, on the locked version */
		admitted = !null[k[K_DIGEST] - 1] &&
			VarlenaEqual(v[k[K_DIGEST] - 1], PointerGetDatum(digest)) &&
			null[k[K_REVOKED_AT] - 1] &&
			!null[k[K_STATUS] - 1] &&
			LavaTextIs(v[k[K_STATUS] - 1], "active") &&
			(null[k[K_EXPIRES_AT] - 1] || DatumGetTimestampTz(v[k[K_EXPIRES_AT] - 1]) > now) &&
			Allowed(v[k[K_ALLOWED_PROVIDERS] - 1], null[k[K_ALLOWED_PROVIDERS] - 1], route->provider) &&
			Allowed(v[k[K_ALLOWED_MODELS] - 1], null[k[K_ALLOWED_MODELS] - 1], route->model) &&
			(null[k[K_REQUEST_LIMIT] - 1] ||
			 period_requests < DatumGetInt64(v[k[K_REQUEST_LIMIT] - 1])) &&
			(null[k[K_SPEND_LIMIT] - 1] ||
			 (!reservation_null &&
			  DatumGetBool(DirectFunctionCall2(numeric_le,
											   DirectFunctionCall2(numeric_add,
																   DirectFunctionCall2(numeric_add, period_spend,
																					   v[k[K_RESERVED_SPEND] - 1]),
																   reservation),
											   v[k[K_SPEND_LIMIT] - 1]))));

		if (admitted)
		{
			ResultRelInfo *rri;
			EState	   *estate;
			bool		update_indexes;
			Datum	   *nv;
			bool	   *nn;

			/* lava._admit's SET */
			newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
			nv = newslot->tts_values;
			nn = newslot->tts_isnull;
			memcpy(nv, v, sizeof(Datum) * RelationGetDescr(rel)->natts);
			memcpy(nn, null, sizeof(bool) * RelationGetDescr(rel)->natts);
			nv[k[K_REQUEST_PERIOD_START] - 1] = TimestampTzGetDatum(Max(rq_start, rq_period));
			nv[k[K_PERIOD_REQUESTS] - 1] = Int64GetDatum(period_requests + 1);
			nv[k[K_TOTAL_REQUESTS] - 1] = Int64GetDatum(DatumGetInt64(v[k[K_TOTAL_REQUESTS] - 1]) + 1);
			nv[k[K_SPEND_PERIOD_START] - 1] = TimestampTzGetDatum(Max(sp_start, sp_period));
			nv[k[K_PERIOD_SPEND] - 1] = period_spend;
			nv[k[K_RESERVED_SPEND] - 1] =
				DirectFunctionCall1(numeric_trim_scale,
									DirectFunctionCall2(numeric_add, v[k[K_RESERVED_SPEND] - 1], res));
			nv[k[K_LAST_USED_AT] - 1] = TimestampTzGetDatum(now);
			nn[k[K_LAST_USED_AT] - 1] = false;
			ExecStoreVirtualTuple(newslot);
			ExecMaterializeSlot(newslot);

			/*
			 * ExecSimpleRelationUpdate without opening the indexes first:
			 * the counters are in no index, so the update is usually HOT
			 * and needs no index entry.  The new values are NOT NULL, and
			 * the table has no CHECK constraint or generated column (the
			 * cache's shape check), so there is no constraint to run.
			 */
			CheckCmdReplicaIdentity(rel, CMD_UPDATE);
			simple_table_tuple_update(rel, &slot->tts_tid, newslot, snap, &update_indexes);
			if (update_indexes)
			{
				estate = WriteState(rel, snap, &rri);
				ExecInsertIndexTuples(rri, newslot, estate, true, false, NULL, NIL);
				EndWriteState(estate, rri);
			}

			*key_id = datumCopy(v[k[K_ID] - 1], false, UUID_LEN);
			*admitted_at = Max(now, Max(sp_start, sp_period));
			ExecDropSingleTupleTableSlot(newslot);
			/* later statements of this transaction see the new counters */
			CommandCounterIncrement();
		}
	}

done:
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return admitted;
}

/*
 * Inserts the queue row of an admitted request into lava.request_store, as
 * lava._enqueue's INSERT does (the defaults of the columns not given: a new
 * request_id, status queued, method POST, no attempts, created and due now),
 * and returns its request_id.
 */
int64
LavaDirectQueue(const LavaQueueRow *row)
{
	Relation	rel;
	TupleTableSlot *slot;
	ResultRelInfo *rri;
	EState	   *estate;
	Datum	   *v;
	bool	   *n;
	const AttrNumber *r = Cache.r;
	int64		id;
	TimestampTz xact_start = GetCurrentTransactionStartTimestamp();

	/* (locked since LavaDirectAdmit: its shape cannot have changed) */
	rel = OpenDirect(&Cache.requests, RowExclusiveLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lava.request_store changed while a prompt was queued"),
				 errhint("Retry the call.")));

	slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	v = slot->tts_values;
	n = slot->tts_isnull;
	memset(n, true, sizeof(bool) * RelationGetDescr(rel)->natts);
	id = nextval_internal(Cache.requests_seq, false);
#define SET(col, value) (v[r[col] - 1] = (value), n[r[col] - 1] = false)
	SET(R_REQUEST_ID, Int64GetDatum(id));
	SET(R_STATUS, CStringGetTextDatum("queued"));
	SET(R_SPEND_KEY_ID, row->spend_key_id);
	SET(R_ROLE_NAME, row->role_name);
	SET(R_PROVIDER, row->provider);
	SET(R_MODEL, row->model);
	SET(R_ENDPOINT, row->endpoint);
	SET(R_METHOD, CStringGetTextDatum("POST"));
	SET(R_BODY, row->body);
	SET(R_REQUEST_SHAPE, row->request_shape);
	if (!row->input_price_null)
		SET(R_INPUT_PRICE, row->input_price);
	if (!row->output_price_null)
		SET(R_OUTPUT_PRICE, row->output_price);
	SET(R_RESERVATION, row->reservation);
	SET(R_ADMITTED_AT, TimestampTzGetDatum(row->admitted_at));
	SET(R_ATTEMPTS, Int32GetDatum(0));
	SET(R_CREATED_AT, TimestampTzGetDatum(xact_start));
	SET(R_NEXT_ATTEMPT_AT, TimestampTzGetDatum(xact_start));
#undef SET
	ExecStoreVirtualTuple(slot);

	estate = WriteState(rel, GetActiveSnapshot(), &rri);
	ExecSimpleRelationInsert(rri, estate, slot);
	EndWriteState(estate, rri);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	return id;
}

/*
 * The text of a usage member when it is a plain JSON integer of 1 to 15
 * digits (what lava._tokens accepts), as an int64 in *out; false for
 * anything else, which lava._complete judges.
 */
static bool
UsageTokens(JsonbContainer *usage, const char *key, int64 *out)
{
	JsonbValue	v;
	char	   *digits;
	size_t		len;

	if (getKeyJsonValueFromContainer(usage, key, strlen(key), &v) == NULL || v.type != jbvNumeric)
		return false;
	digits = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
	len = strlen(digits);
	if (len < 1 || len > 15 || strspn(digits, "0123456789") != len)
		return false;
	*out = strtoll(digits, NULL, 10);
	return true;
}

/*
 * What "response #>> '{choices,0,message,content}'" gives for an OpenAI
 * answer, when the answer has the usual shape: the content string, or NULL
 * (*isnull) when the path ends early or at a JSON null.  False for any
 * other shape, which lava._complete judges.
 */
static bool
OpenAIContent(Jsonb *resp, Datum *text_out, bool *isnull)
{
	JsonbValue	v;
	JsonbValue *elem;

	*isnull = true;
	if (getKeyJsonValueFromContainer(&resp->root, "choices", 7, &v) == NULL || v.type == jbvNull)
		return true;
	if (v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data))
		return false;
	elem = getIthJsonbValueFromContainer(v.val.binary.data, 0);
	if (elem == NULL || elem->type == jbvNull)
		return true;
	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		return false;
	if (getKeyJsonValueFromContainer(elem->val.binary.data, "message", 7, &v) == NULL || v.type == jbvNull)
		return true;
	if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		return false;
	if (getKeyJsonValueFromContainer(v.val.binary.data, "content", 7, &v) == NULL || v.type == jbvNull)
		return true;
	if (v.type != jbvString)
		return false;
	*text_out = PointerGetDatum(cstring_to_text_with_len(v.val.string.val, v.val.string.len));
	*isnull = false;
	return true;
}

/* trim_scale(tokens * COALESCE(price, 0) / 1000000), as lava._complete computes a cost. */
static Datum
TokenCost(int64 tokens, Datum price, bool price_null)
{
	Datum		p = price_null ? NumericGetDatum(int64_to_numeric(0)) : price;
	Datum		c = DirectFunctionCall2(numeric_mul, NumericGetDatum(int64_to_numeric(tokens)), p);

	c = DirectFunctionCall2(numeric_div, c, NumericGetDatum(int64_to_numeric(1000000)));
	return DirectFunctionCall1(numeric_trim_scale, c);
}

/*
 * lava._complete's common case, recorded directly: an OpenAI-shaped 2xx
 * answer with integer usage for a request that is still 'running'.  The
 * row becomes 'completed' with its exact cost, as lava._complete's UPDATE
 * would make it.  For each request recorded, the settlement's inputs are
 * appended to settle (key, admitted_at, reservation, charge, tokens).
 * Returns false, having written nothing for this request, when the answer
 * or the row is anything else.
 */
static bool
RecordAnswer(Relation rel, Relation pkey, EState *estate, ResultRelInfo *rri,
			 TupleTableSlot *slot, TupleTableSlot *newslot, Snapshot snap,
			 int64 id, int32 status, text *body, TimestampTz now, LavaSettleRow *settle)
{
	const AttrNumber *c = Cache.c;
	Jsonb	   *resp;
	JsonbValue	usage;
	int64		in_t,
				out_t;
	Datum		content = (Datum) 0;
	bool		content_null;
	ScanKeyData key;
	IndexScanDesc scan;
	bool		found;
	ItemPointerData tid;
	TM_FailureData tmfd;
	Datum	   *v;
	bool	   *n;
	Datum		in_c,
				out_c,
				charge;
	int			natts = RelationGetDescr(rel)->natts;

	if (status < 200 || status > 299 || body == NULL)
		return false;
	resp = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text_to_cstring(body))));
	if (!JB_ROOT_IS_OBJECT(resp) || JB_ROOT_IS_SCALAR(resp) ||
		getKeyJsonValueFromContainer(&resp->root, "usage", 5, &usage) == NULL ||
		usage.type != jbvBinary || !JsonContainerIsObject(usage.val.binary.data) ||
		!UsageTokens(usage.val.binary.data, "prompt_tokens", &in_t) ||
		!UsageTokens(usage.val.binary.data, "completion_tokens", &out_t) ||
		!OpenAIContent(resp, &content, &content_null))
		return false;

	/* the request's row, still running and OpenAI-shaped, locked as it is */
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	scan = index_beginscan(rel, pkey, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	if (!found)
		return false;
	tid = slot->tts_tid;
	if (table_tuple_lock(rel, &tid, snap, slot, GetCurrentCommandId(true), LockTupleNoKeyExclusive,
						 LockWaitBlock, 0, &tmfd) != TM_Ok)
		return false;
	slot_getallattrs(slot);
	v = slot->tts_values;
	n = slot->tts_isnull;
	if (n[c[C_STATUS] - 1] || !LavaTextIs(v[c[C_STATUS] - 1], "running") ||
		n[c[C_REQUEST_SHAPE] - 1] || !LavaTextIs(v[c[C_REQUEST_SHAPE] - 1], "openai") ||
		n[c[C_SPEND_KEY_ID] - 1] || n[c[C_ADMITTED_AT] - 1] || n[c[C_RESERVATION] - 1])
		return false;

	in_c = TokenCost(in_t, v[c[C_INPUT_PRICE] - 1], n[c[C_INPUT_PRICE] - 1]);
	out_c = TokenCost(out_t, v[c[C_OUTPUT_PRICE] - 1], n[c[C_OUTPUT_PRICE] - 1]);
	charge = DirectFunctionCall2(numeric_add, in_c, out_c);

	/* lava._complete's SET for a completed answer with usage */
	ExecClearTuple(newslot);
	memcpy(newslot->tts_values, v, sizeof(Datum) * natts);
	memcpy(newslot->tts_isnull, n, sizeof(bool) * natts);
#define SETC(col, value) (newslot->tts_values[c[col] - 1] = (value), newslot->tts_isnull[c[col] - 1] = false)
	SETC(C_STATUS, CStringGetTextDatum("completed"));
	SETC(C_HTTP_STATUS, Int32GetDatum(status));
	SETC(C_RESPONSE, JsonbPGetDatum(resp));
	SETC(C_OUTPUT_TEXT, content);
	newslot->tts_isnull[c[C_OUTPUT_TEXT] - 1] = content_null;
	SETC(C_INPUT_TOKENS, Int64GetDatum(in_t));
	SETC(C_OUTPUT_TOKENS, Int64GetDatum(out_t));
	SETC(C_INPUT_COST, in_c);
	SETC(C_OUTPUT_COST, out_c);
	SETC(C_COST, DirectFunctionCall1(numeric_trim_scale, charge));
	SETC(C_COMPLETED_AT, TimestampTzGetDatum(now));
	newslot->tts_isnull[c[C_ERROR] - 1] = true;
#undef SETC
	ExecStoreVirtualTuple(newslot);
	ExecMaterializeSlot(newslot);
	ExecSimpleRelationUpdate(rri, estate, NULL, slot, newslot);

	settle->request_id = id;
	settle->spend_key_id = datumCopy(v[c[C_SPEND_KEY_ID] - 1], false, UUID_LEN);
	settle->admitted_at = DatumGetTimestampTz(v[c[C_ADMITTED_AT] - 1]);
	settle->reservation = datumCopy(v[c[C_RESERVATION] - 1], false, -1);
	settle->charge = charge;
	settle->input_tokens = in_t;
	settle->output_tokens = out_t;
	ExecClearTuple(newslot);
	return true;
}

/*
 * Records what it can of a batch of finished calls directly (RecordAnswer)
 * at now, under the active snapshot: done[i] says which.  Fills settle[]
 * (one per request recorded) and returns how many; 0 when direct access is
 * not possible, and lava._complete records them all.
 */
int
LavaDirectRecord(const LavaOutcome *items, int n, TimestampTz now, bool *done,
				 LavaSettleRow *settle)
{
	Snapshot	snap = GetActiveSnapshot();
	Relation	rel,
				pkey;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot,
			   *newslot;
	int			recorded = 0;
	int			i;

	memset(done, 0, sizeof(bool) * n);
	rel = OpenDirect(&Cache.requests, RowExclusiveLock);
	if (rel == NULL)
		return 0;
	pkey = index_open(Cache.requests_pkey, RowExclusiveLock);
	estate = WriteState(rel, snap, &rri);
	slot = table_slot_create(rel, NULL);
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	for (i = 0; i < n; i++)
	{
		/* (an answer with an error text is lava._complete's) */
		if (items[i].error != NULL)
			continue;
		if (RecordAnswer(rel, pkey, estate, rri, slot, newslot, snap, items[i].id,
						 items[i].http_status, items[i].body, now, &settle[recorded]))
		{
			done[i] = true;
			recorded++;
		}
		ExecClearTuple(slot);
		ResetPerTupleExprContext(estate);
	}
	ExecDropSingleTupleTableSlot(newslot);
	ExecDropSingleTupleTableSlot(slot);
	EndWriteState(estate, rri);
	index_close(pkey, NoLock);
	table_close(rel, NoLock);
	if (recorded > 0)
		CommandCounterIncrement();
	return recorded;
}
