/*
 * Real memory servers: started in-process on a thread through the library
 * API (port 0 on loopback), or in a forked child where a test needs a
 * separate process (SIGKILL, 10,000 connections). Raw sockets play the
 * misbehaving clients.
 */
#define LOG_PREFIX "test: "
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "client.h"
#include "log.h"
#include "giantvm_memserver.h"
#include "proto.h"
#include "proc.h"
#include "rawsock.h"
#include "test.h"
#include "util.h"


#define PG GVM_PAGE_SIZE
#define TIMEOUT_MS 10000

static uint8_t key_a[GVM_KEY_SIZE] = "region-key-A-0123456789abcdefgh";
static uint8_t key_b[GVM_KEY_SIZE] = "region-key-B-0123456789abcdefgh";
static const char token_good[] = "0123456789abcdef-correct-token";
/* Servers started here also take this admin token: node_stat() proves it to
 * see node-wide counters (an ordinary client's STAT covers only itself). */
static const char token_admin[] = "0123456789abcdef-the-admin-token";
static char tmpdir[64];
static char admin_path[160];

static uint64_t rng_state = 42;
static uint64_t rnd(void)
{
	rng_state += 0x9e3779b97f4a7c15ull;
	return gvm_mix64(rng_state);
}

/* count pages of random data; page i is zero when i % zero_every == 0 (0 = none). */
static uint8_t *make_pages(unsigned count, unsigned zero_every, unsigned *nonzero)
{
	uint8_t *p = calloc(count ? count : 1, PG);
	unsigned nz = 0;

	for (unsigned i = 0; p && i < count; i++) {
		if (zero_every && i % zero_every == 0)
			continue;
		for (unsigned j = 0; j < PG; j += 8) {
			uint64_t v = rnd();
			memcpy(p + (size_t)i * PG + j, &v, 8);
		}
		nz++;
	}
	if (nonzero)
		*nonzero = nz;
	return p;
}

static const char *tmp_path(const char *name)
{
	static char path[160];

	if (!tmpdir[0]) {
		snprintf(tmpdir, sizeof(tmpdir), "/tmp/gvm-test-memserver-XXXXXX");
		if (!mkdtemp(tmpdir))
			return NULL;
	}
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}


static const char *admin_token_file(void)
{
	if (!admin_path[0]) {
		const char *p = tmp_path("admin-token");
		if (!p || test_write_file(p, token_admin, strlen(token_admin), 0600) < 0)
			return NULL;
		snprintf(admin_path, sizeof(admin_path), "%s", p);
	}
	return admin_path;
}

/* ---------------------------------------------------------------- in-process server */

struct srv {
	struct gvm_memserver *s;
	pthread_t th;
	int port;
	int rc;
	char addr[64];
};

static void *srv_main(void *arg)
{
	struct srv *v = arg;

	v->rc = gvm_memserver_run(v->s);
	return NULL;
}

static int srv_start(struct srv *v, struct gvm_memserver_opts *o)
{
	int r;

	memset(v, 0, sizeof(*v));
	if (!o->admin_token_file)
		o->admin_token_file = admin_token_file();
	if (!o->n_listen) {
		o->listen[0] = "127.0.0.1:0";
		o->n_listen = 1;
	}
	r = gvm_memserver_open(&v->s, o);
	if (r < 0)
		return r;
	v->port = gvm_memserver_port(v->s, 0);
	snprintf(v->addr, sizeof(v->addr), "127.0.0.1:%d", v->port);
	r = pthread_create(&v->th, NULL, srv_main, v);
	if (r) {
		gvm_memserver_close(v->s);
		return -r;
	}
	return 0;
}

static int srv_stop(struct srv *v)
{
	gvm_memserver_stop(v->s);
	pthread_join(v->th, NULL);
	gvm_memserver_close(v->s);
	v->s = NULL;
	return v->rc;
}

static int srv_start_ram(struct srv *v, uint64_t capacity)
{
	struct gvm_memserver_opts o = { .capacity = capacity };
	return srv_start(v, &o);
}

/* ---------------------------------------------------------------- raw sockets */

/* Connect and read the GREETING. Returns fd or -errno. */
static int raw_connect(int port, struct gvm_greeting *g)
{
	uint8_t pl[GVM_GREETING_SIZE];
	struct gvm_hdr h;
	int fd = tcp_from(NULL, port, TIMEOUT_MS);

	if (fd < 0)
		return fd;
	if (raw_reply(fd, &h, pl, sizeof(pl)) < 0 || h.op != GVM_OP_GREETING) {
		close(fd);
		return -EPROTO;
	}
	if (g)
		gvm_greeting_decode(pl, g);
	return fd;
}

/* Send HELLO (with MAC if token) and return the reply status, or -1000 on I/O failure.
 * The session's keys are not kept: a raw client with a token says nothing after HELLO. */
static int raw_hello(int fd, const struct gvm_greeting *g, const char *token, int with_mac)
{
	uint8_t f[GVM_HDR_SIZE + GVM_HELLO_SIZE], gb[GVM_GREETING_SIZE], proof[GVM_PROOF_SIZE];
	struct gvm_hello hello = { .version = GVM_PROTO_VERSION };
	struct gvm_session sess;
	struct gvm_hdr h;
	int r = 0;

	gvm_session_init(&sess);
	if (with_mac) {
		gvm_greeting_encode(g, gb);
		r = gvm_session_hello(&sess, token ? token : "0123456789abcdef-no-token-given",
				      token ? strlen(token) : 31, gb, &hello);
	}
	gvm_session_fini(&sess);
	if (r < 0)
		return -1000;
	mk_hdr(f, GVM_OP_HELLO, 1, 0, 0, 0, GVM_HELLO_SIZE);
	gvm_hello_encode(&hello, f + GVM_HDR_SIZE);
	if (send_all(fd, f, sizeof(f)) < 0 || raw_reply(fd, &h, proof, sizeof(proof)) < 0)
		return -1000;
	if (h.op != (GVM_OP_HELLO | GVM_OP_REPLY) || h.id != 1)
		return -1000;
	return h.status;
}

static int raw_open(int fd, uint64_t region, const uint8_t *key)
{
	uint8_t f[GVM_HDR_SIZE + GVM_KEY_SIZE];
	struct gvm_hdr h;

	/* OPEN carries the region's verifier, never its key. */
	mk_hdr(f, GVM_OP_OPEN, 2, region, 0, 0, GVM_KEY_SIZE);
	if (gvm_region_verifier(key, region, f + GVM_HDR_SIZE) < 0)
		return -1000;
	if (send_all(fd, f, sizeof(f)) < 0 || raw_reply(fd, &h, NULL, 0) < 0)
		return -1000;
	return h.status;
}

