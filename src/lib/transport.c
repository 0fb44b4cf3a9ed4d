/*
 * Transport: one pipelined, non-blocking connection per memory node, driven
 * by the engine's epoll. See transport.h for the contract.
 *
 * DESIGN: every function here runs on the engine thread, so connection state
 * needs no lock. Writes are coalesced: gvm_transport_send() appends to the
 * connection's output buffer and puts the connection on a dirty list; the
 * engine calls gvm_transport_flush() once per loop turn, so the readahead
 * requests produced by one fault leave in one send(). Large payloads that
 * outlive their request (write-backs) are queued by reference instead
 * (gvm_transport_send_ref(): the output is inline bytes with referenced
 * payloads between them, written with sendmsg and an iovec), so a write-back
 * is not copied once per replica; a reply is accepted only once its whole
 * request has been written, so a referenced payload is never released
 * while still being sent. Replies are parsed in place from the input buffer
 * and handed to on_reply() without a copy; the engine installs pages with
 * UFFDIO_COPY straight from there.
 */
#define LOG_PREFIX "transport: "
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "log.h"
#include "util.h"

#define IN_INITIAL   (256u * 1024u)
#define IN_FULL      (GVM_HDR_SIZE + GVM_MAX_PAYLOAD + GVM_TAG_SIZE)
#define BACKOFF_MIN_NS  (50ull * 1000000ull)
#define BACKOFF_MAX_NS  (2000ull * 1000000ull)

static void conn_fail(struct gvm_transport *t, struct gvm_conn *c, int err, const char *why);

int gvm_transport_init(struct gvm_transport *t, int epfd, const struct gvm_config *cfg,
		       const void *token, size_t token_len, int timeout_ms,
		       const struct gvm_transport_ops *ops, void *owner)
{
	memset(t, 0, sizeof(*t));
	t->cfg = cfg;
	t->token = token;
	t->token_len = token_len;
	t->epfd = epfd;
	t->timeout_ms = timeout_ms;
	t->n_nodes = cfg->n_nodes;
	t->ops = *ops;
	t->owner = owner;
	t->next_id = 1;
	t->conns = calloc(cfg->n_nodes, sizeof(*t->conns));
	return t->conns ? 0 : -ENOMEM;
}

static void conn_close_fd(struct gvm_transport *t, struct gvm_conn *c)
{
	if (c->fd < 0)
		return;
	if (c->state == GVM_CONN_DOWN || c->out_len > c->out_off || c->q_len) {
		/* Abortive close: a WRITE still in the kernel's send queue must
		 * not be delivered after the link heals, once newer data (or a
		 * re-sync copy) has reached that node. */
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
			pr_perror("setsockopt(SO_LINGER)");
	}
	/* EPOLL_CTL_DEL can only fail if the fd was never added; close removes it anyway. */
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	t->n_open--;
}

static void conn_free(struct gvm_transport *t, struct gvm_conn *c)
{
	conn_close_fd(t, c);
	gvm_session_fini(&c->sess);
	free(c->out);
	free(c->ext);
	free(c->in);
	free(c->q);
	free(c->opened);
	free(c);
}

void gvm_transport_fini(struct gvm_transport *t)
{
	if (!t->conns)
		return;
	for (uint32_t i = 0; i < t->n_nodes; i++)
		if (t->conns[i])
			conn_free(t, t->conns[i]);
	free(t->conns);
	t->conns = NULL;
	while (t->n_spare)
		free(t->spare[--t->n_spare].buf);
}

int gvm_transport_add_key(struct gvm_transport *t, uint64_t region, const uint8_t key[GVM_KEY_SIZE])
{
	uint32_t n = __atomic_load_n(&t->n_keys, __ATOMIC_ACQUIRE);

	if (n >= GVM_TRANSPORT_MAX_KEYS)
		return -ENOSPC;
	t->keys[n].region = region;
	if (gvm_region_verifier(key, region, t->keys[n].verifier) < 0)
		return -EIO;
	__atomic_store_n(&t->n_keys, n + 1, __ATOMIC_RELEASE);
	return 0;
}

static int buf_reserve(uint8_t **buf, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 4096;
	uint8_t *p;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	p = realloc(*buf, n);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = n;
	return 0;
}

static struct gvm_out_ext *ext_at(struct gvm_conn *c, uint32_t k)
{
	return &c->ext[(c->ext_head + k) % c->ext_cap];
}

/* Move the unsent inline bytes to the front (referenced payloads keep
 * their place between them). */
