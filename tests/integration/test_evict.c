/*
 * Eviction under a local memory budget, against real memory servers:
 * a region 4x the budget takes random writes from several threads while the
 * evictor runs, then every page is verified; a page written while it is
 * being evicted keeps the write. Each scenario runs on the three drop paths
 * (one process_madvise per batch on Linux 6.13+, UFFDIO_MOVE per run on
 * 6.8+, MADV_DONTNEED per run before).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "giantvm.h"
#include "servers.h"
#include "test.h"
#include "util.h"

#define PAGES   16384u   /* 64 MiB region ... */
#define BUDGET  (16u << 20) /* ... 4x a 16 MiB budget */
#define THREADS 4

struct ctx {
	uint8_t *m;
	uint32_t *ver;        /* last version written per page */
	uint64_t seed;
	int id;
	unsigned writes;
	volatile int *stop;
};

static void fill(uint8_t *p, uint64_t seed, uint64_t page, uint32_t ver)
{
	uint64_t x = gvm_mix64(seed ^ (page << 20) ^ ver);
	for (unsigned i = 0; i < 4096; i += 8) {
		x = gvm_mix64(x);
		memcpy(p + i, &x, 8);
	}
	memcpy(p, &ver, sizeof(ver)); /* the version, readable at offset 0 */
}

static int check_page(const uint8_t *m, uint64_t seed, uint64_t page, uint32_t ver)
{
	uint8_t want[4096];

	if (ver == 0) {
		for (unsigned i = 0; i < 4096; i++)
			if (m[page * 4096 + i])
				return -1;
		return 0;
	}
	fill(want, seed, page, ver);
	return memcmp(m + page * 4096, want, 4096) ? -1 : 0;
}

static void *random_writer(void *a)
{
	struct ctx *c = a;
	uint64_t x = gvm_mix64(c->seed + (uint64_t)c->id);

	for (unsigned i = 0; i < c->writes; i++) {
		x = gvm_mix64(x);
		/* Each thread owns the pages p % THREADS == id: no two writers race. */
		uint64_t p = (x % (PAGES / THREADS)) * THREADS + (uint64_t)c->id;
		fill(c->m + p * 4096, c->seed, p, ++c->ver[p]);
	}
	return NULL;
}

/* THREADS random writers, `writes` writes each; returns when all are done. */
static int random_writers(uint8_t *m, uint32_t *ver, uint64_t seed, unsigned writes)
{
	pthread_t th[THREADS];
	struct ctx c[THREADS];

	for (int i = 0; i < THREADS; i++) {
		c[i] = (struct ctx){ .m = m, .ver = ver, .seed = seed, .id = i, .writes = writes };
		CHECK(pthread_create(&th[i], NULL, random_writer, &c[i]) == 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	return 0;
}

/* A region name per case and drop mode. (Cases that share one, such as the
 * sealed ones and the _batch ones, still share no pages: each has its own
 * random key, and the servers keep regions by id and key.) */
static const char *rname(const char *base, int drop)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "%s-%s", base, gvm_drop_name[drop]);
	return buf;
}

/* The _sealed cases: pages sealed (their READ replies opened on the opener
 * thread and installed after later replies and acks were handled). */
static int sealed;