/* Connected, greeted, HELLO done, region opened. */
static int raw_session(int port, uint64_t region, const uint8_t *key)
{
	struct gvm_greeting g;
	int fd = raw_connect(port, &g);

	if (fd < 0)
		return fd;
	if (raw_hello(fd, &g, NULL, 0) != 0 || (key && raw_open(fd, region, key) != 0)) {
		close(fd);
		return -EPROTO;
	}
	return fd;
}

/* 0 once the server has closed fd (EOF or reset), -1 if it stays open. */
static int expect_closed(int fd)
{
	uint8_t scratch[4096];

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, TIMEOUT_MS);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		ssize_t r = recv(fd, scratch, sizeof(scratch), 0);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

struct sender {
	pthread_t th;
	int fd;
	const uint8_t *buf;
	size_t len;
	int rc;
};

static void *sender_main(void *arg)
{
	struct sender *s = arg;

	s->rc = send_all(s->fd, s->buf, s->len);
	return NULL;
}

/* Client helpers. */
static int client_connect(struct gvm_client *c, const char *addr)
{
	return gvm_client_connect(c, addr, NULL, 0, TIMEOUT_MS);
}

static int read_cmp(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		    const uint8_t *expect)
{
	uint8_t *buf = malloc((size_t)count * PG);
	int r;

	if (!buf)
		return -ENOMEM;
	r = gvm_client_read(c, region, page, count, buf);
	if (r == 0 && memcmp(buf, expect, (size_t)count * PG) != 0)
		r = 1;
	free(buf);
	return r;
}

static int64_t stat_field(struct gvm_client *c, int which)
{
	struct gvm_stat st;
	int r = gvm_client_stat(c, &st);

	if (r < 0)
		return r;
	switch (which) {
	case 0: return (int64_t)st.pages_stored;
	case 1: return (int64_t)st.clients;
	case 2: return (int64_t)st.regions;
	case 3: return (int64_t)st.bytes_in;
	default: return -1;
	}
}

/* A node-wide STAT field, seen by the admin (not counted among the clients). */
static int64_t node_stat(const char *addr, int which)
{
	struct gvm_client a;
	int64_t v;
	int r = gvm_client_connect(&a, addr, token_admin, strlen(token_admin), TIMEOUT_MS);

	if (r < 0)
		return r;
	v = stat_field(&a, which);
	gvm_client_close(&a);
	return which == 1 && v > 0 ? v - 1 : v;
}

/* Wait until the server reports `want` clients (connections close asynchronously). */
static int wait_clients(const char *addr, int64_t want)
{
	for (int i = 0; i < 500; i++) {
		if (node_stat(addr, 1) == want)
			return 0;
		usleep(10000);
	}
	return -1;
}

/* ---------------------------------------------------------------- tests */

static int test_roundtrip(void)
{
	struct srv v;
	struct gvm_client c;
	struct gvm_stat st;
	unsigned nz;
	uint8_t *pages = make_pages(300, 4, &nz), *back = malloc(300 * (size_t)PG);
	uint8_t bm[GVM_BITMAP_BYTES(300)], lbm[GVM_BITMAP_BYTES(400)];

	CHECK(pages && back);
	memset(pages + 7 * (size_t)PG, 0, PG); /* a few extra zero pages */
	memset(pages + 299 * (size_t)PG, 0, PG);
	nz -= 2;
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(gvm_client_ping(&c), 0);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 100, 300, pages), 0);
	CHECK_EQ(gvm_client_read_bm(&c, 1, 100, 300, back, bm), 0);
	CHECK(memcmp(back, pages, 300 * (size_t)PG) == 0);
	for (unsigned i = 0; i < 300; i++)
		CHECK_EQ(gvm_bitmap_test(bm, i), !gvm_page_is_zero(pages + (size_t)i * PG));
	CHECK_EQ(gvm_client_list(&c, 1, 50, 400, lbm), 0);
	for (unsigned i = 0; i < 400; i++) {
		int want = i >= 50 && i < 350 && !gvm_page_is_zero(pages + (size_t)(i - 50) * PG);
		CHECK_EQ(gvm_bitmap_test(lbm, i), want);
	}
	CHECK_EQ(gvm_client_stat(&c, &st), 0);
	CHECK_EQ(st.pages_stored, nz); /* zero pages are not stored */
	CHECK_EQ(st.capacity_pages, 0);
	CHECK_EQ(st.regions, 1);
	CHECK_EQ(st.clients, 1);
	CHECK_EQ(st.writes, 1);
	CHECK_EQ(st.reads, 1);
	CHECK(st.bytes_in > nz * (uint64_t)PG);
	CHECK(st.bytes_out > nz * (uint64_t)PG);
	/* Overwrite part of it, with a full 1024-page request. */
	uint8_t *big = make_pages(1024, 3, NULL);
	CHECK(big);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 1024, big), 0);
	CHECK_EQ(read_cmp(&c, 1, 0, 1024, big), 0);
	memset(back, 0, PG);
	CHECK_EQ(read_cmp(&c, 1, 1024, 1, back), 0); /* never written */
	/* FREE forgets everything of the region. */
	CHECK_EQ(gvm_client_free(&c, 1), 0);
	CHECK_EQ(stat_field(&c, 0), 0);
	memset(big, 0, 1024 * (size_t)PG);
	CHECK_EQ(read_cmp(&c, 1, 0, 1024, big), 0);
	/* Bad arguments are refused locally. */
	CHECK_EQ(gvm_client_read(&c, 1, 0, 0, back), -EINVAL);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 1025, big), -EINVAL);
	gvm_client_close(&c);
	CHECK_EQ(gvm_client_ping(&c), -ENOTCONN);
	CHECK_EQ(srv_stop(&v), 0);
	free(big);
	free(pages);
	free(back);
	return 0;
}

/* Many requests in one send; replies must come back in order. */
static int test_pipelined(void)
{
	enum { N = 600 };
	struct srv v;
	struct sender snd;
	struct gvm_hdr h;
	size_t cap = (size_t)N * (GVM_HDR_SIZE + 8 + PG), len = 0;
	uint8_t *buf = malloc(cap), *pl = malloc(8 + PG);
	uint8_t page[PG];
	int fd;

	CHECK(buf && pl);
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	fd = raw_session(v.port, 3, key_a);
	CHECK(fd >= 0);
	for (unsigned i = 0; i < N; i++) {
		uint64_t id = 1000 + i;
		switch (i % 3) {
		case 0: /* WRITE page i/3 filled with its own number */
			mk_hdr(buf + len, GVM_OP_WRITE, id, 3, i / 3, 1, 8 + PG);
			len += GVM_HDR_SIZE;
			memset(buf + len, 0, 8);
			buf[len] = 1;
			memset(buf + len + 8, (int)(i / 3 % 251) + 1, PG);
			len += 8 + PG;
			break;
		case 1:
			mk_hdr(buf + len, GVM_OP_READ, id, 3, i / 3, 1, 0);
			len += GVM_HDR_SIZE;
			break;
		default:
			mk_hdr(buf + len, GVM_OP_PING, id, 0, 0, 0, 0);
			len += GVM_HDR_SIZE;
		}
	}
	snd = (struct sender){ .fd = fd, .buf = buf, .len = len };
	CHECK_EQ(pthread_create(&snd.th, NULL, sender_main, &snd), 0);
	int bad = 0;
	for (unsigned i = 0; i < N && !bad; i++) {
		static const uint16_t ops[3] = { GVM_OP_WRITE, GVM_OP_READ, GVM_OP_PING };
		if (raw_reply(fd, &h, pl, 8 + PG) < 0) { bad = 1; break; }
		bad |= h.id != 1000 + i || h.op != (ops[i % 3] | GVM_OP_REPLY) || h.status != 0;
		if (i % 3 == 1) {
			memset(page, (int)(i / 3 % 251) + 1, PG);
			bad |= h.len != 8 + PG || pl[0] != 1 || memcmp(pl + 8, page, PG) != 0;
		}
		if (bad)
			fprintf(stderr, "  reply %u: id %llu op %#x status %d len %u\n", i,
				(unsigned long long)h.id, h.op, h.status, h.len);
	}
	pthread_join(snd.th, NULL);
	CHECK_EQ(snd.rc, 0);
	CHECK_EQ(bad, 0);
	close(fd);
	CHECK_EQ(srv_stop(&v), 0);
	free(buf);
	free(pl);
	return 0;
}

