/*
 * The memory server's event loop: one epoll instance, non-blocking sockets,
 * level-triggered. Input is read into one loop-wide buffer and parsed in
 * place; a connection keeps only the bytes of an unfinished frame, so an idle
 * client costs one small struct. Replies queue in a per-connection output
 * buffer that exists only while it holds unsent bytes.
 */
#define LOG_PREFIX "memserver: "

#include "giantvm_memserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "log.h"
#include "proto.h"
#include "store.h"
#include "util.h"

#define RBUF_SIZE         (256u * 1024)  /* loop-wide read buffer */
#define OUT_HIGH          (4u << 20)     /* stop reading a client with this much unsent */
#define OUT_LOW           (1u << 20)     /* ... and read again once below this */
#define MAX_EVENTS        256
#define READS_PER_EVENT   4              /* then let other clients run */
#define ACCEPTS_PER_EVENT 128
#define MAX_CONN_REGIONS  4096
#define LISTEN_BACKLOG    4096
#define ADDR_LEN          56             /* "[v6 address]:65535" */
#define DEFAULT_LISTEN    "127.0.0.1:9999"

/* Every epoll data pointer points at one of these tags first. */
enum src_kind { SRC_LISTENER = 1, SRC_CONN, SRC_STOP };

struct listener {
	int kind;
	int fd;
	int port;
	char name[ADDR_LEN];
};

/* Output buffers of connections that went idle, lent to the next one that
 * needs one: a busy client gets a warm buffer instead of a fresh allocation
 * (page faults on every reply), while 10,000 idle clients hold none. */
#define OUT_SPARES     16
#define OUT_SPARE_MAX  (1u << 20)
struct out_spares {
	uint8_t *buf[OUT_SPARES];
	size_t cap[OUT_SPARES];
	unsigned n;
};

struct conn {
	int kind;
	int fd;
	uint32_t events;     /* currently registered with epoll */
	uint8_t authed;
	uint64_t born_ns;    /* accepted at (for the HELLO timeout) */
	uint8_t closing;     /* no more input; close once output is sent */
	uint8_t paused;      /* too much unsent output: input held back */
	uint8_t *in;         /* unparsed input: an unfinished frame, or frames held back */
	size_t in_len, in_cap;
	uint8_t *out;        /* unsent output, from out_off to out_len */
	size_t out_off, out_len, out_cap;
	uint64_t *regions;   /* OPENed regions, sorted */
	uint32_t n_regions, cap_regions;
	struct out_spares *spares; /* the server's */
	struct conn *prev, *next;
	uint8_t nonce[GVM_NONCE_SIZE];
	char addr[ADDR_LEN];
};

struct gvm_memserver {
	int epfd;
	int stopfd;
	int stop_kind;       /* epoll tag of stopfd */
	int spare_fd;        /* given up to shed a connection when out of fds */
	struct listener lis[GVM_MEMSERVER_MAX_LISTEN];
	unsigned n_lis;
	struct gvm_store *store;
	uint8_t *token;
	size_t token_len;
	uint8_t *rbuf;
	struct out_spares spares;
	struct conn *conns;
	uint64_t n_clients, reads, writes, bytes_in, bytes_out;
	uint64_t n_unauthed;       /* clients that have not completed HELLO */
	uint64_t hello_timeout_ns;
	uint64_t next_sweep_ns;    /* next look for clients past the HELLO timeout */
	uint64_t last_accept_warn_ns;
};

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		if (!inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host)))
			snprintf(host, sizeof(host), "?");
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		if (!inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)))
			snprintf(host, sizeof(host), "?");
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, len, "(family %d)", sa->sa_family);
	}
}

/* ---------------------------------------------------------------- connections */

static size_t out_pending(const struct conn *c)
{
	return c->out_len - c->out_off;
}

/* Room for n more output bytes at c->out + c->out_len, or NULL. */
static void out_release(struct conn *c)
{
	struct out_spares *sp = c->spares;

	if (c->out && sp && sp->n < OUT_SPARES && c->out_cap <= OUT_SPARE_MAX) {
		sp->buf[sp->n] = c->out;
		sp->cap[sp->n] = c->out_cap;
		sp->n++;
	} else {
		free(c->out);
	}
	c->out = NULL;
	c->out_off = c->out_len = c->out_cap = 0;
}

