/*-------------------------------------------------------------------------
 *
 * http.c
 *	  lava's HTTP client layer: a libcurl multi handle driven through
 *	  curl_multi_socket_action() from the caller's event loop.
 *
 * curl tells us, through the socket callback, which sockets it waits on and
 * for what; we keep them in a private epoll set, whose fd the caller puts in
 * its own wait set.  curl's timer (one per multi handle, through the timer
 * callback) becomes a deadline the caller reads with LavaHttpTimeoutMs().
 * LavaHttpDrive() then hands curl the ready sockets and the due timeouts,
 * and collects finished transfers into a queue that LavaHttpNextResult()
 * empties.
 *
 * Transfers share a multi handle, so connections (and TLS sessions) are
 * reused across requests.  There are two: one for origins that have not
 * answered over HTTP/2, and one for those that have, where the number of
 * connections per origin is bounded (see LavaHttpSetMaxConnections): curl
 * 7.88, once it knows an origin multiplexes, opens a connection of its own
 * for each request that finds the open ones full, and over TLS each costs
 * about 110 KiB.  Easy handles are kept on a free list and reset rather
 * than freed, up to LAVA_HTTP_MAX_IDLE of them (one that failed to start a
 * request is freed).  Nothing here is sized by the number
 * of transfers: sockets live in epoll, transfers in linked lists, and each
 * event costs O(1) on our side.
 *
 * Memory per request in flight (about 12 KiB over plain HTTP/1.1 with curl
 * 7.88): curl's easy handle (5.4 KiB) and connection (about 4.5 KiB), its
 * 1 KiB receive buffer, and our transfer with its copies of the headers
 * and body (under 1 KiB).  Over HTTP/2 a stream costs about 18 KiB and the
 * connections are few; over HTTP/1.1 with TLS each request has a
 * connection of its own, with OpenSSL's state: about 110 KiB.  Answers are
 * kept in buffers of their own size, and the memory of a burst goes back
 * to the system as it ends.
 *
 * Only malloc/free are used: the caller's PostgreSQL memory contexts are
 * reset between loops and must not own anything of ours.  Request headers
 * carry API keys and are never printed or logged.
 *
 *-------------------------------------------------------------------------
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <curl/curl.h>

#include "http.h"

/* Idle easy handles kept for reuse; more than this are freed. */
#define LAVA_HTTP_MAX_IDLE 256

/*
 * After a burst, once this many transfers were freed since the last time
 * (and fewer are still in flight), the freed memory goes back to the
 * system: see TrimAfterBurst().
 */
#define LAVA_HTTP_TRIM_AFTER 1024

/* Idle connections curl keeps open for reuse. */
#define LAVA_HTTP_MAXCONNECTS 1024L

/*
 * Starting size of a response buffer when the answer announces no length;
 * it doubles as needed.  One with a Content-Length starts at that size, up
 * to LAVA_HTTP_BODY_PREALLOC: an announced length is not trusted further
 * before the bytes arrive.
 */
#define LAVA_HTTP_BODY_CHUNK 1024
#define LAVA_HTTP_BODY_PREALLOC ((size_t) 1024 * 1024)

/*
 * curl's receive buffer, allocated for each transfer while it runs: 1024
 * is the least curl takes.  The default (16 KiB) cost about 4 KiB of RSS
 * per request in flight, most of it while the request waits for an answer.
 */
#define LAVA_HTTP_RECV_BUFFER 1024L

/*
 * curl's send buffer, which an HTTP/2 request body goes through: 16 KiB is
 * the least curl takes.  The default (64 KiB) cost about 3.5 KiB more RSS
 * per stream in flight (a standalone test with 2,000 streams: 18.9 against
 * 15.4 KiB per call); plain HTTP/1.1 sends a small body without it.
 */
#define LAVA_HTTP_SEND_BUFFER 16384L

/* How long curl keeps a CA bundle it has read (its default is 24 hours). */
#define LAVA_HTTP_CA_CACHE_S 600L

/* Origins remembered as answering over HTTP/2. */
#define LAVA_HTTP_H2_ORIGINS 64

/*
 * Streams per HTTP/2 connection that the bound on connections counts on:
 * RFC 9113 recommends servers allow at least 100; a server that allows
 * fewer makes the calls beyond wait in curl for a free stream.
 */
#define LAVA_HTTP_H2_STREAMS 50

/* The multi handles: origins not known to speak HTTP/2, and those that do. */
#define LAVA_HTTP_PLAIN 0
#define LAVA_HTTP_H2 1
#define LAVA_HTTP_NMULTI 2

/* One multi handle with its timer. */
typedef struct LavaHttpMulti
{
	struct LavaHttp *h;
	CURLM	   *m;
	int			idx;			/* LAVA_HTTP_PLAIN or LAVA_HTTP_H2 */
	int			timer_armed;	/* curl asked for a timeout action */
	long long	deadline_us;	/* when, on the monotonic clock */
	int			nxfers;			/* transfers added to it, not yet removed */
} LavaHttpMulti;

/* One transfer: an easy handle and what belongs to its current request. */
typedef struct LavaHttpXfer
{
	struct LavaHttpXfer *next;	/* on the free list or the result queue */
	struct LavaHttpXfer *all_prev;	/* on the list of every transfer */
	struct LavaHttpXfer *all_next;
	CURL	   *easy;
	int			in_multi;		/* added to its multi handle */
	int			which;			/* which one: LAVA_HTTP_PLAIN or LAVA_HTTP_H2 */
	int			reused;			/* has served a request before */
	long long	id;
	struct curl_slist *headers;
	char	   *req_body;		/* our copy of the request body */
	char	   *resp;			/* response body, NUL-terminated */
	size_t		resp_len;
	size_t		resp_cap;
	int			too_big;		/* response went over the cap */
	int			out_of_memory;	/* response buffer could not grow */
	double		retry_after;
	long long	started_us;
	double		elapsed;
	long		http_status;
	CURLcode	code;
	char		errbuf[CURL_ERROR_SIZE];
} LavaHttpXfer;