static int open_engine(struct gvm_pool **pool, struct gvm_engine **e, uint8_t **m, uint64_t region,
		       const uint8_t *key, int drop)
{
	struct gvm_pool_opts po = { .nodes = test_nodes, .n_nodes = 3, .replicas = 2 };
	struct gvm_engine_opts eo = { .local_mem = BUDGET, .seal = sealed ? GVM_SEAL_ON : GVM_SEAL_OFF };
	char err[256];

	gvm_test_set_drop(drop);
	CHECK(test_servers_up(3) == 0);
	CHECK(gvm_pool_open(pool, &po, err, sizeof(err)) == 0);
	CHECK(gvm_engine_open(e, *pool, &eo) == 0);
	*m = mmap(NULL, PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(*m != MAP_FAILED);
	CHECK(gvm_engine_attach(*e, region, key, *m, PAGES * 4096ul) == 0);
	return 0;
}

/* A new region named `name`, every page written once (version 1; ver may
 * be NULL): 4x the budget, so most of it is in the pool afterwards. */
static int open_written(struct gvm_pool **pool, struct gvm_engine **e, uint8_t **m, const char *name,
			int drop, uint64_t *seed, uint32_t *ver)
{
	uint8_t key[32];

	CHECK(gvm_random(seed, 8) == 0 && gvm_random(key, 32) == 0);
	if (open_engine(pool, e, m, gvm_region_id("test-evict", name), key, drop))
		return 1;
	for (uint64_t p = 0; p < PAGES; p++) {
		fill(*m + p * 4096, *seed, p, 1);
		if (ver)
			ver[p] = 1;
	}
	return 0;
}

/* Every page reads back as last written (version 0: never written, zero). */
static int verify_all(const uint8_t *m, uint64_t seed, const uint32_t *ver)
{
	for (uint64_t p = 0; p < PAGES; p++) {
		if (check_page(m, seed, p, ver[p])) {
			fprintf(stderr, "  page %" PRIu64 " (version %u) is wrong\n", p, ver[p]);
			return 1;
		}
	}
	return 0;
}

static void close_engine(struct gvm_pool *pool, struct gvm_engine *e, uint8_t *m)
{
	gvm_engine_close(e);
	gvm_pool_close(pool);
	munmap(m, PAGES * 4096ul);
}

static uint64_t rss_of_region(uint8_t *m)
{
	unsigned char *vec = malloc(PAGES);
	uint64_t n = 0;

	if (!vec || mincore(m, PAGES * 4096ul, vec) < 0) {
		free(vec);
		return UINT64_MAX;
	}
	for (unsigned i = 0; i < PAGES; i++)
		n += vec[i] & 1;
	free(vec);
	return n;
}

/* locked: the region is mlock()ed as it faults (QEMU's -overcommit
 * mem-lock=on), where MADV_DONTNEED refuses to drop pages. */
static int random_writes_in(int drop, int locked)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t *m, key[32];
	uint64_t seed;
	uint32_t *ver = calloc(PAGES, sizeof(*ver));

	CHECK(ver);
	CHECK(gvm_random(&seed, 8) == 0 && gvm_random(key, 32) == 0);
	if (open_engine(&pool, &e, &m, gvm_region_id("test-evict", rname(locked ? "locked" : "rand", drop)),
			key, drop))
		return 1;
	if (locked) {
		/* Linux 5.18+ drops locked pages with MADV_DONTNEED_LOCKED. */
		uint8_t *t = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(t != MAP_FAILED && mlock(t, 4096) == 0);
		int lk = madvise(t, 4096, MADV_DONTNEED_LOCKED);
		munmap(t, 4096);
		if (lk < 0) {
			close_engine(pool, e, m);
			free(ver);
			SKIP("the kernel lacks MADV_DONTNEED_LOCKED (Linux 5.18+)");
		}
		CHECK(mlock2(m, PAGES * 4096ul, MLOCK_ONFAULT) == 0);
	}
	if (random_writers(m, ver, seed, 8000))
		return 1;
	gvm_engine_stats(e, &st);
	uint64_t rss = rss_of_region(m);
	printf("  after writes: resident %" PRIu64 " pages (mincore %" PRIu64 "), budget %" PRIu64
	       ", evictions %" PRIu64 ", write-backs %" PRIu64 ", clean drops %" PRIu64 "\n",
	       st.resident_pages, rss, st.budget_pages, st.evictions, st.writebacks, st.clean_drops);
	CHECK(st.evictions > 0 && st.writebacks > 0);
	CHECK(rss <= st.budget_pages + st.budget_pages / 8);
	/* Every page, including the evicted ones, reads back as last written. */
	if (verify_all(m, seed, ver))
		return 1;
	gvm_engine_stats(e, &st);
	printf("  after verify: clean drops %" PRIu64 " (pages read back and dropped unwritten)\n",
	       st.clean_drops);
	close_engine(pool, e, m);
	free(ver);
	return 0;
}

static int random_writes(int drop) { return random_writes_in(drop, 0); }

/*
 * A kernel that will not drop locked memory (before 5.18; forced here with
 * GIANTVM_UFFD_DISABLE=DONTNEED_LOCKED): short locked stretches spread over
 * the region. Runs of victims that cross into one are dropped up to it and
 * refused after: the dropped part must count as dropped (counted resident,
 * a page gone would read as zero at its next fault), the locked part stays
 * resident, and every page reads back as written.
 */
#define NSTRETCH 16u
#define STRETCH  16u /* pages: 256 locked in all, 1/16 of the budget */
static uint8_t *stretch(uint8_t *m, unsigned i)
{
	return m + ((size_t)i * (PAGES / NSTRETCH) + PAGES / NSTRETCH / 2) * 4096;
}

