/*
 * Blocking client for one memory node. Sockets are non-blocking underneath
 * so every step can be bounded with poll() (never the select syscall: fds above 1023
 * are normal in a process serving many VMs).
 */
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "util.h"

#define MAX_LIST_PAGES (1u << 20)

static int deadline_ms_left(uint64_t deadline)
{
	uint64_t now = gvm_now_ns();

	if (!deadline)
		return -1;
	if (now >= deadline)
		return 0;
	return (int)GVM_MIN((deadline - now + 999999) / 1000000, (uint64_t)0x7fffffff);
}

static uint64_t deadline_after(int timeout_ms)
{
	return timeout_ms > 0 ? gvm_now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
}

/* Wait for `events` on fd; 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int left = deadline_ms_left(deadline);
		int n;

		if (left == 0)
			return -ETIMEDOUT;
		n = poll(&p, 1, left);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n > 0)
			return 0;
	}
}

static int fail(struct gvm_client *c, int err)
{
	gvm_client_close(c);
	return err;
}

static int send_all(struct gvm_client *c, struct iovec *iov, int iovcnt)
{
	uint64_t deadline = deadline_after(c->timeout_ms);

	while (iovcnt) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
		ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		int r;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			if ((r = wait_fd(c->fd, POLLOUT, deadline)) < 0)
				return r;
			continue;
		}
		while (iovcnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

static int recv_all(struct gvm_client *c, void *buf, size_t len)
{
	uint64_t deadline = deadline_after(c->timeout_ms);
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(c->fd, p, len, 0);
		int r;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			if ((r = wait_fd(c->fd, POLLIN, deadline)) < 0)
				return r;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Receive one frame from the server into *h and c->buf. 0 or -errno. */
static int recv_frame(struct gvm_client *c, struct gvm_hdr *h)
{
	uint8_t raw[GVM_HDR_SIZE];
	const char *why;
	int r;

	if ((r = recv_all(c, raw, sizeof(raw))) < 0)
		return r;
	if (gvm_hdr_decode(raw, 1, h, &why) < 0)
		return -EPROTO;
	if (h->len && (r = recv_all(c, c->buf, h->len)) < 0)
		return r;
	if (c->sess.on) {
		uint8_t tag[GVM_TAG_SIZE];
		if ((r = recv_all(c, tag, sizeof(tag))) < 0)
			return r;
		if (gvm_session_check(&c->sess, raw, c->buf, h->len, tag) < 0)
			return -EBADMSG;
	}
	return 0;
}

/*
 * Send one request and wait for its reply (payload in c->buf). Returns the
 * reply status (0 or the server's -errno); transport or protocol errors close
 * the connection.
 */
static int transact(struct gvm_client *c, struct gvm_hdr *req, const void *payload,
		    struct gvm_hdr *rep)
{
	uint8_t raw[GVM_HDR_SIZE], tag[GVM_TAG_SIZE];
	struct iovec iov[3] = { { raw, sizeof(raw) }, { (void *)payload, req->len }, { tag, sizeof(tag) } };
	int r, n = 1;

	if (c->fd < 0)
		return -ENOTCONN;
	req->magic = GVM_PROTO_MAGIC;
	req->version = GVM_PROTO_VERSION;
	req->id = c->next_id++;
	req->status = 0;
	req->flags &= GVM_HF_TAGS;
	gvm_hdr_encode(req, raw);
	if (req->len)
		iov[n++] = iov[1];
	if (c->sess.on) {
		if (gvm_session_tag_begin(&c->sess, raw) < 0 ||
		    gvm_session_tag_add(&c->sess, payload, req->len) < 0 ||
		    gvm_session_tag_end(&c->sess, tag) < 0)
			return fail(c, -EIO);
		iov[n++] = iov[2];
	}
	if ((r = send_all(c, iov, n)) < 0)
		return fail(c, r);
	if ((r = recv_frame(c, rep)) < 0)
		return fail(c, r);
	if (rep->op != (req->op | GVM_OP_REPLY) || rep->id != req->id)
		return fail(c, -EPROTO);
	return rep->status;
}

/* "HOST:PORT", "[V6]:PORT", "[V6]", "HOST" (port 9999); the port as text. */
static int split_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen)
{
	uint16_t p;
	int r = gvm_split_hostport(s, host, hostlen, &p, 9999);

	if (r)
		return r;
	snprintf(port, portlen, "%u", p);
	return 0;
}

