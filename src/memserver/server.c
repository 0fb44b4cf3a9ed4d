/*
 * The memory server's event loop: one epoll instance, non-blocking sockets,
 * level-triggered. Input is read into one loop-wide buffer and parsed in
 * place; a connection keeps only the bytes of an unfinished frame, so an idle
 * client costs one small struct. Replies queue in a per-connection output
 * buffer that exists only while it holds unsent bytes.
 *
 * DESIGN: the server serves tenants it does not trust, so everything a
 * client can make it hold is bounded and accounted (docs/MEMSERVER.md
 * "Limits"):
 *  - buffers: every input and output buffer counts against one budget; over
 *    it, a connection is not read (it waits on a FIFO, woken as buffers
 *    drain) and no new reply bigger than a header is produced; a client that
 *    leaves replies unread or a frame half-sent for the I/O timeout, or
 *    whose requests were held back that long, is closed, which is what
 *    bounds how long the others wait;
 *  - descriptors: a total cap, a cap per peer address, at most max_unauthed
 *    connections before HELLO (a new one evicts the oldest: an attacker
 *    cannot hold the slots honest clients need for their few milliseconds of
 *    handshake), idle and keepalive timeouts;
 *  - regions: OPEN binds nothing in the store (a region is named by its id
 *    and key and exists only while it holds pages); a connection may OPEN at
 *    most max_conn_regions;
 *  - information: a tenant's STAT counts its own connection and regions;
 *    only a client proving the admin token sees the node; freed bytes are
 *    scrubbed from every buffer before it is reused or freed.
 * One thread: nothing here is shared except gvm_memserver_stop()'s eventfd.
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
#include "siphash.h"
#include "store.h"
#include "util.h"

#define RBUF_SIZE         (256u * 1024)  /* loop-wide read buffer */
#define OUT_HIGH          (4u << 20)     /* stop reading a client with this much unsent */
#define OUT_LOW           (1u << 20)     /* ... and read again once below this */
#define MAX_EVENTS        256
#define READS_PER_EVENT   4              /* then let other clients run */
#define ACCEPTS_PER_EVENT 128
#define LISTEN_BACKLOG    4096
#define ADDR_LEN          56             /* "[v6 address]:65535" */
#define DEFAULT_LISTEN    "127.0.0.1:9999"
#define FD_RESERVE        64             /* descriptors kept for the server itself */
#define ACCEPT_RETRY_NS   (100 * 1000000ull) /* a listener set aside out of descriptors, looked at again */
#define LOG_BURST         10             /* rate-limited warnings: this many per second */
/* replies allowed over the budget (see DESIGN): a status, or HELLO's proof */
#define SMALL_REPLY       (GVM_HDR_SIZE + GVM_PROOF_SIZE)
#define PEER_BUDGET_SHARE 4              /* one address may hold 1/4 of the buffer budget */

#define DEF_MAX_CONN_REGIONS 1024u
#define DEF_BUFFER_BUDGET    (256ull << 20)
#define DEF_MAX_UNAUTHED     1024u
#define DEF_MAX_PEER_CONNS   256u
#define DEF_IDLE_TIMEOUT_MS  600000
#define DEF_IO_TIMEOUT_MS    30000
#define DEF_KEEPALIVE_S      60

/* Every epoll data pointer points at one of these tags first. */
enum src_kind { SRC_LISTENER = 1, SRC_CONN, SRC_STOP, SRC_ZOMBIE /* closed, freed after the batch */,
		SRC_METRICS /* the --metrics responder's epoll fd */ };

/* Metrics (docs/METRICS.md): why connections were refused or closed. */
enum { REFUSE_UNAUTHED, REFUSE_EVICTED, REFUSE_MAX_CLIENTS, REFUSE_PEER_CONNS, REFUSE_NOMEM,
       REFUSE_FDS, REFUSE_METRICS, REFUSE_N };
static const char *const refuse_names[REFUSE_N] = {
	"max_unauthenticated", "evicted_unauthenticated", "max_clients", "max_peer_conns",
	"out_of_memory", "out_of_fds", "metrics_scrapers",
};
enum { CLOSE_HELLO_TIMEOUT, CLOSE_IO_TIMEOUT, CLOSE_IDLE, CLOSE_N };
static const char *const close_names[CLOSE_N] = { "hello_timeout", "io_timeout", "idle" };
#define METRIC_OPS 16   /* ops counted by number below this; GVM_OP_PING is the last */

struct listener {
	int kind;
	int fd;
	int port;
	int off;             /* not watched: out of descriptors (accept_shed()) */
	char name[ADDR_LEN];
};

/* Output buffers of connections that went idle, lent to the next one that
 * needs one: a busy client gets a warm buffer instead of a fresh allocation
 * (page faults on every reply), while 10,000 idle clients hold none. They
 * count against the buffer budget, so they are a small part of it and are
 * the first thing given up when the server is over it: memory nobody uses
 * must never be what holds clients back. */
#define OUT_SPARES     16
#define OUT_SPARE_MAX  (1u << 20)
#define SPARE_SHARE    16               /* spares hold at most 1/16 of the budget */
struct out_spares {
	uint8_t *buf[OUT_SPARES];
	size_t cap[OUT_SPARES];
	unsigned n;
	size_t bytes;        /* sum of cap[] */
};

/* A region this connection has OPENed: its id and the key that names it. */
struct conn_region {
	uint64_t id;
	uint8_t key[GVM_KEY_SIZE];
};

/* Intrusive doubly linked list (the unauthenticated FIFO, the starved FIFO). */
struct link {
	struct conn *prev, *next;
};
struct fifo {
	struct conn *head, *tail;
};

/* What the connections from one address hold. Kept in an open-addressing
 * table of pointers (backward-shift deletion); freed with its last connection. */
struct peer {
	uint8_t addr[16];    /* IPv4 as ::ffff:a.b.c.d */
	uint32_t conns;
	uint32_t unauthed;   /* of those, before HELLO */
	uint64_t owner;      /* its id for the store's quotas (non-zero) */
	uint64_t buffered;   /* bytes of its connections' input and output buffers */
};

struct conn {
	int kind;
	int fd;
	uint32_t events;     /* currently registered with epoll */
	uint8_t authed;
	uint8_t admin;       /* proved the admin token: node-wide STAT */
	uint8_t closing;     /* no more input; close once output is sent */
	uint8_t paused;      /* too much unsent output: input held back */
	uint8_t starved;     /* over the buffer budget: on s->starved, not read */
	uint64_t born_ns;    /* accepted at (for the HELLO timeout) */
	uint64_t last_req_ns;  /* last request handled (idle timeout) */
	uint64_t in_since_ns;  /* the first byte of the frame at the head of c->in came (I/O timeout) */
	uint64_t in_recv_ns;   /* the last recv whose bytes are in c->in came */
	uint64_t out_since_ns; /* the output pending then must be sent within the I/O timeout ... */
	uint64_t out_mark;     /* ... i.e. once bytes_out reaches this */
	uint64_t starved_ns;   /* starved since */
	uint8_t *in;         /* unparsed input: an unfinished frame, or frames held back */
	size_t in_len, in_cap;
	uint8_t *out;        /* unsent output, from out_off to out_len */
	size_t out_off, out_len, out_cap;
	size_t out_hw;       /* end of what was reserved since the buffer was taken: bytes to scrub */
	struct conn_region *regions; /* OPENed regions, sorted by id */
	uint32_t n_regions, cap_regions;
	uint64_t reads, writes, bytes_in, bytes_out; /* this connection's, for its STAT */
	struct gvm_memserver *srv;
	struct conn *prev, *next;   /* all connections */
	struct link ulink;   /* on s->unauthed while !authed */
	struct link slink;   /* on s->starved while starved */
	struct peer *peer;   /* its address's share of connections and buffers */
	struct gvm_session sess; /* nonce; after an authenticated HELLO, the frame keys */
	char addr[ADDR_LEN];
};