static int locked_refused(void)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t *m, key[32];
	uint64_t seed;
	uint32_t *ver = calloc(PAGES, sizeof(*ver));
	unsigned present = 0;

	CHECK(ver);
	CHECK(gvm_random(&seed, 8) == 0 && gvm_random(key, 32) == 0);
	gvm_test_off_extra = "DONTNEED_LOCKED";
	int r = open_engine(&pool, &e, &m, gvm_region_id("test-evict", "locked-refused"), key, GVM_DROP_DONTNEED);
	gvm_test_off_extra = "";
	if (r)
		return 1;
	for (unsigned i = 0; i < NSTRETCH; i++)
		CHECK(mlock2(stretch(m, i), STRETCH * 4096ul, MLOCK_ONFAULT) == 0);
	for (int pass = 0; pass < 2; pass++)
		for (uint64_t p = 0; p < PAGES; p++)
			fill(m + p * 4096, seed, p, ++ver[p]);
	if (random_writers(m, ver, seed, 4000) || verify_all(m, seed, ver))
		return 1;
	gvm_engine_stats(e, &st);
	for (unsigned i = 0; i < NSTRETCH; i++) {
		unsigned char vec[STRETCH];
		CHECK(mincore(stretch(m, i), STRETCH * 4096ul, vec) == 0);
		for (unsigned k = 0; k < STRETCH; k++)
			present += vec[k] & 1;
	}
	printf("  resident %" PRIu64 " pages (budget %" PRIu64 "), evictions %" PRIu64
	       ", locked pages present %u of %u\n", st.resident_pages, st.budget_pages, st.evictions,
	       present, NSTRETCH * STRETCH);
	CHECK(st.evictions > 0);
	CHECK_EQ(present, NSTRETCH * STRETCH); /* never dropped */
	CHECK(rss_of_region(m) <= st.budget_pages + st.budget_pages / 8);
	close_engine(pool, e, m);
	free(ver);
	return 0;
}

struct hammer {
	uint8_t *m;
	volatile int stop;
	uint32_t last[64];
};

/* Keep writing counters into 64 pages spread over the region. */
static void *hammer_main(void *a)
{
	struct hammer *h = a;
	uint32_t v = 0;

	while (!h->stop) {
		v++;
		for (unsigned k = 0; k < 64; k++) {
			uint64_t p = (uint64_t)k * (PAGES / 64);
			__atomic_store_n((uint32_t *)(h->m + p * 4096 + 128), v, __ATOMIC_RELAXED);
			h->last[k] = v;
		}
		usleep(100); /* leave the 2 cores to the faulting thread and the evictor */
	}
	return NULL;
}

static int write_during_eviction(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	struct hammer h = { 0 };
	uint8_t *m, key[32];
	pthread_t th;

	CHECK(gvm_random(key, 32) == 0);
	if (open_engine(&pool, &e, &m, gvm_region_id("test-evict", rname("race", drop)),
			key, drop))
		return 1;
	h.m = m;
	CHECK(pthread_create(&th, NULL, hammer_main, &h) == 0);
	/* Sweep the whole region several times: forces the hammered pages
	 * through eviction again and again while they are being written. */
	for (int round = 0; round < 3; round++)
		for (uint64_t p = 0; p < PAGES; p++)
			m[p * 4096 + 1000] = (uint8_t)(p + (uint64_t)round);
	h.stop = 1;
	pthread_join(th, NULL);
	gvm_engine_stats(e, &st);
	printf("  evictions %" PRIu64 ", write-backs %" PRIu64 ", hammer rounds %u\n", st.evictions,
	       st.writebacks, h.last[0]);
	CHECK(st.evictions > PAGES);
	for (unsigned k = 0; k < 64; k++) {
		uint64_t p = (uint64_t)k * (PAGES / 64);
		uint32_t got;
		memcpy(&got, m + p * 4096 + 128, 4);
		if (got != h.last[k]) {
			fprintf(stderr, "  page %" PRIu64 ": counter %u, last written %u: a write was lost\n", p,
				got, h.last[k]);
			return 1;
		}
	}
	for (uint64_t p = 0; p < PAGES; p++)
		CHECK_EQ(m[p * 4096 + 1000], (uint8_t)(p + 2));
	close_engine(pool, e, m);
	return 0;
}

/*
 * A sequential write over pages that were fetched clean (write-protected):
 * after two write-protect faults in a row the engine unprotects the rest of
 * the window with the fault, so the run takes far fewer faults than pages,
 * and nothing written is lost while the evictor works on the same pages.
 */
static int write_run_after_read(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st0, st1;
	uint8_t *m;
	uint64_t seed;
	uint32_t *ver = calloc(PAGES, sizeof(*ver));
	const uint64_t first = 4096, n = 1024; /* 4 MiB: well inside the 16 MiB budget */

	CHECK(ver);
	if (open_written(&pool, &e, &m, rname("wrun", drop), drop, &seed, ver))
		return 1;
	for (uint64_t p = first; p < first + n; p++) /* fetched back by reads: clean */
		CHECK(check_page(m, seed, p, ver[p]) == 0);
	gvm_engine_stats(e, &st0);
	for (uint64_t p = first; p < first + n; p++)
		fill(m + p * 4096, seed, p, ++ver[p]);
	gvm_engine_stats(e, &st1);
	printf("  %" PRIu64 " pages written in order after a read: %" PRIu64 " write-protect faults\n", n,
	       st1.wp_faults - st0.wp_faults);
	CHECK(st1.wp_faults - st0.wp_faults < n / 4);
	if (verify_all(m, seed, ver))
		return 1;
	close_engine(pool, e, m);
	free(ver);
	return 0;
}