struct LavaHttp
{
	LavaHttpMulti multis[LAVA_HTTP_NMULTI];
	int			epfd;
	int			nsockets;		/* sockets registered in epfd */
	struct epoll_event *events; /* epoll_wait buffer, grown in Drive */
	int			events_cap;
	int			inflight;		/* submitted, result not yet taken */
	LavaHttpXfer *all;			/* every transfer, busy or idle */
	LavaHttpXfer *idle;			/* free list */
	int			nidle;
	int			ndropped;		/* transfers freed since the last trim */
	LavaHttpXfer *done_head;	/* finished, waiting for NextResult */
	LavaHttpXfer *done_tail;
	char	   *ca_file;		/* CA bundle given to curl, NULL: curl's defaults */
	char	   *ca_given;		/* the bundle as set (or curl's built-in one) */
	char	   *ca_default;		/* curl's built-in bundle, NULL when none */
	struct stat ca_stat;		/* the bundle's identity when last set */
	int			ca_flip;		/* which of two spellings ca_file has */
	char	   *h2_origins[LAVA_HTTP_H2_ORIGINS];	/* "https://host:port" */
	int			h2_next;		/* the slot to reuse when all are taken */
	int			plain_stale;	/* the first handle may keep idle connections
								 * to an origin now served by the second */
	long		maxconn;		/* as given to LavaHttpSetMaxConnections */
};

static int	lava_curl_initialized = 0;

/* Returns the monotonic clock in microseconds. */
static long long
NowUs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Copies a C string into a bounded buffer, always NUL-terminating it. */
static void
CopyText(char *dst, size_t dstlen, const char *src)
{
	size_t		n;

	if (dst == NULL || dstlen == 0)
		return;
	n = strlen(src);
	if (n >= dstlen)
		n = dstlen - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* Lower-cases one ASCII character, whatever the locale. */
static int
AsciiLower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

/* True when s starts with prefix, compared ASCII case-insensitively. */
static int
StartsWithCase(const char *s, size_t len, const char *prefix)
{
	size_t		n = strlen(prefix);
	size_t		i;

	if (len < n)
		return 0;
	for (i = 0; i < n; i++)
	{
		if (AsciiLower((unsigned char) s[i]) != AsciiLower((unsigned char) prefix[i]))
			return 0;
	}
	return 1;
}

/* True when a header line starts with the given name (any case) and ':'. */
static int
HeaderNameIs(const char *line, size_t len, const char *name)
{
	size_t		n = strlen(name);

	if (len <= n || !StartsWithCase(line, len, name))
		return 0;
	/* "Name:" sets or clears a header; "Name;" sends it empty (curl) */
	return line[n] == ':' || line[n] == ';';
}

/* True when the method is a non-empty RFC 9110 token of sane length. */
static int
ValidMethod(const char *m)
{
	size_t		i;

	for (i = 0; m[i] != '\0'; i++)
	{
		unsigned char c = (unsigned char) m[i];

		if (i >= 32)
			return 0;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			(c >= '0' && c <= '9'))
			continue;
		if (strchr("!#$%&'*+-.^_`|~", c) == NULL)
			return 0;
	}
	return i > 0;
}

/* Parses a Retry-After value into seconds from now; -1 when invalid. */
double
LavaHttpParseRetryAfter(const char *value)
{
	const char *s;
	const char *e;
	char		buf[128];
	size_t		len;
	size_t		i;
	int			numeric = 1;
	int			ndots = 0;
	time_t		when;
	double		delta;

	if (value == NULL)
		return -1;
	s = value;
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' ||
					 e[-1] == '\n'))
		e--;
	len = (size_t) (e - s);
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';

	/* delta-seconds: digits, leniently with a fraction ("1.5") */
	for (i = 0; i < len; i++)
	{
		if (buf[i] == '.' && i > 0 && i + 1 < len && ndots == 0)
			ndots++;
		else if (buf[i] < '0' || buf[i] > '9')
		{
			numeric = 0;
			break;
		}
	}
	if (numeric)
		return strtod(buf, NULL);

	/* otherwise an HTTP-date (IMF-fixdate, RFC 850 or asctime) */
	when = curl_getdate(buf, NULL);
	if (when == (time_t) -1)
		return -1;
	delta = difftime(when, time(NULL));
	return delta > 0 ? delta : 0;
}