struct ratelimit {
	uint64_t window_ns;  /* start of the current one-second window */
	unsigned n;          /* lines logged in it */
	uint64_t dropped;    /* lines not logged since the last report */
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
	uint8_t *admin_token;
	size_t admin_token_len;
	uint8_t *rbuf;
	uint8_t *tagbuf;           /* a READ's tags (GVM_MAX_PAGES of them), before they follow its pages */
	size_t (*test_read_hook)(void *, uint64_t, uint64_t, unsigned, int, uint8_t *, size_t, size_t);
	void *test_hook_arg;
	struct out_spares spares;
	struct conn *conns;
	struct conn *zombies;      /* closed during an event batch that may still name them */
	struct fifo unauthed;      /* clients before HELLO, oldest first */
	struct fifo starved;       /* clients waiting for buffer budget, oldest first */
	uint64_t n_clients, reads, writes, bytes_in, bytes_out;
	uint64_t n_unauthed;       /* clients that have not completed HELLO */
	uint64_t buffered;         /* bytes of all input, output and spare buffers */
	struct peer **peers;
	size_t peers_cap, peers_n;
	struct gvm_sipkey peer_hkey;  /* the peer table's hash (clients choose their addresses) */
	struct gvm_sipkey owner_hkey; /* a peer's owner id for the store's quotas */
	int released;              /* buffers shrank since starved clients were last looked at */
	/* limits */
	uint64_t budget;
	uint64_t peer_budget;      /* one address's share of the budget */
	uint32_t max_conn_regions;
	uint64_t max_clients, max_unauthed;
	uint32_t max_peer_conns;
	uint64_t hello_timeout_ns, idle_timeout_ns, io_timeout_ns;
	int keepalive_s;
	uint64_t next_sweep_ns;    /* next look for clients past a timeout */
	uint64_t last_accept_warn_ns;
	uint64_t listen_retry_ns;  /* listeners set aside are watched again then (0: none is) */
	struct ratelimit rl_hello, rl_refuse;
	uint64_t refused;          /* connections refused or evicted by a limit */
	/* --metrics: the responder and what only it reads (this thread's counters) */
	struct gvm_http *metrics;
	int metrics_kind;          /* epoll tag of the responder's fd */
	int metrics_next_ms;       /* its next timeout, -1 = none pending */
	uint64_t start_ns, start_unix_ns;
	uint64_t op_requests[METRIC_OPS], op_errors[METRIC_OPS]; /* replies sent, by op; of which errors */
	uint64_t lat[GVM_LAT_BUCKETS + 1], lat_sum_ns; /* request service time */
	uint64_t proto_errors;     /* connections closed for a malformed frame */
	uint64_t refused_by[REFUSE_N];
	uint64_t closed_by[CLOSE_N];
};

static void metrics_latency(struct gvm_memserver *s, uint64_t ns)
{
	s->lat[gvm_lat_bucket(ns)]++;
	s->lat_sum_ns += ns;
}

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

/* 1 if a line may be logged now. A flood (failed HELLOs from 10,000
 * connections) costs LOG_BURST lines a second and one summary. */
static int ratelimit_ok(struct ratelimit *rl, const char *what)
{
	uint64_t now = gvm_now_ns();

	if (now - rl->window_ns >= 1000000000ull) {
		if (rl->dropped)
			pr_warn("%" PRIu64 " more %s not logged", rl->dropped, what);
		rl->window_ns = now;
		rl->n = 0;
		rl->dropped = 0;
	}
	if (rl->n < LOG_BURST) {
		rl->n++;
		return 1;
	}
	rl->dropped++;
	return 0;
}

/* ---------------------------------------------------------------- lists */

static void fifo_push(struct fifo *f, struct conn *c, struct link *l, size_t off)
{
	l->next = NULL;
	l->prev = f->tail;
	if (f->tail)
		((struct link *)((char *)f->tail + off))->next = c;
	else
		f->head = c;
	f->tail = c;
}

static void fifo_del(struct fifo *f, struct conn *c, struct link *l, size_t off)
{
	if (l->prev)
		((struct link *)((char *)l->prev + off))->next = l->next;
	else
		f->head = l->next;
	if (l->next)
		((struct link *)((char *)l->next + off))->prev = l->prev;
	else
		f->tail = l->prev;
	l->prev = l->next = NULL;
	(void)c;
}

#define ULINK offsetof(struct conn, ulink)
#define SLINK offsetof(struct conn, slink)

/* ---------------------------------------------------------------- peers */

static size_t peer_home(const struct gvm_memserver *s, const uint8_t addr[16], size_t cap)
{
	return (size_t)gvm_siphash24(&s->peer_hkey, addr, 16) & (cap - 1);
}

static struct peer *peer_find(struct gvm_memserver *s, const uint8_t addr[16])
{
	size_t mask = s->peers_cap - 1, i = peer_home(s, addr, s->peers_cap);

	for (;;) {
		struct peer *p = s->peers[i];
		if (!p)
			return NULL;
		if (!memcmp(p->addr, addr, 16))
			return p;
		i = (i + 1) & mask;
	}
}

static int peer_grow(struct gvm_memserver *s)
{
	size_t cap = s->peers_cap * 2;
	struct peer **t, **old = s->peers;

	if ((s->peers_n + 1) * 2 <= s->peers_cap)
		return 0;
	t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < s->peers_cap; i++) {
		if (!old[i])
			continue;
		size_t j = peer_home(s, old[i]->addr, cap);
		while (t[j])
			j = (j + 1) & (cap - 1);
		t[j] = old[i];
	}
	free(old);
	s->peers = t;
	s->peers_cap = cap;
	return 0;
}

/* One more connection from addr: its peer, or NULL with *err = -EMFILE over
 * the per-address cap (or -ENOMEM). */
static struct peer *peer_get(struct gvm_memserver *s, const uint8_t addr[16], int *err)
{
	struct peer *p = peer_find(s, addr);

	if (p) {
		if (p->conns >= s->max_peer_conns) {
			*err = -EMFILE;
			return NULL;
		}
		p->conns++;
		return p;
	}
	*err = -ENOMEM;
	if (peer_grow(s) < 0 || !(p = calloc(1, sizeof(*p))))
		return NULL;
	memcpy(p->addr, addr, 16);
	p->conns = 1;
	p->owner = gvm_siphash24(&s->owner_hkey, addr, 16) | 1;
	size_t mask = s->peers_cap - 1, i = peer_home(s, addr, s->peers_cap);
	while (s->peers[i])
		i = (i + 1) & mask;
	s->peers[i] = p;
	s->peers_n++;
	return p;
}

static void peer_put(struct gvm_memserver *s, struct peer *p)
{
	size_t mask = s->peers_cap - 1, i, j;

	if (!p || --p->conns)
		return;
	i = peer_home(s, p->addr, s->peers_cap);
	while (s->peers[i] != p)
		i = (i + 1) & mask;
	j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (!s->peers[j])
			break;
		size_t k = peer_home(s, s->peers[j]->addr, s->peers_cap);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		s->peers[i] = s->peers[j];
		i = j;
	}
	s->peers[i] = NULL;
	s->peers_n--;
	free(p);
}