static uint8_t *out_reserve(struct conn *c, size_t n)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (!c->out && c->spares && c->spares->n) {
		c->spares->n--;
		c->out = c->spares->buf[c->spares->n];
		c->out_cap = c->spares->cap[c->spares->n];
	}
	if (c->out_cap - c->out_len < n && c->out_off) {
		memmove(c->out, c->out + c->out_off, out_pending(c));
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_cap - c->out_len < n) {
		size_t cap = GVM_MAX(GVM_MAX(c->out_cap * 2, c->out_len + n), (size_t)1024);
		uint8_t *p = realloc(c->out, cap);
		if (!p)
			return NULL;
		c->out = p;
		c->out_cap = cap;
	}
	return c->out + c->out_len;
}

/* Encode the reply header in front of `len` payload bytes already placed by the caller. */
static void reply_commit(struct conn *c, const struct gvm_hdr *req, int status, size_t len)
{
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION,
		.op = (uint16_t)(req->op | GVM_OP_REPLY), .id = req->id, .region = req->region,
		.page = req->page, .count = req->count, .status = status, .len = (uint32_t)len,
	};

	gvm_hdr_encode(&h, c->out + c->out_len);
	c->out_len += GVM_HDR_SIZE + len;
}

static int reply_status(struct conn *c, const struct gvm_hdr *req, int status)
{
	if (!out_reserve(c, GVM_HDR_SIZE)) {
		pr_warn("client %s: out of memory for a reply, closing", c->addr);
		return -ENOMEM;
	}
	reply_commit(c, req, status, 0);
	return 0;
}

static int conn_reject(struct conn *c, const char *why)
{
	pr_warn("client %s: %s, closing", c->addr, why);
	return -EPROTO;
}

static int conn_has_region(const struct conn *c, uint64_t region, uint32_t *pos)
{
	uint32_t lo = 0, hi = c->n_regions;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->regions[mid] < region)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (pos)
		*pos = lo;
	return lo < c->n_regions && c->regions[lo] == region;
}