/* curl write callback: appends response bytes, up to the cap. */
static size_t
WriteCb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	LavaHttpXfer *x = (LavaHttpXfer *) userdata;
	size_t		n = size * nmemb;
	size_t		need;

	if (n == 0)
		return 0;
	if (n > LAVA_HTTP_MAX_RESPONSE - x->resp_len)
	{
		x->too_big = 1;
		return 0;				/* makes curl end with CURLE_WRITE_ERROR */
	}
	need = x->resp_len + n + 1;	/* at most LAVA_HTTP_MAX_RESPONSE + 1 */
	if (need > x->resp_cap)
	{
		size_t		cap = x->resp_cap;
		char	   *p;

		if (cap == 0)
		{
			curl_off_t	len = -1;

			/*
			 * The announced length (before decoding, when compressed) sizes
			 * the first buffer; without one, start small.
			 */
			curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
			if (len < 0)
				cap = LAVA_HTTP_BODY_CHUNK;
			else if (len < (curl_off_t) LAVA_HTTP_BODY_PREALLOC)
				cap = (size_t) len + 1;
			else
				cap = LAVA_HTTP_BODY_PREALLOC;
		}
		while (cap < need)
			cap *= 2;
		if (cap > LAVA_HTTP_MAX_RESPONSE + 1)
			cap = LAVA_HTTP_MAX_RESPONSE + 1;
		p = (char *) realloc(x->resp, cap);
		if (p == NULL)
		{
			x->out_of_memory = 1;
			return 0;
		}
		x->resp = p;
		x->resp_cap = cap;
	}
	memcpy(x->resp + x->resp_len, ptr, n);
	x->resp_len += n;
	x->resp[x->resp_len] = '\0';
	return n;
}

/* curl header callback: notes Retry-After of the final response only. */
static size_t
HeaderCb(char *buf, size_t size, size_t nitems, void *userdata)
{
	LavaHttpXfer *x = (LavaHttpXfer *) userdata;
	size_t		n = size * nitems;
	static const char name[] = "Retry-After";
	char		value[128];
	size_t		vlen;

	/* a status line starts a new response (after 1xx): forget the old one */
	if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0)
	{
		x->retry_after = -1;
		return n;
	}
	if (HeaderNameIs(buf, n, name) && buf[sizeof(name) - 1] == ':')
	{
		vlen = n - sizeof(name);
		if (vlen < sizeof(value))
		{
			memcpy(value, buf + sizeof(name), vlen);
			value[vlen] = '\0';
			x->retry_after = LavaHttpParseRetryAfter(value);
		}
	}
	return n;
}

/* curl socket callback: mirrors curl's interest in a socket into epoll. */
static int
SocketCb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	LavaHttpMulti *mm = (LavaHttpMulti *) userp;
	LavaHttp   *h = mm->h;
	struct epoll_event ev;

	(void) easy;
	if (what == CURL_POLL_REMOVE)
	{
		if (socketp != NULL)
		{
			/* fails harmlessly if curl already closed the socket */
			epoll_ctl(h->epfd, EPOLL_CTL_DEL, s, NULL);
			h->nsockets--;
		}
		return 0;
	}

	memset(&ev, 0, sizeof(ev));
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	/* the multi handle in the high half, the socket in the low one */
	ev.data.u64 = ((uint64_t) mm->idx << 32) | (uint32_t) s;

	if (socketp == NULL)
	{
		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
			epoll_ctl(h->epfd, EPOLL_CTL_MOD, s, &ev);
		/* any non-NULL pointer marks the socket as registered */
		curl_multi_assign(mm->m, s, mm);
		h->nsockets++;
	}
	else if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
		epoll_ctl(h->epfd, EPOLL_CTL_ADD, s, &ev);
	return 0;
}

/* curl timer callback: records when curl wants a timeout action. */
static int
TimerCb(CURLM *multi, long timeout_ms, void *userp)
{
	LavaHttpMulti *mm = (LavaHttpMulti *) userp;

	(void) multi;
	if (timeout_ms < 0)
		mm->timer_armed = 0;
	else
	{
		mm->timer_armed = 1;
		mm->deadline_us = NowUs() + (long long) timeout_ms * 1000;
	}
	return 0;
}

/* Frees what a transfer holds for its current request. */
static void
ClearXfer(LavaHttpXfer *x)
{
	if (x->headers != NULL)
		curl_slist_free_all(x->headers);
	x->headers = NULL;
	free(x->req_body);
	x->req_body = NULL;
	free(x->resp);
	x->resp = NULL;
	x->resp_len = 0;
	x->resp_cap = 0;
}

/* Unlinks a transfer from the client and frees it with its easy handle. */
static void
DropXfer(LavaHttp *h, LavaHttpXfer *x)
{
	if (x->all_prev != NULL)
		x->all_prev->all_next = x->all_next;
	else
		h->all = x->all_next;
	if (x->all_next != NULL)
		x->all_next->all_prev = x->all_prev;
	ClearXfer(x);
	curl_easy_cleanup(x->easy);
	free(x);
	h->ndropped++;
}

/*
 * Gives the memory of a finished burst back to the system.  With 10,000
 * requests in flight the client holds about 12 KiB for each (curl's easy
 * handle, connection and buffers); past LAVA_HTTP_MAX_IDLE they are freed
 * as the burst ends, but malloc keeps the pages, scattered between the
 * connections curl keeps for reuse, so RSS would stay at the peak.
 * malloc_trim() returns the free pages (about 50 MB, in 5 ms, after
 * 10,000).  It runs once the transfers freed since the last trim are at
 * least LAVA_HTTP_TRIM_AFTER and outnumber those still in flight: a few
 * times as a burst winds down, never while the load holds steady, since a
 * steady load reuses its transfers instead of freeing them.
 */