static void peer_key(const struct sockaddr *sa, uint8_t out[16])
{
	memset(out, 0, 16);
	if (sa->sa_family == AF_INET) {
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(out, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
	}
}

/* ---------------------------------------------------------------- buffers */

/*
 * Every buffer a client makes the server hold goes through here, so
 * s->buffered is exact. Contents are scrubbed before memory is given back
 * or changes hands: a tenant's pages must not outlive their FREE in a
 * buffer another client's reply is built in (or in a core, or in the heap).
 */
static int buf_resize(struct gvm_memserver *s, struct conn *c, uint8_t **buf, size_t *cap,
		      size_t want, size_t keep)
{
	uint8_t *p = NULL;

	if (want) {
		p = malloc(want);
		if (!p)
			return -ENOMEM;
		if (keep)
			memcpy(p, *buf, keep);
	}
	if (*buf) {
		OPENSSL_cleanse(*buf, *cap);
		free(*buf);
	}
	s->buffered = s->buffered - *cap + want;
	c->peer->buffered = c->peer->buffered - *cap + want;
	if (want < *cap)
		s->released = 1;
	*buf = p;
	*cap = want;
	return 0;
}

/* The last spare output buffer, scrubbed and freed: all of it, not only
 * up to the out_hw it was scrubbed to when it became a spare. */
static void spare_free(struct gvm_memserver *s)
{
	struct out_spares *sp = &s->spares;

	sp->n--;
	OPENSSL_cleanse(sp->buf[sp->n], sp->cap[sp->n]);
	free(sp->buf[sp->n]);
	s->buffered -= sp->cap[sp->n];
	sp->bytes -= sp->cap[sp->n];
	s->released = 1;
}

/* Over the budget, or this client's address over its share of it: one
 * address (however many connections it opens) cannot take it all. Spares
 * go before anyone is held back for them. */
static int over_budget(struct gvm_memserver *s, const struct conn *c)
{
	while (s->buffered >= s->budget && s->spares.n)
		spare_free(s);
	return s->buffered >= s->budget || c->peer->buffered >= s->peer_budget;
}

static size_t out_pending(const struct conn *c)
{
	return c->out_len - c->out_off;
}

/*
 * Start the clock of the output pending now: all of it must be sent within
 * the I/O timeout, so a reply is sent within twice the timeout of being
 * queued. Mere progress (a client reading a segment now and then) does not
 * restart it, or a trickle would hold its buffers, and keep the clients
 * waiting for the budget waiting, forever.
 */
static void out_clock_start(struct conn *c)
{
	c->out_since_ns = gvm_now_ns();
	c->out_mark = c->bytes_out + out_pending(c);
}

static void out_release(struct conn *c)
{
	struct gvm_memserver *s = c->srv;
	struct out_spares *sp = &s->spares;

	if (!c->out)
		return;
	if (sp->n < OUT_SPARES && c->out_cap <= OUT_SPARE_MAX &&
	    sp->bytes + c->out_cap <= s->budget / SPARE_SHARE && s->buffered < s->budget) {
		/* Still counted in s->buffered while it is a spare. */
		OPENSSL_cleanse(c->out, c->out_hw);
		c->peer->buffered -= c->out_cap;
		s->released = 1;
		sp->buf[sp->n] = c->out;
		sp->cap[sp->n] = c->out_cap;
		sp->bytes += c->out_cap;
		sp->n++;
		c->out = NULL;
		c->out_cap = 0;
	} else {
		buf_resize(s, c, &c->out, &c->out_cap, 0, 0);
	}
	c->out_off = c->out_len = c->out_hw = 0;
}

/* Room for n more output bytes at c->out + c->out_len (and the frame's tag
 * after them), or NULL. */
static uint8_t *out_reserve(struct conn *c, size_t n)
{
	struct gvm_memserver *s = c->srv;

	n += GVM_TAG_SIZE;
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (!c->out && s->spares.n) {
		s->spares.n--;
		c->out = s->spares.buf[s->spares.n];
		c->out_cap = s->spares.cap[s->spares.n];
		s->spares.bytes -= c->out_cap;
		c->out_hw = 0;
		c->peer->buffered += c->out_cap;
	}
	if (c->out_cap - c->out_len < n && c->out_off) {
		memmove(c->out, c->out + c->out_off, out_pending(c));
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_cap - c->out_len < n) {
		size_t cap = GVM_MAX(GVM_MAX(c->out_cap * 2, c->out_len + n), (size_t)1024);
		if (buf_resize(s, c, &c->out, &c->out_cap, cap, c->out_len) < 0)
			return NULL;
		c->out_hw = c->out_len;
	}
	/* The caller may write all of it and then not commit (a READ that
	 * fails after copying pages): scrubbed all the same. */
	c->out_hw = GVM_MAX(c->out_hw, c->out_len + n);
	return c->out + c->out_len;
}

/* Encode the reply header in front of `len` payload bytes already placed by the caller. */
static void reply_commit(struct conn *c, const struct gvm_hdr *req, int status, size_t len)
{
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION,
		.op = (uint16_t)(req->op | GVM_OP_REPLY), .id = req->id, .region = req->region,
		.page = req->page, .count = req->count, .status = status, .len = (uint32_t)len,
		/* A READ asked with tags is answered with them. */
		.flags = status == 0 && req->op == GVM_OP_READ ? (req->flags & GVM_HF_TAGS) : 0,
	};

	int idle = !out_pending(c);

	if (req->op < METRIC_OPS) {
		c->srv->op_requests[req->op]++;
		c->srv->op_errors[req->op] += status < 0;
	}
	gvm_hdr_encode(&h, c->out + c->out_len);
	c->out_len += GVM_HDR_SIZE + len;
	if (c->sess.on) {
		/* out_reserve() left room for it. A failure leaves a wrong tag:
		 * the client drops the connection, which is what we want. */
		uint8_t *f = c->out + c->out_len - GVM_HDR_SIZE - len;
		if (gvm_session_tag_begin(&c->sess, f) < 0 ||
		    gvm_session_tag_add(&c->sess, f + GVM_HDR_SIZE, len) < 0 ||
		    gvm_session_tag_end(&c->sess, c->out + c->out_len) < 0)
			memset(c->out + c->out_len, 0, GVM_TAG_SIZE);
		c->out_len += GVM_TAG_SIZE;
	}
	c->out_hw = GVM_MAX(c->out_hw, c->out_len);
	if (idle)
		out_clock_start(c);
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
	c->srv->proto_errors++;
	pr_warn("client %s: %s, closing", c->addr, why);
	return -EPROTO;
}

/* ---------------------------------------------------------------- regions */