static void out_rebase(struct gvm_conn *c)
{
	if (!c->out_off)
		return;
	memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
	for (uint32_t k = 0; k < c->ext_len; k++)
		ext_at(c, k)->pos -= c->out_off;
	c->out_len -= c->out_off;
	c->out_off = 0;
}

static int out_append(struct gvm_conn *c, const void *p, size_t n)
{
	/* Reuse the sent part before growing: under a steady stream of
	 * write-backs the buffer may never drain completely. */
	if (c->out_off && (c->out_off == c->out_len || c->out_len + n > c->out_cap))
		out_rebase(c);
	if (buf_reserve(&c->out, &c->out_cap, c->out_len + n))
		return -ENOMEM;
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
	c->tx_queued += n;
	return 0;
}

static int ext_push(struct gvm_conn *c, const void *p, size_t n)
{
	if (c->ext_len == c->ext_cap) {
		uint32_t ncap = c->ext_cap ? c->ext_cap * 2 : 16;
		struct gvm_out_ext *ne = malloc(ncap * sizeof(*ne));
		if (!ne)
			return -ENOMEM;
		for (uint32_t i = 0; i < c->ext_len; i++)
			ne[i] = *ext_at(c, i);
		free(c->ext);
		c->ext = ne;
		c->ext_head = 0;
		c->ext_cap = ncap;
	}
	*ext_at(c, c->ext_len) = (struct gvm_out_ext){ .pos = c->out_len, .p = p, .len = n };
	c->ext_len++;
	c->tx_queued += n;
	return 0;
}

/* Forget everything queued (the connection is closing). */
static void out_reset(struct gvm_conn *c)
{
	c->out_len = c->out_off = 0;
	c->ext_len = c->ext_head = 0;
	c->ext_done = 0;
	c->tx_queued = c->tx_sent = 0;
}

static int q_push(struct gvm_conn *c, const struct gvm_req *r)
{
	if (c->q_len == c->q_cap) {
		uint32_t ncap = c->q_cap ? c->q_cap * 2 : 64;
		struct gvm_req *nq = malloc(ncap * sizeof(*nq));
		if (!nq)
			return -ENOMEM;
		for (uint32_t i = 0; i < c->q_len; i++)
			nq[i] = c->q[(c->q_head + i) % c->q_cap];
		free(c->q);
		c->q = nq;
		c->q_head = 0;
		c->q_cap = ncap;
	}
	c->q[(c->q_head + c->q_len) % c->q_cap] = *r;
	c->q_len++;
	return 0;
}

static struct gvm_req *q_front(struct gvm_conn *c)
{
	return c->q_len ? &c->q[c->q_head] : NULL;
}

static void q_pop(struct gvm_conn *c)
{
	c->q_head = (c->q_head + 1) % c->q_cap;
	c->q_len--;
}

static void mark_dirty(struct gvm_transport *t, struct gvm_conn *c)
{
	if (c->dirty)
		return;
	c->dirty = 1;
	c->next_dirty = t->dirty;
	t->dirty = c;
}

static int set_events(struct gvm_transport *t, struct gvm_conn *c, int want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0),
				  .data.ptr = c };

	if (c->epoll_out == want_out)
		return 0;
	if (epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		pr_perror("epoll_ctl(%s)", gvm_node_name(t->cfg, c->node));
		return -errno;
	}
	c->epoll_out = want_out;
	return 0;
}

static int resolve(const struct gvm_config *cfg, uint32_t node, struct sockaddr_storage *ss,
		   socklen_t *sl)
{
	const struct gvm_node *n = &cfg->nodes[node];
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	char port[8];
	int r;

	memset(ss, 0, sizeof(*ss));
	if (n->family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(n->port);
		memcpy(&a->sin_addr, n->addr, 4);
		*sl = sizeof(*a);
		return 0;
	}
	if (n->family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(n->port);
		memcpy(&a->sin6_addr, n->addr, 16);
		*sl = sizeof(*a);
		return 0;
	}
	/* A host name: resolved on first use, not at load, so a 10,000-name
	 * pool starts instantly. This blocks the engine thread once per node. */
	snprintf(port, sizeof(port), "%u", n->port);
	r = getaddrinfo(gvm_node_host(cfg, node), port, &hints, &res);
	if (r) {
		pr_err("node %s: cannot resolve: %s", gvm_node_name(cfg, node), gai_strerror(r));
		return -EHOSTUNREACH;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*sl = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int conn_start(struct gvm_transport *t, struct gvm_conn *c)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c };
	int one = 1, fd, r;

	r = resolve(t->cfg, c->node, &ss, &sl);
	if (r)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		if (errno == EMFILE || errno == ENFILE)
			pr_err("node %s: out of file descriptors (raise the open-files limit)",
			       gvm_node_name(t->cfg, c->node));
		else
			pr_perror("socket");
		return r;
	}
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		r = -errno;
		pr_perror("setsockopt(TCP_NODELAY)");
		goto err_close;
	}
	if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
		r = -errno;
		goto err_close;
	}
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		r = -errno;
		pr_perror("epoll_ctl(ADD)");
		goto err_close;
	}
	c->fd = fd;
	c->epoll_out = 1;
	c->state = GVM_CONN_CONNECTING;
	gvm_session_fini(&c->sess);
	gvm_session_init(&c->sess);
	c->n_opened = 0;
	t->n_open++;
	return 0;