static int conn_add_region(struct conn *c, uint64_t region)
{
	uint32_t pos;

	if (conn_has_region(c, region, &pos))
		return 0;
	if (c->n_regions >= MAX_CONN_REGIONS)
		return -ENOSPC;
	if (c->n_regions == c->cap_regions) {
		uint32_t cap = c->cap_regions ? c->cap_regions * 2 : 2;
		uint64_t *r = realloc(c->regions, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		c->regions = r;
		c->cap_regions = cap;
	}
	memmove(c->regions + pos + 1, c->regions + pos, (c->n_regions - pos) * sizeof(uint64_t));
	c->regions[pos] = region;
	c->n_regions++;
	return 0;
}

static int handle_hello(struct gvm_memserver *s, struct conn *c, const struct gvm_hdr *h,
			const uint8_t *payload)
{
	struct gvm_hello hello;
	int status = 0, r;

	if (c->authed)
		return reply_status(c, h, -EALREADY);
	gvm_hello_decode(payload, &hello);
	if (hello.version != GVM_PROTO_VERSION) {
		status = -EPROTONOSUPPORT;
		pr_warn("client %s: HELLO with protocol version %u, closing", c->addr, hello.version);
	} else if (s->token) {
		uint8_t mac[GVM_MAC_SIZE];

		if (!(hello.flags & GVM_HELLO_MAC)) {
			status = -EACCES;
			pr_warn("client %s: HELLO without a MAC, closing", c->addr);
		} else if (gvm_auth_mac(s->token, s->token_len, c->nonce, mac) < 0) {
			status = -EIO;
			pr_err("client %s: computing the HMAC failed, closing", c->addr);
		} else if (!gvm_auth_equal(mac, hello.mac, GVM_MAC_SIZE)) {
			status = -EACCES;
			pr_warn("client %s: HELLO with a wrong MAC, closing", c->addr);
		}
		OPENSSL_cleanse(mac, sizeof(mac));
	}
	if ((r = reply_status(c, h, status)) < 0)
		return r;
	if (status) {
		c->closing = 1;
	} else {
		c->authed = 1;
		s->n_unauthed--;
	}
	return 0;
}

/* One complete, header-validated frame. Returns 0, or -errno to close the connection. */
static int conn_handle(struct gvm_memserver *s, struct conn *c, const struct gvm_hdr *h,
		       const uint8_t *payload)
{
	const char *why;
	uint8_t *p;
	int status;

	switch (h->op) {
	case GVM_OP_HELLO:
		return handle_hello(s, c, h, payload);
	case GVM_OP_OPEN:
		status = gvm_store_bind_key(s->store, h->region, payload);
		if (!status)
			status = conn_add_region(c, h->region);
		return reply_status(c, h, status);
	case GVM_OP_READ: {
		s->reads++;
		if (!conn_has_region(c, h->region, NULL))
			return reply_status(c, h, -EACCES);
		p = out_reserve(c, GVM_HDR_SIZE + gvm_pages_len(h->count, h->count));
		if (!p)
			return reply_status(c, h, -ENOMEM);
		ssize_t n = gvm_store_read(s->store, h->region, h->page, h->count, p + GVM_HDR_SIZE);
		if (n < 0)
			return reply_status(c, h, (int)n);
		reply_commit(c, h, 0, (size_t)n);
		return 0;
	}
	case GVM_OP_WRITE:
		/* Malformed page payloads are framing errors: nothing is stored. */
		if (gvm_pages_check(payload, h->len, h->count, &why) < 0)
			return conn_reject(c, why);
		s->writes++;
		if (!conn_has_region(c, h->region, NULL))
			return reply_status(c, h, -EACCES);
		status = gvm_store_write(s->store, h->region, h->page, h->count, payload, h->len);
		return reply_status(c, h, status);
	case GVM_OP_STAT: {
		struct gvm_store_stats ss;
		struct gvm_stat st;

		p = out_reserve(c, GVM_HDR_SIZE + GVM_STAT_SIZE);
		if (!p)
			return reply_status(c, h, -ENOMEM);
		gvm_store_get_stats(s->store, &ss);
		st = (struct gvm_stat){
			.pages_stored = ss.pages_stored, .capacity_pages = ss.capacity_pages,
			.regions = ss.regions, .clients = s->n_clients, .reads = s->reads,
			.writes = s->writes, .bytes_out = s->bytes_out, .bytes_in = s->bytes_in,
		};
		gvm_stat_encode(&st, p + GVM_HDR_SIZE);
		reply_commit(c, h, 0, GVM_STAT_SIZE);
		return 0;
	}
	case GVM_OP_FREE:
		if (!conn_has_region(c, h->region, NULL))
			return reply_status(c, h, -EACCES);
		return reply_status(c, h, gvm_store_free(s->store, h->region));
	case GVM_OP_LIST:
		if (!conn_has_region(c, h->region, NULL))
			return reply_status(c, h, -EACCES);
		p = out_reserve(c, GVM_HDR_SIZE + GVM_BITMAP_BYTES(h->count));
		if (!p)
			return reply_status(c, h, -ENOMEM);
		status = gvm_store_list(s->store, h->region, h->page, h->count, p + GVM_HDR_SIZE);
		if (status < 0)
			return reply_status(c, h, status);
		reply_commit(c, h, 0, GVM_BITMAP_BYTES(h->count));
		return 0;
	case GVM_OP_PING:
		return reply_status(c, h, 0);
	default:
		return conn_reject(c, "unexpected op");
	}
}

/*
 * Handle every complete frame at the start of buf. Returns the bytes consumed
 * (the rest is an unfinished frame, or frames held back by backpressure), or
 * -errno to close the connection.
 */
static ssize_t conn_parse(struct gvm_memserver *s, struct conn *c, const uint8_t *buf, size_t len)
{
	size_t off = 0;

	while (!c->closing && !c->paused && len - off >= GVM_HDR_SIZE) {
		struct gvm_hdr h;
		const char *why;

		/* The header is judged as soon as it is here, before any payload is awaited. */
		if (gvm_hdr_decode(buf + off, 0, &h, &why) < 0)
			return conn_reject(c, why);
		if (!c->authed && h.op != GVM_OP_HELLO) {
			pr_warn("client %s: %s before HELLO, closing", c->addr, gvm_op_name(h.op));
			int r = reply_status(c, &h, -EACCES);
			if (r < 0)
				return r;
			c->closing = 1;
			break;
		}
		if (len - off - GVM_HDR_SIZE < h.len)
			break;
		int r = conn_handle(s, c, &h, buf + off + GVM_HDR_SIZE);
		if (r < 0)
			return r;
		off += GVM_HDR_SIZE + h.len;
		s->bytes_in += GVM_HDR_SIZE + h.len;
		if (out_pending(c) > OUT_HIGH)
			c->paused = 1;
	}
	return (ssize_t)off;
}

/* Keep `rest` bytes from src (outside c->in) as the connection's unparsed input. */
static int conn_keep_input(struct conn *c, const uint8_t *src, size_t rest)
{
	if (!rest) {
		free(c->in);
		c->in = NULL;
		c->in_len = c->in_cap = 0;
		return 0;
	}
	if (c->in_cap < rest || c->in_cap > rest + 4096) {
		uint8_t *p = realloc(c->in, rest);
		if (!p)
			return -ENOMEM;
		c->in = p;
		c->in_cap = rest;
	}
	memcpy(c->in, src, rest);
	c->in_len = rest;
	return 0;
}

/* Drop the first `used` bytes of c->in. */
static void conn_consume_input(struct conn *c, size_t used)
{
	size_t rest = c->in_len - used;

	if (!rest) {
		conn_keep_input(c, NULL, 0);
		return;
	}
	memmove(c->in, c->in + used, rest);
	c->in_len = rest;
	if (c->in_cap > rest + 4096) {
		uint8_t *p = realloc(c->in, rest);
		if (p) {  /* a failed shrink leaves the bigger buffer, which is fine */
			c->in = p;
			c->in_cap = rest;
		}
	}
}

static int conn_recv_error(struct conn *c)
{
	int r = -errno;

	if (r != -ECONNRESET && r != -ETIMEDOUT && r != -EPIPE)
		pr_warn("client %s: recv: %s, closing", c->addr, strerror(-r));
	return r;
}

/* Read and handle input. Returns 0, or -errno to close the connection now. */
static int conn_read(struct gvm_memserver *s, struct conn *c)
{
	for (int iter = 0; iter < READS_PER_EVENT && !c->closing && !c->paused; iter++) {
		size_t need = c->in_len >= GVM_HDR_SIZE ? GVM_HDR_SIZE + le32(c->in + 40) : 0;
		ssize_t n;

		if (need > RBUF_SIZE) {
			/* A large frame is received in its own buffer, grown as bytes arrive. */
			if (c->in_cap < need) {
				size_t cap = GVM_MIN(need, GVM_MAX(c->in_cap * 2, c->in_len + RBUF_SIZE));
				uint8_t *p = realloc(c->in, cap);
				if (!p)
					return conn_reject(c, "out of memory for a large frame");
				c->in = p;
				c->in_cap = cap;
			}
			size_t want = GVM_MIN(c->in_cap, need) - c->in_len;
			n = recv(c->fd, c->in + c->in_len, want, 0);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					return 0;
				return conn_recv_error(c);
			}
			if (n == 0) {
				pr_debug("client %s: closed inside a frame", c->addr);
				conn_keep_input(c, NULL, 0);
				c->closing = 1;
				return 0;
			}
			c->in_len += (size_t)n;
			if (c->in_len == need) {
				ssize_t used = conn_parse(s, c, c->in, c->in_len);
				if (used < 0)
					return (int)used;
				conn_keep_input(c, NULL, 0);
			}
			if ((size_t)n < want)
				return 0;
			continue;
		}

		size_t have = c->in_len;
		if (have)
			memcpy(s->rbuf, c->in, have);
		n = recv(c->fd, s->rbuf + have, RBUF_SIZE - have, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return conn_recv_error(c);
		}
		if (n == 0) {
			/* Peer is done sending: answer what came in full, drop any partial frame. */
			if (have)
				pr_debug("client %s: closed inside a frame", c->addr);
			conn_keep_input(c, NULL, 0);
			c->closing = 1;
			return 0;
		}
		size_t total = have + (size_t)n;
		ssize_t used = conn_parse(s, c, s->rbuf, total);
		if (used < 0)
			return (int)used;
		if (c->closing) {
			conn_keep_input(c, NULL, 0);
			return 0;
		}
		if (conn_keep_input(c, s->rbuf + used, total - (size_t)used) < 0)
			return conn_reject(c, "out of memory for input");
		if ((size_t)n < RBUF_SIZE - have)
			return 0;
	}
	return 0;
}