/*
 * The eviction policy (evict.c collect()): clean pages that are not hot go
 * before dirty ones and hot ones.
 * 1. Write every page, then read every page in order: plain CLOCK writes
 *    back every page still dirty when the read pass starts (about the
 *    budget); dropping the clean pages just read first keeps them.
 * 2. A hot set of 64 pages read between chunks of a long scan: its hits
 *    are invisible to the engine, but its refaults come soon after each
 *    drop, so it gets protected; plain CLOCK drops it once per lap (8
 *    laps here; counted with mincore before each read of the set).
 */
static int policy(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st0, st1;
	uint8_t *m;
	uint64_t seed, hot_gone = 0, rounds = 0;
	const uint64_t nhot = 64, chunk = 256, budget = BUDGET >> 12;

	if (open_written(&pool, &e, &m, rname("policy", drop), drop, &seed, NULL))
		return 1;
	gvm_engine_stats(e, &st0);
	for (uint64_t p = 0; p < PAGES; p++)
		CHECK(check_page(m, seed, p, 1) == 0);
	gvm_engine_stats(e, &st1);
	printf("  read pass after writing %u pages: %" PRIu64 " write-backs (budget %" PRIu64 " pages)\n",
	       PAGES, st1.writebacks - st0.writebacks, budget);
	CHECK(st1.writebacks - st0.writebacks < budget / 2);

	for (int pass = 0; pass < 2; pass++) {
		for (uint64_t c = nhot; c + chunk <= PAGES; c += chunk, rounds++) {
			for (uint64_t p = c; p < c + chunk; p++)
				CHECK(check_page(m, seed, p, 1) == 0);
			unsigned char vec[64];
			CHECK(mincore(m, nhot * 4096, vec) == 0);
			for (uint64_t p = 0; p < nhot; p++)
				hot_gone += !(vec[p] & 1);
			for (uint64_t p = 0; p < nhot; p++)
				CHECK(check_page(m, seed, p, 1) == 0);
		}
	}
	printf("  hot set of %" PRIu64 " pages read %" PRIu64 " times during a scan of %" PRIu64
	       "x the budget: found dropped %" PRIu64 " times\n", nhot, rounds, 2 * PAGES / budget, hot_gone);
	CHECK(hot_gone < 3 * nhot);
	close_engine(pool, e, m);
	return 0;
}

/*
 * The adaptive window: random reads of a region 4x the budget shrink the
 * window of a fault off any run to one page (prefetched pages are not
 * used: probes miss), with at most 2x the faulted pages received; so do
 * random records of two pages (a run's ramp); a sequential pass grows it
 * back to the full window.
 */
static int window_adapts(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats a, b, c, r;
	uint8_t *m;
	uint64_t seed, x, sum = 0;

	if (open_written(&pool, &e, &m, rname("win", drop), drop, &seed, NULL))
		return 1;
	CHECK(gvm_random(&x, 8) == 0);
	x |= 1;
	gvm_engine_stats(e, &a);
	CHECK_EQ(a.window_pages, 32);
	for (unsigned i = 0; i < 6000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		sum += *(volatile uint64_t *)(m + (x % PAGES) * 4096 + 8);
	}
	gvm_engine_stats(e, &b);
	uint64_t faults = b.faults - a.faults - (b.wp_faults - a.wp_faults);
	uint64_t pages_in = (b.bytes_in - a.bytes_in) / 4096;
	printf("  random reads: window %u, probes %" PRIu64 " hit / %" PRIu64 " missed, %" PRIu64
	       " faults, %" PRIu64 " pages received (sum %" PRIx64 ")\n", b.window_pages,
	       b.prefetch_hits - a.prefetch_hits, b.prefetch_misses - a.prefetch_misses, faults, pages_in, sum);
	/* One page; two right after a chance probe hit (a random neighbour
	 * touched by luck doubles it until the next miss). */
	CHECK(b.window_pages <= 2);
	CHECK(b.prefetch_misses - a.prefetch_misses > 4 * (b.prefetch_hits - a.prefetch_hits));
	CHECK(faults > 1000 && pages_in <= 2 * faults);
	/* Records of two pages at random (a Redis value, a database row): the
	 * second page continues the first, but that is no stream. Fetching
	 * the rest of its window (as before the ramp) received ~16 pages per
	 * fault here; the ramp's first step fetches two. */
	for (unsigned i = 0; i < 3000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t p = x % (PAGES - 1);
		sum += *(volatile uint64_t *)(m + p * 4096 + 8);
		sum += *(volatile uint64_t *)(m + (p + 1) * 4096 + 8);
	}
	gvm_engine_stats(e, &r);
	faults = r.faults - b.faults - (r.wp_faults - b.wp_faults);
	pages_in = (r.bytes_in - b.bytes_in) / 4096;
	printf("  random two-page records: window %u, %" PRIu64 " faults, %" PRIu64 " pages received\n",
	       r.window_pages, faults, pages_in);
	CHECK(faults > 1000 && pages_in <= 2 * faults);
	/* A record starting on an even page fills a two-page window exactly:
	 * its probe hits and the window doubles to 4, whose probe cannot hit
	 * (it halves again at the next record). So the window seen at one
	 * moment is 1, 2 or, about one time in twenty, 4: the bound is on
	 * that, and what matters is the pages received per fault above. */
	CHECK(r.window_pages <= 4);
	b = r;
	/* A sequential pass over a quarter of the region: whole windows again. */
	for (uint64_t p = 0; p < PAGES / 4; p++)
		sum += *(volatile uint64_t *)(m + p * 4096 + 8);
	gvm_engine_stats(e, &c);
	printf("  sequential pass: window %u, readahead pages %" PRIu64 "\n", c.window_pages,
	       c.readahead_pages - b.readahead_pages);
	CHECK_EQ(c.window_pages, 32);
	CHECK(c.readahead_pages > b.readahead_pages);
	close_engine(pool, e, m);
	return 0;
}