err_close:
	close(fd);
	return r;
}

static struct gvm_conn *conn_get(struct gvm_transport *t, uint32_t node)
{
	struct gvm_conn *c = t->conns[node];

	if (c)
		return c;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = -1;
	c->node = node;
	t->conns[node] = c;
	return c;
}

int gvm_transport_usable(const struct gvm_transport *t, uint32_t node, uint64_t now)
{
	const struct gvm_conn *c = t->conns[node];

	return !c || c->state != GVM_CONN_DOWN || now >= c->retry_at;
}

/* Queue a frame (header + payload pieces, copied; then `ref`, referenced)
 * and its FIFO entry. */
static int queue_frame(struct gvm_transport *t, struct gvm_conn *c, struct gvm_hdr *h,
		       const struct iovec *iov, int iovcnt, const void *ref, size_t ref_len, void *ctx)
{
	uint8_t hb[GVM_HDR_SIZE], tag[GVM_TAG_SIZE], open_pad[GVM_KEY_SIZE];
	struct iovec pad_iov = { open_pad, GVM_KEY_SIZE };
	struct gvm_req r = { .region = h->region, .page = h->page, .count = h->count,
			     .op = h->op, .ctx = ctx, .sent_ns = gvm_now_ns(),
			     .tagged = !!(h->flags & GVM_HF_TAGS) };
	/* For a rollback: out_append may rebase (out_off changes), but the
	 * unsent inline bytes before this frame stay the same. */
	size_t pending_before = c->out_len - c->out_off;
	uint64_t queued_before = c->tx_queued;
	uint32_t ext_before = c->ext_len;
	int err;

	h->magic = GVM_PROTO_MAGIC;
	h->version = GVM_PROTO_VERSION;
	h->id = r.id = t->next_id++;
	gvm_hdr_encode(h, hb);
	/* In a session the frame is tagged now; before the server's proof it
	 * waits untagged (and an OPEN unpadded) for frames_seal(). */
	if (c->sess.on) {
		err = gvm_session_tag_begin(&c->sess, hb) < 0 ? -EIO : 0;
		if (!err && h->op == GVM_OP_OPEN)
			err = gvm_session_open_pad(&c->sess, h->region, c->sess.seq_out - 1,
						   iov[0].iov_base, open_pad) < 0 ? -EIO : 0;
		if (!err && h->op == GVM_OP_OPEN)
			iov = &pad_iov;
		for (int i = 0; !err && i < iovcnt; i++)
			err = gvm_session_tag_add(&c->sess, iov[i].iov_base, iov[i].iov_len) < 0 ? -EIO : 0;
		if (!err && ref_len)
			err = gvm_session_tag_add(&c->sess, ref, ref_len) < 0 ? -EIO : 0;
		if (!err)
			err = gvm_session_tag_end(&c->sess, tag) < 0 ? -EIO : 0;
		if (err)
			return err; /* the sequence number is spent: the connection must go */
	}
	err = out_append(c, hb, sizeof(hb));
	for (int i = 0; !err && i < iovcnt; i++)
		err = out_append(c, iov[i].iov_base, iov[i].iov_len);
	if (!err && ref_len)
		err = ext_push(c, ref, ref_len);
	if (!err && c->sess.on)
		err = out_append(c, tag, sizeof(tag));
	r.end = c->tx_queued;
	if (!err)
		err = q_push(c, &r);
	if (err) {
		c->out_len = c->out_off + pending_before;
		c->tx_queued = queued_before;
		c->ext_len = ext_before;
		return err;
	}
	c->reqs++;
	c->last_used = r.sent_ns;
	mark_dirty(t, c);
	return 0;
}

