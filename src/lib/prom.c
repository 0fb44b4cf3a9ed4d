/*
 * Prometheus metrics: the text exposition format (0.0.4) writer and the
 * small HTTP responder that serves it, shared by the memory server
 * (--metrics) and `giantvm stat --metrics` (docs/METRICS.md).
 *
 * DESIGN: the responder serves whoever connects, so everything a scraper
 * can make it hold is bounded: at most max_conns connections (one more is
 * accepted and closed at once, so the backlog cannot fill with them), a
 * fixed 4 KiB buffer for the request head, one response of at most max_body
 * bytes, and one deadline per connection (timeout_ms from accept to the last
 * byte sent) whatever the scraper does: send nothing, trickle bytes, never
 * read. Sockets are non-blocking and the responder never waits on one, so
 * it can live in another event loop (the memory server's) through the one
 * epoll fd it exposes. Single-threaded: the caller serialises every call.
 */
#define LOG_PREFIX "metrics: "

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "giantvm.h"
#include "log.h"
#include "util.h"

const char *gvm_version(void)
{
	return GVM_VERSION;
}

/* ---------------------------------------------------------------- buckets */

static const uint64_t lat_bounds_ns[GVM_LAT_BUCKETS] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000,
	250000000, 1000000000, 2500000000ull, 10000000000ull,
};

uint64_t gvm_lat_bound_ns(unsigned i)
{
	return i < GVM_LAT_BUCKETS ? lat_bounds_ns[i] : UINT64_MAX;
}