/* A frame split into many small sends, and a 4 MiB WRITE in pieces, then pipelined PINGs. */
static int test_fragmented_frames(void)
{
	struct srv v;
	struct gvm_client c;
	struct gvm_hdr h;
	uint8_t *pages = make_pages(1024, 9, NULL);
	size_t cap = GVM_HDR_SIZE + gvm_pages_len(1024, 1024) + 3 * GVM_HDR_SIZE, len = 0;
	uint8_t *f = malloc(cap), *d;
	int fd;

	CHECK(pages && f);
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	fd = raw_session(v.port, 4, key_a);
	CHECK(fd >= 0);
	memset(f, 0, cap);
	d = f + GVM_HDR_SIZE + GVM_BITMAP_BYTES(1024);
	for (unsigned i = 0; i < 1024; i++) {
		if (gvm_page_is_zero(pages + (size_t)i * PG))
			continue;
		gvm_bitmap_set(f + GVM_HDR_SIZE, i);
		memcpy(d, pages + (size_t)i * PG, PG);
		d += PG;
	}
	len = (size_t)(d - f);
	mk_hdr(f, GVM_OP_WRITE, 77, 4, 5, 1024, (uint32_t)(len - GVM_HDR_SIZE));
	for (int k = 0; k < 3; k++, len += GVM_HDR_SIZE)
		mk_hdr(f + len, GVM_OP_PING, 78 + (uint64_t)k, 0, 0, 0, 0);
	/* 1-byte pieces through the header, then odd-sized pieces with pauses. */
	size_t off = 0;
	while (off < len) {
		size_t piece = off < 60 ? 1 : GVM_MIN(len - off, (size_t)(rnd() % 300000) + 1);
		CHECK_EQ(send_all(fd, f + off, piece), 0);
		off += piece;
		if (off < 60 || rnd() % 4 == 0)
			usleep(200);
	}
	CHECK_EQ(raw_reply(fd, &h, NULL, 0), 0);
	CHECK_EQ(h.id, 77);
	CHECK_EQ(h.status, 0);
	for (int k = 0; k < 3; k++) {
		CHECK_EQ(raw_reply(fd, &h, NULL, 0), 0);
		CHECK_EQ(h.id, 78 + k);
	}
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(gvm_client_open(&c, 4, key_a), 0);
	CHECK_EQ(read_cmp(&c, 4, 5, 1024, pages), 0);
	gvm_client_close(&c);
	close(fd);
	CHECK_EQ(srv_stop(&v), 0);
	free(pages);
	free(f);
	return 0;
}

/* Each malformed input closes only its own connection and changes nothing. */
static int test_malformed(void)
{
	struct srv v;
	struct gvm_client good;
	uint8_t *data = make_pages(64, 5, NULL);
	uint8_t f[GVM_HDR_SIZE + 8 + 3 * PG];
	uint64_t stored;
	int64_t bytes_in_before;

	CHECK(data);
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	CHECK_EQ(client_connect(&good, v.addr), 0);
	CHECK_EQ(gvm_client_open(&good, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&good, 1, 0, 64, data), 0);
	stored = (uint64_t)stat_field(&good, 0);

	for (int cs = 0; cs < 12; cs++) {
		const char *what = "?";
		size_t len = GVM_HDR_SIZE;
		int authed = cs != 10, fd;

		fd = authed ? raw_session(v.port, 1, key_a) : raw_connect(v.port, NULL);
		CHECK(fd >= 0);
		memset(f, 0, sizeof(f));
		switch (cs) {
		case 0:
			what = "garbage";
			for (size_t i = 0; i < 100; i++)
				f[i] = (uint8_t)(rnd() | 1);
			len = 100;
			break;
		case 1:
			what = "bad magic";
			mk_hdr(f, GVM_OP_PING, 9, 0, 0, 0, 0);
			f[0] ^= 0xff;
			break;
		case 2:
			what = "oversized len";
			mk_hdr(f, GVM_OP_WRITE, 9, 1, 0, 1024, (uint32_t)GVM_MAX_PAYLOAD + 1);
			break;
		case 3:
			what = "count > 1024";
			mk_hdr(f, GVM_OP_READ, 9, 1, 0, 1025, 0);
			break;
		case 4:
			what = "bitmap bit beyond count";
			mk_hdr(f, GVM_OP_WRITE, 9, 1, 0, 3, 8 + 2 * PG);
			f[GVM_HDR_SIZE] = 1 | (1 << 5);
			memset(f + GVM_HDR_SIZE + 8, 0xee, 2 * PG);
			len = GVM_HDR_SIZE + 8 + 2 * PG;
			break;
		case 5:
			what = "len disagrees with bitmap";
			mk_hdr(f, GVM_OP_WRITE, 9, 1, 0, 3, 8 + 2 * PG);
			f[GVM_HDR_SIZE] = 1;
			memset(f + GVM_HDR_SIZE + 8, 0xee, 2 * PG);
			len = GVM_HDR_SIZE + 8 + 2 * PG;
			break;
		case 6:
			what = "unknown op";
			mk_hdr(f, 77, 9, 0, 0, 0, 0);
			break;
		case 7:
			what = "reserved flags";
			mk_hdr(f, GVM_OP_PING, 9, 0, 0, 0, 0);
			f[44] = 1;
			break;
		case 8:
			what = "status in a request";
			mk_hdr(f, GVM_OP_PING, 9, 0, 0, 0, 0);
			f[36] = 0xff;
			break;
		case 9:
			what = "payload on READ";
			mk_hdr(f, GVM_OP_READ, 9, 1, 0, 1, 8);
			break;
		case 10:
			what = "READ before HELLO";
			mk_hdr(f, GVM_OP_READ, 9, 1, 0, 1, 0);
			break;
		case 11:
			what = "page range overflow";
			mk_hdr(f, GVM_OP_READ, 9, 1, (1ull << 52) - 1, 2, 0);
			break;
		}
		CHECK_EQ(send_all(fd, f, len), 0);
		if (expect_closed(fd) != 0) {
			fprintf(stderr, "  case '%s': connection not closed\n", what);
			return 1;
		}
		close(fd);
		/* The good client never noticed, and nothing changed. */
		CHECK_EQ(gvm_client_ping(&good), 0);
		CHECK_EQ(read_cmp(&good, 1, 0, 64, data), 0);
		CHECK_EQ(stat_field(&good, 0), stored);
	}

	/* A truncated WRITE, then the client goes away: nothing applied. */
	int fd = raw_session(v.port, 1, key_a);
	CHECK(fd >= 0);
	mk_hdr(f, GVM_OP_WRITE, 9, 1, 0, 3, 8 + 3 * PG);
	f[GVM_HDR_SIZE] = 7;
	memset(f + GVM_HDR_SIZE + 8, 0xdd, 3 * PG);
	CHECK_EQ(send_all(fd, f, GVM_HDR_SIZE + 8 + 2 * PG + 100), 0);
	bytes_in_before = stat_field(&good, 3);
	CHECK(bytes_in_before > 0);
	close(fd);
	CHECK_EQ(wait_clients(v.addr, 1), 0);
	CHECK_EQ(read_cmp(&good, 1, 0, 64, data), 0);
	CHECK_EQ(stat_field(&good, 0), stored);

	/* The same truncated WRITE with a shutdown(SHUT_WR): still nothing, and the server closes. */
	fd = raw_session(v.port, 1, key_a);
	CHECK(fd >= 0);
	CHECK_EQ(send_all(fd, f, GVM_HDR_SIZE + 8 + PG), 0);
	CHECK_EQ(shutdown(fd, SHUT_WR), 0);
	CHECK_EQ(expect_closed(fd), 0);
	close(fd);
	CHECK_EQ(read_cmp(&good, 1, 0, 64, data), 0);
	CHECK_EQ(stat_field(&good, 0), stored);

	/* A stalled partial frame does not hold up anybody else. */
	fd = raw_session(v.port, 1, key_a);
	CHECK(fd >= 0);
	CHECK_EQ(send_all(fd, f, 20), 0);
	CHECK_EQ(gvm_client_ping(&good), 0);
	CHECK_EQ(read_cmp(&good, 1, 0, 64, data), 0);
	close(fd);

	gvm_client_close(&good);
	CHECK_EQ(srv_stop(&v), 0);
	free(data);
	return 0;
}

