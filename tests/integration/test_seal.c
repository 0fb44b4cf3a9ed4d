/*
 * Sealed pages and the authenticated session (issue 14), against memory
 * nodes that lie:
 *   - a node that flips a bit, swaps two pages, serves a stale version,
 *     serves another region's page or claims a written page is zero (a
 *     test hook in the real server, behind a real token session): every
 *     such page is rejected and read from the other replica, the reader sees
 *     the right bytes; with both replicas lying the pages are poisoned
 *     (SIGBUS in the reader), and never is a wrong byte seen;
 *   - a node that drops the auth flag from its GREETING, or fails the
 *     server proof (a fake server here): the client refuses it, the engine
 *     fails over to the good replica, and with none left poisons;
 *   - a sniffed OPEN replayed by another client (even one holding the pool
 *     token) gets nothing;
 *   - a pattern written through a sealed engine appears nowhere in the
 *     memory server's memory or its backing file (and does, unsealed: the
 *     scan works).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "aegis.h"
#include "auth.h"
#include "client.h"
#include "giantvm.h"
#include "giantvm_memserver.h"
#include "rawsock.h"
#include "seal.h"
#include "test.h"
#include "util.h"

#define PAGES   4096u        /* 16 MiB region ... */
#define BUDGET  (4u << 20)   /* ... 4x a 4 MiB budget: most of it lives in the pool */
#define TIMEOUT_MS 3000

static const char token[] = "0123456789abcdef-seal-test-token";
static char token_path[64];
static char giantvm[PATH_MAX];

/* ---------------------------------------------------------------- lying nodes */

enum tamper { T_NONE = 0, T_RECORD, T_FLIP, T_SWAP, T_STALE, T_FOREIGN, T_ZERO };

struct saved {                 /* a READ reply seen earlier (stale / foreign) */
	uint64_t region, page;
	unsigned count;
	size_t len;
	uint8_t *p;
};

struct liar {
	struct gvm_memserver *srv;
	pthread_t thr;
	char name[32];
	volatile int mode;
	uint64_t other_region;     /* T_FOREIGN: serve this region's pages instead */
	pthread_mutex_t mu;
	struct saved *saved;
	size_t n_saved, cap_saved;
	uint64_t tampered;         /* replies changed */
};

static struct liar liars[2];

static struct saved *saved_find(struct liar *l, uint64_t region, uint64_t page, unsigned count)
{
	for (size_t i = 0; i < l->n_saved; i++)
		if (l->saved[i].region == region && l->saved[i].page == page && l->saved[i].count == count)
			return &l->saved[i];
	return NULL;
}

static void flip(uint8_t *data, unsigned nz)
{
	if (nz)
		data[100] ^= 0x10;
}

static size_t liar_hook(void *arg, uint64_t region, uint64_t page, unsigned count, int tagged,
			uint8_t *payload, size_t len, size_t cap)
{
	struct liar *l = arg;
	size_t bm = GVM_BITMAP_BYTES(count);
	int nz = gvm_bitmap_weight(payload, count);
	uint8_t *data = payload + bm, *tags = data + (size_t)nz * GVM_PAGE_SIZE, tmp[GVM_PAGE_SIZE];
	struct saved *sv;
	int mode = l->mode;

	if (!tagged || nz < 0 || mode == T_NONE)
		return len;
	pthread_mutex_lock(&l->mu);
	switch (mode) {
	case T_RECORD:
		if (!saved_find(l, region, page, count) && l->n_saved < 4096) {
			if (l->n_saved == l->cap_saved) {
				l->cap_saved = l->cap_saved ? 2 * l->cap_saved : 256;
				l->saved = realloc(l->saved, l->cap_saved * sizeof(*l->saved));
			}
			sv = &l->saved[l->n_saved++];
			*sv = (struct saved){ region, page, count, len, malloc(len) };
			memcpy(sv->p, payload, len);
		}
		break;
	case T_FLIP:
		flip(data, (unsigned)nz);
		l->tampered++;
		break;
	case T_SWAP:
		if (nz >= 2) {
			memcpy(tmp, data, GVM_PAGE_SIZE);
			memcpy(data, data + GVM_PAGE_SIZE, GVM_PAGE_SIZE);
			memcpy(data + GVM_PAGE_SIZE, tmp, GVM_PAGE_SIZE);
			memcpy(tmp, tags, GVM_TAG_SIZE);
			memcpy(tags, tags + GVM_TAG_SIZE, GVM_TAG_SIZE);
			memcpy(tags + GVM_TAG_SIZE, tmp, GVM_TAG_SIZE);
		} else {
			flip(data, (unsigned)nz);
		}
		l->tampered++;
		break;
	case T_STALE:
	case T_FOREIGN:
		/* An older reply for this range, or the same range of another region. */
		sv = saved_find(l, mode == T_STALE ? region : l->other_region, page, count);
		if (sv && sv->len <= cap && (sv->len != len || memcmp(sv->p, payload, len))) {
			memcpy(payload, sv->p, sv->len);
			len = sv->len;
		} else {
			flip(data, (unsigned)nz);
		}
		l->tampered++;
		break;
	case T_ZERO:
		/* "Those pages are zero": the bitmap only. */
		memset(payload, 0, bm);
		len = bm;
		l->tampered++;
		break;
	}
	pthread_mutex_unlock(&l->mu);
	return len;
}