static void
TrimAfterBurst(LavaHttp *h)
{
	if (h->ndropped < LAVA_HTTP_TRIM_AFTER || h->inflight >= h->ndropped)
		return;
	h->ndropped = 0;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

/* Makes a new transfer with a fresh easy handle. */
static LavaHttpXfer *
NewXfer(LavaHttp *h)
{
	LavaHttpXfer *x = (LavaHttpXfer *) calloc(1, sizeof(*x));

	if (x == NULL)
		return NULL;
	x->easy = curl_easy_init();
	if (x->easy == NULL)
	{
		free(x);
		return NULL;
	}
	x->all_next = h->all;
	if (h->all != NULL)
		h->all->all_prev = x;
	h->all = x;
	return x;
}

/* Takes an idle transfer from the free list, or makes a new one. */
static LavaHttpXfer *
GetXfer(LavaHttp *h)
{
	LavaHttpXfer *x = h->idle;

	if (x == NULL)
		return NewXfer(h);
	h->idle = x->next;
	h->nidle--;
	x->next = NULL;
	return x;
}

/* Puts a finished transfer back on the free list (or frees it). */
static void
RecycleXfer(LavaHttp *h, LavaHttpXfer *x)
{
	ClearXfer(x);
	if (h->nidle >= LAVA_HTTP_MAX_IDLE)
	{
		DropXfer(h, x);
		return;
	}
	curl_easy_reset(x->easy);
	x->next = h->idle;
	h->idle = x;
	h->nidle++;
}

/* Builds the request's header list: caller's headers plus our defaults. */
static int
BuildHeaders(LavaHttpXfer *x, const LavaHttpRequest *req)
{
	int			has_expect = 0;
	int			has_ctype = 0;
	int			i;
	struct curl_slist *l;

	for (i = 0; i < req->nheaders; i++)
	{
		const char *hd = req->headers[i];
		size_t		len = strlen(hd);

		if (HeaderNameIs(hd, len, "Expect"))
			has_expect = 1;
		if (HeaderNameIs(hd, len, "Content-Type"))
			has_ctype = 1;
		l = curl_slist_append(x->headers, hd);
		if (l == NULL)
			return -1;
		x->headers = l;
	}
	/* no "Expect: 100-continue" round trip before large bodies */
	if (!has_expect)
	{
		l = curl_slist_append(x->headers, "Expect:");
		if (l == NULL)
			return -1;
		x->headers = l;
	}
	/* curl would otherwise label a body application/x-www-form-urlencoded */
	if (!has_ctype && req->body != NULL)
	{
		l = curl_slist_append(x->headers, "Content-Type: application/json");
		if (l == NULL)
			return -1;
		x->headers = l;
	}
	return 0;
}

/* Sets one easy option unless an earlier one failed (uses e and rc). */
#define LAVA_SETOPT(opt, val) \
	do { \
		if (rc == CURLE_OK) \
			rc = curl_easy_setopt(e, opt, val); \
	} while (0)

/* Sets every option of a (freshly reset) easy handle for a request. */
static CURLcode
SetupEasy(const LavaHttp *h, LavaHttpXfer *x, const LavaHttpRequest *req,
		  const char *method)
{
	CURL	   *e = x->easy;
	CURLcode	rc = CURLE_OK;
	static char empty[] = "";
	long		pipewait = StartsWithCase(req->url, strlen(req->url), "https:");

	LAVA_SETOPT(CURLOPT_PRIVATE, (void *) x);
	LAVA_SETOPT(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
	LAVA_SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
	LAVA_SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	LAVA_SETOPT(CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
	LAVA_SETOPT(CURLOPT_REDIR_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	LAVA_SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	LAVA_SETOPT(CURLOPT_NOSIGNAL, 1L);
	LAVA_SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
	LAVA_SETOPT(CURLOPT_TCP_KEEPIDLE, 60L);
	LAVA_SETOPT(CURLOPT_TCP_KEEPINTVL, 30L);
	LAVA_SETOPT(CURLOPT_TCP_NODELAY, 1L);
	/*
	 * Over https, ALPN tells within the handshake whether the server speaks
	 * HTTP/2: waiting for it lets a burst share one multiplexed connection
	 * instead of opening one each.  Over plain http curl would only learn
	 * that from the first response, so every other request would queue
	 * behind it: never wait there.
	 */
	LAVA_SETOPT(CURLOPT_PIPEWAIT, pipewait);
	LAVA_SETOPT(CURLOPT_ACCEPT_ENCODING, "");
	LAVA_SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) LAVA_HTTP_MAX_RESPONSE);
	LAVA_SETOPT(CURLOPT_USERAGENT, "lava");
	LAVA_SETOPT(CURLOPT_BUFFERSIZE, LAVA_HTTP_RECV_BUFFER);
#if LIBCURL_VERSION_NUM >= 0x073e00
	LAVA_SETOPT(CURLOPT_UPLOAD_BUFFERSIZE, LAVA_HTTP_SEND_BUFFER);
#endif
	LAVA_SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
	LAVA_SETOPT(CURLOPT_WRITEFUNCTION, WriteCb);
	LAVA_SETOPT(CURLOPT_WRITEDATA, (void *) x);
	LAVA_SETOPT(CURLOPT_HEADERFUNCTION, HeaderCb);
	LAVA_SETOPT(CURLOPT_HEADERDATA, (void *) x);
	LAVA_SETOPT(CURLOPT_HTTPHEADER, x->headers);
	/*
	 * Peer and host name are verified always (curl's defaults, kept).  The
	 * bundle (lava.ca_file, else curl's built-in one) goes without curl's CA
	 * directory: that would add every public CA to a private bundle, and
	 * while a directory is set curl 7.88 caches no CA store, so that every
	 * connection parsed the whole bundle again (about 900 KiB each).
	 */
	if (h->ca_file != NULL)
	{
		LAVA_SETOPT(CURLOPT_CAINFO, h->ca_file);
		LAVA_SETOPT(CURLOPT_CAPATH, (char *) NULL);
	}
#if LIBCURL_VERSION_NUM >= 0x075700
	/* a bundle edited in place is read again within this many seconds */
	LAVA_SETOPT(CURLOPT_CA_CACHE_TIMEOUT, LAVA_HTTP_CA_CACHE_S);
#endif
	if (req->timeout_ms > 0)
		LAVA_SETOPT(CURLOPT_TIMEOUT_MS, req->timeout_ms);

	if (x->req_body != NULL)
	{
		LAVA_SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
		LAVA_SETOPT(CURLOPT_POSTFIELDS, x->req_body);
		if (strcmp(method, "POST") != 0)
			LAVA_SETOPT(CURLOPT_CUSTOMREQUEST, method);
	}
	else if (strcmp(method, "GET") == 0)
		LAVA_SETOPT(CURLOPT_HTTPGET, 1L);
	else if (strcmp(method, "HEAD") == 0)
		LAVA_SETOPT(CURLOPT_NOBODY, 1L);
	else if (strcmp(method, "POST") == 0)
	{
		LAVA_SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) 0);
		LAVA_SETOPT(CURLOPT_POSTFIELDS, empty);
	}
	else
		LAVA_SETOPT(CURLOPT_CUSTOMREQUEST, method);
	return rc;
}