static int test_capacity(void)
{
	struct srv v;
	struct gvm_client c;
	struct gvm_stat st;
	uint8_t *a = make_pages(50, 0, NULL), *b = make_pages(20, 0, NULL);
	uint8_t *zero = calloc(20, PG), bm[GVM_BITMAP_BYTES(20)];

	CHECK(a && b && zero);
	CHECK_EQ(srv_start_ram(&v, 64 * (uint64_t)PG), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 50, a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 1000, 20, b), -ENOSPC);
	CHECK_EQ(gvm_client_stat(&c, &st), 0);
	CHECK_EQ(st.pages_stored, 50);
	CHECK_EQ(st.capacity_pages, 64);
	CHECK_EQ(gvm_client_list(&c, 1, 1000, 20, bm), 0);
	for (unsigned i = 0; i < 20; i++)
		CHECK(!gvm_bitmap_test(bm, i));
	CHECK_EQ(read_cmp(&c, 1, 1000, 20, zero), 0);
	CHECK_EQ(read_cmp(&c, 1, 0, 50, a), 0);
	/* The connection is still usable; 14 more pages fit exactly. */
	CHECK_EQ(gvm_client_write(&c, 1, 1000, 14, b), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 2000, 1, b), -ENOSPC);
	/* Zeroing pages makes room again. */
	CHECK_EQ(gvm_client_write(&c, 1, 0, 20, zero), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 2000, 20, b), 0);
	CHECK_EQ(stat_field(&c, 0), 64);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);
	free(a);
	free(b);
	free(zero);
	return 0;
}


static int test_token(void)
{
	const char *p = tmp_path("token");
	char path[160], bad_path[160];
	struct gvm_memserver_opts o = { 0 };
	struct gvm_memserver *s2;
	struct gvm_greeting g;
	struct gvm_client c;
	struct srv v;
	int fd;

	CHECK(p);
	snprintf(path, sizeof(path), "%s", p);
	snprintf(bad_path, sizeof(bad_path), "%s.public", path);
	static const char tok[] = "0123456789abcdef-correct-token\n";
	CHECK_EQ(test_write_file(path, tok, sizeof(tok) - 1, 0600), 0);
	CHECK_EQ(test_write_file(bad_path, tok, sizeof(tok) - 1, 0644), 0);

	/* A token file others can read is refused. */
	o.listen[0] = "127.0.0.1:0";
	o.n_listen = 1;
	o.token_file = bad_path;
	CHECK_EQ(gvm_memserver_open(&s2, &o), -EPERM);

	o.token_file = path;
	CHECK_EQ(srv_start(&v, &o), 0);
	CHECK_EQ(gvm_client_connect(&c, v.addr, token_good, strlen(token_good), TIMEOUT_MS), 0);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_ping(&c), 0);
	gvm_client_close(&c);
	CHECK_EQ(gvm_client_connect(&c, v.addr, "0123456789abcdef-wrong-token", 28, TIMEOUT_MS), -EACCES);
	CHECK_EQ(gvm_client_connect(&c, v.addr, NULL, 0, TIMEOUT_MS), -EACCES);
	CHECK_EQ(gvm_client_ping(&c), -ENOTCONN);

	/* Raw: the GREETING asks for auth; missing and wrong MACs get -EACCES and a close. */
	fd = raw_connect(v.port, &g);
	CHECK(fd >= 0);
	CHECK_EQ(g.flags & GVM_GREET_AUTH, GVM_GREET_AUTH);
	CHECK_EQ(raw_hello(fd, &g, NULL, 0), -EACCES);
	CHECK_EQ(expect_closed(fd), 0);
	close(fd);
	fd = raw_connect(v.port, &g);
	CHECK(fd >= 0);
	CHECK_EQ(raw_hello(fd, &g, "0123456789abcdef-correct-tokeN", 1), -EACCES);
	CHECK_EQ(expect_closed(fd), 0);
	close(fd);
	/* The MAC is bound to the nonce: one computed for another connection fails. */
	struct gvm_greeting g2;
	fd = raw_connect(v.port, &g);
	int fd2 = raw_connect(v.port, &g2);
	CHECK(fd >= 0 && fd2 >= 0);
	CHECK(memcmp(g.nonce, g2.nonce, GVM_NONCE_SIZE) != 0);
	CHECK_EQ(raw_hello(fd, &g2, token_good, 1), -EACCES);
	CHECK_EQ(raw_hello(fd2, &g2, token_good, 1), 0);
	close(fd);
	close(fd2);
	CHECK_EQ(srv_stop(&v), 0);
	unlink(path);
	unlink(bad_path);
	return 0;
}