static void *liar_main(void *a)
{
	gvm_memserver_run(((struct liar *)a)->srv);
	return NULL;
}


static int liars_up(void)
{
	for (int i = 0; i < 2; i++) {
		struct liar *l = &liars[i];
		struct gvm_memserver_opts o = { .listen = { "127.0.0.1:0" }, .n_listen = 1,
						.token_file = token_path, .test_read_hook = liar_hook,
						.test_hook_arg = l };
		if (l->srv)
			continue;
		pthread_mutex_init(&l->mu, NULL);
		CHECK(gvm_memserver_open(&l->srv, &o) == 0);
		snprintf(l->name, sizeof(l->name), "127.0.0.1:%d", gvm_memserver_port(l->srv, 0));
		CHECK(pthread_create(&l->thr, NULL, liar_main, l) == 0);
	}
	unlink(token_path); /* read: nothing is left behind even if a case crashes */
	return 0;
}

static void liars_reset(void)
{
	for (int i = 0; i < 2; i++) {
		struct liar *l = &liars[i];
		pthread_mutex_lock(&l->mu);
		l->mode = T_NONE;
		for (size_t k = 0; k < l->n_saved; k++)
			free(l->saved[k].p);
		l->n_saved = 0;
		l->tampered = 0;
		pthread_mutex_unlock(&l->mu);
	}
}

static void liars_down(void)
{
	for (int i = 0; i < 2; i++) {
		struct liar *l = &liars[i];
		if (!l->srv)
			continue;
		gvm_memserver_stop(l->srv);
		pthread_join(l->thr, NULL);
		gvm_memserver_close(l->srv);
		l->srv = NULL;
	}
	liars_reset();
	for (int i = 0; i < 2; i++)
		free(liars[i].saved);
}

/* ---------------------------------------------------------------- reading with SIGBUS */

static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_armed;

static void on_bus(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (!bus_armed)
		signal(sig, SIG_DFL);
	siglongjmp(bus_jmp, 1);
}

/* Copy page p of m into out: 0, or 1 if it is poisoned (SIGBUS). */
static int read_page(const uint8_t *m, uint64_t p, uint8_t *out)
{
	struct sigaction sa = { .sa_sigaction = on_bus, .sa_flags = SA_SIGINFO | SA_NODEFER }, old;

	sigaction(SIGBUS, &sa, &old);
	bus_armed = 1;
	if (sigsetjmp(bus_jmp, 1)) {
		bus_armed = 0;
		sigaction(SIGBUS, &old, NULL);
		return 1;
	}
	memcpy(out, m + p * GVM_PAGE_SIZE, GVM_PAGE_SIZE);
	bus_armed = 0;
	sigaction(SIGBUS, &old, NULL);
	return 0;
}

static void pattern(uint8_t *out, uint64_t seed, uint64_t page, uint32_t ver)
{
	uint64_t x = gvm_mix64(seed ^ (page << 20) ^ ver);
	for (unsigned i = 0; i < GVM_PAGE_SIZE; i += 8) {
		x = gvm_mix64(x);
		memcpy(out + i, &x, 8);
	}
}

struct vm {
	struct gvm_pool *pool;
	struct gvm_engine *e;
	uint8_t *m, *m2;
	uint64_t region, region2, seed;
};