/*
 * The length of a URL's origin ("https://host:port"), or 0 when the URL is
 * not https (only there does curl learn, in the TLS handshake, whether a
 * server speaks HTTP/2) or carries credentials, which are not kept.
 */
static size_t
OriginLen(const char *url)
{
	size_t		len;

	if (url == NULL || !StartsWithCase(url, strlen(url), "https://"))
		return 0;
	len = strlen("https://") + strcspn(url + strlen("https://"), "/?#");
	if (memchr(url, '@', len) != NULL)
		return 0;
	return len;
}

/* The slot of the remembered HTTP/2 origin of url, or -1. */
static int
FindH2Origin(const LavaHttp *h, const char *url)
{
	size_t		len = OriginLen(url);
	int			i;

	if (len == 0)
		return -1;
	for (i = 0; i < LAVA_HTTP_H2_ORIGINS; i++)
	{
		const char *o = h->h2_origins[i];

		if (o != NULL && strlen(o) == len && StartsWithCase(url, len, o))
			return i;
	}
	return -1;
}

/*
 * Notes how an answer from url came: over HTTP/2, its origin is remembered
 * (when all slots are taken, in place of the oldest); over an older
 * version, it is forgotten.  Out of memory, nothing is remembered.
 */
static void
NoteOrigin(LavaHttp *h, const char *url, long version)
{
	int			slot = FindH2Origin(h, url);
	size_t		len = OriginLen(url);
	char	   *o;

	if (version == CURL_HTTP_VERSION_2_0)
	{
		int			i;

		if (slot >= 0 || len == 0 || (o = (char *) malloc(len + 1)) == NULL)
			return;
		memcpy(o, url, len);
		o[len] = '\0';
		/* a free slot, else the one after the last taken */
		for (i = 0; i < LAVA_HTTP_H2_ORIGINS && h->h2_origins[i] != NULL; i++)
			;
		if (i == LAVA_HTTP_H2_ORIGINS)
		{
			i = h->h2_next;
			h->h2_next = (h->h2_next + 1) % LAVA_HTTP_H2_ORIGINS;
			free(h->h2_origins[i]);
		}
		h->h2_origins[i] = o;
		h->plain_stale = 1;
	}
	else if (version != 0 && slot >= 0)
	{
		free(h->h2_origins[slot]);
		h->h2_origins[slot] = NULL;
	}
}

/* Moves every transfer a multi handle reports finished onto the result queue. */
static void
CollectDoneOf(LavaHttp *h, CURLM *multi)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		CURL	   *easy = msg->easy_handle;
		CURLcode	code = msg->data.result;
		char	   *priv = NULL;
		char	   *url = NULL;
		long		version = 0;
		LavaHttpXfer *x;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
		x = (LavaHttpXfer *) priv;
		/* msg is invalid once the handle is removed: copy first */
		curl_multi_remove_handle(multi, easy);
		if (x == NULL)
			continue;			/* cannot happen: all our handles carry it */
		x->in_multi = 0;
		h->multis[x->which].nxfers--;
		x->code = code;
		x->http_status = 0;
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &x->http_status);
		if (x->http_status > 0 &&
			curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) == CURLE_OK &&
			curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK)
			NoteOrigin(h, url, version);
		x->elapsed = (double) (NowUs() - x->started_us) / 1e6;
		/* the request's own data is no longer needed */
		if (x->headers != NULL)
			curl_slist_free_all(x->headers);
		x->headers = NULL;
		free(x->req_body);
		x->req_body = NULL;

		x->next = NULL;
		if (h->done_tail != NULL)
			h->done_tail->next = x;
		else
			h->done_head = x;
		h->done_tail = x;
	}
}

/* Moves every finished transfer onto the result queue. */
static void
CollectDone(LavaHttp *h)
{
	int			i;

	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
		CollectDoneOf(h, h->multis[i].m);
}

/*
 * curl's built-in CA bundle, if it has one and the file is there (malloc'd;
 * NULL otherwise, and then curl's defaults are kept as they are).
 */
static char *
DefaultCaBundle(void)
{
	char	   *found = NULL;
#if LIBCURL_VERSION_NUM >= 0x075400
	CURL	   *e = curl_easy_init();
	char	   *path = NULL;

	if (e == NULL)
		return NULL;
	if (curl_easy_getinfo(e, CURLINFO_CAINFO, &path) == CURLE_OK &&
		path != NULL && access(path, R_OK) == 0)
		found = strdup(path);
	curl_easy_cleanup(e);
#endif
	return found;
}