static int test_region_isolation(void)
{
	struct srv v;
	struct gvm_client a, b;
	uint8_t *data = make_pages(10, 0, NULL), *buf = malloc(10 * (size_t)PG);
	uint8_t bm[GVM_BITMAP_BYTES(10)];

	CHECK(data && buf);
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	CHECK_EQ(client_connect(&a, v.addr), 0);
	CHECK_EQ(client_connect(&b, v.addr), 0);
	CHECK_EQ(gvm_client_open(&a, 7, key_a), 0);
	CHECK_EQ(gvm_client_write(&a, 7, 0, 10, data), 0);

	CHECK_EQ(gvm_client_read(&b, 7, 0, 10, buf), -EACCES);
	CHECK_EQ(gvm_client_write(&b, 7, 0, 10, buf), -EACCES);
	CHECK_EQ(gvm_client_list(&b, 7, 0, 10, bm), -EACCES);
	CHECK_EQ(gvm_client_free(&b, 7), -EACCES);
	/* Another key names another region (7, key_b): B can neither read nor
	 * overwrite A's pages, nor tell that region 7 is in use. */
	CHECK_EQ(gvm_client_open(&b, 7, key_b), 0);
	memset(buf, 0, 10 * (size_t)PG);
	CHECK_EQ(read_cmp(&b, 7, 0, 10, buf), 0);
	CHECK_EQ(gvm_client_write(&b, 7, 5, 1, data), 0);
	CHECK_EQ(gvm_client_free(&b, 7), 0);
	/* B's own region works on the same connection. */
	CHECK_EQ(gvm_client_open(&b, 8, key_b), 0);
	CHECK_EQ(gvm_client_write(&b, 8, 0, 10, data), 0);
	CHECK_EQ(read_cmp(&a, 7, 0, 10, data), 0);
	CHECK_EQ(stat_field(&a, 0), 10);  /* a tenant's STAT: its own pages */
	CHECK_EQ(stat_field(&b, 0), 10);
	CHECK_EQ(node_stat(v.addr, 0), 20);
	/* The right key on another connection is fine. */
	struct gvm_client a2;
	CHECK_EQ(client_connect(&a2, v.addr), 0);
	CHECK_EQ(gvm_client_open(&a2, 7, key_a), 0);
	CHECK_EQ(read_cmp(&a2, 7, 0, 10, data), 0);
	gvm_client_close(&a2);
	gvm_client_close(&a);
	gvm_client_close(&b);
	CHECK_EQ(srv_stop(&v), 0);
	free(data);
	free(buf);
	return 0;
}

static int test_backing_restart(void)
{
	const char *p = tmp_path("restart.store");
	char path[160];
	struct gvm_memserver_opts o = { 0 };
	struct gvm_client c;
	struct srv v;
	unsigned nz;
	uint8_t *data = make_pages(500, 6, &nz), *more = make_pages(64, 0, NULL);

	CHECK(p && data && more);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	o.backing = path;
	CHECK_EQ(srv_start(&v, &o), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(gvm_client_open(&c, 11, key_a), 0);
	CHECK_EQ(gvm_client_open(&c, 12, key_b), 0);
	CHECK_EQ(gvm_client_write(&c, 11, 3, 500, data), 0);
	CHECK_EQ(gvm_client_write(&c, 12, 1ull << 30, 64, more), 0);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);

	o = (struct gvm_memserver_opts){ .backing = path, .fsync_mode = GVM_FSYNC_ALWAYS };
	CHECK_EQ(srv_start(&v, &o), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(node_stat(v.addr, 0), nz + 64);
	CHECK_EQ(node_stat(v.addr, 2), 2);
	CHECK_EQ(gvm_client_open(&c, 11, key_b), 0); /* keys persisted: (11, key_b) is empty */
	static const uint8_t zero_page[PG];
	CHECK_EQ(read_cmp(&c, 11, 3, 1, zero_page), 0);
	CHECK_EQ(gvm_client_open(&c, 11, key_a), 0);
	CHECK_EQ(gvm_client_open(&c, 12, key_b), 0);
	CHECK_EQ(read_cmp(&c, 11, 3, 500, data), 0);
	CHECK_EQ(read_cmp(&c, 12, 1ull << 30, 64, more), 0);
	CHECK_EQ(gvm_client_free(&c, 12), 0);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);

	o.fsync_mode = GVM_FSYNC_NONE;
	CHECK_EQ(srv_start(&v, &o), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(node_stat(v.addr, 0), nz);
	CHECK_EQ(gvm_client_open(&c, 11, key_a), 0);
	CHECK_EQ(read_cmp(&c, 11, 3, 500, data), 0);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);
	unlink(path);
	free(data);
	free(more);
	return 0;
}

static struct gvm_memserver *child_server;

static void child_on_term(int sig)
{
	(void)sig;
	gvm_memserver_stop(child_server);
}

/*
 * Server child: fork_server() re-executes this binary with GVM_TEST_SERVER_FD
 * set, and this runs before main(). A fresh process (not just a fork) makes
 * its RSS a fair measure of what the server itself allocates.
 */
__attribute__((constructor)) static void server_child_main(void)
{
	const char *fd_env = getenv("GVM_TEST_SERVER_FD");
	const char *backing = getenv("GVM_TEST_SERVER_BACKING");
	const char *fsync_env = getenv("GVM_TEST_SERVER_FSYNC");
	const char *admin = getenv("GVM_TEST_SERVER_ADMIN");
	/* 10k_clients opens 10,000 connections from one address at once. */
	struct gvm_memserver_opts o = { .n_listen = 1, .listen = { "127.0.0.1:0" },
					.max_unauthed = 20000, .max_peer_conns = 20000 };
	struct sigaction sa = { .sa_handler = child_on_term };
	int fd, port = -1, r;

	if (!fd_env)
		return;
	fd = atoi(fd_env);
	o.backing = backing && *backing ? backing : NULL;
	o.fsync_mode = fsync_env ? atoi(fsync_env) : 0;
	o.admin_token_file = admin && *admin ? admin : NULL;
	if (gvm_memserver_open(&child_server, &o) == 0)
		port = gvm_memserver_port(child_server, 0);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || write(fd, &port, sizeof(port)) != sizeof(port) ||
	    port < 0)
		_exit(3);
	close(fd);
	r = gvm_memserver_run(child_server);
	gvm_memserver_close(child_server);
	_exit(r ? 1 : 0);
}

