/*
 * The transport against scripted servers (a thread on 127.0.0.1): a WRITE
 * queued by reference (gvm_transport_send_ref) reaches the server intact,
 * framed behind the HELLO and OPEN that were queued while connecting; and a
 * server that answers before it could have received the request gets a
 * protocol error, never an on_reply (a payload sent by reference may be
 * released on the reply, so an early one must not count).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "proto.h"
#include "test.h"
#include "transport.h"

#define REGION 7u
#define NPAGES 64u /* 256 KiB: more than one write to the socket on most kernels */

struct seen {
	int replies, fails, last_err, reply_status;
};

static void on_reply(void *owner, struct gvm_conn *c, const struct gvm_req *req, const struct gvm_hdr *h,
		     const uint8_t *payload)
{
	struct seen *s = owner;

	(void)c, (void)req, (void)payload;
	s->replies++;
	s->reply_status = h->status;
}

static void on_fail(void *owner, struct gvm_conn *c, const struct gvm_req *req, int err)
{
	struct seen *s = owner;

	(void)c, (void)req;
	s->fails++;
	s->last_err = err;
}

static int listen_any(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (void *)&a, sizeof(a)) < 0 || listen(fd, 4) < 0 ||
	    getsockname(fd, (void *)&a, &al) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

static size_t frame(uint8_t *out, uint16_t op, uint64_t id, const void *payload, uint32_t len)
{
	struct gvm_hdr h = { .magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = op, .id = id,
			     .len = len };

	gvm_hdr_encode(&h, out);
	if (len)
		memcpy(out + GVM_HDR_SIZE, payload, len);
	return GVM_HDR_SIZE + len;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = recv(fd, p, n, 0);
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

struct server {
	int lfd;
	int early;                 /* answer everything before reading anything */
	const uint8_t *expect;     /* the WRITE payload the client sends */
	size_t expect_len;
	int ok;                    /* good server: the WRITE arrived intact */
};

static size_t greeting(uint8_t *out)
{
	struct gvm_greeting g = { .version = GVM_PROTO_VERSION };
	uint8_t gb[GVM_GREETING_SIZE];

	gvm_greeting_encode(&g, gb);
	return frame(out, GVM_OP_GREETING, 0, gb, sizeof(gb));
}

static void *server_main(void *arg)
{
	struct server *s = arg;
	uint8_t *buf = malloc(GVM_HDR_SIZE + s->expect_len + 4096);
	int fd = accept(s->lfd, NULL, NULL);
	size_t n;

	if (fd < 0 || !buf)
		goto out;
	n = greeting(buf);
	if (s->early) {
		/* One burst: GREETING, the HELLO reply, and replies to the OPEN
		 * (id 1) and the WRITE (id 2) the client has not sent yet. */
		n += frame(buf + n, GVM_OP_HELLO | GVM_OP_REPLY, 0, NULL, 0);
		n += frame(buf + n, GVM_OP_OPEN | GVM_OP_REPLY, 1, NULL, 0);
		n += frame(buf + n, GVM_OP_WRITE | GVM_OP_REPLY, 2, NULL, 0);
		if (send_all(fd, buf, n) < 0)
			goto out;
		while (recv(fd, buf, 4096, 0) > 0) /* until the client drops us */
			;
		goto out;
	}
	if (send_all(fd, buf, n) < 0 ||
	    recv_all(fd, buf, GVM_HDR_SIZE + GVM_HELLO_SIZE) < 0)
		goto out;
	n = frame(buf, GVM_OP_HELLO | GVM_OP_REPLY, 0, NULL, 0);
	if (send_all(fd, buf, n) < 0 || recv_all(fd, buf, GVM_HDR_SIZE + GVM_KEY_SIZE) < 0)
		goto out;
	n = frame(buf, GVM_OP_OPEN | GVM_OP_REPLY, 1, NULL, 0);
	if (send_all(fd, buf, n) < 0 || recv_all(fd, buf, GVM_HDR_SIZE + s->expect_len) < 0)
		goto out;
	struct gvm_hdr h;
	const char *why;
	s->ok = gvm_hdr_decode(buf, 0, &h, &why) == 0 && h.op == GVM_OP_WRITE && h.id == 2 &&
		h.len == s->expect_len && !memcmp(buf + GVM_HDR_SIZE, s->expect, s->expect_len);
	n = frame(buf, GVM_OP_WRITE | GVM_OP_REPLY, 2, NULL, 0);
	if (send_all(fd, buf, n) < 0)
		goto out;
	while (recv(fd, buf, 4096, 0) > 0)
		;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

/* Queue one WRITE by reference to a scripted server and drive the
 * transport until it is answered or failed. */
static int run(int early, struct seen *seen, int *server_ok)
{
	static const uint8_t key[GVM_KEY_SIZE] = "transport-test-key-0123456789ab";
	struct gvm_transport_ops ops = { .on_reply = on_reply, .on_fail = on_fail };
	size_t plen = GVM_BITMAP_BYTES(NPAGES) + (size_t)NPAGES * GVM_PAGE_SIZE;
	uint8_t *payload = malloc(plen);
	struct server s = { .early = early, .expect = payload, .expect_len = plen };
	struct gvm_config cfg;
	struct gvm_transport t;
	char spec[64], err[256];
	int port, epfd, marker = 0;
	pthread_t th;

	CHECK(payload);
	memset(payload, 0xff, GVM_BITMAP_BYTES(NPAGES));
	for (size_t i = GVM_BITMAP_BYTES(NPAGES); i < plen; i++)
		payload[i] = (uint8_t)(i * 7 + 1);
	s.lfd = listen_any(&port);
	CHECK(s.lfd >= 0);
	CHECK(pthread_create(&th, NULL, server_main, &s) == 0);
	gvm_config_init(&cfg);
	snprintf(spec, sizeof(spec), "127.0.0.1:%d", port);
	CHECK(gvm_config_add(&cfg, spec, err, sizeof(err)) == 0);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	CHECK(epfd >= 0);
	CHECK(gvm_transport_init(&t, epfd, &cfg, NULL, 0, 5000, &ops, seen) == 0);
	CHECK(gvm_transport_add_key(&t, REGION, key) == 0);

	struct gvm_hdr h = { .op = GVM_OP_WRITE, .region = REGION, .page = 0, .count = NPAGES,
			     .len = (uint32_t)plen };
	CHECK(gvm_transport_send_ref(&t, 0, &h, payload, plen, &marker) == 0);
	gvm_transport_flush(&t);
	for (int turns = 0; turns < 500 && !seen->replies && !seen->fails; turns++) {
		struct epoll_event evs[8];
		int n = epoll_wait(epfd, evs, 8, 10);
		CHECK(n >= 0 || errno == EINTR);
		for (int i = 0; i < n; i++)
			gvm_transport_event(&t, evs[i].data.ptr, evs[i].events);
		gvm_transport_flush(&t);
	}
	gvm_transport_fini(&t); /* closes the connection: the server thread ends */
	pthread_join(th, NULL);
	close(s.lfd);
	close(epfd);
	gvm_config_fini(&cfg);
	free(payload);
	*server_ok = s.ok;
	return 0;
}

static int test_write_by_reference(void)
{
	struct seen seen = { 0 };
	int server_ok = 0;

	CHECK(run(0, &seen, &server_ok) == 0);
	CHECK_EQ(seen.fails, 0);
	CHECK_EQ(seen.replies, 1);
	CHECK_EQ(seen.reply_status, 0);
	CHECK(server_ok); /* the payload arrived byte for byte, after HELLO and OPEN */
	return 0;
}

static int test_early_reply_is_protocol_error(void)
{
	struct seen seen = { 0 };
	int server_ok = 0;

	CHECK(run(1, &seen, &server_ok) == 0);
	CHECK_EQ(seen.replies, 0);
	CHECK_EQ(seen.fails, 1);
	CHECK_EQ(seen.last_err, -EPROTO);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "write_by_reference", test_write_by_reference },
	{ "early_reply_is_protocol_error", test_early_reply_is_protocol_error },
};

GVM_TEST_MAIN(tests)