static int conn_flush(struct gvm_memserver *s, struct conn *c)
{
	while (out_pending(c)) {
		ssize_t n = send(c->fd, c->out + c->out_off, out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			int r = -errno;
			if (r != -EPIPE && r != -ECONNRESET)
				pr_warn("client %s: send: %s, closing", c->addr, strerror(-r));
			return r;
		}
		c->out_off += (size_t)n;
		s->bytes_out += (uint64_t)n;
	}
	if (!out_pending(c)) {
		/* Idle connections hold no output buffer (it goes to the spares). */
		out_release(c);
	}
	return 0;
}

static int conn_set_events(struct gvm_memserver *s, struct conn *c)
{
	uint32_t want = (c->paused || c->closing ? 0 : EPOLLIN) | (out_pending(c) ? EPOLLOUT : 0);
	struct epoll_event ev = { .events = want, .data.ptr = c };

	if (want == c->events)
		return 0;
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		int r = -errno;
		pr_warn("client %s: epoll_ctl: %s, closing", c->addr, strerror(-r));
		return r;
	}
	c->events = want;
	return 0;
}

/* Send what can be sent, resume held-back input, update epoll. <0: close it now. */
static int conn_pump(struct gvm_memserver *s, struct conn *c)
{
	for (;;) {
		int r = conn_flush(s, c);
		if (r < 0)
			return r;
		if (!c->paused || c->closing || out_pending(c) > OUT_LOW)
			break;
		c->paused = 0;
		if (!c->in_len)
			break;
		ssize_t used = conn_parse(s, c, c->in, c->in_len);
		if (used < 0)
			return (int)used;
		conn_consume_input(c, (size_t)used);
	}
	/* Done: everything owed to a closing client has been sent. */
	if (c->closing && !out_pending(c))
		return -ECONNRESET;
	return conn_set_events(s, c);
}