static struct conn_region *conn_region(const struct conn *c, uint64_t id, uint32_t *pos)
{
	uint32_t lo = 0, hi = c->n_regions;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->regions[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (pos)
		*pos = lo;
	return lo < c->n_regions && c->regions[lo].id == id ? &c->regions[lo] : NULL;
}

/*
 * OPEN binds nothing in the store: it names (id, key) for this connection's
 * later requests. The limit is checked first, so a refused OPEN changes
 * nothing. A second OPEN of an id with another key switches this connection
 * to that region.
 */
static int conn_add_region(struct gvm_memserver *s, struct conn *c, uint64_t id, const uint8_t *key)
{
	struct conn_region *r = conn_region(c, id, NULL);
	uint32_t pos;

	if (r) {
		memcpy(r->key, key, GVM_KEY_SIZE);
		return 0;
	}
	if (c->n_regions >= s->max_conn_regions)
		return -ENOSPC;
	conn_region(c, id, &pos);
	if (c->n_regions == c->cap_regions) {
		uint32_t cap = c->cap_regions ? GVM_MIN(c->cap_regions * 2, s->max_conn_regions) : 2;
		struct conn_region *n = malloc(cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		if (c->n_regions)
			memcpy(n, c->regions, c->n_regions * sizeof(*n));
		if (c->regions) {
			OPENSSL_cleanse(c->regions, c->cap_regions * sizeof(*n));
			free(c->regions);
		}
		c->regions = n;
		c->cap_regions = cap;
	}
	memmove(c->regions + pos + 1, c->regions + pos, (c->n_regions - pos) * sizeof(*c->regions));
	c->regions[pos].id = id;
	memcpy(c->regions[pos].key, key, GVM_KEY_SIZE);
	c->n_regions++;
	return 0;
}

/* ---------------------------------------------------------------- requests */

static void unauthed_del(struct gvm_memserver *s, struct conn *c)
{
	if (c->authed)
		return;
	fifo_del(&s->unauthed, c, &c->ulink, ULINK);
	s->n_unauthed--;
	c->peer->unauthed--;
}

/*
 * HELLO: with a token configured, the client's MAC must prove the token (or
 * the admin token); the reply then carries the server's ephemeral key and
 * proof, and every later frame in both directions is tagged (auth.h).
 */
static int handle_hello(struct gvm_memserver *s, struct conn *c, const struct gvm_hdr *h,
			const uint8_t *payload)
{
	struct gvm_hello hello;
	uint8_t reply[GVM_PROOF_SIZE];
	const char *fail = NULL;
	int status = 0, admin = 0, session = 0, r;

	if (c->authed)
		return reply_status(c, h, -EALREADY);
	gvm_hello_decode(payload, &hello);
	if (hello.version != GVM_PROTO_VERSION) {
		status = -EPROTONOSUPPORT;
		fail = "HELLO with another protocol version";
	} else if (s->token || s->admin_token) {
		if (!(hello.flags & GVM_HELLO_MAC)) {
			if (s->token) {
				status = -EACCES;
				fail = "HELLO without a MAC";
			}
		} else if (s->admin_token &&
			   (r = gvm_session_accept(&c->sess, s->admin_token, s->admin_token_len, &hello,
						   reply)) != 0) {
			if (r < 0) {
				status = r == -EACCES ? -EACCES : -EIO;
				fail = "the session handshake failed";
			} else {
				admin = session = 1;
			}
		} else if (!s->token) {
			/* A MAC nobody asked for: not the admin's, so an ordinary client
			 * (one that holds a token will not accept the missing proof). */
		} else if ((r = gvm_session_accept(&c->sess, s->token, s->token_len, &hello, reply)) < 0) {
			status = r == -EACCES ? -EACCES : -EIO;
			fail = "the session handshake failed";
		} else if (r == 0) {
			status = -EACCES;
			fail = "HELLO with a wrong MAC";
		} else {
			session = 1;
		}
	}
	OPENSSL_cleanse(&hello, sizeof(hello));
	if (fail && ratelimit_ok(&s->rl_hello, "failed HELLOs"))
		pr_warn("client %s: %s, closing", c->addr, fail);
	if (session && !status) {
		uint8_t *p = out_reserve(c, GVM_HDR_SIZE + GVM_PROOF_SIZE);
		if (!p) {
			pr_warn("client %s: out of memory for a reply, closing", c->addr);
			return -ENOMEM;
		}
		memcpy(p + GVM_HDR_SIZE, reply, GVM_PROOF_SIZE);
		reply_commit(c, h, 0, GVM_PROOF_SIZE);
		c->sess.on = 1;  /* every frame after this reply and after the HELLO */
	} else if ((r = reply_status(c, h, status)) < 0) {
		return r;
	}
	if (status) {
		c->closing = 1;
	} else {
		unauthed_del(s, c);
		c->authed = 1;
		c->admin = (uint8_t)admin;
	}
	return 0;
}

/* STAT: the node for the admin, this connection and its regions for a tenant. */
static int handle_stat(struct gvm_memserver *s, struct conn *c, const struct gvm_hdr *h)
{
	struct gvm_store_stats ss;
	struct gvm_stat st;
	uint8_t *p = out_reserve(c, GVM_HDR_SIZE + GVM_STAT_SIZE);

	if (!p)
		return reply_status(c, h, -ENOMEM);
	gvm_store_get_stats(s->store, &ss);
	if (c->admin) {
		st = (struct gvm_stat){
			.pages_stored = ss.pages_stored, .capacity_pages = ss.capacity_pages,
			.regions = ss.regions, .clients = s->n_clients, .reads = s->reads,
			.writes = s->writes, .bytes_out = s->bytes_out, .bytes_in = s->bytes_in,
		};
	} else {
		st = (struct gvm_stat){
			.capacity_pages = ss.capacity_pages, .clients = 1, .reads = c->reads,
			.writes = c->writes, .bytes_out = c->bytes_out, .bytes_in = c->bytes_in,
		};
		for (uint32_t i = 0; i < c->n_regions; i++) {
			uint64_t n = gvm_store_region_pages(s->store, c->regions[i].id, c->regions[i].key);
			st.pages_stored += n;
			st.regions += n != 0;
		}
	}
	gvm_stat_encode(&st, p + GVM_HDR_SIZE);
	reply_commit(c, h, 0, GVM_STAT_SIZE);
	return 0;
}

/* One complete, header-validated frame. Returns 0, or -errno to close the connection. */
static int conn_handle(struct gvm_memserver *s, struct conn *c, const struct gvm_hdr *h,
		       const uint8_t *payload)
{
	struct conn_region *rg = NULL;
	const char *why;
	uint8_t *p;
	int status;

	c->last_req_ns = gvm_now_ns();
	if (h->op == GVM_OP_READ || h->op == GVM_OP_WRITE || h->op == GVM_OP_FREE ||
	    h->op == GVM_OP_LIST) {
		if (h->op == GVM_OP_WRITE &&
		    gvm_pages_check_tagged(payload, h->len, h->count, h->flags & GVM_HF_TAGS, &why) < 0)
			return conn_reject(c, why); /* malformed payloads are framing errors */
		if (h->op == GVM_OP_READ) {
			s->reads++;
			c->reads++;
		} else if (h->op == GVM_OP_WRITE) {
			s->writes++;
			c->writes++;
		}
		rg = conn_region(c, h->region, NULL);
		if (!rg)
			return reply_status(c, h, -EACCES);
	}
	switch (h->op) {
	case GVM_OP_HELLO:
		return handle_hello(s, c, h, payload);
	case GVM_OP_OPEN: {
		/* The region's verifier, unpadded (the key itself never comes). */
		uint8_t v[GVM_KEY_SIZE];
		memcpy(v, payload, GVM_KEY_SIZE);
		if (c->sess.on && gvm_session_open_pad(&c->sess, h->region, c->sess.seq_last_in, v, v) < 0)
			status = -EIO;
		else
			status = conn_add_region(s, c, h->region, v);
		OPENSSL_cleanse(v, sizeof(v));
		return reply_status(c, h, status);
	}
	case GVM_OP_READ: {
		uint8_t *tags = s->tagbuf;
		int tagged = h->flags & GVM_HF_TAGS;
		p = out_reserve(c, GVM_HDR_SIZE + gvm_pages_len(h->count, h->count) +
				   (tagged ? (size_t)h->count * GVM_TAG_SIZE : 0));
		if (!p)
			return reply_status(c, h, -ENOMEM);
		ssize_t n = gvm_store_read_tagged(s->store, h->region, rg->key, h->page, h->count,
						  p + GVM_HDR_SIZE, tagged ? tags : NULL);
		if (n < 0)
			return reply_status(c, h, (int)n);
		if (tagged) {
			size_t tl = ((size_t)n - GVM_BITMAP_BYTES(h->count)) / GVM_PAGE_SIZE * GVM_TAG_SIZE;
			memcpy(p + GVM_HDR_SIZE + n, tags, tl);
			n += (ssize_t)tl;
		}
		if (s->test_read_hook)
			n = (ssize_t)s->test_read_hook(s->test_hook_arg, h->region, h->page, h->count, tagged,
						       p + GVM_HDR_SIZE, (size_t)n,
						       gvm_pages_len(h->count, h->count) +
						       (tagged ? (size_t)h->count * GVM_TAG_SIZE : 0));
		reply_commit(c, h, 0, (size_t)n);
		return 0;
	}
	case GVM_OP_WRITE:
		/* A region this creates counts against the client's address's quotas. */
		gvm_store_set_owner(s->store, c->peer->owner);
		status = gvm_store_write_tagged(s->store, h->region, rg->key, h->page, h->count, payload,
						h->len, h->flags & GVM_HF_TAGS);
		return reply_status(c, h, status);
	case GVM_OP_STAT:
		return handle_stat(s, c, h);
	case GVM_OP_FREE:
		return reply_status(c, h, gvm_store_free(s->store, h->region, rg->key));
	case GVM_OP_LIST:
		p = out_reserve(c, GVM_HDR_SIZE + GVM_BITMAP_BYTES(h->count));
		if (!p)
			return reply_status(c, h, -ENOMEM);
		status = gvm_store_list(s->store, h->region, rg->key, h->page, h->count, p + GVM_HDR_SIZE);
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

/* Bytes on the wire of the frame whose header is at hdr (tag included). */
static size_t frame_size(const struct conn *c, const uint8_t *hdr)
{
	return GVM_HDR_SIZE + (size_t)le32(hdr + 40) + (c->sess.on ? GVM_TAG_SIZE : 0);
}

/* The frame at the head of c->in has not all arrived (its header, if
 * there, was validated by conn_parse()). */
static int conn_in_partial(const struct conn *c)
{
	return c->in_len && (c->in_len < GVM_HDR_SIZE || c->in_len < frame_size(c, c->in));
}

/* Bytes of the reply a request makes (an upper bound). */
static size_t reply_size(const struct gvm_hdr *h)
{
	switch (h->op) {
	case GVM_OP_READ: return GVM_HDR_SIZE + gvm_pages_len(h->count, h->count) + GVM_TAG_SIZE +
				  ((h->flags & GVM_HF_TAGS) ? (size_t)h->count * GVM_TAG_SIZE : 0);
	case GVM_OP_LIST: return GVM_HDR_SIZE + GVM_BITMAP_BYTES(h->count) + GVM_TAG_SIZE;
	case GVM_OP_STAT: return GVM_HDR_SIZE + GVM_STAT_SIZE + GVM_TAG_SIZE;
	case GVM_OP_HELLO: return GVM_HDR_SIZE + GVM_PROOF_SIZE;
	default: return GVM_HDR_SIZE;
	}
}

static void conn_starve(struct gvm_memserver *s, struct conn *c)
{
	if (c->starved)
		return;
	c->starved = 1;
	c->starved_ns = gvm_now_ns();
	fifo_push(&s->starved, c, &c->slink, SLINK);
}

/*
 * Handle every complete frame at the start of buf. Returns the bytes consumed
 * (the rest is an unfinished frame, or frames held back by backpressure), or
 * -errno to close the connection.
 */
static ssize_t conn_parse(struct gvm_memserver *s, struct conn *c, const uint8_t *buf, size_t len)
{
	size_t off = 0;

	while (!c->closing && len - off >= GVM_HDR_SIZE) {
		struct gvm_hdr h;
		const char *why;

		/* The header is judged as soon as it is here, before any payload is
		 * awaited, held back or not: whatever reads c->in later
		 * (frame_size()) trusts the length of the header at its head. */
		if (gvm_hdr_decode(buf + off, 0, &h, &why) < 0)
			return conn_reject(c, why);
		if (c->paused || c->starved)
			break;
		if (!c->authed && h.op != GVM_OP_HELLO) {
			if (ratelimit_ok(&s->rl_hello, "failed HELLOs"))
				pr_warn("client %s: %s before HELLO, closing", c->addr, gvm_op_name(h.op));
			int r = reply_status(c, &h, -EACCES);
			if (r < 0)
				return r;
			c->closing = 1;
			break;
		}
		size_t tag = c->sess.on ? GVM_TAG_SIZE : 0;
		if (len - off - GVM_HDR_SIZE < h.len + tag)
			break;
		/* Over the budget, only header-sized replies, and only with nothing
		 * else pending: whoever waits holds nothing that grows. */
		if (over_budget(s, c) && (reply_size(&h) > SMALL_REPLY || out_pending(c))) {
			if (out_pending(c))
				c->paused = 1;  /* its own output draining wakes it */
			else
				conn_starve(s, c);
			break;
		}
		if (tag && gvm_session_check(&c->sess, buf + off, buf + off + GVM_HDR_SIZE, h.len,
					     buf + off + GVM_HDR_SIZE + h.len) < 0)
			return conn_reject(c, "frame tag does not verify (altered, replayed or another session's)");
		int r = conn_handle(s, c, &h, buf + off + GVM_HDR_SIZE);
		if (r < 0)
			return r;
		metrics_latency(s, gvm_now_ns() - c->last_req_ns); /* conn_handle set it on entry */
		off += GVM_HDR_SIZE + h.len + tag;
		s->bytes_in += GVM_HDR_SIZE + h.len + tag;
		c->bytes_in += GVM_HDR_SIZE + h.len + tag;
		if (out_pending(c) > OUT_HIGH)
			c->paused = 1;
	}
	return (ssize_t)off;
}

/*
 * Keep `rest` bytes from src (outside c->in), just received, as the
 * connection's unparsed input; since: when the first byte of the frame at
 * their head came.
 */
static int conn_keep_input(struct conn *c, const uint8_t *src, size_t rest, uint64_t since)
{
	struct gvm_memserver *s = c->srv;

	if (!rest) {
		c->in_len = 0;
		return buf_resize(s, c, &c->in, &c->in_cap, 0, 0);
	}
	c->in_since_ns = since;
	c->in_recv_ns = gvm_now_ns();
	if (c->in_cap < rest || c->in_cap > rest + 4096) {
		if (buf_resize(s, c, &c->in, &c->in_cap, rest, 0) < 0)
			return -ENOMEM;
	}
	memcpy(c->in, src, rest);
	c->in_len = rest;
	return 0;
}

/*
 * Held-back input is about to be parsed again, after a pause or a
 * starvation. The frames behind its head came with its last recv, but the
 * rest of the last one may have waited in the kernel since, unread while the
 * server held the connection back: the clock of each frame that becomes the
 * head from here runs from now (conn_consume_input()), not from that recv.
 */
static void conn_resume_input(struct conn *c)
{
	c->in_recv_ns = gvm_now_ns();
}

/* Drop the first `used` bytes of c->in. */
static void conn_consume_input(struct conn *c, size_t used)
{
	size_t rest = c->in_len - used;

	if (!used)
		return;
	if (!rest) {
		conn_keep_input(c, NULL, 0, 0);
		return;
	}
	memmove(c->in, c->in + used, rest);
	OPENSSL_cleanse(c->in + rest, c->in_len - rest);
	c->in_len = rest;
	/* Frames beyond the head of c->in came with its last recv (before
	 * it, c->in held at most the start of one frame), or were held back
	 * since it: the new head is timed from then, or from the resume. */
	c->in_since_ns = c->in_recv_ns;
	if (c->in_cap > rest + 4096)  /* a failed shrink leaves the bigger buffer, which is fine */
		(void)buf_resize(c->srv, c, &c->in, &c->in_cap, rest, rest);
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
	for (int iter = 0; iter < READS_PER_EVENT && !c->closing && !c->paused && !c->starved; iter++) {
		size_t need = c->in_len >= GVM_HDR_SIZE ? frame_size(c, c->in) : 0;
		ssize_t n;

		/* Over the budget nothing more is taken in: wait for buffers to drain. */
		if (over_budget(s, c)) {
			conn_starve(s, c);
			return 0;
		}
		if (need > RBUF_SIZE) {
			/* A large frame is received in its own buffer, grown as bytes arrive. */
			if (c->in_cap < need) {
				size_t cap = GVM_MIN(need, GVM_MAX(c->in_cap * 2, c->in_len + RBUF_SIZE));
				if (buf_resize(s, c, &c->in, &c->in_cap, cap, c->in_len) < 0)
					return conn_reject(c, "out of memory for a large frame");
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
				conn_keep_input(c, NULL, 0, 0);
				c->closing = 1;
				return 0;
			}
			c->in_len += (size_t)n;
			c->in_recv_ns = gvm_now_ns();
			if (c->in_len == need) {
				ssize_t used = conn_parse(s, c, c->in, c->in_len);
				if (used < 0)
					return (int)used;
				/* A large frame held back (over the budget) stays whole in c->in. */
				conn_consume_input(c, (size_t)used);
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
			OPENSSL_cleanse(s->rbuf, have);
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return conn_recv_error(c);
		}
		if (n == 0) {
			/* Peer is done sending: answer what came in full, drop any partial frame. */
			OPENSSL_cleanse(s->rbuf, have);
			if (have)
				pr_debug("client %s: closed inside a frame", c->addr);
			conn_keep_input(c, NULL, 0, 0);
			c->closing = 1;
			return 0;
		}
		size_t total = have + (size_t)n;
		uint64_t now = gvm_now_ns();
		ssize_t used = conn_parse(s, c, s->rbuf, total);
		int r = 0;
		if (used < 0)
			r = (int)used;
		else if (c->closing)
			conn_keep_input(c, NULL, 0, 0);
		/* The frame now at the head began in what was just received once
		 * the `have` bytes (at most the start of one frame) were handled;
		 * the I/O timeout runs from there, not from an earlier frame's start. */
		else if (conn_keep_input(c, s->rbuf + used, total - (size_t)used,
					 (size_t)used >= have ? now : used ? c->in_recv_ns : c->in_since_ns) < 0)
			r = conn_reject(c, "out of memory for input");
		/* The loop-wide buffer held this client's pages: scrub them. */
		OPENSSL_cleanse(s->rbuf, total);
		if (r < 0 || c->closing || (size_t)n < RBUF_SIZE - have)
			return r;
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
		c->bytes_out += (uint64_t)n;
		if (c->bytes_out >= c->out_mark)
			out_clock_start(c);
	}
	if (!out_pending(c)) {
		/* Idle connections hold no output buffer (it goes to the spares). */
		out_release(c);
	}
	return 0;
}

static int conn_set_events(struct gvm_memserver *s, struct conn *c)
{
	uint32_t want = (c->paused || c->closing || c->starved ? 0 : EPOLLIN) |
			(out_pending(c) ? EPOLLOUT : 0);
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
		if (!c->paused || c->starved || c->closing || out_pending(c) > OUT_LOW)
			break;
		c->paused = 0;
		if (!c->in_len)
			break;
		/* A large frame still arriving is not parsed until it is whole. */
		if (c->in_len >= GVM_HDR_SIZE && c->in_len < frame_size(c, c->in) &&
		    frame_size(c, c->in) > RBUF_SIZE)
			break;
		conn_resume_input(c);
		ssize_t used = conn_parse(s, c, c->in, c->in_len);
		if (used < 0)
			return (int)used;
		conn_consume_input(c, (size_t)used);
		/* Held back again with nothing handled (over the budget, its
		 * output not all sent): only sending more changes that, and a
		 * later EPOLLOUT does it. Going round again would spin here for
		 * as long as the client does not read. */
		if (!used && c->paused)
			break;
	}
	/* Done: everything owed to a closing client has been sent. */
	if (c->closing && !out_pending(c))
		return -ECONNRESET;
	return conn_set_events(s, c);
}

static void conn_free(struct conn *c)
{
	if (c->regions) {
		OPENSSL_cleanse(c->regions, c->cap_regions * sizeof(*c->regions));
		free(c->regions);
	}
	gvm_session_fini(&c->sess);
	free(c);
}

/* later: the connection may still be named by events of the current batch
 * (evicted by another's accept): free it only after the batch. */
static void conn_close_as(struct gvm_memserver *s, struct conn *c, int later)
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
	unauthed_del(s, c);
	if (c->starved)
		fifo_del(&s->starved, c, &c->slink, SLINK);
	pr_debug("client %s: disconnected", c->addr);
	if (s->listen_retry_ns)
		s->listen_retry_ns = 1;  /* a descriptor is free: accept again */
	buf_resize(s, c, &c->in, &c->in_cap, 0, 0);
	out_release(c);
	peer_put(s, c->peer);
	c->peer = NULL;
	if (later) {
		c->kind = SRC_ZOMBIE;
		c->next = s->zombies;
		s->zombies = c;
	} else {
		conn_free(c);
	}
}

static void conn_close(struct gvm_memserver *s, struct conn *c)
{
	conn_close_as(s, c, 0);
}

static void free_zombies(struct gvm_memserver *s)
{
	while (s->zombies) {
		struct conn *c = s->zombies;
		s->zombies = c->next;
		conn_free(c);
	}
}

static void conn_event(struct gvm_memserver *s, struct conn *c, uint32_t ev)
{
	int r = 0;

	if (ev & EPOLLERR)
		r = -ECONNRESET;
	else if ((ev & (EPOLLIN | EPOLLHUP)) && !c->paused && !c->closing && !c->starved)
		r = conn_read(s, c);
	if (r == 0)
		r = conn_pump(s, c);
	if (r < 0)
		conn_close(s, c);
}

/*
 * Buffers drained: let the starved clients that now fit run again, oldest
 * first. Looks at a bounded number per loop iteration; one whose address is
 * still over its share stays queued without holding up the others.
 */
static void wake_starved(struct gvm_memserver *s)
{
	unsigned looked = 0, woken = 0;
	struct conn *c, *next;

	if (!s->released)
		return;
	s->released = 0;
	while (s->buffered >= s->budget && s->spares.n)
		spare_free(s);
	for (c = s->starved.head; c && s->buffered < s->budget && looked < 4096 && woken < MAX_EVENTS;
	     c = next) {
		int r = 0;

		next = c->slink.next;
		looked++;
		if (over_budget(s, c))
			continue;
		woken++;
		fifo_del(&s->starved, c, &c->slink, SLINK);
		c->starved = 0;
		if (c->in_len) {
			size_t need = c->in_len >= GVM_HDR_SIZE ? frame_size(c, c->in) : 0;
			if (need <= RBUF_SIZE || c->in_len >= need) {
				conn_resume_input(c);
				ssize_t used = conn_parse(s, c, c->in, c->in_len);
				if (used < 0)
					r = (int)used;
				else
					conn_consume_input(c, (size_t)used);
			}
		}
		if (r == 0)
			r = conn_pump(s, c);
		if (r < 0) {
			/* next may have been starved again meanwhile: still on the list, fine. */
			conn_close(s, c);
		}
	}
	/* Not all looked at: come back on the next iteration. */
	if (c && s->buffered < s->budget)
		s->released = 1;
}

/* Refuse or evict: logged at most LOG_BURST times a second. The metrics'
 * reason comes from the message (its callers pass literals): a new message
 * names its limit the same way, or it counts as out_of_memory. */
static void limit_warn(struct gvm_memserver *s, const char *addr, const char *what)
{
	s->refused++;
	s->refused_by[!strncmp(what, "evicted", 7) ? REFUSE_EVICTED :
		      strstr(what, "unauthenticated") ? REFUSE_UNAUTHED :
		      strstr(what, "max-clients") ? REFUSE_MAX_CLIENTS :
		      strstr(what, "max-peer-conns") ? REFUSE_PEER_CONNS : REFUSE_NOMEM]++;
	if (ratelimit_ok(&s->rl_refuse, "connections refused by a limit"))
		pr_warn("client %s: %s", addr, what);
}

/*
 * All slots for unauthenticated clients are taken: evict one, or refuse the
 * newcomer. The victim is, among the oldest few, one from the address with
 * the most connections waiting for HELLO (the oldest of those): a flood
 * from a few addresses then only displaces itself, and an honest client
 * (one connection, a handshake of a round trip) is displaced only by an
 * attacker with more addresses than there are slots. A newcomer from an
 * address that already holds more waiting connections than the victim's
 * is refused instead. Returns 0 when a slot was freed, -EAGAIN to refuse.
 */
#define EVICT_SCAN 64
static int unauthed_make_room(struct gvm_memserver *s, const uint8_t addr[16])
{
	struct peer *mine = peer_find(s, addr);
	struct conn *victim = NULL, *c = s->unauthed.head;

	for (unsigned i = 0; c && i < EVICT_SCAN; i++, c = c->ulink.next)
		if (!victim || c->peer->unauthed > victim->peer->unauthed)
			victim = c;
	if (!victim || (mine && mine->unauthed >= victim->peer->unauthed))
		return -EAGAIN;
	limit_warn(s, victim->addr, "evicted before HELLO: too many unauthenticated clients");
	conn_close_as(s, victim, 1);
	return 0;
}

static void conn_new(struct gvm_memserver *s, int fd, const struct sockaddr *sa)
{
	struct gvm_greeting g;
	uint32_t gflags = (s->token ? GVM_GREET_AUTH : 0) | (s->token || s->admin_token ? GVM_GREET_KEYED : 0);
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = GVM_OP_GREETING,
		.len = GVM_GREETING_SIZE,
	};
	struct epoll_event ev = { .events = EPOLLIN };
	char addr[ADDR_LEN];
	uint8_t peer[16];
	struct conn *c;
	int one = 1, r;
	uint8_t *p;

	format_addr(sa, addr, sizeof(addr));
	peer_key(sa, peer);
	if (s->n_unauthed >= s->max_unauthed || (s->n_clients >= s->max_clients && s->n_unauthed)) {
		if (unauthed_make_room(s, peer) < 0) {
			limit_warn(s, addr, "refused: too many unauthenticated clients from this address");
			close(fd);
			return;
		}
	}
	if (s->n_clients >= s->max_clients) {
		limit_warn(s, addr, "refused: --max-clients reached");
		close(fd);
		return;
	}
	struct peer *pp = peer_get(s, peer, &r);
	if (!pp) {
		limit_warn(s, addr, r == -EMFILE ? "refused: --max-peer-conns reached for this address"
						: "refused: out of memory");
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		pr_warn("out of memory for a new client");
		peer_put(s, pp);
		close(fd);
		return;
	}
	c->kind = SRC_CONN;
	c->srv = s;
	c->fd = fd;
	c->peer = pp;
	memcpy(c->addr, addr, sizeof(addr));
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		pr_debug("client %s: TCP_NODELAY: %s", c->addr, strerror(errno));
	if (s->keepalive_s > 0) {
		/* A peer that vanished (power loss, cable) is found within
		 * keepalive + 3 x 10 s instead of holding its slot forever. */
		int idle = s->keepalive_s, intvl = 10, cnt = 3;
		if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0)
			pr_debug("client %s: keepalive: %s", c->addr, strerror(errno));
	}
	r = gvm_session_greet(&c->sess, gflags, &g);
	p = out_reserve(c, GVM_HDR_SIZE + GVM_GREETING_SIZE);
	if (r < 0 || !p) {
		pr_err("client %s: cannot prepare the greeting: %s", c->addr,
		       strerror(r < 0 ? -r : ENOMEM));
		goto out_free;
	}
	gvm_hdr_encode(&h, p);
	gvm_greeting_encode(&g, p + GVM_HDR_SIZE);
	c->out_len = GVM_HDR_SIZE + GVM_GREETING_SIZE;  /* out_reserve() set out_hw */

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
	fifo_push(&s->unauthed, c, &c->ulink, ULINK);
	c->peer->unauthed++;
	c->born_ns = c->last_req_ns = gvm_now_ns();
	out_clock_start(c);  /* the greeting */
	pr_debug("client %s: connected", c->addr);
	if (conn_pump(s, c) < 0)
		conn_close(s, c);
	return;

out_free:
	close(fd);
	out_release(c);
	peer_put(s, pp);
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

static void listener_watch(struct gvm_memserver *s, struct listener *l, int on)
{
	struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.ptr = l };

	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, l->fd, &ev) < 0) {
		pr_warn("listener %s: epoll_ctl: %s", l->name, strerror(errno));
		return;
	}
	l->off = !on;
}