static int ensure_open(struct gvm_transport *t, struct gvm_conn *c, uint64_t region)
{
	struct gvm_hdr h = { .op = GVM_OP_OPEN, .region = region, .len = GVM_KEY_SIZE };
	struct iovec iov;
	uint64_t *o;

	for (uint32_t i = 0; i < c->n_opened; i++)
		if (c->opened[i] == region)
			return 0;
	uint32_t nk = __atomic_load_n(&t->n_keys, __ATOMIC_ACQUIRE);
	for (uint32_t i = 0; i < nk; i++) {
		if (t->keys[i].region != region)
			continue;
		iov.iov_base = t->keys[i].verifier;
		iov.iov_len = GVM_KEY_SIZE;
		o = realloc(c->opened, (c->n_opened + 1) * sizeof(*o));
		if (!o)
			return -ENOMEM;
		c->opened = o;
		int r = queue_frame(t, c, &h, &iov, 1, NULL, 0, NULL);
		if (r == -EIO) {
			conn_fail(t, c, r, "tagging a frame");
			return -EHOSTDOWN;
		}
		if (r)
			return r;
		c->opened[c->n_opened++] = region;
		return 0;
	}
	pr_err("region %016llx has no key", (unsigned long long)region);
	return -ENOKEY;
}

static int send_frame(struct gvm_transport *t, uint32_t node, struct gvm_hdr *h,
		      const struct iovec *iov, int iovcnt, const void *ref, size_t ref_len, void *ctx)
{
	struct gvm_conn *c = conn_get(t, node);
	int r;

	if (!c)
		return -ENOMEM;
	if (c->fd < 0) {
		uint64_t now = gvm_now_ns();
		if (c->state == GVM_CONN_DOWN && now < c->retry_at)
			return -EHOSTDOWN;
		r = conn_start(t, c);
		if (r) {
			conn_fail(t, c, r, "connect");
			return -EHOSTDOWN;
		}
	}
	if (h->op == GVM_OP_READ || h->op == GVM_OP_WRITE || h->op == GVM_OP_LIST) {
		r = ensure_open(t, c, h->region);
		if (r)
			return r;
	}
	r = queue_frame(t, c, h, iov, iovcnt, ref, ref_len, ctx);
	if (r == -EIO) {
		conn_fail(t, c, r, "tagging a frame");
		return -EHOSTDOWN;
	}
	return r;
}

int gvm_transport_send(struct gvm_transport *t, uint32_t node, struct gvm_hdr *h,
		       const struct iovec *iov, int iovcnt, void *ctx)
{
	return send_frame(t, node, h, iov, iovcnt, NULL, 0, ctx);
}

int gvm_transport_send_ref(struct gvm_transport *t, uint32_t node, struct gvm_hdr *h,
			   const void *payload, size_t len, void *ctx)
{
	return send_frame(t, node, h, NULL, 0, payload, len, ctx);
}

static void conn_fail(struct gvm_transport *t, struct gvm_conn *c, int err, const char *why)
{
	uint64_t backoff = BACKOFF_MIN_NS << GVM_MIN(c->failures, 8u);

	if (backoff > BACKOFF_MAX_NS)
		backoff = BACKOFF_MAX_NS;
	if (c->failures == 0 || gvm_log_get_level() >= GVM_LOG_DEBUG)
		pr_warn("node %s: %s: %s (retrying with backoff)", gvm_node_name(t->cfg, c->node), why,
			strerror(-err));
	c->state = GVM_CONN_DOWN;
	conn_close_fd(t, c);
	c->failures++;
	c->errors++;
	t->conn_failures++;
	c->retry_at = gvm_now_ns() + backoff;
	out_reset(c);
	c->in_len = c->in_off = 0;
	c->n_opened = 0;
	gvm_session_fini(&c->sess);
	gvm_session_init(&c->sess);
	/* Hand every outstanding request back; the owner may re-send to another
	 * replica from inside on_fail, which never touches this connection
	 * because it is DOWN now. */
	while (c->q_len) {
		struct gvm_req r = *q_front(c);
		q_pop(c);
		if (r.ctx)
			t->ops.on_fail(t->owner, c, &r, err);
	}
}