unsigned gvm_lat_bucket(uint64_t ns)
{
	unsigned lo = 0, hi = GVM_LAT_BUCKETS;

	/* The first bound >= ns (Prometheus buckets are "le"). */
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		if (lat_bounds_ns[mid] < ns)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* ---------------------------------------------------------------- text */

void gvm_prom_init(struct gvm_prom *p, size_t max)
{
	*p = (struct gvm_prom){ .max = max ? max : (4u << 20) };
}

void gvm_prom_fini(struct gvm_prom *p)
{
	free(p->buf);
	*p = (struct gvm_prom){ 0 };
}

static void prom_printf(struct gvm_prom *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void prom_printf(struct gvm_prom *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->err)
		return;
	for (;;) {
		size_t room = p->cap - p->len;
		va_start(ap, fmt);
		n = vsnprintf(p->buf ? p->buf + p->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			p->err = -EINVAL;
			return;
		}
		if ((size_t)n < room) {
			p->len += (size_t)n;
			return;
		}
		size_t want = GVM_MAX(p->cap * 2, p->len + (size_t)n + 1);
		want = GVM_MAX(want, (size_t)4096);
		if (p->len + (size_t)n + 1 > p->max) {
			p->err = -E2BIG;
			return;
		}
		want = GVM_MIN(want, p->max);
		char *b = realloc(p->buf, want);
		if (!b) {
			p->err = -ENOMEM;
			return;
		}
		p->buf = b;
		p->cap = want;
	}
}

/* HELP text escapes backslash and newline. */
void gvm_prom_family(struct gvm_prom *p, const char *name, const char *type, const char *help)
{
	prom_printf(p, "# HELP %s ", name);
	for (const char *c = help; *c && !p->err; c++) {
		if (*c == '\\')
			prom_printf(p, "\\\\");
		else if (*c == '\n')
			prom_printf(p, "\\n");
		else
			prom_printf(p, "%c", *c);
	}
	prom_printf(p, "\n# TYPE %s %s\n", name, type);
}

int gvm_prom_labels(char *buf, size_t len, ...)
{
	size_t off = 0;
	const char *k;
	va_list ap;

	if (!len)
		return -ENOSPC;
	buf[0] = 0;
	va_start(ap, len);
	while ((k = va_arg(ap, const char *))) {
		const char *v = va_arg(ap, const char *);
		int n = snprintf(buf + off, len - off, "%s%s=\"", off ? "," : "", k);
		if (n < 0 || (size_t)n >= len - off)
			goto nospc;
		off += (size_t)n;
		/* Label values escape backslash, double quote and newline. */
		for (const char *c = v ? v : ""; *c; c++) {
			const char *esc = *c == '\\' ? "\\\\" : *c == '"' ? "\\\"" : *c == '\n' ? "\\n" : NULL;
			size_t l = esc ? 2 : 1;
			if (off + l + 2 > len)
				goto nospc;
			if (esc)
				memcpy(buf + off, esc, 2);
			else
				buf[off] = *c;
			off += l;
		}
		if (off + 2 > len)
			goto nospc;
		buf[off++] = '"';
		buf[off] = 0;
	}
	va_end(ap);
	return (int)off;
nospc:
	va_end(ap);
	buf[0] = 0;
	return -ENOSPC;
}

static void prom_name(struct gvm_prom *p, const char *name, const char *labels)
{
	if (labels && *labels)
		prom_printf(p, "%s{%s} ", name, labels);
	else
		prom_printf(p, "%s ", name);
}

void gvm_prom_u64(struct gvm_prom *p, const char *name, const char *labels, uint64_t v)
{
	prom_name(p, name, labels);
	prom_printf(p, "%" PRIu64 "\n", v);
}

void gvm_prom_f64(struct gvm_prom *p, const char *name, const char *labels, double v)
{
	prom_name(p, name, labels);
	if (v != v)
		prom_printf(p, "NaN\n");
	else if (v > 1.7976931348623157e308)
		prom_printf(p, "+Inf\n");
	else if (v < -1.7976931348623157e308)
		prom_printf(p, "-Inf\n");
	else
		prom_printf(p, "%.15g\n", v);
}

void gvm_prom_lat_histogram(struct gvm_prom *p, const char *name, const char *labels,
			    const uint64_t counts[GVM_LAT_BUCKETS + 1], uint64_t sum_ns)
{
	uint64_t cum = 0;

	for (unsigned i = 0; i <= GVM_LAT_BUCKETS; i++) {
		cum += counts[i];
		prom_printf(p, "%s_bucket{%s%s", name, labels && *labels ? labels : "",
			    labels && *labels ? "," : "");
		if (i < GVM_LAT_BUCKETS)
			prom_printf(p, "le=\"%g\"} %" PRIu64 "\n", (double)lat_bounds_ns[i] / 1e9, cum);
		else
			prom_printf(p, "le=\"+Inf\"} %" PRIu64 "\n", cum);
	}
	char sname[160];
	snprintf(sname, sizeof(sname), "%s_sum", name);
	gvm_prom_f64(p, sname, labels, (double)sum_ns / 1e9);
	snprintf(sname, sizeof(sname), "%s_count", name);
	gvm_prom_u64(p, sname, labels, cum);
}

/* ---------------------------------------------------------------- HTTP */

#define HTTP_HEAD_MAX   4096
#define HTTP_DEF_CONNS  8
#define HTTP_DEF_TIMEOUT_MS 5000
#define HTTP_ACCEPTS    32   /* per service call: then let the caller's loop run */
#define HTTP_ACCEPT_RETRY_NS (100 * 1000000ull) /* a listener set aside out of descriptors, looked at again */

struct http_conn {
	int fd;
	uint64_t deadline_ns;
	size_t in_len;
	char in[HTTP_HEAD_MAX];
	char *out;                 /* the whole response, while sending */
	size_t out_len, out_off;
	struct http_conn *prev, *next;
};

struct gvm_http {
	int epfd;
	int lfd;                   /* listening socket; epoll data.ptr == NULL */
	int port;
	char name[64];
	unsigned max_conns;
	uint64_t timeout_ns;
	size_t max_body;
	gvm_http_render_fn render;
	void *arg;
	struct http_conn *conns;   /* oldest last */
	struct gvm_http_counters ctr;
	uint64_t accept_retry_ns;  /* listener set aside (out of descriptors) until then; 0: watched */
};

static void http_conn_close(struct gvm_http *h, struct http_conn *c)
{
	if (epoll_ctl(h->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
		pr_debug("epoll_ctl(DEL): %s", strerror(errno));
	if (close(c->fd) < 0)
		pr_debug("close: %s", strerror(errno));
	if (c->prev)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	h->ctr.active--;
	free(c->out);
	free(c);
	if (h->accept_retry_ns)
		h->accept_retry_ns = 1;  /* a descriptor is free: accept again */
}

/* Queue a response (head, and body unless HEAD) and switch to sending. */
static int http_respond(struct gvm_http *h, struct http_conn *c, int status, const char *reason,
			const char *ctype, const char *body, size_t body_len, int head_only)
{
	char hdr[256];
	int n = snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\nCache-Control: no-store\r\n\r\n",
			 status, reason, ctype, body_len);
	size_t blen = head_only ? 0 : body_len;

	(void)h;
	if (n < 0 || (size_t)n >= sizeof(hdr))
		return -EINVAL;
	c->out = malloc((size_t)n + blen);
	if (!c->out)
		return -ENOMEM;
	memcpy(c->out, hdr, (size_t)n);
	if (blen)
		memcpy(c->out + n, body, blen);
	c->out_len = (size_t)n + blen;
	c->out_off = 0;
	struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
	if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		return -errno;
	return 0;
}

static int http_error(struct gvm_http *h, struct http_conn *c, int status, const char *reason)
{
	char body[96];
	int n = snprintf(body, sizeof(body), "%d %s\n", status, reason);

	h->ctr.bad_requests += status < 500;
	return http_respond(h, c, status, reason, "text/plain; charset=utf-8", body, (size_t)n, 0);
}

/* The head is complete in c->in (NUL-terminated): answer it. */
static int http_answer(struct gvm_http *h, struct http_conn *c)
{
	char method[16], target[256], version[16];
	int head_only;

	/* Request line: METHOD SP TARGET SP HTTP/1.x; headers are not needed. */
	if (sscanf(c->in, "%15[A-Z] %255[^ \r\n] %15[^ \r\n]", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) || (version[7] != '0' && version[7] != '1') || version[8])
		return http_error(h, c, 400, "Bad Request");
	head_only = !strcmp(method, "HEAD");
	if (strcmp(method, "GET") && !head_only)
		return http_error(h, c, 405, "Method Not Allowed");
	size_t plen = strcspn(target, "?");
	if (plen != 8 || strncmp(target, "/metrics", 8))
		return http_error(h, c, 404, "Not Found");

	struct gvm_prom p;
	int r;
	gvm_prom_init(&p, h->max_body);
	r = h->render(&p, h->arg);
	if (r == 0 && p.err)
		r = p.err;
	if (r < 0) {
		pr_warn("rendering the metrics failed: %s", strerror(-r));
		gvm_prom_fini(&p);
		return http_error(h, c, 500, "Internal Server Error");
	}
	r = http_respond(h, c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", p.buf ? p.buf : "",
			 p.len, head_only);
	gvm_prom_fini(&p);
	if (r == 0)
		h->ctr.scrapes++;
	return r;
}

/* Returns 0 to keep the connection, < 0 to close it. */
static int http_read(struct gvm_http *h, struct http_conn *c)
{
	for (;;) {
		ssize_t n = recv(c->fd, c->in + c->in_len, HTTP_HEAD_MAX - 1 - c->in_len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET; /* gone before its request was whole */
		c->in_len += (size_t)n;
		c->in[c->in_len] = 0;
		if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n"))
			return http_answer(h, c);
		/* Bytes that can never start a request line: no need to wait. */
		if (memchr(c->in, 0, c->in_len) || (c->in_len >= 1 && (c->in[0] < 'A' || c->in[0] > 'Z')))
			return http_error(h, c, 400, "Bad Request");
		if (c->in_len == HTTP_HEAD_MAX - 1)
			return http_error(h, c, 431, "Request Header Fields Too Large");
	}
}

/* Returns 0 to keep the connection (more to send), 1 when done, < 0 on error. */
static int http_write(struct http_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		c->out_off += (size_t)n;
	}
	return 1;
}

/* Watch the listener, or set it aside for HTTP_ACCEPT_RETRY_NS. */
static void http_listen_watch(struct gvm_http *h, int on)
{
	struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.ptr = NULL };

	if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, h->lfd, &ev) < 0) {
		pr_warn("listener %s: epoll_ctl: %s", h->name, strerror(errno));
		return;
	}
	h->accept_retry_ns = on ? 0 : gvm_now_ns() + HTTP_ACCEPT_RETRY_NS;
}