static int connect_one(const struct addrinfo *ai, int timeout_ms)
{
	uint64_t deadline = deadline_after(timeout_ms);
	int fd, r, err = 0, one = 1;
	socklen_t len = sizeof(err);

	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS && errno != EINTR) {
			r = -errno;
			goto out_close;
		}
		if ((r = wait_fd(fd, POLLOUT, deadline)) < 0)
			goto out_close;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
			r = -errno;
			goto out_close;
		}
		if (err) {
			r = -err;
			goto out_close;
		}
	}
	/* Requests are small and latency-bound. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		r = -errno;
		goto out_close;
	}
	return fd;

out_close:
	close(fd);
	return r;
}

int gvm_client_connect(struct gvm_client *c, const char *hostport, const void *token,
		       size_t token_len, int timeout_ms)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	struct gvm_greeting g;
	struct gvm_hello hello;
	struct gvm_hdr h, rep;
	uint8_t payload[GVM_HELLO_SIZE];
	char host[256], port[8];
	int r = -EHOSTUNREACH;

	c->fd = -1;
	c->next_id = 1;
	c->timeout_ms = timeout_ms;
	c->buf = NULL;
	gvm_session_init(&c->sess);
	memset(&c->seal, 0, sizeof(c->seal));
	if (!hostport || split_hostport(hostport, host, sizeof(host), port, sizeof(port)) < 0)
		return -EINVAL;
	if (token && (token_len == 0 || token_len > GVM_TOKEN_MAX))
		return -EINVAL;
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -EHOSTUNREACH;
	for (ai = res; ai; ai = ai->ai_next) {
		r = connect_one(ai, timeout_ms);
		if (r >= 0)
			break;
	}
	freeaddrinfo(res);
	if (r < 0)
		return r;
	c->fd = r;
	c->buf = malloc(GVM_MAX_PAYLOAD);
	if (!c->buf)
		return fail(c, -ENOMEM);

	if ((r = recv_frame(c, &h)) < 0)
		return fail(c, r);
	if (h.op != GVM_OP_GREETING)
		return fail(c, -EPROTO);
	gvm_greeting_decode(c->buf, &g);
	if (g.version < GVM_PROTO_VERSION)
		return fail(c, -EPROTONOSUPPORT);
	/* Holding a token, talk only to a node that can prove it holds it too. */
	if (token && !(g.flags & GVM_GREET_KEYED))
		return fail(c, -EACCES);
	if ((r = gvm_session_hello(&c->sess, token, token_len, c->buf, &hello)) < 0)
		return fail(c, r == -EACCES ? r : -EIO);
	gvm_hello_encode(&hello, payload);
	OPENSSL_cleanse(&hello, sizeof(hello));
	h = (struct gvm_hdr){ .op = GVM_OP_HELLO, .len = GVM_HELLO_SIZE };
	r = transact(c, &h, payload, &rep);
	OPENSSL_cleanse(payload, sizeof(payload));
	if (r != 0)
		return fail(c, r);
	if (token && (rep.len != GVM_PROOF_SIZE || gvm_session_confirm(&c->sess, token, token_len, c->buf) < 0))
		return fail(c, -EACCES);
	return 0;
}

void gvm_client_close(struct gvm_client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	gvm_session_fini(&c->sess);
	gvm_sealer_fini(&c->seal);
	free(c->buf);
	c->buf = NULL;
}

int gvm_client_open(struct gvm_client *c, uint64_t region, const uint8_t key[GVM_KEY_SIZE])
{
	struct gvm_hdr h = { .op = GVM_OP_OPEN, .region = region, .len = GVM_OPEN_SIZE }, rep;
	uint8_t v[GVM_KEY_SIZE];
	int r;

	if (c->fd < 0)
		return -ENOTCONN;
	if (gvm_region_verifier(key, region, v) < 0 ||
	    (c->sess.on && gvm_session_open_pad(&c->sess, region, c->sess.seq_out, v, v) < 0))
		return -EIO;
	r = transact(c, &h, v, &rep);
	OPENSSL_cleanse(v, sizeof(v));
	return r;
}

/* The reply must describe the range that was asked for. */
static int check_echo(struct gvm_client *c, const struct gvm_hdr *rep, uint64_t region,
		      uint64_t page, unsigned count)
{
	if (rep->region != region || rep->page != page || rep->count != count)
		return fail(c, -EPROTO);
	return 0;
}