static void conn_idle_close(struct gvm_transport *t, struct gvm_conn *c)
{
	conn_close_fd(t, c);
	c->state = GVM_CONN_IDLE;
	out_reset(c);
	c->in_len = c->in_off = 0;
	c->n_opened = 0;
	gvm_session_fini(&c->sess);
	gvm_session_init(&c->sess);
	/* Give the memory of an idle node back: a 10,000-node pool keeps only
	 * the struct while idle. */
	free(c->in); c->in = NULL; c->in_cap = 0;
	free(c->out); c->out = NULL; c->out_cap = 0;
	free(c->ext); c->ext = NULL; c->ext_cap = 0;
	free(c->q); c->q = NULL; c->q_cap = 0; c->q_head = 0;
	free(c->opened); c->opened = NULL;
}

/* Account for n bytes written: inline bytes up to the next referenced
 * payload, then that payload, and so on. */
static void out_advance(struct gvm_conn *c, size_t n)
{
	c->tx_sent += n;
	c->bytes_out += n;
	while (n) {
		size_t stop = c->ext_len ? ext_at(c, 0)->pos : c->out_len;
		if (c->out_off < stop) {
			size_t take = GVM_MIN(n, stop - c->out_off);
			c->out_off += take;
			n -= take;
			continue;
		}
		struct gvm_out_ext *x = ext_at(c, 0);
		size_t take = GVM_MIN(n, x->len - c->ext_done);
		c->ext_done += take;
		n -= take;
		if (c->ext_done == x->len) {
			c->ext_head = (c->ext_head + 1) % c->ext_cap;
			c->ext_len--;
			c->ext_done = 0;
		}
	}
}

static int conn_write(struct gvm_transport *t, struct gvm_conn *c)
{
	for (;;) {
		struct iovec iov[32];
		struct msghdr mh = { .msg_iov = iov };
		size_t ipos = c->out_off;
		uint32_t k = 0;
		int n = 0;
		/* Before the server's proof only HELLO may leave. */
		uint64_t cap = c->state == GVM_CONN_HELLO ? c->hello_end - c->tx_sent : UINT64_MAX;

		if (!cap)
			return set_events(t, c, 0);

		while (n < 32) {
			size_t stop = k < c->ext_len ? ext_at(c, k)->pos : c->out_len;
			if (ipos < stop) {
				iov[n++] = (struct iovec){ c->out + ipos, stop - ipos };
				ipos = stop;
			} else if (k < c->ext_len) {
				struct gvm_out_ext *x = ext_at(c, k);
				size_t off = k ? 0 : c->ext_done;
				iov[n++] = (struct iovec){ (void *)(x->p + off), x->len - off };
				k++;
			} else {
				break;
			}
		}
		if (!n)
			break;
		for (int i = 0; i < n; i++) {
			if (iov[i].iov_len >= cap) {
				iov[i].iov_len = cap;
				n = i + 1;
				break;
			}
			cap -= iov[i].iov_len;
		}
		mh.msg_iovlen = (size_t)n;
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return set_events(t, c, 1);
			return -errno;
		}
		out_advance(c, (size_t)w);
	}
	c->out_off = c->out_len = 0;
	return set_events(t, c, 0);
}

void gvm_transport_flush(struct gvm_transport *t)
{
	while (t->dirty) {
		struct gvm_conn *c = t->dirty;
		int r;

		t->dirty = c->next_dirty;
		c->dirty = 0;
		if ((c->state != GVM_CONN_READY && c->state != GVM_CONN_HELLO) || c->fd < 0)
			continue; /* written once the handshake is done */
		r = conn_write(t, c);
		if (r < 0)
			conn_fail(t, c, r, "send");
	}
}