/* Sets a multi handle's callbacks and options. */
static void
SetupMulti(LavaHttpMulti *mm)
{
	CURLM	   *m = mm->m;
	long		cache = mm->h->maxconn > 0 ? mm->h->maxconn : LAVA_HTTP_MAXCONNECTS;

	curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, SocketCb);
	curl_multi_setopt(m, CURLMOPT_SOCKETDATA, (void *) mm);
	curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, TimerCb);
	curl_multi_setopt(m, CURLMOPT_TIMERDATA, (void *) mm);
	curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
	curl_multi_setopt(m, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
	curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, cache);
	curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS,
					  mm->idx == LAVA_HTTP_H2 ? cache / LAVA_HTTP_H2_STREAMS + 1 : 0L);
}

/*
 * Once an origin has moved to the HTTP/2 handle, the first handle may keep
 * the connections its first burst opened (curl opens one for each request
 * that finds the first connection full) idle in its cache, about 110 KiB
 * each over TLS, and closes them only when a later request there looks for
 * a connection.  When no transfer is on it, the first handle is replaced
 * by a fresh one, closing them all.  This happens once per origin learned.
 */
static void
FreshenPlain(LavaHttp *h)
{
	LavaHttpMulti *mm = &h->multis[LAVA_HTTP_PLAIN];
	CURLM	   *fresh;

	if (!h->plain_stale || mm->nxfers > 0)
		return;
	fresh = curl_multi_init();
	if (fresh == NULL)
		return;					/* try again later */
	curl_multi_cleanup(mm->m);
	mm->m = fresh;
	mm->timer_armed = 0;
	SetupMulti(mm);
	h->plain_stale = 0;
}

/* Creates a client; NULL on failure. */
LavaHttp *
LavaHttpCreate(void)
{
	LavaHttp   *h;
	int			i;
	int			ok;

	if (!lava_curl_initialized)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return NULL;
		lava_curl_initialized = 1;
	}

	h = (LavaHttp *) calloc(1, sizeof(*h));
	if (h == NULL)
		return NULL;
	h->epfd = -1;
	h->events_cap = 64;
	h->events = (struct epoll_event *) malloc(sizeof(struct epoll_event) * (size_t) h->events_cap);
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	ok = h->events != NULL && h->epfd >= 0;
	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
	{
		LavaHttpMulti *mm = &h->multis[i];

		mm->h = h;
		mm->idx = i;
		mm->m = curl_multi_init();
		ok = ok && mm->m != NULL;
	}
	if (!ok)
	{
		for (i = 0; i < LAVA_HTTP_NMULTI; i++)
		{
			if (h->multis[i].m != NULL)
				curl_multi_cleanup(h->multis[i].m);
		}
		if (h->epfd >= 0)
			close(h->epfd);
		free(h->events);
		free(h);
		return NULL;
	}

	LavaHttpSetMaxConnections(h, 0);	/* sets each multi handle up */
	h->ca_default = DefaultCaBundle();
	if (LavaHttpSetCaFile(h, NULL) != 0)
	{
		LavaHttpDestroy(h);
		return NULL;
	}
	return h;
}

/*
 * Sizes the connection caches to the calls kept in flight (n; 0 for a
 * default): a smaller cache closes a connection after every call, a much
 * larger one makes curl walk a long list of idle connections for every new
 * call.  An HTTP/2 origin gets at most n / LAVA_HTTP_H2_STREAMS + 1
 * connections: calls beyond what their streams take wait in curl for one.
 */
void
LavaHttpSetMaxConnections(LavaHttp *h, long n)
{
	int			i;

	h->maxconn = n;
	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
		SetupMulti(&h->multis[i]);
}