/* Start a server process; its port arrives over a pipe. Returns the pid or -errno. */
static pid_t fork_server(const struct gvm_memserver_opts *o, int *port)
{
	int pfd[2];
	pid_t pid;

	if (!admin_token_file())
		return -EIO;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char fdbuf[16], fsbuf[16];
		char *argv[] = { "test_memserver-server", NULL };

		/* Never outlive a test that failed half-way. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(6);
		snprintf(fdbuf, sizeof(fdbuf), "%d", pfd[1]);
		snprintf(fsbuf, sizeof(fsbuf), "%d", o->fsync_mode);
		if (fcntl(pfd[1], F_SETFD, 0) < 0 || setenv("GVM_TEST_SERVER_FD", fdbuf, 1) < 0 ||
		    setenv("GVM_TEST_SERVER_BACKING", o->backing ? o->backing : "", 1) < 0 ||
		    setenv("GVM_TEST_SERVER_FSYNC", fsbuf, 1) < 0 ||
		    setenv("GVM_TEST_SERVER_ADMIN", admin_path, 1) < 0)
			_exit(4);
		execv("/proc/self/exe", argv);
		_exit(5);
	}
	close(pfd[1]);
	ssize_t n = read(pfd[0], port, sizeof(*port));
	close(pfd[0]);
	if (n != sizeof(*port) || *port <= 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -EIO;
	}
	return pid;
}

/* Acked writes survive a SIGKILL of the server (page cache), in both fsync modes. */
static int test_sigkill_durability(void)
{
	const char *p = tmp_path("sigkill.store");
	char path[160], addr[64];
	uint8_t *data = make_pages(1024, 10, NULL), *zero = calloc(64, PG);

	CHECK(p && data && zero);
	snprintf(path, sizeof(path), "%s", p);
	for (int mode = GVM_FSYNC_NONE; mode <= GVM_FSYNC_ALWAYS; mode++) {
		struct gvm_memserver_opts o = { .backing = path, .fsync_mode = mode };
		struct gvm_client c;
		struct srv v;
		int port, status;
		pid_t pid;

		unlink(path);
		pid = fork_server(&o, &port);
		CHECK(pid > 0);
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
		CHECK_EQ(client_connect(&c, addr), 0);
		CHECK_EQ(gvm_client_open(&c, 21, key_a), 0);
		CHECK_EQ(gvm_client_open(&c, 22, key_b), 0);
		for (unsigned k = 0; k < 4; k++)
			CHECK_EQ(gvm_client_write(&c, 21, k * 5000, 1024, data), 0);
		CHECK_EQ(gvm_client_write(&c, 22, 0, 1024, data), 0);
		CHECK_EQ(gvm_client_write(&c, 22, 64, 64, zero), 0);  /* forgotten pages */
		CHECK_EQ(gvm_client_open(&c, 23, key_a), 0);           /* key only */
		/* Killed right after the last ack: no chance to flush anything. */
		CHECK_EQ(kill(pid, SIGKILL), 0);
		CHECK_EQ(waitpid(pid, &status, 0), pid);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		gvm_client_close(&c);

		CHECK_EQ(srv_start(&v, &o), 0);
		CHECK_EQ(client_connect(&c, v.addr), 0);
		CHECK_EQ(gvm_client_open(&c, 21, key_a), 0);
		CHECK_EQ(gvm_client_open(&c, 22, key_b), 0);
		CHECK_EQ(node_stat(v.addr, 2), 2); /* 23 was only OPENed: it never existed */
		for (unsigned k = 0; k < 4; k++)
			CHECK_EQ(read_cmp(&c, 21, k * 5000, 1024, data), 0);
		memset(data + 64 * (size_t)PG, 0, 64 * (size_t)PG);
		CHECK_EQ(read_cmp(&c, 22, 0, 1024, data), 0);
		gvm_client_close(&c);
		CHECK_EQ(srv_stop(&v), 0);
		free(data);
		data = make_pages(1024, 10, NULL);
		CHECK(data);
	}
	unlink(path);
	free(data);
	free(zero);
	return 0;
}

static int test_listen_policy(void)
{
	struct gvm_memserver_opts o = { .n_listen = 1 };
	struct gvm_memserver *s;

	o.listen[0] = "0.0.0.0:0";
	CHECK_EQ(gvm_memserver_open(&s, &o), -EPERM);
	o.listen[0] = "[::]:0";
	CHECK_EQ(gvm_memserver_open(&s, &o), -EPERM);
	/* Refused even when a loopback listener comes first. */
	o.listen[0] = "127.0.0.1:0";
	o.listen[1] = "0.0.0.0:0";
	o.n_listen = 2;
	CHECK_EQ(gvm_memserver_open(&s, &o), -EPERM);
	o.listen[1] = "::1:0";       /* IPv6 without brackets is ambiguous */
	CHECK_EQ(gvm_memserver_open(&s, &o), -EINVAL);
	o.listen[1] = "127.0.0.1:70000";
	CHECK_EQ(gvm_memserver_open(&s, &o), -EINVAL);
	o.listen[1] = "[::1";
	CHECK_EQ(gvm_memserver_open(&s, &o), -EINVAL);
	/* --insecure allows it (opened and closed again, no traffic). */
	o.n_listen = 1;
	o.listen[0] = "0.0.0.0:0";
	o.insecure = 1;
	CHECK_EQ(gvm_memserver_open(&s, &o), 0);
	CHECK(gvm_memserver_port(s, 0) > 0);
	CHECK_EQ(gvm_memserver_port(s, 1), -EINVAL);
	gvm_memserver_close(s);
	return 0;
}

static int test_multi_listen(void)
{
	struct gvm_memserver_opts o = { .n_listen = 3 };
	struct gvm_client c4, c6, cl;
	uint8_t *data = make_pages(8, 0, NULL);
	char a4[64], a6[64], al[64];
	struct srv v;

	/* Numeric addresses only: a host name could mean a DNS query off this machine. */
	CHECK(data);
	o.listen[0] = "127.0.0.1:0";
	o.listen[1] = "[::1]:0";
	o.listen[2] = "127.0.0.2:0";
	CHECK_EQ(srv_start(&v, &o), 0);
	snprintf(a4, sizeof(a4), "127.0.0.1:%d", gvm_memserver_port(v.s, 0));
	snprintf(a6, sizeof(a6), "[::1]:%d", gvm_memserver_port(v.s, 1));
	snprintf(al, sizeof(al), "127.0.0.2:%d", gvm_memserver_port(v.s, 2));
	CHECK(gvm_memserver_port(v.s, 1) != gvm_memserver_port(v.s, 0));
	CHECK_EQ(client_connect(&c4, a4), 0);
	CHECK_EQ(client_connect(&c6, a6), 0);
	CHECK_EQ(client_connect(&cl, al), 0);
	CHECK_EQ(gvm_client_open(&c4, 1, key_a), 0);
	CHECK_EQ(gvm_client_open(&c6, 1, key_a), 0);
	CHECK_EQ(gvm_client_open(&cl, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c4, 1, 0, 8, data), 0);
	CHECK_EQ(read_cmp(&c6, 1, 0, 8, data), 0);
	CHECK_EQ(read_cmp(&cl, 1, 0, 8, data), 0);
	CHECK_EQ(node_stat(a6, 1), 3);
	gvm_client_close(&c4);
	gvm_client_close(&c6);
	gvm_client_close(&cl);
	CHECK_EQ(srv_stop(&v), 0);
	free(data);
	return 0;
}

/* 2000 extra fds: the client's socket is far above 1023 (poll, not select). */
static int test_many_fds(void)
{
	enum { EXTRA = 2000 };
	static int fds[EXTRA];
	struct gvm_client c;
	uint8_t *data = make_pages(16, 3, NULL);
	struct srv v;

	CHECK(data);
	CHECK(gvm_raise_nofile() > EXTRA + 100);
	for (int i = 0; i < EXTRA; i++) {
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		CHECK(fds[i] >= 0);
	}
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK(c.fd > 1024);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 16, data), 0);
	CHECK_EQ(read_cmp(&c, 1, 0, 16, data), 0);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);
	for (int i = 0; i < EXTRA; i++)
		close(fds[i]);
	free(data);
	return 0;
}