static int on_greeting(struct gvm_transport *t, struct gvm_conn *c, const uint8_t *payload)
{
	struct gvm_greeting g;
	struct gvm_hello hello;
	struct gvm_hdr h = { .op = GVM_OP_HELLO, .len = GVM_HELLO_SIZE };
	uint8_t hb[GVM_HDR_SIZE], pb[GVM_HELLO_SIZE];
	uint8_t *queued;
	size_t queued_len;
	int r;

	gvm_greeting_decode(payload, &g);
	if ((g.flags & GVM_GREET_AUTH) && !t->token) {
		pr_err("node %s requires a token and the pool has none", gvm_node_name(t->cfg, c->node));
		return -EACCES;
	}
	/* Holding a token, talk only to a node that can prove it holds it too:
	 * a node that does not offer a session may be anyone. */
	if (t->token && !(g.flags & GVM_GREET_KEYED)) {
		pr_err("node %s does not offer an authenticated session (a token is configured): "
		       "refusing it", gvm_node_name(t->cfg, c->node));
		return -EACCES;
	}
	r = gvm_session_hello(&c->sess, t->token, t->token_len, payload, &hello);
	if (r < 0)
		return r;
	gvm_hello_encode(&hello, pb);
	OPENSSL_cleanse(&hello, sizeof(hello));
	h.magic = GVM_PROTO_MAGIC;
	h.version = GVM_PROTO_VERSION;
	h.id = 0;
	gvm_hdr_encode(&h, hb);
	/* HELLO must precede the requests queued while connecting. Its reply
	 * carries id 0 and is consumed here, not by the request FIFO. */
	queued_len = c->out_len - c->out_off;
	queued = c->out + c->out_off;
	if (buf_reserve(&c->out, &c->out_cap, queued_len + sizeof(hb) + sizeof(pb)))
		return -ENOMEM;
	queued = c->out + c->out_off;
	memmove(c->out + sizeof(hb) + sizeof(pb), queued, queued_len);
	memcpy(c->out, hb, sizeof(hb));
	memcpy(c->out + sizeof(hb), pb, sizeof(pb));
	/* Referenced payloads and the requests' end offsets move with it. */
	for (uint32_t k = 0; k < c->ext_len; k++)
		ext_at(c, k)->pos = ext_at(c, k)->pos - c->out_off + sizeof(hb) + sizeof(pb);
	for (uint32_t k = 0; k < c->q_len; k++)
		c->q[(c->q_head + k) % c->q_cap].end += sizeof(hb) + sizeof(pb);
	c->tx_queued += sizeof(hb) + sizeof(pb);
	c->out_off = 0;
	c->out_len = queued_len + sizeof(hb) + sizeof(pb);
	c->hello_end = c->tx_sent + sizeof(hb) + sizeof(pb);
	c->state = t->token ? GVM_CONN_HELLO : GVM_CONN_READY;
	mark_dirty(t, c);
	return 0;
}

/*
 * The server proved itself: tag the frames queued before (pad the OPENs) in
 * order, rebuilding the unsent output. Only HELLO has been written, so every
 * frame from out_off on is whole; a frame's payload is either inline after
 * its header or the referenced payload that starts right there. Each frame
 * has a FIFO entry, in the same order, whose end offset moves with it.
 */
static int frames_seal(struct gvm_transport *t, struct gvm_conn *c)
{
	uint8_t *nb = NULL;
	size_t nlen = 0, ncap = 0, pos = c->out_off;
	uint64_t stream = c->tx_sent;  /* tx offset of nb[nlen] */
	uint32_t k = 0, qi = 0;
	int r = 0;

	(void)t;
	while (pos < c->out_len || k < c->ext_len) {
		const uint8_t *hb = c->out + pos, *pl;
		uint8_t tag[GVM_TAG_SIZE], pad[GVM_KEY_SIZE];
		struct gvm_hdr h;
		const char *why;
		int ext;

		if (c->out_len - pos < GVM_HDR_SIZE || gvm_hdr_decode(hb, 0, &h, &why) < 0 || qi >= c->q_len)
			return -EPROTO; /* our own queue: cannot happen */
		pos += GVM_HDR_SIZE;
		ext = h.len && k < c->ext_len && ext_at(c, k)->pos == pos;
		pl = ext ? ext_at(c, k)->p : c->out + pos;
		if (h.op == GVM_OP_OPEN) {
			if (gvm_session_open_pad(&c->sess, h.region, c->sess.seq_out, pl, pad) < 0)
				return -EIO;
			pl = pad;
		}
		if (gvm_session_tag_begin(&c->sess, hb) < 0 || gvm_session_tag_add(&c->sess, pl, h.len) < 0 ||
		    gvm_session_tag_end(&c->sess, tag) < 0) {
			r = -EIO;
			break;
		}
		if ((r = buf_reserve(&nb, &ncap, nlen + GVM_HDR_SIZE + (ext ? 0 : h.len) + GVM_TAG_SIZE)) < 0)
			break;
		memcpy(nb + nlen, hb, GVM_HDR_SIZE);
		nlen += GVM_HDR_SIZE;
		if (ext) {
			ext_at(c, k)->pos = nlen;
			k++;
			stream += h.len;
		} else {
			memcpy(nb + nlen, pl, h.len);
			nlen += h.len;
			pos += h.len;
		}
		memcpy(nb + nlen, tag, GVM_TAG_SIZE);
		nlen += GVM_TAG_SIZE;
		c->q[(c->q_head + qi) % c->q_cap].end = stream + nlen;
		qi++;
	}
	if (r < 0) {
		free(nb);
		return r;
	}
	free(c->out);
	c->out = nb;
	c->out_cap = ncap;
	c->out_off = 0;
	c->out_len = nlen;
	c->tx_queued = stream + nlen;
	return 0;
}