static void conn_close(struct gvm_memserver *s, struct conn *c)
{
	/* Explicit: a forked child holding a copy of the fd would keep it registered. */
	if (epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
		pr_debug("client %s: epoll_ctl(DEL): %s", c->addr, strerror(errno));
	if (close(c->fd) < 0)
		pr_debug("client %s: close: %s", c->addr, strerror(errno));
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->n_clients--;
	if (!c->authed)
		s->n_unauthed--;
	pr_debug("client %s: disconnected", c->addr);
	free(c->in);
	out_release(c);
	free(c->regions);
	free(c);
}

static void conn_event(struct gvm_memserver *s, struct conn *c, uint32_t ev)
{
	int r = 0;

	if (ev & EPOLLERR)
		r = -ECONNRESET;
	else if ((ev & (EPOLLIN | EPOLLHUP)) && !c->paused && !c->closing)
		r = conn_read(s, c);
	if (r == 0)
		r = conn_pump(s, c);
	if (r < 0)
		conn_close(s, c);
}

static void conn_new(struct gvm_memserver *s, int fd, const struct sockaddr *sa)
{
	struct gvm_greeting g = { .version = GVM_PROTO_VERSION, .flags = s->token ? GVM_GREET_AUTH : 0 };
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = GVM_OP_GREETING,
		.len = GVM_GREETING_SIZE,
	};
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c = calloc(1, sizeof(*c));
	int one = 1, r;
	uint8_t *p;

	if (!c) {
		pr_warn("out of memory for a new client");
		close(fd);
		return;
	}
	c->kind = SRC_CONN;
	c->spares = &s->spares;
	c->fd = fd;
	format_addr(sa, c->addr, sizeof(c->addr));
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		pr_debug("client %s: TCP_NODELAY: %s", c->addr, strerror(errno));
	r = gvm_random(c->nonce, sizeof(c->nonce));
	p = out_reserve(c, GVM_HDR_SIZE + GVM_GREETING_SIZE);
	if (r < 0 || !p) {
		pr_err("client %s: cannot prepare the greeting: %s", c->addr,
		       strerror(r < 0 ? -r : ENOMEM));
		goto out_free;
	}
	memcpy(g.nonce, c->nonce, GVM_NONCE_SIZE);
	gvm_hdr_encode(&h, p);
	gvm_greeting_encode(&g, p + GVM_HDR_SIZE);
	c->out_len = GVM_HDR_SIZE + GVM_GREETING_SIZE;

	ev.data.ptr = c;
	c->events = EPOLLIN;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		pr_warn("client %s: epoll_ctl(ADD): %s", c->addr, strerror(errno));
		goto out_free;
	}
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->n_clients++;
	s->n_unauthed++;
	c->born_ns = gvm_now_ns();
	pr_debug("client %s: connected", c->addr);
	if (conn_pump(s, c) < 0)
		conn_close(s, c);
	return;

