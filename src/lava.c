/*-------------------------------------------------------------------------
 *
 * lava.c
 *	  Module entry point: defines the lava.* settings, requests shared
 *	  memory and registers lava's background worker.  Nothing else.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "lava.h"

PG_MODULE_MAGIC;

char	   *lava_database = NULL;
int			lava_max_concurrency = 256;
int			lava_request_timeout_ms = 60000;
int			lava_max_attempts = 3;
int			lava_request_ttl_s = 7 * 24 * 3600;
int			lava_max_rate_limited_keys = 10000;
int			lava_max_key_concurrency = 0;
bool		lava_recorder = true;
int			lava_stop_timeout_ms = 5000;
char	   *lava_ca_file = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* Asks the postmaster for lava's shared memory and locks. */
static void
LavaShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(LavaRateLimitShmemSize());
	RequestAddinShmemSpace(LavaStateShmemSize());
	RequestAddinShmemSpace(LavaOutboxShmemSize());
	RequestNamedLWLockTranche(LAVA_LWLOCK_TRANCHE, LAVA_NUM_LWLOCKS);
}

/* Creates or attaches lava's shared memory structures. */
static void
LavaShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LavaRateLimitShmemInit();
	LavaStateShmemInit();
	LavaOutboxShmemInit();
}

/*
 * Check hook of lava.ca_file.  In a client backend (ALTER SYSTEM) it must
 * be empty or an absolute path to a regular file the server can read, so
 * that a mistake fails at once.  The postmaster and the worker take any
 * value: refusing there would leave the previous value, at start-up curl's
 * own CAs, which is failing open; the worker instead warns, and its https
 * calls fail until the file can be read.
 */
static bool
CheckCaFile(char **newval, void **extra, GucSource source)
{
	const char *path = *newval;
	struct stat st;

	if (path == NULL || path[0] == '\0' || MyBackendType != B_BACKEND)
		return true;
	if (!is_absolute_path(path))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("lava.ca_file must be an absolute path.");
		return false;
	}
	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, R_OK) != 0)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("File \"%s\" is not a regular file the server can read.", path);
		return false;
	}
	return true;
}

/* Registers the one static worker: it connects to lava.database. */
static void
RegisterLavaWorker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "lava");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "LavaWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "lava worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "lava worker");
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lava must be loaded via shared_preload_libraries"),
				 errdetail("lava keeps rate-limit state in shared memory and runs a background worker."),
				 errhint("Add lava to shared_preload_libraries in postgresql.conf and restart the server.")));

	DefineCustomStringVariable("lava.database",
							   "Database the lava worker connects to.",
							   NULL, &lava_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.max_concurrency",
							"Maximum number of upstream calls in flight.",
							NULL, &lava_max_concurrency, 256, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.max_key_concurrency",
							"Maximum number of upstream calls in flight for one spend key.",
							"0 means lava.max_concurrency minus a sixteenth of it, so that one key's backlog leaves room for other keys.",
							&lava_max_key_concurrency, 0, 0, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.request_timeout",
							"Timeout of one upstream call.",
							NULL, &lava_request_timeout_ms, 60000, 100, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.max_attempts",
							"Attempts per request before it fails (retries for 429, 5xx and network errors).",
							NULL, &lava_max_attempts, 3, 1, 100,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.request_ttl",
							"Age after which finished request rows are purged; their accounting stays.",
							NULL, &lava_request_ttl_s, 7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("lava.max_rate_limited_keys",
							"Number of keys with a rate_limit whose token buckets shared memory holds.",
							NULL, &lava_max_rate_limited_keys, 10000, 16, 10000000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomBoolVariable("lava.recorder",
							 "Whether a second process records the worker's results.",
							 "With it the worker's claiming and sending and the recording of results run on two cores; without it the worker records them itself.",
							 &lava_recorder, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("lava.stop_timeout",
							"How long the worker, asked to stop, waits for its calls in flight and records their answers.",
							"A server shutdown or pg_terminate_backend() asks the worker to stop. It then claims nothing more, and until this timeout records every answer, so that a restart sends none of those requests again; calls still unanswered then are sent again. 0 stops at once.",
							&lava_stop_timeout_ms, 5000, 0, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomStringVariable("lava.ca_file",
							   "CA bundle that upstream HTTPS servers' certificates are verified against.",
							   "Empty means libcurl's built-in bundle (Debian: /etc/ssl/certs/ca-certificates.crt). Certificates and host names are always verified.",
							   &lava_ca_file, "",
							   PGC_SIGHUP, 0, CheckCaFile, NULL, NULL);

	MarkGUCPrefixReserved("lava");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = LavaShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = LavaShmemStartup;
	LavaInstallUtilityHook();

	RegisterLavaWorker();
}