/* True when two stat results name the same file with the same contents' age. */
static int
SameFile(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
		a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
		a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * Sets the CA bundle that https peers are verified against, for requests
 * submitted from now on; NULL or "" means curl's built-in bundle.  curl
 * keeps the store it read from a bundle, keyed by the bundle's name; when
 * the name or the file changed since the last call, the bundle is given
 * under its other spelling ("dir/./name"), so that new connections read it
 * again at once.  Returns -1, changing nothing, when out of memory.
 */
int
LavaHttpSetCaFile(LavaHttp *h, const char *path)
{
	const char *given = (path != NULL && path[0] != '\0') ? path : h->ca_default;
	struct stat st;
	char	   *keep;
	char	   *spelled;
	const char *slash;
	size_t		dir;
	int			flip;

	if (given == NULL)
	{
		/* no built-in bundle known: curl's defaults, directory included */
		free(h->ca_file);
		free(h->ca_given);
		h->ca_file = h->ca_given = NULL;
		return 0;
	}
	if (stat(given, &st) != 0)
		memset(&st, 0, sizeof(st));
	if (h->ca_given != NULL && strcmp(h->ca_given, given) == 0 &&
		SameFile(&st, &h->ca_stat))
		return 0;
	flip = !h->ca_flip;
	keep = strdup(given);
	spelled = (char *) malloc(strlen(given) + 3);
	if (keep == NULL || spelled == NULL)
	{
		free(keep);
		free(spelled);
		return -1;
	}
	slash = strrchr(given, '/');
	dir = slash != NULL ? (size_t) (slash - given) + 1 : 0;
	memcpy(spelled, given, dir);
	spelled[dir] = '\0';
	if (flip)
		strcat(spelled, "./");
	strcat(spelled, given + dir);
	free(h->ca_file);
	free(h->ca_given);
	h->ca_file = spelled;
	h->ca_given = keep;
	h->ca_stat = st;
	h->ca_flip = flip;
	return 0;
}

/* Aborts everything in flight, drops unread results and frees the client. */
void
LavaHttpDestroy(LavaHttp *h)
{
	LavaHttpXfer *x;
	int			i;

	if (h == NULL)
		return;
	for (x = h->all; x != NULL; x = x->all_next)
	{
		if (x->in_multi)
		{
			curl_multi_remove_handle(h->multis[x->which].m, x->easy);
			x->in_multi = 0;
			h->multis[x->which].nxfers--;
		}
	}
	while (h->all != NULL)
		DropXfer(h, h->all);
	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
		curl_multi_cleanup(h->multis[i].m);
	for (i = 0; i < LAVA_HTTP_H2_ORIGINS; i++)
		free(h->h2_origins[i]);
	close(h->epfd);
	free(h->events);
	free(h->ca_file);
	free(h->ca_given);
	free(h->ca_default);
	free(h);
}

/*
 * Sets a transfer up for a request and adds it to the multi handle: 0 when
 * it is under way, -1 with a message in err.  On failure what it attached
 * (headers, body copy) stays for the caller to free with the transfer.
 */
static int
StartXfer(LavaHttp *h, LavaHttpXfer *x, const LavaHttpRequest *req,
		  const char *method, char *err, size_t errlen)
{
	CURLcode	rc;
	CURLMcode	mc;

	x->id = req->id;
	x->started_us = NowUs();
	x->too_big = 0;
	x->out_of_memory = 0;
	x->retry_after = -1;
	x->elapsed = 0;
	x->http_status = 0;
	x->code = CURLE_OK;
	x->errbuf[0] = '\0';

	if (BuildHeaders(x, req) != 0)
	{
		CopyText(err, errlen, "out of memory");
		return -1;
	}
	if (req->body != NULL)
	{
		x->req_body = (char *) malloc(req->body_len > 0 ? req->body_len : 1);
		if (x->req_body == NULL)
		{
			CopyText(err, errlen, "out of memory");
			return -1;
		}
		if (req->body_len > 0)
			memcpy(x->req_body, req->body, req->body_len);
	}

	rc = SetupEasy(h, x, req, method);
	if (rc != CURLE_OK)
	{
		CopyText(err, errlen, curl_easy_strerror(rc));
		return -1;
	}
	x->which = FindH2Origin(h, req->url) >= 0 ? LAVA_HTTP_H2 : LAVA_HTTP_PLAIN;
	mc = curl_multi_add_handle(h->multis[x->which].m, x->easy);
	if (mc != CURLM_OK)
	{
		CopyText(err, errlen, curl_multi_strerror(mc));
		return -1;
	}
	x->in_multi = 1;
	h->multis[x->which].nxfers++;
	return 0;
}

/* Starts a request; 0 when under way, -1 with a message in err. */
int
LavaHttpSubmit(LavaHttp *h, const LavaHttpRequest *req, char *err,
			   size_t errlen)
{
	LavaHttpXfer *x;
	const char *method;
	int			i;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (h == NULL || req == NULL || req->url == NULL || req->url[0] == '\0')
	{
		CopyText(err, errlen, "no URL given");
		return -1;
	}
	if (req->nheaders < 0 || (req->nheaders > 0 && req->headers == NULL) ||
		(req->body == NULL && req->body_len > 0))
	{
		CopyText(err, errlen, "malformed request");
		return -1;
	}
	method = req->method != NULL ? req->method :
		(req->body != NULL ? "POST" : "GET");
	if (!ValidMethod(method))
	{
		CopyText(err, errlen, "invalid HTTP method");
		return -1;
	}
	for (i = 0; i < req->nheaders; i++)
	{
		/* never quote the header: it may hold an API key */
		if (req->headers[i] == NULL ||
			strpbrk(req->headers[i], "\r\n") != NULL)
		{
			CopyText(err, errlen, "a request header is NULL or holds CR or LF");
			return -1;
		}
	}

	/*
	 * A pooled handle can refuse a request that a fresh one takes: curl
	 * 7.88 keeps the receive buffer of a transfer that failed before it
	 * connected (a scheme it refused, say), curl_easy_reset() leaves it
	 * there, and CURLOPT_BUFFERSIZE is refused while it exists.  Put back
	 * on the free list, such a handle would fail every later request.  A
	 * handle that failed is therefore dropped, and the request gets one
	 * more try on a fresh handle.
	 */
	x = GetXfer(h);
	if (x == NULL)
	{
		CopyText(err, errlen, "out of memory");
		return -1;
	}
	if (StartXfer(h, x, req, method, err, errlen) != 0)
	{
		int			reused = x->reused;

		DropXfer(h, x);
		if (!reused)
			return -1;
		x = NewXfer(h);
		if (x == NULL)
		{
			CopyText(err, errlen, "out of memory");
			return -1;
		}
		if (StartXfer(h, x, req, method, err, errlen) != 0)
		{
			DropXfer(h, x);
			return -1;
		}
	}
	x->reused = 1;
	h->inflight++;
	return 0;
}

/* Requests submitted whose results have not yet been taken. */
int
LavaHttpInFlight(const LavaHttp *h)
{
	return h != NULL ? h->inflight : 0;
}

/* The epoll fd for the caller's wait set. */
int
LavaHttpEventFd(const LavaHttp *h)
{
	return h != NULL ? h->epfd : -1;
}

/* Milliseconds until LavaHttpDrive() is due: -1 none, 0 now. */
long
LavaHttpTimeoutMs(const LavaHttp *h)
{
	long long	left;
	long long	deadline = 0;
	int			armed = 0;
	int			i;

	if (h == NULL)
		return -1;
	if (h->done_head != NULL)
		return 0;
	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
	{
		const LavaHttpMulti *mm = &h->multis[i];

		if (mm->timer_armed && (!armed || mm->deadline_us < deadline))
			deadline = mm->deadline_us;
		armed |= mm->timer_armed;
	}
	if (!armed)
		return -1;
	left = deadline - NowUs();
	if (left <= 0)
		return 0;
	/* round up, so that the caller never wakes before curl's deadline */
	left = (left + 999) / 1000;
	return left > INT_MAX ? INT_MAX : (long) left;
}

/* Runs a multi handle's timeout action when it is due. */
static void
DriveTimer(LavaHttpMulti *mm)
{
	int			running;

	/* curl re-arms (or disarms) the timer itself through TimerCb ... */
	if (!mm->timer_armed || NowUs() < mm->deadline_us)
		return;
	curl_multi_socket_action(mm->m, CURL_SOCKET_TIMEOUT, 0, &running);

	/*
	 * ... but not always: after a transfer that timed out, or that failed
	 * before it connected, curl 7.88 drops its last timer without telling
	 * TimerCb, and LavaHttpTimeoutMs() would say 0 for ever: the caller
	 * would spin until the next request.  Ask curl.
	 */
	if (mm->timer_armed && NowUs() >= mm->deadline_us)
	{
		long		ms = -1;

		if (curl_multi_timeout(mm->m, &ms) == CURLM_OK && ms < 0)
			mm->timer_armed = 0;
		else if (ms > 0)
			mm->deadline_us = NowUs() + (long long) ms * 1000;
	}
}

/* Hands curl the ready sockets and the due timeout, without blocking. */
void
LavaHttpDrive(LavaHttp *h)
{
	int			running;
	int			n;
	int			i;

	if (h == NULL)
		return;
	/*
	 * Room for every socket, so that one call sees all that are ready.  It
	 * grows here, never in SocketCb: curl calls that while we walk events.
	 */
	if (h->nsockets > h->events_cap)
	{
		int			cap = h->events_cap;
		struct epoll_event *p;

		while (cap < h->nsockets)
			cap *= 2;
		p = (struct epoll_event *) realloc(h->events, sizeof(*p) * (size_t) cap);
		if (p != NULL)
		{
			h->events = p;
			h->events_cap = cap;
		}
		/* else the smaller buffer serves; the rest stay ready for later */
	}
	if (h->nsockets > 0)
	{
		n = epoll_wait(h->epfd, h->events, h->events_cap, 0);
		for (i = 0; i < n; i++)
		{
			unsigned int ev = h->events[i].events;
			uint64_t	data = h->events[i].data.u64;
			int			mask = 0;

			if (ev & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
				mask |= CURL_CSELECT_IN;
			if (ev & EPOLLOUT)
				mask |= CURL_CSELECT_OUT;
			if (ev & EPOLLERR)
				mask |= CURL_CSELECT_ERR;
			curl_multi_socket_action(h->multis[(data >> 32) % LAVA_HTTP_NMULTI].m,
									 (curl_socket_t) (uint32_t) data, mask, &running);
		}
	}
	for (i = 0; i < LAVA_HTTP_NMULTI; i++)
		DriveTimer(&h->multis[i]);
	CollectDone(h);
	FreshenPlain(h);
}

/* Takes the next finished request into *out: 1 if there was one, else 0. */
int
LavaHttpNextResult(LavaHttp *h, LavaHttpResult *out)
{
	LavaHttpXfer *x;
	CURLcode	code;

	if (h == NULL || out == NULL || h->done_head == NULL)
		return 0;
	x = h->done_head;
	h->done_head = x->next;
	if (h->done_head == NULL)
		h->done_tail = NULL;
	x->next = NULL;

	memset(out, 0, sizeof(*out));
	out->id = x->id;
	out->http_status = x->http_status;
	out->retry_after = x->retry_after;
	out->elapsed = x->elapsed;
	code = x->code;
	if (code == CURLE_FILESIZE_EXCEEDED ||
		(code == CURLE_WRITE_ERROR && x->too_big))
	{
		code = CURLE_FILESIZE_EXCEEDED;
		snprintf(out->error, sizeof(out->error),
				 "response body larger than %lu bytes",
				 (unsigned long) LAVA_HTTP_MAX_RESPONSE);
	}
	else if (code == CURLE_WRITE_ERROR && x->out_of_memory)
	{
		code = CURLE_OUT_OF_MEMORY;
		CopyText(out->error, sizeof(out->error),
				 "out of memory for the response body");
	}
	else if (code != CURLE_OK)
		CopyText(out->error, sizeof(out->error),
				 x->errbuf[0] != '\0' ? x->errbuf : curl_easy_strerror(code));
	out->curl_code = (int) code;

	if (code == CURLE_OK && x->resp_len > 0)
	{
		out->body = x->resp;
		out->body_len = x->resp_len;
		x->resp = NULL;
		x->resp_len = 0;
		x->resp_cap = 0;
	}
	h->inflight--;
	RecycleXfer(h, x);
	TrimAfterBurst(h);
	return 1;
}

/* Frees what a result owns. */
void
LavaHttpResultFree(LavaHttpResult *r)
{
	if (r == NULL)
		return;
	free(r->body);
	r->body = NULL;
	r->body_len = 0;
}