/* Read-modify-write from several threads over a region 4x the budget:
 * read faults learn that writes follow and install pages writable and dirty
 * at once (rmw_installs), and no increment is lost while pages are evicted,
 * written back and fetched again. */
struct rmw_ctx {
	uint8_t *m;
	uint32_t *count;   /* increments per page, this thread's pages only */
	uint64_t seed;
	int id;
	unsigned ops;
};

static void *rmw_main(void *a)
{
	struct rmw_ctx *c = a;
	uint64_t x = gvm_mix64(c->seed + (uint64_t)c->id) | 1;

	for (unsigned i = 0; i < c->ops; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t p = (x % (PAGES / THREADS)) * THREADS + (uint64_t)c->id;
		volatile uint64_t *w = (volatile uint64_t *)(c->m + p * 4096) + 100;
		*w = *w + 1;
		c->count[p]++;
	}
	return NULL;
}

/* The _flushing case: gvm_engine_flush() in a loop beside the writers and
 * the evictor (a flush's copy of a page can reach the nodes after the
 * evictor's newer one; evict.c keeps such pages dirty). */
static int flushing;

struct flusher {
	struct gvm_engine *e;
	int stop;      /* atomic */
	unsigned runs; /* flushes done */
	int err;       /* the first failed flush's return */
};

static void *flusher_main(void *a)
{
	struct flusher *f = a;

	while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE) && !f->err) {
		f->err = gvm_engine_flush(f->e);
		f->runs++;
	}
	return NULL;
}

