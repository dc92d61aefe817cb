/*-------------------------------------------------------------------------
 *
 * http.h
 *	  lava's HTTP client layer: many concurrent upstream requests on one
 *	  libcurl multi handle, driven by the caller's event loop.
 *
 * This layer knows nothing of SQL or PostgreSQL.  It is plain C99 on
 * libcurl and Linux epoll, and every byte it hands out comes from malloc():
 * a result's body is released with LavaHttpResultFree(), never pfree().
 * It is not thread-safe: one LavaHttp belongs to one thread.
 *
 * How a caller drives it (a background worker's main loop):
 *
 *	  h = LavaHttpCreate();
 *	  AddWaitEventToSet(set, WL_SOCKET_READABLE, LavaHttpEventFd(h), NULL, NULL);
 *	  for (;;)
 *	  {
 *		  ... LavaHttpSubmit() new requests while LavaHttpInFlight() is low ...
 *		  timeout = LavaHttpTimeoutMs(h);		(-1 = no curl deadline)
 *		  WaitEventSetWait(set, min(timeout, own timeout), ...);
 *		  LavaHttpDrive(h);
 *		  while (LavaHttpNextResult(h, &res))
 *		  {
 *			  ... store res ...
 *			  LavaHttpResultFree(&res);
 *		  }
 *	  }
 *
 * LavaHttpEventFd() is an epoll fd that holds every socket curl is waiting
 * on; it polls readable whenever one of them is ready.  Timeouts (connect,
 * whole-transfer, the kick-off of a new transfer) are not visible on that
 * fd: the caller must wait no longer than LavaHttpTimeoutMs() says, and
 * call LavaHttpDrive() when it wakes for any reason.  Calling
 * LavaHttpDrive() when nothing is ready is harmless and cheap.
 *
 * Request headers are never printed or logged here: they carry API keys.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LAVA_HTTP_H
#define LAVA_HTTP_H

#include <stddef.h>

/* Largest response body accepted; a larger one ends in an error result. */
#define LAVA_HTTP_MAX_RESPONSE ((size_t) 16 * 1024 * 1024)

/* One client: a curl multi handle, its connection pool and its epoll fd. */
typedef struct LavaHttp LavaHttp;

/* A request to send.  LavaHttpSubmit() copies everything it needs. */
typedef struct LavaHttpRequest
{
	long long	id;				/* caller's id, returned with the result */
	const char *method;			/* "POST", "GET", ...; NULL means POST when
								 * there is a body, else GET */
	const char *url;			/* http:// or https:// only */
	const char *const *headers; /* "Name: value" strings, no CR or LF; a
								 * body without Content-Type goes as
								 * application/json, and no Expect:
								 * 100-continue is sent unless given here */
	int			nheaders;
	const char *body;			/* may be NULL */
	size_t		body_len;
	long		timeout_ms;		/* whole-transfer timeout; <= 0 means none */
} LavaHttpRequest;

/* The outcome of one request, filled in by LavaHttpNextResult(). */
typedef struct LavaHttpResult
{
	long long	id;				/* the request's id */
	long		http_status;	/* last HTTP status seen, 0 when none */
	int			curl_code;		/* CURLcode; 0 (CURLE_OK) when a full answer
								 * arrived, whatever its HTTP status;
								 * 28 timeout, 63 body over the cap */
	char		error[256];		/* error text, empty when curl_code is 0 */
	char	   *body;			/* malloc'd and NUL-terminated; NULL when no
								 * body bytes arrived or on error */
	size_t		body_len;		/* bytes in body, without the NUL */
	double		retry_after;	/* seconds asked by a Retry-After header of the
								 * final answer (delta-seconds or HTTP-date),
								 * -1 when none */
	double		elapsed;		/* seconds from LavaHttpSubmit() to completion */
} LavaHttpResult;

/* Creates a client; NULL on failure (out of memory, no epoll, no curl). */
extern LavaHttp *LavaHttpCreate(void);

/* Aborts everything in flight, drops unread results and frees the client. */
extern void LavaHttpDestroy(LavaHttp *h);
extern void LavaHttpSetMaxConnections(LavaHttp *h, long n);

/* CA bundle for https peers (NULL or "": curl's built-in one); -1 when out of memory. */
extern int	LavaHttpSetCaFile(LavaHttp *h, const char *path);

/*
 * Starts a request.  Returns 0 when it is under way (its result will come
 * from LavaHttpNextResult), -1 with a message in err when it was refused.
 */
extern int	LavaHttpSubmit(LavaHttp *h, const LavaHttpRequest *req,
						   char *err, size_t errlen);

/* Requests submitted whose results LavaHttpNextResult() has not yet given. */
extern int	LavaHttpInFlight(const LavaHttp *h);

/* The epoll fd to add to the caller's wait set as readable; never changes. */
extern int	LavaHttpEventFd(const LavaHttp *h);

/*
 * Milliseconds the caller may wait before calling LavaHttpDrive(): -1 when
 * curl has no deadline, 0 when work (or an unread result) is due now.
 */
extern long LavaHttpTimeoutMs(const LavaHttp *h);

/* Does all work that is due, without blocking: ready sockets, timeouts. */
extern void LavaHttpDrive(LavaHttp *h);

/* Takes the next finished request into *out: 1 when there was one, else 0. */
extern int	LavaHttpNextResult(LavaHttp *h, LavaHttpResult *out);

/* Frees what a result owns (its body); the struct itself is the caller's. */
extern void LavaHttpResultFree(LavaHttpResult *r);

/*
 * Parses a Retry-After value (delta-seconds or an HTTP-date) into seconds
 * from now, at least 0; -1 when it is neither.
 */
extern double LavaHttpParseRetryAfter(const char *value);

#endif							/* LAVA_HTTP_H */