static void http_accept(struct gvm_http *h)
{
	for (int i = 0; i < HTTP_ACCEPTS; i++) {
		int fd = accept4(h->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct http_conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				/* The scraper stays in the backlog and the listener,
				 * level-triggered, readable: watched, it would wake the
				 * caller's loop at once forever. Set it aside for a while,
				 * or until one of ours closes, as the memory server does
				 * its own listeners. */
				pr_debug("accept: %s; not accepting for 100 ms", strerror(errno));
				http_listen_watch(h, 0);
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				pr_debug("accept: %s", strerror(errno));
			}
			return;
		}
		if (h->ctr.active >= h->max_conns || !(c = calloc(1, sizeof(*c)))) {
			h->ctr.rejected++;
			close(fd);
			continue;
		}
		c->fd = fd;
		c->deadline_ns = gvm_now_ns() + h->timeout_ns;
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			pr_debug("epoll_ctl(ADD): %s", strerror(errno));
			close(fd);
			free(c);
			continue;
		}
		c->next = h->conns;
		if (h->conns)
			h->conns->prev = c;
		h->conns = c;
		h->ctr.active++;
	}
}

/* Close connections past their deadline; the ms until the next one (or
 * until the listener set aside is looked at again), or -1. */
static int http_sweep(struct gvm_http *h)
{
	uint64_t now = gvm_now_ns(), next = UINT64_MAX;

	for (struct http_conn *c = h->conns, *nx; c; c = nx) {
		nx = c->next;
		if (now >= c->deadline_ns) {
			h->ctr.timeouts++;
			http_conn_close(h, c);
		} else {
			next = GVM_MIN(next, c->deadline_ns);
		}
	}
	if (h->accept_retry_ns)
		next = GVM_MIN(next, h->accept_retry_ns);
	if (next == UINT64_MAX)
		return -1;
	if (next <= now)
		return 0;
	return (int)GVM_MIN((next - now + 999999) / 1000000, (uint64_t)h->timeout_ns / 1000000 + 1);
}