/* Parse every complete frame in the input buffer. */
static int conn_parse(struct gvm_transport *t, struct gvm_conn *c)
{
	while (c->in_len - c->in_off >= GVM_HDR_SIZE) {
		const uint8_t *p = c->in + c->in_off;
		struct gvm_hdr h;
		const char *why = NULL;
		int r = gvm_hdr_decode(p, 1, &h, &why);

		if (r) {
			pr_err("node %s: bad frame: %s", gvm_node_name(t->cfg, c->node), why);
			return -EPROTO;
		}
		size_t tag = c->sess.on ? GVM_TAG_SIZE : 0;
		if (c->in_len - c->in_off < GVM_HDR_SIZE + (size_t)h.len + tag) {
			/* Make room for the whole frame. */
			size_t need = GVM_HDR_SIZE + (size_t)h.len + tag;
			if (c->in_off) {
				memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
				c->in_len -= c->in_off;
				c->in_off = 0;
			}
			if (buf_reserve(&c->in, &c->in_cap, need))
				return -ENOMEM;
			return 0;
		}
		if (tag && gvm_session_check(&c->sess, p, p + GVM_HDR_SIZE, h.len, p + GVM_HDR_SIZE + h.len) < 0) {
			pr_err("node %s: frame tag does not verify (altered, replayed or relayed)",
			       gvm_node_name(t->cfg, c->node));
			return -EBADMSG;
		}
		p += GVM_HDR_SIZE;
		c->in_off += GVM_HDR_SIZE + h.len + tag;
		if (h.op == GVM_OP_GREETING) {
			if (c->state != GVM_CONN_GREETING)
				return -EPROTO;
			r = on_greeting(t, c, p);
			if (r)
				return r;
			continue;
		}
		if (h.op == (GVM_OP_HELLO | GVM_OP_REPLY)) {
			if (h.status) {
				pr_err("node %s refused HELLO: %s", gvm_node_name(t->cfg, c->node),
				       strerror(-h.status));
				return h.status;
			}
			if (c->state == GVM_CONN_HELLO) {
				if (h.len != GVM_PROOF_SIZE ||
				    gvm_session_confirm(&c->sess, t->token, t->token_len, p) < 0) {
					pr_err("node %s did not prove it holds the pool token: refusing it",
					       gvm_node_name(t->cfg, c->node));
					return -EACCES;
				}
				if ((r = frames_seal(t, c)) < 0)
					return r;
				c->state = GVM_CONN_READY;
				mark_dirty(t, c);
			} else if (c->state != GVM_CONN_READY || h.len) {
				return -EPROTO;
			}
			if (c->failures && t->ops.on_up) {
				pr_info("node %s is back", gvm_node_name(t->cfg, c->node));
				t->ops.on_up(t->owner, c);
			}
			c->failures = 0;
			continue;
		}
		struct gvm_req *req = q_front(c);
		if (!req || req->id != h.id || (req->op | GVM_OP_REPLY) != h.op) {
			pr_err("node %s: reply id %llu does not match the request queue",
			       gvm_node_name(t->cfg, c->node), (unsigned long long)h.id);
			return -EPROTO;
		}
		if (c->tx_sent < req->end) {
			/* A server cannot answer a frame it has not fully received;
			 * and a referenced payload must not be released early. */
			pr_err("node %s: reply id %llu before its request was sent",
			       gvm_node_name(t->cfg, c->node), (unsigned long long)h.id);
			return -EPROTO;
		}
		if (h.status == 0 && (h.op & ~GVM_OP_REPLY) == GVM_OP_READ &&
		    (h.region != req->region || h.page != req->page || h.count != req->count)) {
			pr_err("node %s: READ reply for another range", gvm_node_name(t->cfg, c->node));
			return -EPROTO;
		}
		if (h.status == 0 && h.len) {
			const char *w = NULL;
			if ((h.op & ~GVM_OP_REPLY) == GVM_OP_READ &&
			    gvm_pages_check_tagged(p, h.len, h.count, h.flags & GVM_HF_TAGS, &w) < 0) {
				pr_err("node %s: bad READ payload: %s", gvm_node_name(t->cfg, c->node), w);
				return -EPROTO;
			}
		}
		struct gvm_req copy = *req;
		q_pop(c);
		uint64_t rtt = gvm_now_ns() - copy.sent_ns;
		c->rtt_ewma_ns = c->rtt_ewma_ns ? (c->rtt_ewma_ns * 7 + rtt) / 8 : rtt;
		if (h.status && copy.op == GVM_OP_OPEN) {
			pr_err("node %s refused region %016llx: %s", gvm_node_name(t->cfg, c->node),
			       (unsigned long long)copy.region, strerror(-h.status));
			c->errors++;
		}
		if (copy.ctx)
			t->ops.on_reply(t->owner, c, &copy, &h, p);
	}
	if (c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
	return 0;
}

static int conn_read(struct gvm_transport *t, struct gvm_conn *c)
{
	for (;;) {
		ssize_t n;
		int r;

		if (!c->in) {
			if (t->n_spare) {
				t->n_spare--;
				c->in = t->spare[t->n_spare].buf;
				c->in_cap = t->spare[t->n_spare].cap;
			} else if (buf_reserve(&c->in, &c->in_cap, IN_INITIAL)) {
				return -ENOMEM;
			}
		}
		if (c->in_len == c->in_cap) {
			/* Full but no complete frame: compact, then grow. */
			if (c->in_off) {
				memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
				c->in_len -= c->in_off;
				c->in_off = 0;
			} else if (buf_reserve(&c->in, &c->in_cap, GVM_MIN((size_t)IN_FULL, c->in_cap * 2))) {
				return -ENOMEM;
			}
			if (c->in_len == c->in_cap)
				return -EPROTO;
		}
		n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				/* Drained: lend the buffer to the next node that talks. A
				 * pool touching 10,000 nodes would otherwise hold 10,000
				 * receive buffers (256 KiB each) until they go idle. */
				if (c->in_len == 0 && t->n_spare < GVM_ARRAY_SIZE(t->spare)) {
					t->spare[t->n_spare].buf = c->in;
					t->spare[t->n_spare].cap = c->in_cap;
					t->n_spare++;
					c->in = NULL;
					c->in_cap = 0;
					c->in_off = 0;
				}
				return 0;
			}
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		c->in_len += (size_t)n;
		c->bytes_in += (uint64_t)n;
		c->last_rx = gvm_now_ns();
		r = conn_parse(t, c);
		if (r)
			return r;
		if (c->fd < 0)
			return 0;
	}
}