out_free:
	close(fd);
	free(c->out);
	free(c);
}

/* accept() keeps failing while the listener stays readable: warn once a second, not per loop. */
static void accept_warn(struct gvm_memserver *s, struct listener *l, int err, const char *what)
{
	uint64_t now = gvm_now_ns();

	if (now - s->last_accept_warn_ns > 1000000000ull || !s->last_accept_warn_ns) {
		pr_warn("accept on %s: %s%s", l->name, strerror(err), what);
		s->last_accept_warn_ns = now;
	}
}

/* Out of fds: accept and drop one connection so the listener stops firing. */
static void accept_shed(struct gvm_memserver *s, struct listener *l, int err)
{
	int fd;

	accept_warn(s, l, err, "; dropping new connections");
	if (s->spare_fd < 0)
		return;
	close(s->spare_fd);
	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		close(fd);
	s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void listener_accept(struct gvm_memserver *s, struct listener *l)
{
	for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			int e = errno;
			if (e == EINTR || e == ECONNABORTED || e == EPROTO)
				continue;
			if (e == EAGAIN || e == EWOULDBLOCK)
				return;
			if (e == EMFILE || e == ENFILE) {
				accept_shed(s, l, e);
				return;
			}
			accept_warn(s, l, e, "");
			return;
		}
		conn_new(s, fd, (struct sockaddr *)&ss);
	}
}

/* ---------------------------------------------------------------- listeners */

static int is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

static int listener_open(struct gvm_memserver *s, struct listener *l, const char *spec, int insecure)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct addrinfo *res = NULL;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = l };
	char host[256], port[8];
	uint16_t portnum;
	int one = 1, r;

	l->kind = SRC_LISTENER;
	l->fd = -1;
	if (gvm_split_hostport(spec, host, sizeof(host), &portnum, 9999) < 0) {
		pr_err("listen address '%s': expected HOST:PORT or [IPV6]:PORT", spec);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", portnum);
	r = getaddrinfo(host, port, &hints, &res);
	if (r) {
		pr_err("listen address '%s': %s", spec, gai_strerror(r));
		return -EINVAL;
	}
	if (!is_loopback(res->ai_addr) && !s->token && !insecure) {
		pr_err("refusing to listen on '%s': it is not a loopback address and no token is "
		       "configured (give --token-file, or --insecure to allow anyone to connect)", spec);
		r = -EPERM;
		goto out_free;
	}
	l->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		r = -errno;
		pr_perror("listen on '%s': socket", spec);
		goto out_free;
	}
	if (setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
		r = -errno;
		pr_perror("listen on '%s': SO_REUSEADDR", spec);
		goto out_close;
	}
	/* So "[::]:P" and "0.0.0.0:P" can both be listed. */
	if (res->ai_family == AF_INET6 &&
	    setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) {
		r = -errno;
		pr_perror("listen on '%s': IPV6_V6ONLY", spec);
		goto out_close;
	}
	if (bind(l->fd, res->ai_addr, res->ai_addrlen) < 0) {
		r = -errno;
		pr_perror("cannot listen on '%s'", spec);
		goto out_close;
	}
	if (listen(l->fd, LISTEN_BACKLOG) < 0) {
		r = -errno;
		pr_perror("listen on '%s'", spec);
		goto out_close;
	}
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0) {
		r = -errno;
		pr_perror("listen on '%s': getsockname", spec);
		goto out_close;
	}
	l->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
					   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	format_addr((struct sockaddr *)&ss, l->name, sizeof(l->name));
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
		r = -errno;
		pr_perror("listen on '%s': epoll_ctl", spec);
		goto out_close;
	}
	freeaddrinfo(res);
	pr_info("listening on %s%s", l->name, s->token ? " (token required)" : "");
	return 0;