static int rmw_under_eviction(int drop)
{
	struct flusher fl = { 0 };
	pthread_t fth;
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t *m, want[4096];
	uint64_t seed;
	uint32_t *count = calloc(PAGES, sizeof(*count));
	pthread_t th[THREADS];
	struct rmw_ctx c[THREADS];

	CHECK(count);
	if (open_written(&pool, &e, &m, rname("rmw", drop), drop, &seed, NULL))
		return 1;
	fl.e = e;
	if (flushing)
		CHECK(pthread_create(&fth, NULL, flusher_main, &fl) == 0);
	for (int i = 0; i < THREADS; i++) {
		c[i] = (struct rmw_ctx){ .m = m, .count = count, .seed = seed, .id = i, .ops = 6000 };
		CHECK(pthread_create(&th[i], NULL, rmw_main, &c[i]) == 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	if (flushing) {
		__atomic_store_n(&fl.stop, 1, __ATOMIC_RELEASE);
		pthread_join(fth, NULL);
		printf("  %u flushes beside the writers\n", fl.runs);
		CHECK_EQ(fl.err, 0);
		CHECK(fl.runs > 0);
	}
	gvm_engine_stats(e, &st);
	printf("  rmw: %" PRIu64 " faults (%" PRIu64 " write-protect), %" PRIu64 " read faults installed "
	       "dirty, %" PRIu64 " evictions, %" PRIu64 " write-backs\n", st.faults, st.wp_faults,
	       st.rmw_installs, st.evictions, st.writebacks);
	CHECK(st.rmw_installs > 1000 && st.evictions > 0 && st.writebacks > 0);
	for (uint64_t p = 0; p < PAGES; p++) {
		fill(want, seed, p, 1);
		uint64_t v;
		memcpy(&v, want + 800, 8);
		v += count[p];
		memcpy(want + 800, &v, 8);
		if (memcmp(m + p * 4096, want, 4096)) {
			fprintf(stderr, "  page %" PRIu64 " lost an increment (or more)\n", p);
			return 1;
		}
	}
	close_engine(pool, e, m);
	free(count);
	return 0;
}

static int test_random_writes_sealed(void)
{
	sealed = 1;
	int r = random_writes(GVM_DROP_BATCH);
	sealed = 0;
	return r;
}

static int test_rmw_sealed(void)
{
	sealed = 1;
	int r = rmw_under_eviction(GVM_DROP_BATCH);
	sealed = 0;
	return r;
}

/* The opener holds each job back 20 ms: the page a thread faulted on is
 * installed at once, written, written back and dropped while the rest of
 * its window waits; the window must not put it back. */
static int sealed_slow_opener(int rmw)
{
	sealed = 1;
	if (setenv("GIANTVM_OPENER_DELAY_US", "20000", 1))
		return 1;
	int r = rmw ? rmw_under_eviction(GVM_DROP_BATCH) : random_writes(GVM_DROP_BATCH);
	unsetenv("GIANTVM_OPENER_DELAY_US");
	sealed = 0;
	return r;
}

/* What QEMU does to give a page back (a balloon, free page reporting):
 * madvise, then (the preload library's interposer) tell the engine. */
static int discard_page(struct gvm_engine *e, uint8_t *m, uint64_t p)
{
	CHECK(madvise(m + p * 4096, 4096, MADV_DONTNEED) == 0);
	CHECK(gvm_engine_discard(e, m + p * 4096, 4096) == 0);
	return 0;
}

/* Wait until the evictor has stopped (nothing evicted for 60 ms). */
static void settle(struct gvm_engine *e)
{
	struct gvm_stats st;
	uint64_t last = UINT64_MAX;

	for (int still = 0, i = 0; still < 3 && i < 500; i++) {
		usleep(20000);
		gvm_engine_stats(e, &st);
		still = st.evictions == last ? still + 1 : 0;
		last = st.evictions;
	}
}

/*
 * Discarded pages read as zero, whether they were resident (clean: the pool
 * still has their old data; or dirty) or in the pool, and stay zero after
 * they are evicted; reading one fetches nothing; one written after its
 * discard keeps what was written.
 */
static int discard(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats a, b, c;
	uint8_t *m;
	uint64_t seed;
	uint32_t *ver = calloc(PAGES, sizeof(*ver));
	const uint64_t n = 64, clean0 = 1024, pooled0 = 2048, dirty0 = PAGES - 4 * 64;

	CHECK(ver);
	if (open_written(&pool, &e, &m, rname("discard", drop), drop, &seed, ver))
		return 1;
	/* Read faults apart, so that reads no longer follow a writing run
	 * (whose windows go in dirty): what is fetched next stays clean. */
	for (uint64_t k = 0; k < 40; k++)
		CHECK(check_page(m, seed, 5000 + 61 * k, 1) == 0);
	for (uint64_t k = 0; k < n; k++) {
		CHECK(check_page(m, seed, clean0 + 3 * k, 1) == 0); /* fetched back: clean */
		CHECK(check_page(m, seed, clean0 + 3 * k + 1, 1) == 0);
	}
	for (uint64_t k = 0; k < n; k++)
		fill(m + (dirty0 + 3 * k) * 4096, seed, dirty0 + 3 * k, ++ver[dirty0 + 3 * k]); /* dirty */
	unsigned char inc;
	CHECK(mincore(m + pooled0 * 4096, 4096, &inc) == 0 && !(inc & 1));
	/* No page in the evictor's hands, so each discarded page is refilled
	 * by a fault of its own (counted below). discard_under_eviction has
	 * the races. */
	settle(e);
	gvm_engine_stats(e, &a);
	for (uint64_t k = 0; k < n; k++) {
		uint64_t pages[3] = { clean0 + 3 * k, pooled0 + 3 * k, dirty0 + 3 * k };
		for (int i = 0; i < 3; i++) {
			if (discard_page(e, m, pages[i]))
				return 1;
			ver[pages[i]] = 0;
		}
	}
	gvm_engine_stats(e, &b);
	CHECK_EQ(b.discarded_pages - a.discarded_pages, 3 * n);
	/* Dropped behind the engine's back (madvise alone): a fault on a page
	 * it holds resident finds it gone, and it reads as zero from then on,
	 * also after it is evicted clean. */
	for (uint64_t k = 0; k < n; k++) {
		CHECK(madvise(m + (clean0 + 3 * k + 1) * 4096, 4096, MADV_DONTNEED) == 0);
		ver[clean0 + 3 * k + 1] = 0;
	}
	for (uint64_t k = 0; k < n; k++) {
		CHECK(check_page(m, seed, pooled0 + 3 * k, 0) == 0);
		CHECK(check_page(m, seed, clean0 + 3 * k, 0) == 0);
		CHECK(check_page(m, seed, dirty0 + 3 * k, 0) == 0);
	}
	gvm_engine_stats(e, &c);
	printf("  %" PRIu64 " pages discarded and read back as zero, %" PRIu64 " of them zero-filled here\n",
	       3 * n, c.local_zero_pages - b.local_zero_pages);
	/* Each installed zero once, here (by its fault, or by a data reply that
	 * was on its way), none fetched from the pool's copy. */
	CHECK_EQ(c.local_zero_pages - b.local_zero_pages, 3 * n);
	for (uint64_t k = 0; k < n; k++)
		CHECK(check_page(m, seed, clean0 + 3 * k + 1, 0) == 0);
	/* Half of the clean ones written again; then everything is pushed out
	 * (reads of the whole region, 4x the budget) and checked. */
	for (uint64_t k = 0; k < n; k += 2)
		fill(m + (clean0 + 3 * k) * 4096, seed, clean0 + 3 * k, ver[clean0 + 3 * k] = 7);
	if (verify_all(m, seed, ver) || verify_all(m, seed, ver))
		return 1;
	close_engine(pool, e, m);
	free(ver);
	return 0;
}

struct dctx {
	struct ctx c;
	struct gvm_engine *e;
	uint32_t *gen;   /* versions written so far: a page never gets the same one twice */
	unsigned discards;
};

/* Like random_writer, but one step in 8 discards the page instead. */
static void *discarding_writer(void *a)
{
	struct dctx *d = a;
	struct ctx *c = &d->c;
	uint64_t x = gvm_mix64(c->seed + (uint64_t)c->id + 100);

	for (unsigned i = 0; i < c->writes; i++) {
		x = gvm_mix64(x);
		uint64_t p = (x % (PAGES / THREADS)) * THREADS + (uint64_t)c->id;
		if ((x >> 40) % 8 == 0) {
			if (discard_page(d->e, c->m, p))
				return (void *)1;
			c->ver[p] = 0;
			d->discards++;
		} else {
			c->ver[p] = ++d->gen[p];
			fill(c->m + p * 4096, c->seed, p, c->ver[p]);
		}
	}
	return NULL;
}

/* Writes and discards from 4 threads over 4x the budget while the evictor
 * runs: every page reads back as last written, or zero if last discarded. */
static int discard_under_eviction(int drop)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t *m;
	uint64_t seed;
	uint32_t *ver = calloc(PAGES, sizeof(*ver)), *gen = calloc(PAGES, sizeof(*gen));
	pthread_t th[THREADS];
	struct dctx d[THREADS];
	unsigned discards = 0;
	void *rv;

	CHECK(ver && gen);
	if (open_written(&pool, &e, &m, rname("dstress", drop), drop, &seed, ver))
		return 1;
	for (uint64_t p = 0; p < PAGES; p++)
		gen[p] = 1;
	for (int i = 0; i < THREADS; i++) {
		d[i] = (struct dctx){ .c = { .m = m, .ver = ver, .seed = seed, .id = i, .writes = 6000 },
				      .e = e, .gen = gen };
		CHECK(pthread_create(&th[i], NULL, discarding_writer, &d[i]) == 0);
	}
	for (int i = 0; i < THREADS; i++) {
		CHECK(pthread_join(th[i], &rv) == 0 && rv == NULL);
		discards += d[i].discards;
	}
	gvm_engine_stats(e, &st);
	printf("  %u discards among %u writes, evictions %" PRIu64 ", write-backs %" PRIu64 "\n", discards,
	       THREADS * 6000 - discards, st.evictions, st.writebacks);
	CHECK(st.evictions > 0 && discards > 1000);
	if (verify_all(m, seed, ver))
		return 1;
	close_engine(pool, e, m);
	free(ver);
	free(gen);
	return 0;
}



static int test_random_writes_batch(void) { return random_writes(GVM_DROP_BATCH); }
static int test_random_writes_move(void) { return random_writes(GVM_DROP_MOVE); }
static int test_random_writes_dontneed(void) { return random_writes(GVM_DROP_DONTNEED); }
static int test_locked_batch(void) { return random_writes_in(GVM_DROP_BATCH, 1); }
static int test_locked_move(void) { return random_writes_in(GVM_DROP_MOVE, 1); }
static int test_locked_dontneed(void) { return random_writes_in(GVM_DROP_DONTNEED, 1); }
static int test_write_during_eviction_batch(void) { return write_during_eviction(GVM_DROP_BATCH); }
static int test_write_during_eviction_move(void) { return write_during_eviction(GVM_DROP_MOVE); }
static int test_write_during_eviction_dontneed(void) { return write_during_eviction(GVM_DROP_DONTNEED); }
static int test_policy_batch(void) { return policy(GVM_DROP_BATCH); }
static int test_policy_move(void) { return policy(GVM_DROP_MOVE); }
static int test_policy_dontneed(void) { return policy(GVM_DROP_DONTNEED); }
static int test_write_run_after_read_batch(void) { return write_run_after_read(GVM_DROP_BATCH); }
static int test_write_run_after_read_move(void) { return write_run_after_read(GVM_DROP_MOVE); }
static int test_write_run_after_read_dontneed(void) { return write_run_after_read(GVM_DROP_DONTNEED); }
static int test_window_adapts_batch(void) { return window_adapts(GVM_DROP_BATCH); }
static int test_window_adapts_move(void) { return window_adapts(GVM_DROP_MOVE); }
static int test_window_adapts_dontneed(void) { return window_adapts(GVM_DROP_DONTNEED); }
static int test_rmw_under_eviction_batch(void) { return rmw_under_eviction(GVM_DROP_BATCH); }
static int test_rmw_under_eviction_move(void) { return rmw_under_eviction(GVM_DROP_MOVE); }
static int test_rmw_under_eviction_dontneed(void) { return rmw_under_eviction(GVM_DROP_DONTNEED); }
static int test_discard_batch(void) { return discard(GVM_DROP_BATCH); }
static int test_discard_move(void) { return discard(GVM_DROP_MOVE); }
static int test_discard_dontneed(void) { return discard(GVM_DROP_DONTNEED); }
static int test_discard_under_eviction_batch(void) { return discard_under_eviction(GVM_DROP_BATCH); }
static int test_discard_under_eviction_move(void) { return discard_under_eviction(GVM_DROP_MOVE); }
static int test_discard_under_eviction_dontneed(void) { return discard_under_eviction(GVM_DROP_DONTNEED); }
static int test_rmw_flushing(void)
{
	flushing = 1;
	int r = rmw_under_eviction(GVM_DROP_BATCH);
	flushing = 0;
	return r;
}
static int test_rmw_sealed_slow_opener(void) { return sealed_slow_opener(1); }
static int test_random_writes_sealed_slow_opener(void) { return sealed_slow_opener(0); }

/* Every case needs write-protect (a local memory budget); the _move cases
 * also UFFDIO_MOVE and the _batch cases process_madvise on the calling
 * process: without them the engine silently falls back to the next way,
 * and the case would test that path twice. The sealed cases take whatever
 * way the kernel has. */
#define WP    (GVM_NEEDS_UFFD | UFFD_FEATURE_PAGEFAULT_FLAG_WP)
#define MOVE  (WP | UFFD_FEATURE_MOVE)
#define BATCH (WP | GVM_NEEDS_SELF_MADVISE)
static const struct gvm_test tests[] = {
	{ "random_writes_4x_budget_batch", test_random_writes_batch, BATCH },
	{ "random_writes_4x_budget_move", test_random_writes_move, MOVE },
	{ "random_writes_4x_budget_dontneed", test_random_writes_dontneed, WP },
	{ "locked_region_batch", test_locked_batch, BATCH },
	{ "locked_region_move", test_locked_move, MOVE },
	{ "locked_region_dontneed", test_locked_dontneed, WP },
	{ "locked_region_refused_dontneed", locked_refused, WP },
	{ "write_during_eviction_batch", test_write_during_eviction_batch, BATCH },
	{ "write_during_eviction_move", test_write_during_eviction_move, MOVE },
	{ "write_during_eviction_dontneed", test_write_during_eviction_dontneed, WP },
	{ "policy_batch", test_policy_batch, BATCH },
	{ "policy_move", test_policy_move, MOVE },
	{ "policy_dontneed", test_policy_dontneed, WP },
	{ "write_run_after_read_batch", test_write_run_after_read_batch, BATCH },
	{ "write_run_after_read_move", test_write_run_after_read_move, MOVE },
	{ "write_run_after_read_dontneed", test_write_run_after_read_dontneed, WP },
	{ "window_adapts_batch", test_window_adapts_batch, BATCH },
	{ "window_adapts_move", test_window_adapts_move, MOVE },
	{ "window_adapts_dontneed", test_window_adapts_dontneed, WP },
	{ "rmw_under_eviction_batch", test_rmw_under_eviction_batch, BATCH },
	{ "rmw_under_eviction_move", test_rmw_under_eviction_move, MOVE },
	{ "rmw_under_eviction_dontneed", test_rmw_under_eviction_dontneed, WP },
	{ "discard_batch", test_discard_batch, BATCH },
	{ "discard_move", test_discard_move, MOVE },
	{ "discard_dontneed", test_discard_dontneed, WP },
	{ "discard_under_eviction_batch", test_discard_under_eviction_batch, BATCH },
	{ "discard_under_eviction_move", test_discard_under_eviction_move, MOVE },
	{ "discard_under_eviction_dontneed", test_discard_under_eviction_dontneed, WP },
	{ "random_writes_4x_budget_sealed", test_random_writes_sealed, WP },
	{ "rmw_under_eviction_sealed", test_rmw_sealed, WP },
	{ "rmw_under_eviction_flushing", test_rmw_flushing, WP },
	{ "rmw_under_eviction_sealed_slow_opener", test_rmw_sealed_slow_opener, WP },
	{ "random_writes_4x_budget_sealed_slow_opener", test_random_writes_sealed_slow_opener, WP },
};


int main(int argc, char **argv)
{
	int r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	test_servers_down();
	return r;
}