void gvm_transport_event(struct gvm_transport *t, struct gvm_conn *c, uint32_t events)
{
	int r;

	if (c->fd < 0)
		return;
	if (c->state == GVM_CONN_CONNECTING && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
			err = errno;
		if (err) {
			conn_fail(t, c, -err, "connect");
			return;
		}
		c->state = GVM_CONN_GREETING;
		if (set_events(t, c, 0) < 0) {
			conn_fail(t, c, -EIO, "epoll");
			return;
		}
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		r = conn_read(t, c);
		if (r < 0) {
			conn_fail(t, c, r, r == -ECONNRESET ? "connection closed" : "receive");
			return;
		}
	}
	if ((events & EPOLLOUT) && (c->state == GVM_CONN_READY || c->state == GVM_CONN_HELLO)) {
		r = conn_write(t, c);
		if (r < 0)
			conn_fail(t, c, r, "send");
	}
}

int gvm_transport_tick(struct gvm_transport *t, uint64_t now, uint64_t idle_ns)
{
	uint64_t tmo = (uint64_t)t->timeout_ms * 1000000ull;
	uint64_t next = now + 1000ull * 1000000ull;

	for (uint32_t i = 0; i < t->n_nodes; i++) {
		struct gvm_conn *c = t->conns[i];
		if (!c || c->fd < 0)
			continue;
		if (c->q_len) {
			/* Silent for the timeout while owing replies: a deep queue on a
			 * busy node is progress, not failure. */
			uint64_t due = GVM_MAX(q_front(c)->sent_ns, c->last_rx) + tmo;
			if (now >= due) {
				conn_fail(t, c, -ETIMEDOUT, "no reply");
				continue;
			}
			next = GVM_MIN(next, due);
		} else if (c->state == GVM_CONN_CONNECTING || c->state == GVM_CONN_GREETING ||
			   c->state == GVM_CONN_HELLO) {
			uint64_t due = c->last_used + tmo;
			if (now >= due) {
				conn_fail(t, c, -ETIMEDOUT, "handshake");
				continue;
			}
			next = GVM_MIN(next, due);
		} else if (idle_ns && now - c->last_used >= idle_ns && c->out_len == c->out_off &&
			   !c->ext_len) {
			conn_idle_close(t, c);
		}
	}
	return (int)((next - now) / 1000000ull) + 1;
}