out_close:
	close(l->fd);
	l->fd = -1;
out_free:
	freeaddrinfo(res);
	return r;
}

/* ---------------------------------------------------------------- API */

int gvm_memserver_open(struct gvm_memserver **out, const struct gvm_memserver_opts *opts)
{
	struct gvm_store_opts so = { .backing = opts->backing, .fsync_mode = opts->fsync_mode,
				     .prealloc = opts->prealloc };
	struct epoll_event ev = { .events = EPOLLIN };
	struct gvm_memserver *s;
	unsigned n_listen = opts->n_listen ? opts->n_listen : 1;
	char err[512];
	long nofile;
	int r;

	*out = NULL;
	if (opts->n_listen > GVM_MEMSERVER_MAX_LISTEN) {
		pr_err("at most %u listen addresses", GVM_MEMSERVER_MAX_LISTEN);
		return -EINVAL;
	}
	if (opts->fsync_mode != GVM_FSYNC_NONE && opts->fsync_mode != GVM_FSYNC_ALWAYS) {
		pr_err("unknown fsync mode %d", opts->fsync_mode);
		return -EINVAL;
	}
	so.capacity_pages = opts->capacity / GVM_PAGE_SIZE;
	if (opts->capacity && !so.capacity_pages) {
		pr_err("capacity %" PRIu64 " is smaller than one page", opts->capacity);
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->epfd = s->stopfd = s->spare_fd = -1;
	s->stop_kind = SRC_STOP;
	s->hello_timeout_ns = (uint64_t)(opts->hello_timeout_ms > 0 ? opts->hello_timeout_ms : 10000) * 1000000ull;
	for (unsigned i = 0; i < GVM_MEMSERVER_MAX_LISTEN; i++)
		s->lis[i].fd = -1;

	if (opts->token_file) {
		r = gvm_auth_load_token(opts->token_file, &s->token, &s->token_len, err, sizeof(err));
		if (r < 0) {
			pr_err("%s", err);
			goto out_close;
		}
	}
	/* Every client is an fd; 10,000 of them need more than the usual 1024. */
	nofile = gvm_raise_nofile();
	if (nofile < 0)
		pr_warn("cannot raise the open-file limit: %s", strerror((int)-nofile));
	else
		pr_debug("open-file limit %ld", nofile);

	r = gvm_store_open(&s->store, &so, err, sizeof(err));
	if (r < 0) {
		pr_err("%s", err);
		goto out_close;
	}
	r = -ENOMEM;
	s->rbuf = malloc(RBUF_SIZE);
	if (!s->rbuf)
		goto out_close;
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (s->epfd < 0) {
		r = -errno;
		pr_perror("epoll_create1");
		goto out_close;
	}
	s->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->stopfd < 0) {
		r = -errno;
		pr_perror("eventfd");
		goto out_close;
	}
	ev.data.ptr = &s->stop_kind;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->stopfd, &ev) < 0) {
		r = -errno;
		pr_perror("epoll_ctl");
		goto out_close;
	}
	s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->spare_fd < 0) {
		r = -errno;
		pr_perror("/dev/null");
		goto out_close;
	}
	for (unsigned i = 0; i < n_listen; i++) {
		const char *spec = opts->n_listen ? opts->listen[i] : DEFAULT_LISTEN;
		if (!spec) {
			pr_err("listen address %u is missing", i);
			r = -EINVAL;
			goto out_close;
		}
		r = listener_open(s, &s->lis[i], spec, opts->insecure);
		if (r < 0)
			goto out_close;
		s->n_lis++;
	}
	if (opts->backing) {
		struct gvm_store_stats st;
		gvm_store_get_stats(s->store, &st);
		pr_info("backing file %s: %" PRIu64 " pages in %" PRIu64 " regions%s", opts->backing,
			st.pages_stored, st.regions,
			opts->fsync_mode == GVM_FSYNC_ALWAYS ? ", fdatasync before every ack" : "");
	}
	*out = s;
	return 0;