/*
 * Out of fds: accept and drop one connection so the listener stops firing.
 * When that cannot be done (the system's file table is full: the accept
 * fails, or the spare descriptor cannot be had again), the listener stays
 * readable and, level-triggered, would wake the loop at once forever: it is
 * set aside for ACCEPT_RETRY_NS, or until a connection closes.
 */
static void accept_shed(struct gvm_memserver *s, struct listener *l, int err)
{
	int fd = -1;

	accept_warn(s, l, err, "; dropping new connections");
	s->refused_by[REFUSE_FDS]++;
	if (s->spare_fd >= 0) {
		close(s->spare_fd);
		fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0 || s->spare_fd < 0) {
		listener_watch(s, l, 0);
		if (l->off && !s->listen_retry_ns)
			s->listen_retry_ns = gvm_now_ns() + ACCEPT_RETRY_NS;
	}
}

/* Watch the listeners set aside again (the time has come, or a descriptor was freed). */
static void listeners_retry(struct gvm_memserver *s)
{
	s->listen_retry_ns = 0;
	if (s->spare_fd < 0)
		s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	for (unsigned i = 0; i < s->n_lis; i++)
		if (s->lis[i].off)
			listener_watch(s, &s->lis[i], 1);
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

/* ---------------------------------------------------------------- metrics */

/*
 * GET /metrics on --metrics, answered from this loop (the responder's epoll
 * fd is one more source of it), so counters need no locks and a scrape sees
 * one consistent moment. What it shows is node-wide counts only: no region
 * ids, keys, client addresses or per-tenant figures, so whoever can reach it
 * learns how busy the node is, not who uses it or for what (docs/METRICS.md).
 */
/* One sample per op of a counter kept per op, labelled op="read" etc. */
static void metrics_by_op(struct gvm_prom *p, const char *name, const uint64_t *per_op)
{
	static const unsigned ops[] = { GVM_OP_HELLO, GVM_OP_OPEN, GVM_OP_READ, GVM_OP_WRITE,
					GVM_OP_STAT, GVM_OP_FREE, GVM_OP_LIST, GVM_OP_PING };
	char l[96], opname[16];

	for (size_t i = 0; i < GVM_ARRAY_SIZE(ops); i++) {
		size_t k = 0;
		for (const char *c = gvm_op_name(ops[i]); *c && k + 1 < sizeof(opname); c++)
			opname[k++] = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
		opname[k] = 0;
		gvm_prom_labels(l, sizeof(l), "op", opname, NULL);
		gvm_prom_u64(p, name, l, per_op[ops[i]]);
	}
}

static int metrics_render(struct gvm_prom *p, void *arg)
{
	struct gvm_memserver *s = arg;
	struct gvm_store_stats ss;
	struct gvm_http_counters hc;
	char l[96];

	gvm_store_get_stats(s->store, &ss);
	gvm_http_counters(s->metrics, &hc);

	gvm_prom_family(p, "giantvm_memserver_build_info", "gauge", "Always 1; the version in a label.");
	gvm_prom_labels(l, sizeof(l), "version", gvm_version(), NULL);
	gvm_prom_u64(p, "giantvm_memserver_build_info", l, 1);
	gvm_prom_family(p, "giantvm_memserver_start_time_seconds", "gauge",
			"When the server started, seconds since the Unix epoch.");
	gvm_prom_f64(p, "giantvm_memserver_start_time_seconds", NULL, (double)s->start_unix_ns / 1e9);
	gvm_prom_family(p, "giantvm_memserver_uptime_seconds", "gauge", "Seconds since the server started.");
	gvm_prom_f64(p, "giantvm_memserver_uptime_seconds", NULL, (double)(gvm_now_ns() - s->start_ns) / 1e9);

	gvm_prom_family(p, "giantvm_memserver_stored_pages", "gauge",
			"Non-zero 4 KiB pages held, all regions (zero pages are not stored).");
	gvm_prom_u64(p, "giantvm_memserver_stored_pages", NULL, ss.pages_stored);
	gvm_prom_family(p, "giantvm_memserver_stored_bytes", "gauge", "Bytes of the non-zero pages held.");
	gvm_prom_u64(p, "giantvm_memserver_stored_bytes", NULL, ss.pages_stored * GVM_PAGE_SIZE);
	if (ss.capacity_pages) {
		gvm_prom_family(p, "giantvm_memserver_capacity_bytes", "gauge",
				"Most page bytes the server holds (--capacity); absent when unlimited.");
		gvm_prom_u64(p, "giantvm_memserver_capacity_bytes", NULL, ss.capacity_pages * GVM_PAGE_SIZE);
	}
	gvm_prom_family(p, "giantvm_memserver_regions", "gauge", "Regions holding at least one page.");
	gvm_prom_u64(p, "giantvm_memserver_regions", NULL, ss.regions);

	gvm_prom_family(p, "giantvm_memserver_clients", "gauge", "Client connections open.");
	gvm_prom_u64(p, "giantvm_memserver_clients", NULL, s->n_clients);
	gvm_prom_family(p, "giantvm_memserver_unauthenticated_clients", "gauge",
			"Of the client connections, those that have not completed HELLO.");
	gvm_prom_u64(p, "giantvm_memserver_unauthenticated_clients", NULL, s->n_unauthed);
	gvm_prom_family(p, "giantvm_memserver_max_clients", "gauge", "The connection limit (--max-clients).");
	gvm_prom_u64(p, "giantvm_memserver_max_clients", NULL, s->max_clients);

	gvm_prom_family(p, "giantvm_memserver_requests_total", "counter", "Requests answered, by op.");
	metrics_by_op(p, "giantvm_memserver_requests_total", s->op_requests);
	gvm_prom_family(p, "giantvm_memserver_request_errors_total", "counter",
			"Requests answered with an error status, by op.");
	metrics_by_op(p, "giantvm_memserver_request_errors_total", s->op_errors);
	gvm_prom_family(p, "giantvm_memserver_protocol_errors_total", "counter",
			"Connections closed for a malformed or unexpected frame.");
	gvm_prom_u64(p, "giantvm_memserver_protocol_errors_total", NULL, s->proto_errors);
	gvm_prom_family(p, "giantvm_memserver_request_duration_seconds", "histogram",
			"Time to serve a request once its frame is whole (store access, fsync), "
			"not network or queueing.");
	gvm_prom_lat_histogram(p, "giantvm_memserver_request_duration_seconds", NULL, s->lat, s->lat_sum_ns);

	gvm_prom_family(p, "giantvm_memserver_received_bytes_total", "counter",
			"Protocol bytes received in complete frames.");
	gvm_prom_u64(p, "giantvm_memserver_received_bytes_total", NULL, s->bytes_in);
	gvm_prom_family(p, "giantvm_memserver_sent_bytes_total", "counter", "Protocol bytes sent.");
	gvm_prom_u64(p, "giantvm_memserver_sent_bytes_total", NULL, s->bytes_out);

	gvm_prom_family(p, "giantvm_memserver_rejected_connections_total", "counter",
			"Connections refused or evicted by a limit, by reason.");
	for (unsigned i = 0; i < REFUSE_N; i++) {
		gvm_prom_labels(l, sizeof(l), "reason", refuse_names[i], NULL);
		gvm_prom_u64(p, "giantvm_memserver_rejected_connections_total", l,
			     i == REFUSE_METRICS ? hc.rejected : s->refused_by[i]);
	}
	gvm_prom_family(p, "giantvm_memserver_timed_out_connections_total", "counter",
			"Client connections closed by a timeout, by which.");
	for (unsigned i = 0; i < CLOSE_N; i++) {
		gvm_prom_labels(l, sizeof(l), "reason", close_names[i], NULL);
		gvm_prom_u64(p, "giantvm_memserver_timed_out_connections_total", l, s->closed_by[i]);
	}
	gvm_prom_family(p, "giantvm_memserver_buffered_bytes", "gauge",
			"Input and output buffered for all clients (counted against the buffer budget).");
	gvm_prom_u64(p, "giantvm_memserver_buffered_bytes", NULL, s->buffered);
	gvm_prom_family(p, "giantvm_memserver_buffer_budget_bytes", "gauge", "The buffer budget (--buffer-budget).");
	gvm_prom_u64(p, "giantvm_memserver_buffer_budget_bytes", NULL, s->budget);
	gvm_prom_family(p, "giantvm_memserver_metrics_scrapes_total", "counter",
			"GET /metrics answered (this one not counted yet).");
	gvm_prom_u64(p, "giantvm_memserver_metrics_scrapes_total", NULL, hc.scrapes);
	return 0;
}

static int metrics_open(struct gvm_memserver *s, const char *listen)
{
	struct gvm_http_opts ho = { .listen = listen, .render = metrics_render, .arg = s };
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &s->metrics_kind };
	char err[256];
	int r = gvm_http_open(&s->metrics, &ho, err, sizeof(err));

	if (r < 0) {
		pr_err("%s", err);
		return r;
	}
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, gvm_http_fd(s->metrics), &ev) < 0) {
		r = -errno;
		pr_perror("metrics: epoll_ctl");
		return r;
	}
	pr_info("metrics on http://%s/metrics", gvm_http_name(s->metrics));
	return 0;
}