int gvm_http_service(struct gvm_http *h, int wait_ms)
{
	struct epoll_event ev[16];
	int n;

	if (h->accept_retry_ns && gvm_now_ns() >= h->accept_retry_ns)
		http_listen_watch(h, 1);
	do
		n = epoll_wait(h->epfd, ev, 16, wait_ms);
	while (n < 0 && errno == EINTR && wait_ms == 0);
	if (n < 0) {
		if (errno == EINTR)
			return http_sweep(h);
		return -errno;
	}
	for (int i = 0; i < n; i++) {
		struct http_conn *c = ev[i].data.ptr;
		int r;

		if (!c) {
			http_accept(h);
			continue;
		}
		if (ev[i].events & EPOLLERR) {
			r = -ECONNRESET;
		} else if (!c->out) {
			r = http_read(h, c);
			if (r == 0 && c->out)
				r = http_write(c);
		} else {
			r = http_write(c);
		}
		if (r != 0)
			http_conn_close(h, c); /* sent in full, refused, or failed: close after the response */
	}
	return http_sweep(h);
}

int gvm_http_open(struct gvm_http **out, const struct gvm_http_opts *o, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct addrinfo *res = NULL;
	struct gvm_http *h;
	char host[256], port[8], addr[INET6_ADDRSTRLEN];
	uint16_t portnum;
	int one = 1, r;

	*out = NULL;
	if (!o->listen || !o->render) {
		snprintf(err, errlen, "metrics: no listen address or renderer");
		return -EINVAL;
	}
	if (gvm_split_hostport(o->listen, host, sizeof(host), &portnum, 0) < 0 || !strchr(o->listen, ':')) {
		snprintf(err, errlen, "metrics address '%s': expected HOST:PORT or [IPV6]:PORT", o->listen);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", portnum);
	r = getaddrinfo(host, port, &hints, &res);
	if (r) {
		snprintf(err, errlen, "metrics address '%s': %s", o->listen, gai_strerror(r));
		return -EINVAL;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		freeaddrinfo(res);
		snprintf(err, errlen, "metrics: out of memory");
		return -ENOMEM;
	}
	h->lfd = h->epfd = -1;
	h->max_conns = o->max_conns ? o->max_conns : HTTP_DEF_CONNS;
	h->timeout_ns = (uint64_t)(o->timeout_ms > 0 ? o->timeout_ms : HTTP_DEF_TIMEOUT_MS) * 1000000ull;
	h->max_body = o->max_body ? o->max_body : (4u << 20);
	h->render = o->render;
	h->arg = o->arg;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (h->epfd < 0) {
		r = -errno;
		snprintf(err, errlen, "metrics: epoll_create1: %s", strerror(-r));
		goto out_free;
	}
	h->lfd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (h->lfd < 0) {
		r = -errno;
		snprintf(err, errlen, "metrics address '%s': socket: %s", o->listen, strerror(-r));
		goto out_free;
	}
	if (setsockopt(h->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (res->ai_family == AF_INET6 && setsockopt(h->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)) {
		r = -errno;
		snprintf(err, errlen, "metrics address '%s': setsockopt: %s", o->listen, strerror(-r));
		goto out_free;
	}
	if (bind(h->lfd, res->ai_addr, res->ai_addrlen) < 0 || listen(h->lfd, 64) < 0 ||
	    getsockname(h->lfd, (struct sockaddr *)&ss, &sl) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot listen on metrics address '%s': %s", o->listen, strerror(-r));
		goto out_free;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (void *)&ss;
		h->port = ntohs(in6->sin6_port);
		inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof(addr));
		snprintf(h->name, sizeof(h->name), "[%s]:%d", addr, h->port);
	} else {
		struct sockaddr_in *in = (void *)&ss;
		h->port = ntohs(in->sin_port);
		inet_ntop(AF_INET, &in->sin_addr, addr, sizeof(addr));
		snprintf(h->name, sizeof(h->name), "%s:%d", addr, h->port);
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->lfd, &ev) < 0) {
		r = -errno;
		snprintf(err, errlen, "metrics: epoll_ctl: %s", strerror(-r));
		goto out_free;
	}
	freeaddrinfo(res);
	*out = h;
	return 0;

out_free:
	freeaddrinfo(res);
	gvm_http_close(h);
	return r;
}

void gvm_http_close(struct gvm_http *h)
{
	if (!h)
		return;
	while (h->conns)
		http_conn_close(h, h->conns);
	if (h->lfd >= 0)
		close(h->lfd);
	if (h->epfd >= 0)
		close(h->epfd);
	free(h);
}

int gvm_http_fd(const struct gvm_http *h)
{
	return h->epfd;
}

int gvm_http_port(const struct gvm_http *h)
{
	return h->port;
}

const char *gvm_http_name(const struct gvm_http *h)
{
	return h->name;
}

void gvm_http_counters(const struct gvm_http *h, struct gvm_http_counters *c)
{
	*c = h->ctr;
}