out_close:
	gvm_memserver_close(s);
	return r;
}

int gvm_memserver_port(const struct gvm_memserver *s, unsigned idx)
{
	if (!s || idx >= s->n_lis)
		return -EINVAL;
	return s->lis[idx].port;
}

/*
 * Close clients that have not completed HELLO within the timeout: an
 * unauthenticated connection must not hold a descriptor and its buffers
 * forever. Runs at most every quarter of the timeout, and only while such
 * clients exist, so 10,000 authenticated clients cost nothing here.
 */
static void sweep_unauthed(struct gvm_memserver *s)
{
	uint64_t now = gvm_now_ns();

	if (!s->n_unauthed || now < s->next_sweep_ns)
		return;
	s->next_sweep_ns = now + s->hello_timeout_ns / 4;
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (!c->authed && now - c->born_ns >= s->hello_timeout_ns) {
			pr_debug("client %s: no HELLO within %llu ms, closing", c->addr,
				 (unsigned long long)(s->hello_timeout_ns / 1000000ull));
			conn_close(s, c);
		}
	}
}

int gvm_memserver_run(struct gvm_memserver *s)
{
	struct epoll_event ev[MAX_EVENTS];

	for (;;) {
		/* With unauthenticated clients around, wake up to time them out. */
		int wait_ms = s->n_unauthed ? (int)GVM_MAX(s->hello_timeout_ns / 4000000ull, 1ull) : -1;
		int n = epoll_wait(s->epfd, ev, MAX_EVENTS, wait_ms), stop = 0;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			int r = -errno;
			pr_perror("epoll_wait");
			return r;
		}
		for (int i = 0; i < n; i++) {
			int kind = *(int *)ev[i].data.ptr;

			if (kind == SRC_CONN) {
				conn_event(s, ev[i].data.ptr, ev[i].events);
			} else if (kind == SRC_LISTENER) {
				listener_accept(s, ev[i].data.ptr);
			} else {
				uint64_t v;
				/* Drain so a later run() waits again; EAGAIN just means drained. */
				if (read(s->stopfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
					pr_perror("eventfd read");
				stop = 1;
			}
		}
		if (stop)
			return 0;
		sweep_unauthed(s);
	}
}

void gvm_memserver_stop(struct gvm_memserver *s)
{
	uint64_t one = 1;
	int saved = errno;

	/* Only fails with EAGAIN when the counter is saturated: a stop is pending anyway. */
	if (write(s->stopfd, &one, sizeof(one)) < 0)
		errno = saved;
	errno = saved;
}

void gvm_memserver_close(struct gvm_memserver *s)
{
	if (!s)
		return;
	while (s->conns)
		conn_close(s, s->conns);
	for (unsigned i = 0; i < GVM_MEMSERVER_MAX_LISTEN; i++)
		if (s->lis[i].fd >= 0)
			close(s->lis[i].fd);
	if (s->spare_fd >= 0)
		close(s->spare_fd);
	if (s->stopfd >= 0)
		close(s->stopfd);
	if (s->epfd >= 0)
		close(s->epfd);
	gvm_store_close(s->store);
	if (s->token) {
		OPENSSL_cleanse(s->token, s->token_len);
		free(s->token);
	}
	free(s->rbuf);
	while (s->spares.n)
		free(s->spares.buf[--s->spares.n]);
	free(s);
}