static int vm_open(struct vm *v, const char *const *nodes, unsigned n, int two_regions, int deadline_ms)
{
	struct gvm_pool_opts po = { .nodes = nodes, .n_nodes = n, .replicas = n, .token = token,
				    .token_len = strlen(token), .request_timeout_ms = 500,
				    .fault_deadline_ms = deadline_ms };
	struct gvm_engine_opts eo = { .local_mem = BUDGET, .seal = GVM_SEAL_ON };
	uint8_t key[32], key2[32];
	char err[256];

	memset(v, 0, sizeof(*v));
	CHECK(gvm_random(&v->seed, 8) == 0 && gvm_random(key, 32) == 0 && gvm_random(key2, 32) == 0);
	CHECK(gvm_random(&v->region, 8) == 0);
	v->region2 = gvm_mix64(v->region);
	CHECK(gvm_pool_open(&v->pool, &po, err, sizeof(err)) == 0);
	CHECK(gvm_engine_open(&v->e, v->pool, &eo) == 0);
	v->m = mmap(NULL, PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(v->m != MAP_FAILED);
	CHECK(gvm_engine_attach(v->e, v->region, key, v->m, PAGES * 4096ul) == 0);
	if (two_regions) {
		v->m2 = mmap(NULL, PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(v->m2 != MAP_FAILED);
		CHECK(gvm_engine_attach(v->e, v->region2, key2, v->m2, PAGES * 4096ul) == 0);
	}
	return 0;
}

static void vm_close(struct vm *v)
{
	gvm_engine_close(v->e);
	gvm_pool_close(v->pool);
	munmap(v->m, PAGES * 4096ul);
	if (v->m2)
		munmap(v->m2, PAGES * 4096ul);
}

static void write_all(uint8_t *m, uint64_t seed, uint32_t ver)
{
	for (uint64_t p = 0; p < PAGES; p++)
		pattern(m + p * GVM_PAGE_SIZE, seed, p, ver);
}

/* Read every page: *wrong counts pages that are neither right nor poisoned. */
static void read_all(const uint8_t *m, uint64_t seed, uint32_t ver, unsigned *good, unsigned *poisoned,
		     unsigned *wrong)
{
	uint8_t got[GVM_PAGE_SIZE], want[GVM_PAGE_SIZE];

	*good = *poisoned = *wrong = 0;
	for (uint64_t p = 0; p < PAGES; p++) {
		if (read_page(m, p, got)) {
			(*poisoned)++;
			continue;
		}
		pattern(want, seed, p, ver);
		if (memcmp(got, want, GVM_PAGE_SIZE)) {
			(*wrong)++;
		}
		else
			(*good)++;
	}
}

/*
 * One lying mode: with only node 0 lying every page still reads right (from
 * node 1) and the lies are counted; with both lying, pages are poisoned, and
 * never is a wrong byte seen.
 */

/* Sealed READ replies are opened on the opener thread (opener.c), unless
 * $GIANTVM_OPEN_INLINE=1 keeps them on the engine thread: each lie is
 * caught either way. */
static int inline_open;

static int lie(int mode)
{
	const char *nodes[2];
	struct gvm_stats st;
	struct vm v;
	unsigned good, poisoned, wrong;
	uint32_t ver = 1;

	CHECK(liars_up() == 0);
	liars_reset();
	nodes[0] = liars[0].name;
	nodes[1] = liars[1].name;
	if (vm_open(&v, nodes, 2, mode == T_FOREIGN, 2000))
		return 1;
	CHECK_EQ(test_threads_named("gvm-opener", NULL), inline_open ? 0 : 1);
	/* The page cipher: AEGIS-256 where the CPU has AES-NI, unless chosen. */
	const char *want = getenv("GIANTVM_SEAL_CIPHER");
	CHECK(!strcmp(gvm_seal_cipher(), want ? want : gvm_aegis256_available() ? "aegis-256" : "aes-256-gcm"));
	write_all(v.m, v.seed, ver);
	if (mode == T_STALE) {
		/* Record what the nodes hold now, then write everything again. */
		liars[0].mode = liars[1].mode = T_RECORD;
		read_all(v.m, v.seed, ver, &good, &poisoned, &wrong);
		CHECK_EQ(good, PAGES);
		liars[0].mode = liars[1].mode = T_NONE;
		write_all(v.m, v.seed, ++ver);
	}
	if (mode == T_FOREIGN) {
		/* The other region: same pages, its own data, recorded as it is read. */
		write_all(v.m2, v.seed ^ 1, 1);
		liars[0].mode = liars[1].mode = T_RECORD;
		read_all(v.m2, v.seed ^ 1, 1, &good, &poisoned, &wrong);
		CHECK_EQ(good, PAGES);
		liars[0].other_region = liars[1].other_region = v.region2;
	}
	/* Push the region out: the other region's pages (or a rewrite) evict it. */
	if (mode == T_FOREIGN)
		write_all(v.m2, v.seed ^ 2, 2);
	else
		write_all(v.m, v.seed, ++ver);
	CHECK(gvm_engine_flush(v.e) == 0);

	liars[0].mode = mode;
	read_all(v.m, v.seed, ver, &good, &poisoned, &wrong);
	gvm_engine_stats(v.e, &st);
	fprintf(stderr, "  one node lying: %u pages right, %u poisoned, %u wrong; %" PRIu64
		" replies altered, %" PRIu64 " pages rejected\n", good, poisoned, wrong, liars[0].tampered,
		st.pages_rejected);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(poisoned, 0);
	CHECK_EQ(good, PAGES);
	CHECK(liars[0].tampered > 0);
	CHECK(st.pages_rejected > 0);
	CHECK_EQ(st.lost_pages, 0);

	/* Both lie: nothing good to read; whatever is not resident is lost. */
	if (mode == T_FOREIGN)
		write_all(v.m2, v.seed ^ 3, 3);
	else
		write_all(v.m, v.seed, ++ver);
	CHECK(gvm_engine_flush(v.e) == 0);
	/* Node 1 lies the same way (for T_STALE: what it recorded at the start). */
	liars[1].other_region = v.region2;
	liars[1].mode = mode;
	read_all(v.m, v.seed, ver, &good, &poisoned, &wrong);
	gvm_engine_stats(v.e, &st);
	fprintf(stderr, "  both lying: %u pages right, %u poisoned, %u wrong; %" PRIu64
		" lost\n", good, poisoned, wrong, st.lost_pages);
	CHECK_EQ(wrong, 0);
	CHECK(poisoned > 0);
	CHECK_EQ(st.lost_pages, poisoned);
	liars[0].mode = liars[1].mode = T_NONE;
	vm_close(&v);
	return 0;
}

static int test_flip(void) { return lie(T_FLIP); }

/* The AES-256-GCM fallback (CPUs without AES-NI) catches them too: the
 * cipher is chosen once per process, so in a child. */
static char self_path[PATH_MAX];

static int test_lies_gcm(void)
{
	const char *cases[] = { "flip_a_bit", "stale_version", "written_page_claimed_zero" };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pid_t pid = fork();
		int st;
		CHECK(pid >= 0);
		if (pid == 0) {
			setenv("GIANTVM_SEAL_CIPHER", "aes-256-gcm", 1);
			execl(self_path, self_path, "-f", cases[i], (char *)NULL);
			_exit(127);
		}
		CHECK(waitpid(pid, &st, 0) == pid);
		fprintf(stderr, "  %s with aes-256-gcm: %s\n", cases[i],
			WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "ok" : "FAILED");
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	return 0;
}

static int test_lies_inline(void)
{
	int r = 0;

	inline_open = 1;
	if (setenv("GIANTVM_OPEN_INLINE", "1", 1))
		return 1;
	for (int mode = T_FLIP; mode <= T_ZERO && !r; mode++)
		r = lie(mode);
	unsetenv("GIANTVM_OPEN_INLINE");
	inline_open = 0;
	return r;
}
static int test_swap(void) { return lie(T_SWAP); }
static int test_stale(void) { return lie(T_STALE); }
static int test_foreign(void) { return lie(T_FOREIGN); }
static int test_zero(void) { return lie(T_ZERO); }

/* ---------------------------------------------------------------- rogue nodes */

enum rogue_mode { R_NO_FLAG, R_BAD_PROOF };

struct rogue {
	int lfd, port, mode;
	volatile int stop;
	pthread_t thr;
	unsigned served;
};

/* A node without the token: a GREETING without the session flag, or one
 * that offers a session and answers HELLO with a made-up proof. */
static void *rogue_main(void *a)
{
	struct rogue *r = a;

	while (!r->stop) {
		struct pollfd p = { .fd = r->lfd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(r->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		struct timeval tv = { .tv_sec = 1 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		uint8_t f[GVM_HDR_SIZE + GVM_HELLO_SIZE + 64];
		struct gvm_greeting g = { .version = GVM_PROTO_VERSION,
					  .flags = r->mode == R_NO_FLAG ? 0 : GVM_GREET_AUTH | GVM_GREET_KEYED };
		gvm_random(g.nonce, sizeof(g.nonce));
		mk_hdr(f, GVM_OP_GREETING, 0, 0, 0, 0, GVM_GREETING_SIZE);
		gvm_greeting_encode(&g, f + GVM_HDR_SIZE);
		if (send_all(fd, f, GVM_HDR_SIZE + GVM_GREETING_SIZE) == 0 &&
		    recv_all(fd, f, GVM_HDR_SIZE + GVM_HELLO_SIZE) == 0) {
			uint64_t id;
			memcpy(&id, f + 8, 8); /* echo the HELLO's id (little-endian host) */
			struct gvm_hdr h = { .magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION,
					     .op = GVM_OP_HELLO | GVM_OP_REPLY, .id = id, .len = GVM_PROOF_SIZE };
			gvm_hdr_encode(&h, f);
			gvm_random(f + GVM_HDR_SIZE, GVM_PROOF_SIZE);
			send_all(fd, f, GVM_HDR_SIZE + GVM_PROOF_SIZE);
			/* Swallow whatever comes next (it must be nothing). */
			uint8_t sink[4096];
			while (!r->stop && recv(fd, sink, sizeof(sink), 0) > 0)
				r->served++;
		}
		close(fd);
	}
	return NULL;
}

static int rogue_up(struct rogue *r, int mode)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);

	memset(r, 0, sizeof(*r));
	r->mode = mode;
	r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(r->lfd >= 0);
	CHECK(bind(r->lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(r->lfd, 16) == 0);
	CHECK(getsockname(r->lfd, (struct sockaddr *)&a, &al) == 0);
	r->port = ntohs(a.sin_port);
	CHECK(pthread_create(&r->thr, NULL, rogue_main, r) == 0);
	return 0;
}

static void rogue_down(struct rogue *r)
{
	r->stop = 1;
	pthread_join(r->thr, NULL);
	close(r->lfd);
}

static int rogue(int mode)
{
	struct rogue r;
	struct gvm_client c;
	char name[32];
	const char *nodes[2];
	struct gvm_stats st;
	struct vm v;
	unsigned good, poisoned, wrong;

	CHECK(liars_up() == 0);
	liars_reset();
	if (rogue_up(&r, mode))
		return 1;
	snprintf(name, sizeof(name), "127.0.0.1:%d", r.port);
	/* The blocking client holding a token refuses it. */
	CHECK_EQ(gvm_client_connect(&c, name, token, strlen(token), TIMEOUT_MS), -EACCES);

	/* An engine with the rogue and a good node: everything works from the
	 * good one, and nothing but HELLO ever reaches the rogue. */
	nodes[0] = name;
	nodes[1] = liars[1].name;
	if (vm_open(&v, nodes, 2, 0, 1500))
		return 1;
	write_all(v.m, v.seed, 1);
	CHECK(gvm_engine_flush(v.e) == 0);
	read_all(v.m, v.seed, 1, &good, &poisoned, &wrong);
	gvm_engine_stats(v.e, &st);
	fprintf(stderr, "  rogue + good node: %u right, %u poisoned, %u wrong; %" PRIu64
		" stripes under-replicated; %u bytes after HELLO reached the rogue\n", good, poisoned, wrong,
		st.under_replicated, r.served);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(good, PAGES);
	CHECK_EQ(r.served, 0);
	vm_close(&v);

	/* Only the rogue: the pages the pool should hold are lost (poisoned). */
	nodes[0] = name;
	if (vm_open(&v, nodes, 1, 0, 500))
		return 1;
	uint8_t got[GVM_PAGE_SIZE];
	CHECK_EQ(read_page(v.m, 7, got), 1);
	gvm_engine_stats(v.e, &st);
	CHECK(st.lost_pages >= 1);
	CHECK_EQ(r.served, 0);
	vm_close(&v);
	rogue_down(&r);
	return 0;
}

static int test_greeting_without_auth(void) { return rogue(R_NO_FLAG); }
static int test_bad_server_proof(void) { return rogue(R_BAD_PROOF); }

/* ---------------------------------------------------------------- a sniffed OPEN */

/* A raw session with the token: GREETING, HELLO, the server's proof. */
static int raw_session(int port, struct gvm_session *s)
{
	uint8_t f[GVM_HDR_SIZE + GVM_HELLO_SIZE], gb[GVM_GREETING_SIZE], proof[GVM_PROOF_SIZE];
	struct gvm_hello hello;
	struct gvm_hdr h;
	int fd = tcp_from(NULL, port, TIMEOUT_MS);

	if (fd < 0)
		return -1;
	gvm_session_init(s);
	if (raw_reply(fd, &h, gb, sizeof(gb)) < 0 || h.op != GVM_OP_GREETING ||
	    gvm_session_hello(s, token, strlen(token), gb, &hello) < 0)
		goto fail;
	mk_hdr(f, GVM_OP_HELLO, 0, 0, 0, 0, GVM_HELLO_SIZE);
	gvm_hello_encode(&hello, f + GVM_HDR_SIZE);
	if (send_all(fd, f, sizeof(f)) < 0 || raw_reply(fd, &h, proof, sizeof(proof)) < 0 || h.status ||
	    gvm_session_confirm(s, token, strlen(token), proof) < 0)
		goto fail;
	return fd;
fail:
	gvm_session_fini(s);
	close(fd);
	return -1;
}

/* A tagged frame as the session sends it, into out; returns its size. */
static size_t raw_frame(struct gvm_session *s, uint8_t *out, uint16_t op, uint64_t id, uint64_t region,
			uint32_t count, const void *payload, uint32_t len)
{
	mk_hdr(out, op, id, region, 0, count, len);
	if (len)
		memcpy(out + GVM_HDR_SIZE, payload, len);
	gvm_session_tag_begin(s, out);
	gvm_session_tag_add(s, payload, len);
	gvm_session_tag_end(s, out + GVM_HDR_SIZE + len);
	return GVM_HDR_SIZE + len + GVM_TAG_SIZE;
}

/* A tagged reply: status, and its payload into buf. -1000 on I/O or a bad tag. */
static int raw_tagged_reply(int fd, struct gvm_session *s, uint8_t *buf, size_t cap, struct gvm_hdr *h)
{
	uint8_t raw[GVM_HDR_SIZE], tag[GVM_TAG_SIZE];
	const char *why;

	if (recv_all(fd, raw, sizeof(raw)) < 0 || gvm_hdr_decode(raw, 1, h, &why) < 0 || h->len > cap ||
	    (h->len && recv_all(fd, buf, h->len) < 0) || recv_all(fd, tag, sizeof(tag)) < 0 ||
	    gvm_session_check(s, raw, buf, h->len, tag) < 0)
		return -1000;
	return h->status;
}

static int test_open_replay(void)
{
	struct gvm_session a, b;
	struct gvm_client c;
	struct gvm_hdr h;
	uint8_t key[32], v[GVM_KEY_SIZE], pad[GVM_KEY_SIZE], f[256], sniffed[256], buf[8 + GVM_PAGE_SIZE + 64];
	uint8_t page[GVM_PAGE_SIZE];
	uint64_t region = 0x5ea1ed;
	size_t n;
	int fa, fb, port;

	CHECK(liars_up() == 0);
	liars_reset();
	port = atoi(strchr(liars[0].name, ':') + 1);
	CHECK(gvm_random(key, sizeof(key)) == 0);
	memset(page, 0xab, sizeof(page));
	/* The owner writes a page. */
	CHECK(gvm_client_connect(&c, liars[0].name, token, strlen(token), TIMEOUT_MS) == 0);
	CHECK(gvm_client_open(&c, region, key) == 0);
	CHECK(gvm_client_write(&c, region, 0, 1, page) == 0);
	gvm_client_close(&c);

	/* The owner's OPEN on a raw session, as a sniffer sees it. */
	fa = raw_session(port, &a);
	CHECK(fa >= 0);
	CHECK(gvm_region_verifier(key, region, v) == 0);
	CHECK(gvm_session_open_pad(&a, region, a.seq_out, v, pad) == 0);
	n = raw_frame(&a, sniffed, GVM_OP_OPEN, 2, region, 0, pad, GVM_KEY_SIZE);
	CHECK(send_all(fa, sniffed, n) == 0);
	CHECK_EQ(raw_tagged_reply(fa, &a, buf, sizeof(buf), &h), 0);
	/* The key itself never crossed the wire: neither it nor the verifier is in the frame. */
	CHECK(memmem(sniffed, n, key, sizeof(key)) == NULL);
	CHECK(memmem(sniffed, n, v, sizeof(v)) == NULL);

	/* Another client, even one holding the pool token, replays it verbatim:
	 * the frame's tag is for the other session; the server closes. */
	fb = raw_session(port, &b);
	CHECK(fb >= 0);
	CHECK(send_all(fb, sniffed, n) == 0);
	CHECK(raw_tagged_reply(fb, &b, buf, sizeof(buf), &h) == -1000);
	close(fb);
	gvm_session_fini(&b);

	/* ... or re-tags the sniffed payload on its own session: it opens some
	 * other region (the pad is per session), and reads nothing. */
	fb = raw_session(port, &b);
	CHECK(fb >= 0);
	n = raw_frame(&b, f, GVM_OP_OPEN, 2, region, 0, pad, GVM_KEY_SIZE);
	CHECK(send_all(fb, f, n) == 0);
	CHECK_EQ(raw_tagged_reply(fb, &b, buf, sizeof(buf), &h), 0);
	n = raw_frame(&b, f, GVM_OP_READ, 3, region, 1, NULL, 0);
	CHECK(send_all(fb, f, n) == 0);
	CHECK_EQ(raw_tagged_reply(fb, &b, buf, sizeof(buf), &h), 0);
	CHECK_EQ(h.len, GVM_BITMAP_BYTES(1));
	CHECK_EQ(buf[0], 0); /* zero pages: nothing */
	close(fb);
	close(fa);
	gvm_session_fini(&a);
	gvm_session_fini(&b);

	/* The owner still reads its page. */
	CHECK(gvm_client_connect(&c, liars[0].name, token, strlen(token), TIMEOUT_MS) == 0);
	CHECK(gvm_client_open(&c, region, key) == 0);
	uint8_t back[GVM_PAGE_SIZE];
	CHECK(gvm_client_read(&c, region, 0, 1, back) == 0);
	CHECK(!memcmp(back, page, sizeof(page)));
	gvm_client_close(&c);
	return 0;
}

/* ---------------------------------------------------------------- nothing in the clear */

/* Occurrences of needle in the readable memory of pid. */
static long scan_memory(pid_t pid, const uint8_t *needle, size_t nlen)
{
	char path[64], line[512];
	long hits = 0;
	FILE *maps;
	int mem;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	maps = fopen(path, "r");
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	mem = open(path, O_RDONLY | O_CLOEXEC);
	if (!maps || mem < 0) {
		if (maps)
			fclose(maps);
		if (mem >= 0)
			close(mem);
		return -1;
	}
	size_t cap = 1 << 20;
	uint8_t *buf = malloc(cap + nlen);
	while (buf && fgets(line, sizeof(line), maps)) {
		unsigned long lo, hi;
		char perms[8];
		/* Writable data only, and no huge reservations (a sanitizer's
		 * shadow memory is terabytes): a store arena is at most 64 MiB. */
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r' || perms[1] != 'w' ||
		    hi - lo > (1ul << 30))
			continue;
		for (unsigned long off = lo; off < hi; off += cap) {
			size_t want = (size_t)GVM_MIN((unsigned long)cap, hi - off);
			ssize_t got = pread(mem, buf, want, (off_t)off);
			if (got <= 0)
				break;
			for (uint8_t *p = buf; (p = memmem(p, (size_t)got - (size_t)(p - buf), needle, nlen)); p++)
				hits++;
		}
	}
	free(buf);
	fclose(maps);
	close(mem);
	return hits;
}

static long scan_file(const char *path, const uint8_t *needle, size_t nlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	long hits = 0;

	if (fd < 0 || fstat(fd, &st) < 0)
		return -1;
	uint8_t *m = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	for (uint8_t *p = m; m && (p = memmem(p, (size_t)st.st_size - (size_t)(p - m), needle, nlen)); p++)
		hits++;
	if (m)
		munmap(m, (size_t)st.st_size);
	return hits;
}

/* Write a marker through an engine (sealed or not) to a memory server
 * process with a backing file; count the marker in its memory and file. */
static int marker_run(int seal, int use_backing, long *hits)
{
	char dir[] = "/tmp/gvm-seal-XXXXXX", backing[96], portfile[96], name[32];
	static const char marker[] = "giantvm-sealed-marker: the guest's secret, 0123456789abcdefghijk";
	struct gvm_pool_opts po = { .n_nodes = 1 };
	struct gvm_engine_opts eo = { .seal = seal ? GVM_SEAL_ON : GVM_SEAL_OFF };
	struct gvm_pool *pool;
	struct gvm_engine *e;
	const char *nodes[1] = { name };
	uint8_t key[32];
	char err[256];
	int port = 0;
	pid_t pid;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(backing, sizeof(backing), "%s/pages", dir);
	snprintf(portfile, sizeof(portfile), "%s/port", dir);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (use_backing)
			execl(giantvm, giantvm, "memserver", "--listen", "127.0.0.1:0", "--port-file", portfile,
			      "--backing", backing, (char *)NULL);
		else
			execl(giantvm, giantvm, "memserver", "--listen", "127.0.0.1:0", "--port-file", portfile,
			      (char *)NULL);
		_exit(127);
	}
	for (int t = 0; t < 500 && !port; t++) {
		FILE *f = fopen(portfile, "r");
		if (f) {
			if (fscanf(f, "%d", &port) != 1)
				port = 0;
			fclose(f);
		}
		if (!port)
			usleep(10000);
	}
	if (!port) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		CHECK(port);
	}
	snprintf(name, sizeof(name), "127.0.0.1:%d", port);
	po.nodes = nodes;
	CHECK(gvm_random(key, sizeof(key)) == 0);
	CHECK(gvm_pool_open(&pool, &po, err, sizeof(err)) == 0);
	CHECK(gvm_engine_open(&e, pool, &eo) == 0);
	size_t len = 256 * 4096ul;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK(gvm_engine_attach_flags(e, 0x5ea1, key, m, len, GVM_ATTACH_FRESH) == 0);
	for (size_t off = 0; off + sizeof(marker) <= len; off += 128)
		memcpy(m + off, marker, sizeof(marker) - 1);
	CHECK(gvm_engine_flush(e) == 0);
	*hits = use_backing ? scan_file(backing, (const uint8_t *)marker, sizeof(marker) - 1)
			    : scan_memory(pid, (const uint8_t *)marker, sizeof(marker) - 1);
	gvm_engine_close(e);
	gvm_pool_close(pool);
	munmap(m, len);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	unlink(backing);
	unlink(portfile);
	rmdir(dir);
	return 0;
}

static int test_nothing_in_clear(void)
{
	long mem_sealed, file_sealed, mem_clear, file_clear;

	if (marker_run(0, 0, &mem_clear) || marker_run(0, 1, &file_clear) ||
	    marker_run(1, 0, &mem_sealed) || marker_run(1, 1, &file_sealed))
		return 1;
	fprintf(stderr, "  marker found: unsealed %ld times in the server's memory, %ld in its file; "
		"sealed %ld and %ld\n", mem_clear, file_clear, mem_sealed, file_sealed);
	CHECK(mem_clear > 0 && file_clear > 0); /* the scans see plaintext when there is some */
	CHECK_EQ(mem_sealed, 0);
	CHECK_EQ(file_sealed, 0);
	return 0;
}

#define WP (GVM_NEEDS_UFFD | UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_POISON)
static const struct gvm_test tests[] = {
	{ "flip_a_bit", test_flip, WP },
	{ "swap_two_pages", test_swap, WP },
	{ "stale_version", test_stale, WP },
	{ "another_regions_page", test_foreign, WP },
	{ "written_page_claimed_zero", test_zero, WP },
	{ "every_lie_opened_on_the_engine_thread", test_lies_inline, WP },
	{ "lies_caught_with_aes_256_gcm", test_lies_gcm, WP },
	{ "greeting_without_auth_flag", test_greeting_without_auth, WP },
	{ "server_proof_fails", test_bad_server_proof, WP },
	{ "sniffed_open_replayed", test_open_replay },
	{ "nothing_in_the_clear", test_nothing_in_clear, GVM_NEEDS_UFFD },
};

int main(int argc, char **argv)
{
	int r;

	(void)argc;
	if (test_giantvm_path(giantvm, sizeof(giantvm))) {
		fprintf(stderr, "test_seal: the giantvm command is not built beside this test\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!realpath("/proc/self/exe", self_path)) {
		perror("test_seal: /proc/self/exe");
		return 1;
	}
	snprintf(token_path, sizeof(token_path), "/tmp/gvm-seal-token-%d", (int)getpid());
	if (test_write_text(token_path, token) < 0)
		return 1;
	r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	liars_down();
	unlink(token_path);
	return r;
}
