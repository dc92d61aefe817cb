/*-------------------------------------------------------------------------
 *
 * http_client_test.c
 *	  Standalone TAP test of lava's HTTP client layer (src/http.c) against
 *	  a running test/mock_upstream.py.
 *
 * It starts no server itself:
 *
 *	  python3 test/mock_upstream.py --port 18080 &
 *	  gcc -Wall -Wextra -Werror -O2 -o /tmp/http_client_test \
 *		  test/http_client_test.c $(pkg-config --cflags --libs libcurl)
 *	  /tmp/http_client_test 18080 [N]
 *
 * N (default 1000) is the size of the scale test.  The program includes
 * src/http.c directly, so it can also look at the client's internals.
 * It prints TAP and exits non-zero when any test fails.
 *
 *-------------------------------------------------------------------------
 */
#include "../src/http.c"

#include <dirent.h>
#include <poll.h>
#include <stdarg.h>

static int	test_count = 0;
static int	test_failed = 0;
static int	port = 0;

static void Ok(int cond, const char *fmt,...) __attribute__((format(printf, 2, 3)));
static void Diag(const char *fmt,...) __attribute__((format(printf, 1, 2)));

/* Prints one TAP test line. */
static void
Ok(int cond, const char *fmt,...)
{
	va_list		ap;

	test_count++;
	if (!cond)
		test_failed++;
	printf("%sok %d - ", cond ? "" : "not ", test_count);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Prints a TAP diagnostic line. */
static void
Diag(const char *fmt,...)
{
	va_list		ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Seconds on the monotonic clock. */
static double
Now(void)
{
	return (double) NowUs() / 1e6;
}

/* Builds a URL on the mock server. */
static void
Url(char *buf, size_t len, const char *path)
{
	snprintf(buf, len, "http://127.0.0.1:%d%s", port, path);
}

/* Submits one request; returns Submit's answer. */
static int
Submit(LavaHttp *h, long long id, const char *method, const char *url,
	   const char *body, long timeout_ms)
{
	static const char *const headers[] = {
		"Authorization: Bearer sk-test-secret",
		"X-Lava-Test: yes",
	};
	LavaHttpRequest req;
	char		err[256];
	int			rc;

	memset(&req, 0, sizeof(req));
	req.id = id;
	req.method = method;
	req.url = url;
	req.headers = headers;
	req.nheaders = 2;
	req.body = body;
	req.body_len = body ? strlen(body) : 0;
	req.timeout_ms = timeout_ms;
	rc = LavaHttpSubmit(h, &req, err, sizeof(err));
	if (rc != 0)
		Diag("submit %lld failed: %s", id, err);
	return rc;
}

/*
 * Runs the event loop the way a caller would (poll on the event fd with
 * LavaHttpTimeoutMs) until n results arrived or limit_s passed.  Results
 * are stored in res (room for max).  Returns how many arrived.
 */
static int
Collect(LavaHttp *h, LavaHttpResult *res, int max, int n, double limit_s,
		int *wakeups)
{
	double		end = Now() + limit_s;
	int			got = 0;

	while (got < n)
	{
		struct pollfd pfd;
		long		t = LavaHttpTimeoutMs(h);
		double		left = end - Now();

		if (left <= 0)
			break;
		if (t < 0 || t > (long) (left * 1000) + 1)
			t = (long) (left * 1000) + 1;
		pfd.fd = LavaHttpEventFd(h);
		pfd.events = POLLIN;
		pfd.revents = 0;
		poll(&pfd, 1, (int) t);
		if (wakeups)
			(*wakeups)++;
		LavaHttpDrive(h);
		while (got < max && LavaHttpNextResult(h, &res[got]))
			got++;
	}
	return got;
}

/* Frees an array of results. */
static void
FreeResults(LavaHttpResult *res, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		LavaHttpResultFree(&res[i]);
}

/* Counts the transfers (easy handles) the client ever kept alive. */
static int
CountXfers(LavaHttp *h)
{
	LavaHttpXfer *x;
	int			n = 0;

	for (x = h->all; x != NULL; x = x->all_next)
		n++;
	return n;
}

/* Counts this process's open sockets (kept-alive connections included). */
static int
CountSockets(void)
{
	DIR		   *d = opendir("/proc/self/fd");
	struct dirent *de;
	int			n = 0;

	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
	{
		char		path[300];
		char		target[64];
		ssize_t		len;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len > 0)
		{
			target[len] = '\0';
			if (strncmp(target, "socket:", 7) == 0)
				n++;
		}
	}
	closedir(d);
	return n;
}

/* Runs one request to completion and returns its result in *r. */
static int
RunOne(LavaHttp *h, const char *method, const char *path, const char *body,
	   long timeout_ms, LavaHttpResult *r)
{
	char		url[256];

	memset(r, 0, sizeof(*r));
	Url(url, sizeof(url), path);
	if (Submit(h, 1, method, url, body, timeout_ms) != 0)
		return 0;
	return Collect(h, r, 1, 1, 10.0, NULL) == 1;
}

/*
 * True when the client goes idle -- no timer armed -- within a few
 * LavaHttpDrive() calls made when LavaHttpTimeoutMs() says one is due,
 * as a caller's loop would make them.
 */
static int
GoesIdle(LavaHttp *h)
{
	int			i;

	for (i = 0; i < 5 && LavaHttpTimeoutMs(h) == 0; i++)
		LavaHttpDrive(h);
	return LavaHttpTimeoutMs(h) == -1;
}

/* Tests of LavaHttpParseRetryAfter. */
static void
TestRetryAfterParse(void)
{
	char		date[64];
	time_t		t = time(NULL) + 100;
	struct tm	tm;
	double		v;

	Ok(LavaHttpParseRetryAfter("2") == 2, "Retry-After \"2\" is 2 s");
	Ok(LavaHttpParseRetryAfter(" 120 \r\n") == 120,
	   "Retry-After with blanks and CRLF is 120 s");
	Ok(LavaHttpParseRetryAfter("1.5") == 1.5, "Retry-After \"1.5\" is 1.5 s");
	Ok(LavaHttpParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == 0,
	   "Retry-After HTTP-date in the past is 0 s");
	Ok(LavaHttpParseRetryAfter("Sunday, 06-Nov-94 08:49:37 GMT") == 0,
	   "Retry-After RFC 850 date in the past is 0 s");
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	v = LavaHttpParseRetryAfter(date);
	Ok(v >= 98 && v <= 101, "Retry-After HTTP-date 100 s ahead is %.0f s", v);
	Ok(LavaHttpParseRetryAfter("") == -1 &&
	   LavaHttpParseRetryAfter("soon") == -1 &&
	   LavaHttpParseRetryAfter("-3") == -1 &&
	   LavaHttpParseRetryAfter("1.") == -1 &&
	   LavaHttpParseRetryAfter(NULL) == -1,
	   "invalid Retry-After values give -1");
}

/* N concurrent chat requests with 300 ms latency each. */
static void
TestConcurrent(LavaHttp *h, int n, double limit_s, const char *what)
{
	LavaHttpResult *res = calloc((size_t) n, sizeof(LavaHttpResult));
	char	   *seen = calloc((size_t) n, 1);
	char		url[256];
	char		body[256];
	double		start;
	double		took;
	int			got;
	int			good = 0;
	int			dup = 0;
	int			i;
	int			wakeups = 0;
	int			submitted = 0;
	int			bad = 0;

	Url(url, sizeof(url), "/v1/chat/completions");
	start = Now();
	for (i = 0; i < n; i++)
	{
		snprintf(body, sizeof(body),
				 "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
				 "\"content\":\"hello %d #latency_ms=300\"}]}", i);
		if (Submit(h, 1000 + i, "POST", url, body, 10000) == 0)
			submitted++;
	}
	Ok(submitted == n && LavaHttpInFlight(h) == n,
	   "%s: %d requests submitted, %d in flight", what, submitted,
	   LavaHttpInFlight(h));
	got = Collect(h, res, n, n, 30.0, &wakeups);
	took = Now() - start;
	for (i = 0; i < got; i++)
	{
		long long k = res[i].id - 1000;

		if (k < 0 || k >= n || seen[k])
		{
			dup++;
			continue;
		}
		seen[k] = 1;
		if (res[i].curl_code == 0 && res[i].http_status == 200 &&
			res[i].body != NULL && res[i].body_len == strlen(res[i].body) &&
			strstr(res[i].body, "\"chat.completion\"") != NULL &&
			res[i].retry_after == -1 && res[i].error[0] == '\0')
			good++;
		else if (bad++ < 3)
			Diag("bad result id=%lld status=%ld curl=%d err=%s", res[i].id,
				 res[i].http_status, res[i].curl_code, res[i].error);
	}
	Diag("%s: %d results in %.3f s, %d loop wake-ups", what, got, took,
		 wakeups);
	Ok(got == n && good == n && dup == 0,
	   "%s: all %d results are 200 with an OpenAI body, each id once", what,
	   n);
	Ok(took < limit_s, "%s: finished in %.3f s (< %.1f s)", what, took,
	   limit_s);
	Ok(LavaHttpInFlight(h) == 0 && LavaHttpTimeoutMs(h) == -1,
	   "%s: nothing left in flight, no timer armed", what);
	FreeResults(res, got);
	free(res);
	free(seen);
}

/* A request to a hanging path with a 200 ms timeout. */
static void
TestTimeout(LavaHttp *h)
{
	LavaHttpResult r;
	int			done;

	done = RunOne(h, "POST", "/v1/chat/completions",
				  "{\"messages\":[{\"content\":\"#hang=1\"}]}", 200, &r);
	Ok(done && r.curl_code == CURLE_OPERATION_TIMEDOUT && r.http_status == 0 &&
	   r.error[0] != '\0' && r.body == NULL &&
	   r.elapsed >= 0.18 && r.elapsed < 1.0,
	   "hanging request with a 200 ms timeout times out (curl %d, %.3f s, \"%s\")",
	   r.curl_code, r.elapsed, r.error);
	LavaHttpResultFree(&r);
	Ok(GoesIdle(h), "after the timeout nothing is due: no timer left armed "
	   "(timeout %ld ms)", LavaHttpTimeoutMs(h));
}

/* A 503 with Retry-After: 2. */
static void
TestRetryAfterLive(LavaHttp *h)
{
	LavaHttpResult r;
	int			done;

	done = RunOne(h, "POST", "/v1/chat/completions",
				  "{\"messages\":[{\"content\":\"#status=503 #retry_after=2\"}]}",
				  5000, &r);
	Ok(done && r.curl_code == 0 && r.http_status == 503 &&
	   r.retry_after == 2 && r.body != NULL &&
	   strstr(r.body, "mock error 503") != NULL,
	   "503 answer carries its body and Retry-After 2 (got status %ld, %.1f)",
	   r.http_status, r.retry_after);
	LavaHttpResultFree(&r);

	done = RunOne(h, "POST", "/v1/chat/completions",
				  "{\"messages\":[{\"content\":\"#status=429\"}]}", 5000, &r);
	Ok(done && r.curl_code == 0 && r.http_status == 429 && r.retry_after == -1,
	   "429 without Retry-After gives retry_after -1");
	LavaHttpResultFree(&r);
}

/* Methods, headers and defaults as the server sees them. */
static void
TestMethodsAndHeaders(LavaHttp *h)
{
	LavaHttpResult r;
	int			done;

	done = RunOne(h, "GET", "/any/thing", NULL, 5000, &r);
	Ok(done && r.curl_code == 0 && r.http_status == 200 && r.body &&
	   strstr(r.body, "\"method\": \"GET\"") != NULL,
	   "GET reaches the server as GET");
	LavaHttpResultFree(&r);

	done = RunOne(h, "PUT", "/any/thing", "{\"a\":1}", 5000, &r);
	Ok(done && r.curl_code == 0 && r.http_status == 200 && r.body &&
	   strstr(r.body, "\"method\": \"PUT\"") != NULL &&
	   strstr(r.body, "\"echo\": {\"a\": 1}") != NULL,
	   "PUT with a body reaches the server as PUT with that body");
	LavaHttpResultFree(&r);

	done = RunOne(h, "DELETE", "/any/thing", NULL, 5000, &r);
	Ok(done && r.curl_code == 0 && r.body &&
	   strstr(r.body, "\"method\": \"DELETE\"") != NULL,
	   "DELETE without a body reaches the server as DELETE");
	LavaHttpResultFree(&r);

	RunOne(h, "POST", "/_reset", NULL, 5000, &r);
	LavaHttpResultFree(&r);
	RunOne(h, "POST", "/v1/chat/completions", "{\"x\":\"#out=1\"}", 5000, &r);
	LavaHttpResultFree(&r);
	done = RunOne(h, "GET", "/_log", NULL, 5000, &r);
	Ok(done && r.body &&
	   strstr(r.body, "\"authorization\": \"Bearer sk-test-secret\"") != NULL &&
	   strstr(r.body, "\"x-lava-test\": \"yes\"") != NULL &&
	   strstr(r.body, "\"content-type\": \"application/json\"") != NULL &&
	   strstr(r.body, "\"expect\"") == NULL,
	   "caller's headers are sent, JSON content type by default, no Expect");
	LavaHttpResultFree(&r);
}

/* Longer than curl takes for a URL (CURL_MAX_INPUT_LENGTH, 8,000,000). */
#define LONG_URL_LEN 8100000

/* Errors: refused connection, forbidden protocol, bad input, huge body. */
static void
TestErrors(LavaHttp *h)
{
	LavaHttpResult r;
	LavaHttpRequest req;
	const char *bad_header[] = {"X-Injected: a\r\nHost: evil"};
	char		err[128];
	char	   *big;
	char	   *longurl;
	size_t		bigsz = LAVA_HTTP_MAX_RESPONSE + 64;
	int			done;
	int			good;
	int			refused;
	int			xfers;
	int			i;

	memset(&r, 0, sizeof(r));
	if (Submit(h, 7, "GET", "http://127.0.0.1:1/", NULL, 5000) == 0)
		done = Collect(h, &r, 1, 1, 10.0, NULL) == 1;
	else
		done = 0;
	Ok(done && r.id == 7 && r.curl_code == CURLE_COULDNT_CONNECT &&
	   r.http_status == 0 && r.error[0] != '\0',
	   "refused connection gives CURLE_COULDNT_CONNECT (\"%s\")", r.error);
	LavaHttpResultFree(&r);

	memset(&r, 0, sizeof(r));
	if (Submit(h, 8, "GET", "file:///etc/passwd", NULL, 5000) == 0)
		done = Collect(h, &r, 1, 1, 10.0, NULL) == 1;
	else
		done = 0;
	Ok(done && r.curl_code == CURLE_UNSUPPORTED_PROTOCOL && r.body == NULL,
	   "file:// URL is refused (curl %d)", r.curl_code);
	LavaHttpResultFree(&r);
	Ok(GoesIdle(h), "after the refused file:// URL nothing is due: no timer "
	   "left armed (timeout %ld ms)", LavaHttpTimeoutMs(h));

	/*
	 * The refused transfer's handle went back to the pool holding curl's
	 * receive buffer, which makes curl refuse CURLOPT_BUFFERSIZE on it:
	 * the requests after it must still go through.
	 */
	good = 0;
	for (i = 0; i < 3; i++)
	{
		if (RunOne(h, "GET", "/_health", NULL, 5000, &r) &&
			r.curl_code == 0 && r.http_status == 200)
			good++;
		else
			Diag("request %d after file://: curl %d, \"%s\"", i,
				 r.curl_code, r.error);
		LavaHttpResultFree(&r);
	}
	Ok(good == 3, "the 3 requests after a refused file:// URL succeed (%d did)",
	   good);

	/* a request curl refuses at setup (URL over 8 MB) fails alone */
	xfers = CountXfers(h);
	longurl = malloc(LONG_URL_LEN + 1);
	Url(longurl, LONG_URL_LEN, "/");
	memset(longurl + strlen(longurl), 'a', LONG_URL_LEN - strlen(longurl));
	longurl[LONG_URL_LEN] = '\0';
	memset(&req, 0, sizeof(req));
	req.url = longurl;
	err[0] = '\0';
	refused = LavaHttpSubmit(h, &req, err, sizeof(err)) == -1 && err[0] != '\0';
	free(longurl);
	done = RunOne(h, "GET", "/_health", NULL, 5000, &r);
	Ok(refused && done && r.http_status == 200 && LavaHttpInFlight(h) == 0 &&
	   CountXfers(h) <= xfers,
	   "a URL curl refuses fails at submit (\"%s\"); the next request "
	   "succeeds, %d handles kept (%d before)", err, CountXfers(h), xfers);
	LavaHttpResultFree(&r);

	done = RunOne(h, "POST", "/v1/chat/completions",
				  "{\"c\":\"#reset=1\"}", 5000, &r);
	Ok(done && r.curl_code != 0 && r.http_status == 200 && r.body == NULL &&
	   r.error[0] != '\0',
	   "connection reset mid-body is an error (curl %d, \"%s\")",
	   r.curl_code, r.error);
	LavaHttpResultFree(&r);

	memset(&req, 0, sizeof(req));
	req.url = "http://127.0.0.1:1/";
	req.method = "GE T";
	Ok(LavaHttpSubmit(h, &req, err, sizeof(err)) == -1 && err[0] != '\0',
	   "invalid method is refused at submit (\"%s\")", err);
	req.method = "GET";
	req.headers = bad_header;
	req.nheaders = 1;
	Ok(LavaHttpSubmit(h, &req, err, sizeof(err)) == -1 &&
	   strstr(err, "evil") == NULL,
	   "header with CR/LF is refused at submit without quoting it");
	Ok(LavaHttpInFlight(h) == 0, "refused submits leave nothing in flight");

	/* the generic endpoint echoes the body: 16 MiB + 64 bytes comes back */
	big = malloc(bigsz + 1);
	memset(big, 'a', bigsz);
	big[bigsz] = '\0';
	done = RunOne(h, "POST", "/echo", big, 20000, &r);
	Ok(done && r.curl_code == CURLE_FILESIZE_EXCEEDED && r.body == NULL &&
	   strstr(r.error, "larger than") != NULL,
	   "response over %lu bytes is an error (curl %d, \"%s\")",
	   (unsigned long) LAVA_HTTP_MAX_RESPONSE, r.curl_code, r.error);
	LavaHttpResultFree(&r);
	free(big);
}

/*
 * A 200 kB answer comes through curl's 1 KiB receive buffer in about 200
 * writes and must arrive whole, the body grown in place as it comes.
 */
static void
TestLargeAnswer(LavaHttp *h)
{
	LavaHttpResult r;
	size_t		n = 200000;
	char	   *body = malloc(n + 3);
	const char *p = NULL;
	size_t		run = 0;
	int			done;

	body[0] = '"';
	memset(body + 1, 'a', n);
	body[n + 1] = '"';
	body[n + 2] = '\0';
	done = RunOne(h, "POST", "/echo", body, 10000, &r);
	if (done && r.body != NULL)
		p = strstr(r.body, "\"echo\": \"");
	if (p != NULL)
		run = strspn(p + 9, "a");
	Ok(done && r.curl_code == 0 && r.http_status == 200 && r.body != NULL &&
	   r.body_len == strlen(r.body) && run == n && p[9 + run] == '"',
	   "a 200 kB answer arrives whole through 1 KiB reads (%lu bytes, "
	   "%lu echoed)", (unsigned long) r.body_len, (unsigned long) run);
	LavaHttpResultFree(&r);
	free(body);
}

/* On a fresh client, a first request that hangs holds up no other. */
static void
TestHangDoesNotBlock(void)
{
	LavaHttp   *h = LavaHttpCreate();
	LavaHttpResult res[11];
	char		url[256];
	double		start = Now();
	int			got;
	int			good = 0;
	int			i;

	Url(url, sizeof(url), "/v1/chat/completions");
	Submit(h, 0, "POST", url, "{\"c\":\"#hang=1\"}", 3000);
	for (i = 1; i <= 10; i++)
		Submit(h, i, "POST", url, "{\"c\":\"#latency_ms=50\"}", 3000);
	got = Collect(h, res, 11, 10, 2.0, NULL);
	for (i = 0; i < got; i++)
		if (res[i].id != 0 && res[i].http_status == 200)
			good++;
	Ok(good == 10 && LavaHttpInFlight(h) == 1 && Now() - start < 1.0,
	   "a hanging first request does not hold up 10 others (%.3f s)",
	   Now() - start);
	FreeResults(res, got);
	LavaHttpDestroy(h);
}

/* Destroying a client with transfers in flight. */
static void
TestDestroyInFlight(void)
{
	LavaHttp   *h = LavaHttpCreate();
	char		url[256];
	int			i;
	int			wakeups = 0;
	LavaHttpResult r;

	Url(url, sizeof(url), "/v1/chat/completions");
	for (i = 0; i < 20; i++)
		Submit(h, i, "POST", url, "{\"c\":\"#hang=1\"}", 0);
	/* let them connect and send */
	Collect(h, &r, 1, 1, 0.3, &wakeups);
	Ok(h != NULL && LavaHttpInFlight(h) == 20 && h->nsockets == 20,
	   "20 hanging requests in flight on %d sockets", h ? h->nsockets : 0);
	LavaHttpDestroy(h);
	Ok(1, "destroy with requests in flight returns");
}

/* Main: runs all tests against the mock on the port given. */
int
main(int argc, char **argv)
{
	LavaHttp   *h;
	LavaHttpResult r;
	int			scale_n = 1000;
	int			i;
	int			idle_ok = 1;
	int			trim_ok;
	int			before;
	int			sockets;

	if (argc < 2 || (port = atoi(argv[1])) <= 0)
	{
		fprintf(stderr, "usage: %s PORT [N]\n", argv[0]);
		return 2;
	}
	if (argc > 2)
		scale_n = atoi(argv[2]);

	h = LavaHttpCreate();
	Ok(h != NULL && LavaHttpEventFd(h) >= 0, "client created with an event fd");
	if (h == NULL)
	{
		printf("Bail out! no client\n");
		return 1;
	}
	for (i = 0; i < 1000; i++)
	{
		LavaHttpDrive(h);
		if (LavaHttpNextResult(h, &r) != 0 || LavaHttpTimeoutMs(h) != -1 ||
			LavaHttpInFlight(h) != 0)
			idle_ok = 0;
	}
	Ok(idle_ok, "driving an idle client 1000 times is a no-op");

	if (!RunOne(h, "GET", "/_health", NULL, 2000, &r) || r.http_status != 200)
	{
		printf("Bail out! no mock upstream on port %d\n", port);
		return 1;
	}
	LavaHttpResultFree(&r);

	TestRetryAfterParse();
	TestConcurrent(h, 200, 2.0, "200 concurrent, 300 ms latency");
	before = CountXfers(h);
	sockets = CountSockets();
	TestConcurrent(h, 200, 2.0, "200 more, reusing connections");
	Ok(CountXfers(h) == before && before <= LAVA_HTTP_MAX_IDLE,
	   "second batch reused the %d easy handles of the first", before);
	Ok(sockets >= 200 && CountSockets() == sockets,
	   "second batch reused the %d kept-alive connections (%d open after)",
	   sockets, CountSockets());
	TestTimeout(h);
	TestRetryAfterLive(h);
	TestMethodsAndHeaders(h);
	TestErrors(h);
	TestLargeAnswer(h);
	TestHangDoesNotBlock();
	if (scale_n > 0)
		TestConcurrent(h, scale_n, 8.0, "scale");
	Ok(CountXfers(h) <= LAVA_HTTP_MAX_IDLE,
	   "idle easy handles are capped (%d kept)", CountXfers(h));

	/* the trim rule: enough freed, and more than are still in flight */
	h->ndropped = LAVA_HTTP_TRIM_AFTER - 1;
	TrimAfterBurst(h);
	trim_ok = h->ndropped == LAVA_HTTP_TRIM_AFTER - 1;
	h->ndropped = LAVA_HTTP_TRIM_AFTER;
	h->inflight += LAVA_HTTP_TRIM_AFTER;	/* as if still in flight */
	TrimAfterBurst(h);
	trim_ok = trim_ok && h->ndropped == LAVA_HTTP_TRIM_AFTER;
	h->inflight -= LAVA_HTTP_TRIM_AFTER;
	TrimAfterBurst(h);
	Ok(trim_ok && h->ndropped == 0,
	   "memory is trimmed after %d freed transfers, not before, and not "
	   "while as many are in flight", LAVA_HTTP_TRIM_AFTER);
	LavaHttpDestroy(h);
	TestDestroyInFlight();

	printf("1..%d\n", test_count);
	if (test_failed)
		Diag("%d of %d tests failed", test_failed, test_count);
	return test_failed ? 1 : 0;
}