static void metrics_service(struct gvm_memserver *s)
{
	int r = gvm_http_service(s->metrics, 0);

	if (r < -1) {
		pr_warn("metrics: %s", strerror(-r));
		r = -1;
	}
	s->metrics_next_ms = r;
}

int gvm_memserver_metrics_port(const struct gvm_memserver *s)
{
	if (!s || !s->metrics)
		return -EINVAL;
	return gvm_http_port(s->metrics);
}

/* ---------------------------------------------------------------- API */

int gvm_memserver_open(struct gvm_memserver **out, const struct gvm_memserver_opts *opts)
{
	struct gvm_store_opts so = { .backing = opts->backing, .fsync_mode = opts->fsync_mode,
				     .prealloc = opts->prealloc, .max_regions = opts->max_regions,
				     .max_owner_pages = opts->max_peer_capacity / GVM_PAGE_SIZE };
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
	/* One address (a tenant, or many behind one host) cannot take every region. */
	so.max_owner_regions = opts->max_peer_regions ? opts->max_peer_regions :
			       GVM_MAX((opts->max_regions ? opts->max_regions : GVM_STORE_MAX_REGIONS) / 4, 1ull);
	if (opts->max_peer_capacity && !so.max_owner_pages) {
		pr_err("per-address capacity %" PRIu64 " is smaller than one page", opts->max_peer_capacity);
		return -EINVAL;
	}
	if (opts->capacity && !so.capacity_pages) {
		pr_err("capacity %" PRIu64 " is smaller than one page", opts->capacity);
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->epfd = s->stopfd = s->spare_fd = -1;
	s->stop_kind = SRC_STOP;
	s->metrics_kind = SRC_METRICS;
	s->metrics_next_ms = -1;
	s->start_ns = gvm_now_ns();
	{
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		s->start_unix_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	}
	s->hello_timeout_ns = (uint64_t)(opts->hello_timeout_ms > 0 ? opts->hello_timeout_ms : 10000) * 1000000ull;
	s->idle_timeout_ns = opts->idle_timeout_ms < 0 ? 0 :
		(uint64_t)(opts->idle_timeout_ms ? opts->idle_timeout_ms : DEF_IDLE_TIMEOUT_MS) * 1000000ull;
	s->io_timeout_ns = (uint64_t)(opts->io_timeout_ms > 0 ? opts->io_timeout_ms : DEF_IO_TIMEOUT_MS) * 1000000ull;
	s->keepalive_s = opts->keepalive_s < 0 ? 0 : opts->keepalive_s ? opts->keepalive_s : DEF_KEEPALIVE_S;
	s->test_read_hook = opts->test_read_hook;
	s->test_hook_arg = opts->test_hook_arg;
	s->budget = opts->buffer_budget ? opts->buffer_budget : DEF_BUFFER_BUDGET;
	s->peer_budget = s->budget / PEER_BUDGET_SHARE;
	s->max_conn_regions = opts->max_conn_regions ? opts->max_conn_regions : DEF_MAX_CONN_REGIONS;
	s->max_peer_conns = opts->max_peer_conns ? opts->max_peer_conns : DEF_MAX_PEER_CONNS;
	s->peers_cap = 64;
	s->peers = calloc(s->peers_cap, sizeof(*s->peers));
	if (!s->peers) {
		free(s);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < GVM_MEMSERVER_MAX_LISTEN; i++)
		s->lis[i].fd = -1;
	if ((r = gvm_sipkey_random(&s->peer_hkey)) < 0 || (r = gvm_sipkey_random(&s->owner_hkey)) < 0) {
		pr_err("getrandom: %s", strerror(-r));
		goto out_close;
	}

	if (opts->token_file) {
		r = gvm_auth_load_token(opts->token_file, &s->token, &s->token_len, err, sizeof(err));
		if (r < 0) {
			pr_err("%s", err);
			goto out_close;
		}
	}
	if (opts->admin_token_file) {
		r = gvm_auth_load_token(opts->admin_token_file, &s->admin_token, &s->admin_token_len,
					err, sizeof(err));
		if (r < 0) {
			pr_err("%s", err);
			goto out_close;
		}
		if (s->token && s->token_len == s->admin_token_len &&
		    gvm_auth_equal(s->token, s->admin_token, s->token_len)) {
			pr_err("the admin token must differ from the clients' token");
			r = -EINVAL;
			goto out_close;
		}
	}
	/* Every client is an fd; 10,000 of them need more than the usual 1024. */
	nofile = gvm_raise_nofile();
	if (nofile < 0)
		pr_warn("cannot raise the open-file limit: %s", strerror((int)-nofile));
	else
		pr_debug("open-file limit %ld", nofile);
	/* Clients never take the descriptors the server needs for itself. */
	s->max_clients = nofile > 2 * FD_RESERVE ? (uint64_t)nofile - FD_RESERVE : FD_RESERVE;
	if (opts->max_clients) {
		if (opts->max_clients > s->max_clients)
			pr_warn("--max-clients %u: the open-file limit allows %" PRIu64, opts->max_clients,
				s->max_clients);
		else
			s->max_clients = opts->max_clients;
	}
	s->max_unauthed = opts->max_unauthed ? opts->max_unauthed : DEF_MAX_UNAUTHED;
	/* At least half the slots are for clients that proved the token. */
	s->max_unauthed = GVM_MAX(GVM_MIN(s->max_unauthed, s->max_clients / 2), 1ull);

	r = gvm_store_open(&s->store, &so, err, sizeof(err));
	if (r < 0) {
		pr_err("%s", err);
		goto out_close;
	}
	r = -ENOMEM;
	s->rbuf = malloc(RBUF_SIZE);
	s->tagbuf = malloc(GVM_MAX_PAGES * GVM_TAG_SIZE);
	if (!s->rbuf || !s->tagbuf)
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
	if (opts->metrics_listen && (r = metrics_open(s, opts->metrics_listen)) < 0)
		goto out_close;
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
 * Close clients past a timeout: no HELLO in time, idle (authenticated, no
 * request, nothing owed), a frame left half-sent, replies left unread (the
 * output waiting when the clock started not all sent: out_clock_start()),
 * or requests read and held back for the budget that long. The last three
 * are what bound how long a client waiting for the buffer budget can be
 * kept waiting. Runs at most a few times per shortest timeout and at most
 * every second: 10,000 clients cost a walk of a list that often.
 */
static uint64_t sweep_period(const struct gvm_memserver *s)
{
	uint64_t p = GVM_MIN(s->hello_timeout_ns, s->io_timeout_ns);

	if (s->idle_timeout_ns)
		p = GVM_MIN(p, s->idle_timeout_ns);
	return GVM_MAX(GVM_MIN(p / 4, 1000000000ull), 1000000ull);
}

static void sweep(struct gvm_memserver *s)
{
	uint64_t now = gvm_now_ns();

	if (now < s->next_sweep_ns)
		return;
	s->next_sweep_ns = now + sweep_period(s);
	for (struct conn *c = s->conns, *next; c; c = next) {
		const char *why = NULL;
		int kind = CLOSE_IO_TIMEOUT;

		next = c->next;
		if (!c->authed && now - c->born_ns >= s->hello_timeout_ns)
			why = "no HELLO in time", kind = CLOSE_HELLO_TIMEOUT;
		else if (out_pending(c) && now - c->out_since_ns >= s->io_timeout_ns)
			why = "replies not read within the I/O timeout";
		else if (conn_in_partial(c) && !c->paused && now - c->in_since_ns >= s->io_timeout_ns)
			/* Counted from the frame's first byte, held back or not: a
			 * starved connection is woken whenever its address's buffers
			 * shrink, reads a little and is starved again, so a clock
			 * restarted at each starvation never ran out. Whole frames
			 * the server holds back are not the client's delay. */
			why = "frame left unfinished for the I/O timeout";
		else if (c->starved && c->in_len && now - c->starved_ns >= 2 * s->io_timeout_ns + sweep_period(s))
			/* Whole requests read and held back for the budget: not the
			 * client's delay, but buffers nothing above times (the head
			 * frame is whole, nothing is owed, its address may be under
			 * its share); spread over enough addresses, such inputs alone
			 * keep the server over its budget and nobody is woken again.
			 * Only after twice the I/O timeout: by then every connection
			 * holding buffers that a rule above can end has been closed,
			 * so an honest client that merely lost the race for room to
			 * busier ones is not closed while room is still coming. */
			why = "requests held back for the buffer budget for twice the I/O timeout";
		else if (c->starved && c->peer->buffered >= s->peer_budget &&
			 now - c->starved_ns >= s->io_timeout_ns)
			/* Held back because its own address's connections hold their
			 * whole share: waiting would only keep more memory pinned. */
			why = "its address held its share of the buffer budget for the I/O timeout";
		else if (c->authed && s->idle_timeout_ns && !out_pending(c) && !c->in_len &&
			 now - c->last_req_ns >= s->idle_timeout_ns)
			why = "idle", kind = CLOSE_IDLE;
		if (!why)
			continue;
		s->closed_by[kind]++;
		pr_debug("client %s: %s, closing", c->addr, why);
		conn_close(s, c);
	}
}

int gvm_memserver_run(struct gvm_memserver *s)
{
	struct epoll_event ev[MAX_EVENTS];

	for (;;) {
		/* With clients around, wake up to time them out. */
		int wait_ms = s->conns ? (int)(sweep_period(s) / 1000000ull) : -1;
		if (s->metrics_next_ms >= 0)
			wait_ms = wait_ms < 0 ? s->metrics_next_ms : GVM_MIN(wait_ms, s->metrics_next_ms);
		if (s->listen_retry_ns) {
			uint64_t now = gvm_now_ns();
			int ms = now >= s->listen_retry_ns ? 0 :
				 (int)((s->listen_retry_ns - now + 999999) / 1000000ull);
			wait_ms = wait_ms < 0 ? ms : GVM_MIN(wait_ms, ms);
		}
		int n = epoll_wait(s->epfd, ev, MAX_EVENTS, s->starved.head && s->released ? 0 : wait_ms);
		int stop = 0;

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
			} else if (kind == SRC_ZOMBIE) {
				continue;
			} else if (kind == SRC_METRICS) {
				s->metrics_next_ms = 0; /* served below, after the clients */
			} else {
				uint64_t v;
				/* Drain so a later run() waits again; EAGAIN just means drained. */
				if (read(s->stopfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
					pr_perror("eventfd read");
				stop = 1;
			}
		}
		free_zombies(s);
		if (stop)
			return 0;
		if (s->listen_retry_ns && gvm_now_ns() >= s->listen_retry_ns)
			listeners_retry(s);
		wake_starved(s);
		sweep(s);
		if (s->metrics_next_ms >= 0)
			metrics_service(s);
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
	free_zombies(s);
	for (unsigned i = 0; i < GVM_MEMSERVER_MAX_LISTEN; i++)
		if (s->lis[i].fd >= 0)
			close(s->lis[i].fd);
	gvm_http_close(s->metrics);
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
	if (s->admin_token) {
		OPENSSL_cleanse(s->admin_token, s->admin_token_len);
		free(s->admin_token);
	}
	if (s->rbuf) {
		OPENSSL_cleanse(s->rbuf, RBUF_SIZE);
		free(s->rbuf);
	}
	free(s->tagbuf);
	while (s->spares.n)
		spare_free(s);
	free(s->peers);  /* every peer went with its last connection */
	free(s);
}
