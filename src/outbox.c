/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The outbox: a ring in shared memory through which the worker hands the
 *	  outcomes of finished upstream calls to the recorder process, which
 *	  records them on the other core while the worker goes on claiming and
 *	  sending.
 *
 * One producer (the worker) appends items at head; one consumer at a time
 * (the recorder, or the worker itself while no recorder runs) reads them
 * from tail.  The consumer moves tail past a batch only when the
 * transaction that recorded it commits (see LavaOutboxAdvance), so an
 * outcome is never lost to a consumer that fails or exits mid-batch: the
 * next consumer records it.  Each item carries the OIDs of the database and
 * of the extension its request was claimed under, so that an outcome
 * outliving a DROP EXTENSION (or the database) is dropped rather than
 * recorded against a later request with the same id.
 *
 * head, tail and the pids are protected by a spinlock; the bytes between
 * tail and head belong to the consumer, the rest to the producer.  The ring
 * lives in shared memory, so a crash of any backend (which reinitialises
 * shared memory) empties it; the requests concerned are then 'running' and
 * the worker's start-up recovery settles them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"

#include "lava.h"

/* the ring's capacity; an outcome bigger than a quarter of it is not handed over */
#define OUTBOX_BYTES ((Size) 4 * 1024 * 1024)

typedef struct OutboxShared
{
	slock_t		mutex;
	uint64		head;			/* bytes ever appended */
	uint64		tail;			/* bytes ever consumed */
	pid_t		consumer_pid;	/* the process reading it, 0 when none */
	pid_t		recorder_pid;	/* the recorder, 0 when none runs */
	int			recorder_procno;	/* its pgprocno, -1 when none */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} OutboxShared;

/* one item's header; the body and the error follow, then padding */
typedef struct OutboxItem
{
	uint32		size;			/* header + payload, MAXALIGNed */
	Oid			db;				/* the database of the request */
	Oid			ext;			/* extension lava's OID when claimed */
	int64		id;
	double		retry_after;
	int32		http_status;
	int32		body_len;		/* -1: no body */
	int32		error_len;		/* -1: no error */
} OutboxItem;

static OutboxShared *Outbox = NULL;

/* Shared memory needed for the outbox. */
Size
LavaOutboxShmemSize(void)
{
	return MAXALIGN(offsetof(OutboxShared, data) + OUTBOX_BYTES);
}