/* A client that does not read its replies is paused; others are not slowed down. */
static int test_backpressure(void)
{
	enum { N = 48 };
	struct srv v;
	struct gvm_client c;
	struct gvm_hdr h;
	struct sender snd;
	uint8_t *data = make_pages(1024, 0, NULL), *reply = malloc(GVM_MAX_PAYLOAD);
	uint8_t req[N * GVM_HDR_SIZE];
	int fd, bad = 0;

	CHECK(data && reply);
	CHECK_EQ(srv_start_ram(&v, 0), 0);
	CHECK_EQ(client_connect(&c, v.addr), 0);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 1024, data), 0);
	fd = raw_session(v.port, 1, key_a);
	CHECK(fd >= 0);
	/* 48 READs of 4 MiB each = 192 MiB of replies nobody reads yet. */
	for (unsigned i = 0; i < N; i++)
		mk_hdr(req + i * GVM_HDR_SIZE, GVM_OP_READ, 500 + i, 1, 0, 1024, 0);
	int64_t in0 = node_stat(v.addr, 3);
	snd = (struct sender){ .fd = fd, .buf = req, .len = sizeof(req) };
	CHECK_EQ(pthread_create(&snd.th, NULL, sender_main, &snd), 0);
	pthread_join(snd.th, NULL);
	CHECK_EQ(snd.rc, 0);
	usleep(100000);
	uint64_t t0 = gvm_now_ns();
	for (int i = 0; i < 100; i++)
		CHECK_EQ(gvm_client_ping(&c), 0);
	CHECK(gvm_now_ns() - t0 < 2000000000ull);
	/* The server has not consumed all 48 requests: it stopped reading. */
	int64_t in1 = node_stat(v.addr, 3);
	CHECK(in1 - in0 < (int64_t)sizeof(req) + 100 * GVM_HDR_SIZE +
			  2 * (GVM_HDR_SIZE + GVM_HELLO_SIZE + GVM_TAG_SIZE));
	/* Now drain: every reply complete and in order. */
	for (unsigned i = 0; i < N && !bad; i++) {
		if (raw_reply(fd, &h, reply, GVM_MAX_PAYLOAD) < 0) {
			bad = 1;
			break;
		}
		bad |= h.id != 500 + i || h.status != 0 || h.len != gvm_pages_len(1024, 1024);
		bad |= memcmp(reply + GVM_BITMAP_BYTES(1024), data, 1024 * (size_t)PG) != 0;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(gvm_client_ping(&c), 0);
	close(fd);
	gvm_client_close(&c);
	CHECK_EQ(srv_stop(&v), 0);
	free(data);
	free(reply);
	return 0;
}

/* ASan's allocator and quarantine make every allocation several times bigger. */
#if defined(__SANITIZE_ADDRESS__)
#define IDLE_CLIENT_BYTES_MAX 8192
#else
#define IDLE_CLIENT_BYTES_MAX 2048
#endif

enum { MANY = 10000 };
static int many_fds[MANY];

static int many_clients_body(pid_t pid, int port)
{
	uint8_t hello[GVM_HDR_SIZE + GVM_HELLO_SIZE], buf[GVM_HDR_SIZE + GVM_GREETING_SIZE];
	struct gvm_hello hl = { .version = GVM_PROTO_VERSION };
	struct gvm_client c;
	uint8_t data[4 * PG];
	char addr[64];

	memset(data, 0x3c, sizeof(data));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	CHECK_EQ(client_connect(&c, addr), 0);
	long rss0 = rss_kib(pid);
	mk_hdr(hello, GVM_OP_HELLO, 1, 0, 0, 0, GVM_HELLO_SIZE);
	gvm_hello_encode(&hl, hello + GVM_HDR_SIZE);
	for (int i = 0; i < MANY; i++) {
		many_fds[i] = tcp_from(NULL, port, TIMEOUT_MS);
		if (many_fds[i] < 0) {
			fprintf(stderr, "  connection %d: %s\n", i, strerror(-many_fds[i]));
			gvm_client_close(&c);
			return 1;
		}
		CHECK_EQ(send_all(many_fds[i], hello, sizeof(hello)), 0);
	}
	for (int i = 0; i < MANY; i++) {
		struct gvm_hdr h;
		CHECK_EQ(recv_all(many_fds[i], buf, sizeof(buf)), 0);  /* GREETING */
		CHECK_EQ(raw_reply(many_fds[i], &h, NULL, 0), 0);      /* HELLO reply */
		CHECK_EQ(h.status, 0);
	}
	CHECK_EQ(node_stat(addr, 1), MANY + 1);
	CHECK_EQ(gvm_client_open(&c, 1, key_a), 0);
	CHECK_EQ(gvm_client_write(&c, 1, 0, 4, data), 0);
	CHECK_EQ(read_cmp(&c, 1, 0, 4, data), 0);
	long rss1 = rss_kib(pid);
	CHECK(rss0 > 0 && rss1 > 0);
	fprintf(stderr, "  server RSS %ld KiB -> %ld KiB with %d idle clients (%.0f B/client)\n",
		rss0, rss1, MANY, (double)(rss1 - rss0) * 1024.0 / MANY);
	CHECK((rss1 - rss0) * 1024 < (long)MANY * IDLE_CLIENT_BYTES_MAX);
	for (int i = 0; i < MANY; i++) {
		close(many_fds[i]);
		many_fds[i] = -1;
	}
	CHECK_EQ(wait_clients(addr, 1), 0);
	gvm_client_close(&c);
	return 0;
}