int gvm_client_read_bm(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		       void *buf, uint8_t *bitmap)
{
	int sealed = gvm_sealer_ready(&c->seal) && c->seal.region == region;
	struct gvm_hdr h = { .op = GVM_OP_READ, .region = region, .page = page, .count = count,
			     .flags = sealed ? GVM_HF_TAGS : 0 }, rep;
	const uint8_t *data, *tags;
	const char *why;
	uint8_t *out = buf;
	int r, nz;

	if (count == 0 || count > GVM_MAX_PAGES)
		return -EINVAL;
	if ((r = transact(c, &h, NULL, &rep)) != 0)
		return r;
	if ((r = check_echo(c, &rep, region, page, count)) < 0)
		return r;
	if ((rep.flags & GVM_HF_TAGS) != h.flags ||
	    (nz = gvm_pages_check_tagged(c->buf, rep.len, count, sealed, &why)) < 0)
		return fail(c, -EPROTO);
	data = c->buf + GVM_BITMAP_BYTES(count);
	tags = data + (size_t)nz * GVM_PAGE_SIZE;
	for (unsigned i = 0; i < count; i++) {
		uint8_t *dst = out + (size_t)i * GVM_PAGE_SIZE;
		if (gvm_bitmap_test(c->buf, i)) {
			memcpy(dst, data, GVM_PAGE_SIZE);
			data += GVM_PAGE_SIZE;
			if (sealed && gvm_open_page(&c->seal, page + i, c->seal_ver, dst, tags) < 0)
				return -EBADMSG;
			tags += sealed ? GVM_TAG_SIZE : 0;
		} else {
			memset(dst, 0, GVM_PAGE_SIZE);
		}
	}
	if (bitmap)
		memcpy(bitmap, c->buf, GVM_BITMAP_BYTES(count));
	return 0;
}

int gvm_client_read(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count, void *buf)
{
	return gvm_client_read_bm(c, region, page, count, buf, NULL);
}

int gvm_client_write(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		     const void *buf)
{
	int sealed = gvm_sealer_ready(&c->seal) && c->seal.region == region;
	struct gvm_hdr h = { .op = GVM_OP_WRITE, .region = region, .page = page, .count = count,
			     .flags = sealed ? GVM_HF_TAGS : 0 }, rep;
	uint8_t tags[GVM_MAX_PAGES * GVM_TAG_SIZE];
	const uint8_t *src = buf;
	uint8_t *data;
	unsigned nz = 0;

	if (count == 0 || count > GVM_MAX_PAGES)
		return -EINVAL;
	if (c->fd < 0)
		return -ENOTCONN;
	memset(c->buf, 0, GVM_BITMAP_BYTES(count));
	data = c->buf + GVM_BITMAP_BYTES(count);
	for (unsigned i = 0; i < count; i++) {
		const uint8_t *pg = src + (size_t)i * GVM_PAGE_SIZE;
		if (gvm_page_is_zero(pg))
			continue;
		gvm_bitmap_set(c->buf, i);
		memcpy(data, pg, GVM_PAGE_SIZE);
		if (sealed && gvm_seal_page(&c->seal, page + i, c->seal_ver, data, tags + nz * GVM_TAG_SIZE) < 0)
			return -EIO;
		data += GVM_PAGE_SIZE;
		nz++;
	}
	if (sealed) {
		memcpy(data, tags, (size_t)nz * GVM_TAG_SIZE);
		data += (size_t)nz * GVM_TAG_SIZE;
	}
	h.len = (uint32_t)(data - c->buf);
	return transact(c, &h, c->buf, &rep);
}

int gvm_client_stat(struct gvm_client *c, struct gvm_stat *st)
{
	struct gvm_hdr h = { .op = GVM_OP_STAT }, rep;
	int r = transact(c, &h, NULL, &rep);

	if (r == 0)
		gvm_stat_decode(c->buf, st);
	return r;
}

int gvm_client_free(struct gvm_client *c, uint64_t region)
{
	struct gvm_hdr h = { .op = GVM_OP_FREE, .region = region }, rep;

	return transact(c, &h, NULL, &rep);
}

int gvm_client_list(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		    uint8_t *bitmap)
{
	struct gvm_hdr h = { .op = GVM_OP_LIST, .region = region, .page = page, .count = count }, rep;
	int r;

	if (count == 0 || count > MAX_LIST_PAGES)
		return -EINVAL;
	if ((r = transact(c, &h, NULL, &rep)) != 0)
		return r;
	if ((r = check_echo(c, &rep, region, page, count)) < 0)
		return r;
	memcpy(bitmap, c->buf, GVM_BITMAP_BYTES(count));
	return 0;
}

int gvm_client_ping(struct gvm_client *c)
{
	struct gvm_hdr h = { .op = GVM_OP_PING }, rep;

	return transact(c, &h, NULL, &rep);
}

int gvm_client_seal(struct gvm_client *c, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		    uint32_t version)
{
	uint8_t k[GVM_SEAL_KEY_SIZE];
	int r;

	if (!version || version > GVM_SEAL_MAX_VER)
		return -EINVAL;
	gvm_sealer_fini(&c->seal);
	if ((r = gvm_seal_key(key, region, k)) == 0)
		r = gvm_sealer_init(&c->seal, k, region);
	OPENSSL_cleanse(k, sizeof(k));
	c->seal_ver = version;
	return r;
}