/* Creates or attaches the outbox (called from the shmem startup hook). */
void
LavaOutboxShmemInit(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	Outbox = ShmemInitStruct("lava outbox", LavaOutboxShmemSize(), &found);
	if (!found)
	{
		SpinLockInit(&Outbox->mutex);
		Outbox->head = 0;
		Outbox->tail = 0;
		Outbox->consumer_pid = 0;
		Outbox->recorder_pid = 0;
		Outbox->recorder_procno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Copies len bytes into the ring at byte position pos, wrapping around. */
static void
RingWrite(uint64 pos, const void *src, Size len)
{
	Size		off = pos % OUTBOX_BYTES;
	Size		first = Min(len, OUTBOX_BYTES - off);

	memcpy(Outbox->data + off, src, first);
	if (first < len)
		memcpy(Outbox->data, (const char *) src + first, len - first);
}

/* Copies len bytes out of the ring from byte position pos, wrapping around. */
static void
RingRead(uint64 pos, void *dst, Size len)
{
	Size		off = pos % OUTBOX_BYTES;
	Size		first = Min(len, OUTBOX_BYTES - off);

	memcpy(dst, Outbox->data + off, first);
	if (first < len)
		memcpy((char *) dst + first, Outbox->data, len - first);
}

/* The bytes appended and not yet consumed, as head and tail stand now. */
static uint64
Used(void)
{
	uint64		used;

	SpinLockAcquire(&Outbox->mutex);
	used = Outbox->head - Outbox->tail;
	SpinLockRelease(&Outbox->mutex);
	return used;
}

/* The room an outcome takes in the ring. */
static Size
ItemSize(const LavaOutcome *o)
{
	return MAXALIGN(sizeof(OutboxItem) +
					(o->body != NULL ? VARSIZE_ANY_EXHDR(o->body) : 0) +
					(o->error != NULL ? strlen(o->error) : 0));
}

/* True when an outcome is too big ever to be handed over (its caller records it). */
bool
LavaOutboxTooBig(const LavaOutcome *o)
{
	return ItemSize(o) > OUTBOX_BYTES / 4;
}

/*
 * Appends one outcome of this database, tagged with ext.  Returns false,
 * appending nothing, when the ring has no room for it now, or ever (see
 * LavaOutboxTooBig).  Only the worker calls this.
 */
bool
LavaOutboxPush(const LavaOutcome *o, Oid ext)
{
	OutboxItem	item;
	Size		body_len = o->body != NULL ? VARSIZE_ANY_EXHDR(o->body) : 0;
	Size		error_len = o->error != NULL ? strlen(o->error) : 0;
	Size		size = ItemSize(o);
	uint64		head;
	uint64		tail;

	if (LavaOutboxTooBig(o))
		return false;
	SpinLockAcquire(&Outbox->mutex);
	head = Outbox->head;
	tail = Outbox->tail;
	SpinLockRelease(&Outbox->mutex);
	if (head - tail + size > OUTBOX_BYTES)
		return false;

	item.size = (uint32) size;
	item.db = MyDatabaseId;
	item.ext = ext;
	item.id = o->id;
	item.retry_after = o->retry_after;
	item.http_status = o->http_status;
	item.body_len = o->body != NULL ? (int32) body_len : -1;
	item.error_len = o->error != NULL ? (int32) error_len : -1;
	RingWrite(head, &item, sizeof(item));
	if (body_len > 0)
		RingWrite(head + sizeof(item), VARDATA_ANY(o->body), body_len);
	if (error_len > 0)
		RingWrite(head + sizeof(item) + body_len, o->error, error_len);

	/* the spinlock is a barrier: the bytes are in place before head moves */
	SpinLockAcquire(&Outbox->mutex);
	Outbox->head = head + size;
	SpinLockRelease(&Outbox->mutex);
	return true;
}

/*
 * True when the outcomes waiting in the ring fill half of it: the worker
 * then claims no more until the recorder catches up.
 */
bool
LavaOutboxBacklogged(void)
{
	return Used() >= OUTBOX_BYTES / 2;
}

/* True when every outcome handed over has been recorded (or dropped). */
bool
LavaOutboxEmpty(void)
{
	return Used() == 0;
}

/* Makes this process the consumer; false when another one is. */
bool
LavaOutboxBeginConsume(void)
{
	bool		mine;

	SpinLockAcquire(&Outbox->mutex);
	if (Outbox->consumer_pid == 0)
		Outbox->consumer_pid = MyProcPid;
	mine = Outbox->consumer_pid == MyProcPid;
	SpinLockRelease(&Outbox->mutex);
	return mine;
}

/* True when this process is, or may become, the consumer. */
bool
LavaOutboxMayConsume(void)
{
	bool		may;

	SpinLockAcquire(&Outbox->mutex);
	may = Outbox->consumer_pid == 0 || Outbox->consumer_pid == MyProcPid;
	SpinLockRelease(&Outbox->mutex);
	return may;
}

/* Stops being the consumer (also called on exit: see LavaOutboxProcessExit). */
void
LavaOutboxEndConsume(void)
{
	SpinLockAcquire(&Outbox->mutex);
	if (Outbox->consumer_pid == MyProcPid)
		Outbox->consumer_pid = 0;
	SpinLockRelease(&Outbox->mutex);
}

/*
 * Copies up to max_n outcomes from tail (whose body bytes total at most
 * max_bytes, but at least one), all tagged with the same extension OID,
 * into palloc'd memory; *ext is that OID, or InvalidOid for outcomes of
 * another database (which only a dropped database leaves behind).  ends[i]
 * is the ring position just past item i: the tail to set once items 0..i
 * are recorded.  Returns the number copied; the caller must be the
 * consumer.
 */
int
LavaOutboxPeek(int max_n, Size max_bytes, LavaOutcome **items, Oid *ext, uint64 **ends)
{
	uint64		head;
	uint64		pos;
	Size		bytes = 0;
	int			n = 0;

	Assert(Outbox->consumer_pid == MyProcPid);
	SpinLockAcquire(&Outbox->mutex);
	head = Outbox->head;
	pos = Outbox->tail;
	SpinLockRelease(&Outbox->mutex);

	*items = palloc(sizeof(LavaOutcome) * max_n);
	*ends = palloc(sizeof(uint64) * max_n);
	*ext = InvalidOid;
	while (pos < head && n < max_n)
	{
		OutboxItem	item;
		LavaOutcome *o = &(*items)[n];
		Oid			tag;

		RingRead(pos, &item, sizeof(item));
		tag = item.db == MyDatabaseId ? item.ext : InvalidOid;
		if (n > 0 && (tag != *ext || bytes + Max(item.body_len, 0) > max_bytes))
			break;
		*ext = tag;
		o->id = item.id;
		o->http_status = item.http_status;
		o->retry_after = item.retry_after;
		o->body = NULL;
		o->error = NULL;
		if (item.body_len >= 0)
		{
			o->body = palloc(VARHDRSZ + item.body_len);
			SET_VARSIZE(o->body, VARHDRSZ + item.body_len);
			RingRead(pos + sizeof(item), VARDATA(o->body), item.body_len);
			bytes += item.body_len;
		}
		if (item.error_len >= 0)
		{
			o->error = palloc(item.error_len + 1);
			RingRead(pos + sizeof(item) + Max(item.body_len, 0), o->error, item.error_len);
			o->error[item.error_len] = '\0';
		}
		pos += item.size;
		(*ends)[n++] = pos;
	}
	return n;
}

/*
 * Moves tail to end: the outcomes before it are recorded.  The consumer
 * calls this from its commit callback (interrupts are held there, so that a
 * terminated consumer cannot leave recorded outcomes behind to be recorded
 * again), or directly for outcomes it drops.
 */
void
LavaOutboxAdvance(uint64 end)
{
	SpinLockAcquire(&Outbox->mutex);
	if (Outbox->consumer_pid == MyProcPid && end > Outbox->tail && end <= Outbox->head)
		Outbox->tail = end;
	SpinLockRelease(&Outbox->mutex);
}

/* Records that this process is the recorder. */
void
LavaOutboxRecorderStarted(void)
{
	SpinLockAcquire(&Outbox->mutex);
	Outbox->recorder_pid = MyProcPid;
	Outbox->recorder_procno = MyProc->pgprocno;
	SpinLockRelease(&Outbox->mutex);
}

/* The running recorder's pid, 0 when none runs. */
pid_t
LavaOutboxRecorderPid(void)
{
	pid_t		pid;

	SpinLockAcquire(&Outbox->mutex);
	pid = Outbox->recorder_pid;
	SpinLockRelease(&Outbox->mutex);
	return pid;
}

/* Sets the recorder's latch, if a recorder runs. */
void
LavaOutboxWakeRecorder(void)
{
	int			procno;

	if (Outbox == NULL)
		return;
	SpinLockAcquire(&Outbox->mutex);
	procno = Outbox->recorder_procno;
	SpinLockRelease(&Outbox->mutex);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Forgets this process as recorder and consumer (on exit). */
void
LavaOutboxProcessExit(void)
{
	if (Outbox == NULL)
		return;
	SpinLockAcquire(&Outbox->mutex);
	if (Outbox->consumer_pid == MyProcPid)
		Outbox->consumer_pid = 0;
	if (Outbox->recorder_pid == MyProcPid)
	{
		Outbox->recorder_pid = 0;
		Outbox->recorder_procno = -1;
	}
	SpinLockRelease(&Outbox->mutex);
}