/* 10,000 concurrent authenticated connections to one server process. */
static int test_10k_clients(void)
{
	struct gvm_memserver_opts o = { 0 };
	int port, status, r;
	pid_t pid;

	CHECK(gvm_raise_nofile() > MANY + 200);
	for (int i = 0; i < MANY; i++)
		many_fds[i] = -1;
	pid = fork_server(&o, &port);
	CHECK(pid > 0);
	r = many_clients_body(pid, port);
	for (int i = 0; i < MANY; i++)
		if (many_fds[i] >= 0)
			close(many_fds[i]);
	if (r) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return r;
	}
	CHECK_EQ(kill(pid, SIGTERM), 0);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	return 0;
}

/* Run gvm_memserver_main() with stdout/stderr captured in a file; returns its status. */
static int run_cli_captured(char **argv, int argc, char *out, size_t outlen)
{
	const char *p = tmp_path("cli.out");
	int saved_out = dup(1), saved_err = dup(2), fd, rc;

	fflush(NULL);
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || saved_out < 0 || saved_err < 0)
		return -1;
	dup2(fd, 1);
	dup2(fd, 2);
	rc = gvm_memserver_main(argc, argv);
	fflush(NULL);
	dup2(saved_out, 1);
	dup2(saved_err, 2);
	close(saved_out);
	close(saved_err);
	ssize_t n = pread(fd, out, outlen - 1, 0);
	out[n > 0 ? n : 0] = 0;
	close(fd);
	unlink(p);
	return rc;
}

static int test_cli(void)
{
	char out[4096], port_file[160], pfarg[200];
	char *help[] = { "memserver", "--help", NULL };
	char *bad_cap[] = { "memserver", "--capacity", "lots", NULL };
	char *bad_opt[] = { "memserver", "--bogus", NULL };
	char *bad_fsync[] = { "memserver", "--fsync", "sometimes", NULL };
	char *no_val[] = { "memserver", "--listen", NULL };
	char *extra[] = { "memserver", "stray", NULL };
	char *open_fail[] = { "memserver", "--listen", "0.0.0.0:0", NULL };
	int status;

	CHECK_EQ(run_cli_captured(help, 2, out, sizeof(out)), 0);
	CHECK(strstr(out, "usage: giantvm memserver") && strstr(out, "--port-file"));
	CHECK_EQ(run_cli_captured(bad_cap, 3, out, sizeof(out)), 2 /* usage */);
	CHECK(strstr(out, "--capacity") && strstr(out, "lots"));
	CHECK_EQ(run_cli_captured(bad_opt, 2, out, sizeof(out)), 2 /* usage */);
	CHECK(strstr(out, "--bogus"));
	CHECK_EQ(run_cli_captured(bad_fsync, 3, out, sizeof(out)), 2 /* usage */);
	CHECK(strstr(out, "--fsync"));
	CHECK_EQ(run_cli_captured(no_val, 2, out, sizeof(out)), 2 /* usage */);
	CHECK(strstr(out, "--listen"));
	CHECK_EQ(run_cli_captured(extra, 2, out, sizeof(out)), 2 /* usage */);
	CHECK(strstr(out, "stray"));
	CHECK_EQ(run_cli_captured(open_fail, 3, out, sizeof(out)), 1);
	CHECK(strstr(out, "refusing to listen") && strstr(out, "--insecure"));

	/* A real run in a child: port file, serve, SIGTERM, exit 0. */
	snprintf(port_file, sizeof(port_file), "%s", tmp_path("ports"));
	unlink(port_file);
	snprintf(pfarg, sizeof(pfarg), "--port-file=%s", port_file);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(6);
		char *argv[] = { "memserver", "--listen", "127.0.0.1:0", "--listen", "[::1]:0",
				 "--capacity", "1M", pfarg, "--fsync", "never", NULL };
		_exit(gvm_memserver_main(10, argv));
	}
	int ports[2] = { 0, 0 };
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(port_file, "r");
		if (f) {
			int n = fscanf(f, "%d %d", &ports[0], &ports[1]);
			fclose(f);
			CHECK_EQ(n, 2);
			break;
		}
		usleep(10000);
	}
	CHECK(ports[0] > 0 && ports[1] > 0);
	struct gvm_client c;
	char addr[64];
	snprintf(addr, sizeof(addr), "[::1]:%d", ports[1]);
	CHECK_EQ(client_connect(&c, addr), 0);
	struct gvm_stat st;
	CHECK_EQ(gvm_client_stat(&c, &st), 0);
	CHECK_EQ(st.capacity_pages, 256);
	gvm_client_close(&c);
	CHECK_EQ(kill(pid, SIGTERM), 0);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	unlink(port_file);
	return 0;
}

static int test_cleanup(void)
{
	if (admin_path[0])
		CHECK_EQ(unlink(admin_path), 0);
	if (tmpdir[0])
		CHECK_EQ(rmdir(tmpdir), 0);
	return 0;
}

/*
 * A client that never completes HELLO is closed after --hello-timeout (here
 * 400 ms): one that only read the GREETING, one that sent half a HELLO. A
 * client that did HELLO stays, well past the timeout, and still works.
 */
static int test_hello_timeout(void)
{
	struct gvm_memserver_opts o = { .hello_timeout_ms = 400 };
	static const uint8_t key[GVM_KEY_SIZE] = "hello-timeout-key-0123456789abcd";
	uint8_t half[GVM_HDR_SIZE];
	struct srv v;
	int silent, partial, good;

	CHECK(srv_start(&v, &o) == 0);
	silent = raw_connect(v.port, NULL);
	CHECK(silent >= 0);
	partial = raw_connect(v.port, NULL);
	CHECK(partial >= 0);
	mk_hdr(half, GVM_OP_HELLO, 1, 0, 0, 0, GVM_HELLO_SIZE); /* header only: the payload never comes */
	CHECK(send_all(partial, half, sizeof(half)) == 0);
	good = raw_session(v.port, 0, NULL);
	CHECK(good >= 0);
	CHECK_EQ(expect_closed(silent), 0);
	CHECK_EQ(expect_closed(partial), 0);
	usleep(1200 * 1000); /* three timeouts */
	CHECK_EQ(raw_open(good, 5, key), 0);
	close(silent);
	close(partial);
	close(good);
	CHECK_EQ(srv_stop(&v), 0);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "roundtrip", test_roundtrip },
	{ "pipelined", test_pipelined },
	{ "fragmented_frames", test_fragmented_frames },
	{ "malformed_frames", test_malformed },
	{ "capacity", test_capacity },
	{ "token", test_token },
	{ "hello_timeout", test_hello_timeout },
	{ "region_isolation", test_region_isolation },
	{ "backing_restart", test_backing_restart },
	{ "sigkill_durability", test_sigkill_durability },
	{ "listen_policy", test_listen_policy },
	{ "multi_listen", test_multi_listen },
	{ "many_fds", test_many_fds },
	{ "backpressure", test_backpressure },
	{ "10k_clients", test_10k_clients },
	{ "cli", test_cli },
	{ "cleanup", test_cleanup },
};

GVM_TEST_MAIN(tests)
