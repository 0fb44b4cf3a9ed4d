/*
 * giantvm bench: measures the pool and the fault path in one run.
 *
 *  1. fills a fresh region with incompressible non-zero pages (every replica);
 *  2. tcp_rtt_us: round trip of a one-page (4 KiB) READ on a blocking
 *     connection to each node (the network + server floor);
 *  3. local ceiling: the same fault path served from a local buffer by a
 *     plain userfaultfd handler with the same window (local_fault_us is its
 *     random-fault p50, local_ceiling_GBps its sequential first touch);
 *  4. remote random single-page faults through the engine (p50, p99);
 *  5. remote sequential first touch through the engine (seq_GBps).
 *  6. with --local-mem B: a fresh region of SIZE under a budget of B bytes,
 *     written page by page with the pattern (the evictor writes back what
 *     does not fit), then read back and verified (fetches + clean drops):
 *     evict_write_GBps, evict_read_GBps and the engine's counters; then
 *     random read-modify-writes of one 8-byte word per op (2 x pages ops),
 *     uniform and hot/cold (90% of ops on 10% of the pages), each reported
 *     as ops/s with the faults, pages fetched and bytes received per op,
 *     the prefetch window it ended with and the prefetch hit rate; every
 *     page is verified afterwards.
 * Every page read is verified against the pattern.
 *
 * Scale figures, for pools of many nodes (e.g. 10,000):
 *  - startup_ms: wall time to open the pool (read + parse the pool file and
 *    build the placement table; for the embedded pool it also includes
 *    starting the embedded server);
 *  - peak_fds: the most entries seen in /proc/self/fd, sampled after the
 *    fill, after the random pass and after the sequential pass (each engine
 *    sample is taken before that engine closes its connections);
 *  - client_bytes_per_node: the pool's fixed client memory per node (see
 *    pool_bytes_per_node());
 *  - region_nodes: distinct nodes holding a stripe of the bench region;
 *    seq_nodes_connected: the engine's open node connections at the end of
 *    the sequential pass.
 * The fill keeps one blocking connection per node only while it writes and
 * closes them all afterwards, so the client never holds the fill's and the
 * engine's connections at the same time (10,000 nodes would otherwise need
 * two fds per node, in this process and in the memory server).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "giantvm.h"

#define PAGE GVM_PAGE_SIZE
#define MIN(a, b) ((a) < (b) ? (a) : (b))

struct bench_opts {
	struct cli_pool_args pa;
	uint64_t size;
	uint64_t local_mem;  /* > 0: also the eviction phase */
	unsigned prefetch;
	unsigned samples;
	int json;
	int seal;            /* SEAL_*: --seal on|off|both; 0 = the pool's default */
};

enum { SEAL_DEFAULT = 0, SEAL_ON, SEAL_OFF, SEAL_BOTH };
/* Whether the fill, the node clients and the engines seal pages now (the
 * CLI is single-threaded). A sealed engine reads the filled region at
 * version 1 (GVM_ATTACH_SEALED_V1). */
static int bench_seal;

static void pattern_page(uint64_t seed, uint64_t page, void *out)
{
	uint64_t *w = out;
	uint64_t x = gvm_mix64(seed ^ (page * 0x9e3779b97f4a7c15ull));

	for (unsigned i = 0; i < PAGE / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x | 1; /* never an all-zero page */
	}
}

static int verify_range(const uint8_t *base, uint64_t seed, uint64_t first, uint64_t n)
{
	uint8_t want[PAGE];

	for (uint64_t p = first; p < first + n; p++) {
		pattern_page(seed, p, want);
		if (memcmp(base + p * PAGE, want, PAGE)) {
			fprintf(stderr, "giantvm bench: page %" PRIu64 " differs from what was written\n", p);
			return -1;
		}
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct_us(uint64_t *v, size_t n, double p)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	return (double)v[(size_t)((double)(n - 1) * p)] / 1000.0;
}

/* ----------------------------------------------------------- fill + rtt */

/* nc->state[node] bits */
#define NC_CONNECTED 1u  /* nc->c[node] is open and the region OPENed on it */
#define NC_WRITTEN   2u  /* the fill sent (part of) a stripe there: FREE it at the end */
#define NC_RTT       4u  /* sampled by measure_rtt */

struct node_clients {
	struct gvm_node_client **c;
	uint8_t *state;
};

/* Open fds of this process: the entries of /proc/self/fd, less the one
 * opendir uses. -1 if /proc is not there. */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

static void sample_fds(int *peak)
{
	int n = count_fds();

	if (n > *peak)
		*peak = n;
}

/* The pool's fixed client memory per node, in bytes (node records, strings,
 * placement table, connection slots; gvm_pool_client_bytes). Not included:
 * per-connection state, which exists only for nodes the engine has used. */
static double pool_bytes_per_node(const struct gvm_pool *pool)
{
	unsigned n = gvm_pool_node_count(pool);

	return n ? (double)gvm_pool_client_bytes(pool) / (double)n : 0;
}

/* Distinct nodes holding a stripe (any replica) of the first npages of region. */
static uint32_t region_nodes(const struct gvm_pool *pool, uint64_t region, uint64_t npages)
{
	uint8_t *seen = calloc(gvm_pool_node_count(pool), 1);
	uint32_t count = 0;

	if (!seen)
		return 0;
	for (uint64_t s = 0; s * GVM_STRIPE_PAGES < npages; s++) {
		unsigned nodes[GVM_MAX_REPLICAS];
		unsigned nr = gvm_pool_stripe_nodes(pool, region, s, nodes);
		for (unsigned k = 0; k < nr; k++)
			if (!seen[nodes[k]]) {
				seen[nodes[k]] = 1;
				count++;
			}
	}
	free(seen);
	return count;
}

static int client_for(struct gvm_pool *pool, struct node_clients *nc, uint32_t node,
		      uint64_t region, const uint8_t *key)
{
	int r;

	if (nc->state[node] & NC_CONNECTED)
		return 0;
	r = gvm_node_client_open(&nc->c[node], pool, node, 5000);
	if (!r) {
		r = gvm_node_client_bind(nc->c[node], region, key);
		if (!r && bench_seal)
			r = gvm_node_client_seal(nc->c[node], region, key, 1);
		if (r) {
			gvm_node_client_close(nc->c[node]);
			nc->c[node] = NULL;
		}
	}
	if (r) {
		fprintf(stderr, "giantvm bench: node %s: %s\n", gvm_pool_node_name(pool, node), strerror(-r));
		return r;
	}
	nc->state[node] |= NC_CONNECTED;
	return 0;
}

static void client_drop(struct node_clients *nc, uint32_t node)
{
	if (nc->state[node] & NC_CONNECTED) {
		gvm_node_client_close(nc->c[node]);
		nc->c[node] = NULL;
		nc->state[node] &= (uint8_t)~NC_CONNECTED;
	}
}

/* Close every fill connection (the region stays on the nodes). */
static void clients_close_all(struct gvm_pool *pool, struct node_clients *nc)
{
	for (uint32_t i = 0; i < gvm_pool_node_count(pool); i++)
		client_drop(nc, i);
}

/* FREE the region on every node the fill wrote to, one connection at a time. */
static void clients_free_region(struct gvm_pool *pool, struct node_clients *nc, uint64_t region,
				const uint8_t *key)
{
	for (uint32_t i = 0; i < gvm_pool_node_count(pool); i++) {
		if ((nc->state[i] & NC_WRITTEN) && !client_for(pool, nc, i, region, key))
			gvm_node_client_free(nc->c[i], region);
		client_drop(nc, i);
	}
}

static int fill(struct gvm_pool *pool, struct node_clients *nc, uint64_t region, const uint8_t *key,
		uint64_t seed, uint64_t npages)
{
	uint8_t *buf = malloc((size_t)GVM_STRIPE_PAGES * PAGE);
	int r = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t s = 0; s * GVM_STRIPE_PAGES < npages && !r; s++) {
		uint64_t p0 = s * GVM_STRIPE_PAGES;
		unsigned n = (unsigned)MIN((uint64_t)GVM_STRIPE_PAGES, npages - p0);
		unsigned nodes[GVM_MAX_REPLICAS];
		unsigned nr = gvm_pool_stripe_nodes(pool, region, s, nodes);

		for (unsigned i = 0; i < n; i++)
			pattern_page(seed, p0 + i, buf + (size_t)i * PAGE);
		for (unsigned k = 0; k < nr && !r; k++) {
			r = client_for(pool, nc, nodes[k], region, key);
			if (!r) {
				nc->state[nodes[k]] |= NC_WRITTEN;
				r = gvm_node_client_write(nc->c[nodes[k]], region, p0, n, buf);
			}
			if (r)
				fprintf(stderr, "giantvm bench: fill: node %s: %s\n",
					gvm_pool_node_name(pool, nodes[k]), strerror(-r));
		}
	}
	free(buf);
	return r;
}

static double measure_rtt(struct gvm_pool *pool, struct node_clients *nc, uint64_t region,
			  const uint8_t *key, uint64_t npages)
{
	enum { PER_NODE = 200 };
	uint32_t n = gvm_pool_node_count(pool);
	uint32_t nodes_used = MIN(n, 16u); /* sample at most 16 nodes */
	uint64_t *v = calloc((size_t)nodes_used * PER_NODE, sizeof(*v));
	uint8_t buf[PAGE];
	size_t k = 0;
	double r;

	if (!v)
		return -1;
	for (uint32_t s = 0, seen = 0; s * GVM_STRIPE_PAGES < npages && seen < nodes_used; s++) {
		unsigned nodes[GVM_MAX_REPLICAS];
		uint32_t node = gvm_pool_stripe_nodes(pool, region, s, nodes) ? nodes[0] : 0;
		if ((nc->state[node] & NC_RTT) || client_for(pool, nc, node, region, key))
			continue;
		nc->state[node] |= NC_RTT;
		seen++;
		for (int i = 0; i < PER_NODE; i++) {
			uint64_t t0 = gvm_time_ns();
			if (gvm_node_client_read(nc->c[node], region, s * GVM_STRIPE_PAGES, 1, buf))
				break;
			v[k++] = gvm_time_ns() - t0;
		}
	}
	r = pct_us(v, k, 0.5);
	free(v);
	return r;
}

/* ------------------------------------------------------ local ceiling */

static void touch_random(uint8_t *base, uint64_t npages, unsigned window, unsigned samples,
			 uint64_t seed, uint64_t *lat, uint64_t *pages)
{
	uint64_t nwin = (npages + window - 1) / window;
	uint64_t x = seed | 1;

	/* Distinct windows, so every sample is a real fault. */
	uint64_t step = nwin / samples ? nwin / samples : 1;
	for (unsigned i = 0; i < samples; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		uint64_t w = (i * step + x % step) % nwin;
		uint64_t p = w * window + (x >> 20) % MIN((uint64_t)window, npages - w * window);
		volatile uint8_t *a = base + p * PAGE;
		uint64_t t0 = gvm_time_ns();
		(void)*a;
		lat[i] = gvm_time_ns() - t0;
		pages[i] = p;
	}
}

static double touch_seq(uint8_t *base, uint64_t npages)
{
	uint64_t t0 = gvm_time_ns();
	for (uint64_t p = 0; p < npages; p++)
		(void)*(volatile uint8_t *)(base + p * PAGE);
	return (double)(gvm_time_ns() - t0) / 1e9;
}

/* The same touches served by the local ceiling (gvm_local_server_*) from src. */
static int local_run(uint64_t npages, unsigned window, const uint8_t *src, int random_mode,
		     unsigned samples, uint64_t *lat, uint64_t *pages, double *secs)
{
	size_t len = npages * PAGE;
	struct gvm_local_server *ls;
	int64_t faults;
	int r;
	uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (base == MAP_FAILED) {
		perror("giantvm bench: mmap");
		return -1;
	}
	r = gvm_local_server_start(&ls, base, len, src, window);
	if (r) {
		fprintf(stderr, "giantvm bench: local ceiling: %s\n", strerror(-r));
		goto out_unmap;
	}
	if (random_mode)
		touch_random(base, npages, window, samples, 42, lat, pages);
	else
		*secs = touch_seq(base, npages);
	faults = gvm_local_server_stop(ls);
	if (faults < 0) {
		fprintf(stderr, "giantvm bench: local ceiling: %s\n", strerror((int)-faults));
		r = -1;
	} else {
		r = random_mode || !memcmp(base, src, len) ? 0 : -1;
	}
out_unmap:
	munmap(base, len);
	return r;
}

/* ------------------------------------------------------------ remote */

/* Map `len` bytes and attach them as `region` to a new engine. On failure
 * nothing is left behind and *e / *base are NULL. */
static int engine_region(struct gvm_pool *pool, const struct gvm_engine_opts *eo, uint64_t region,
			 const uint8_t *key, size_t len, unsigned flags, struct gvm_engine **e, uint8_t **base)
{
	int r;

	*e = NULL;
	*base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*base == MAP_FAILED) {
		perror("giantvm bench: mmap");
		*base = NULL;
		return -1;
	}
	r = gvm_engine_open(e, pool, eo);
	if (!r)
		r = gvm_engine_attach_flags(*e, region, key, *base, len, flags);
	if (r) {
		gvm_engine_close(*e);
		munmap(*base, len);
		*e = NULL;
		*base = NULL;
	}
	return r;
}

static void engine_region_close(struct gvm_engine *e, uint8_t *base, size_t len)
{
	gvm_engine_close(e);
	if (base)
		munmap(base, len);
}

static int remote_run(struct gvm_pool *pool, unsigned prefetch, unsigned readahead, uint64_t region,
		      const uint8_t *key, uint64_t seed, uint64_t npages, int random_mode,
		      unsigned samples, uint64_t *lat, double *secs, struct gvm_stats *st,
		      int *peak_fds)
{
	struct gvm_engine_opts eo = { .prefetch = prefetch, .readahead = readahead,
				      .seal = bench_seal ? GVM_SEAL_ON : GVM_SEAL_OFF };
	struct gvm_engine *e;
	size_t len = npages * PAGE;
	uint64_t *pages = NULL;
	uint8_t *base;
	int r = engine_region(pool, &eo, region, key, len, bench_seal ? GVM_ATTACH_SEALED_V1 : 0, &e, &base);

	if (r)
		return r;
	if (random_mode) {
		pages = calloc(samples, sizeof(*pages));
		if (!pages) {
			r = -ENOMEM;
			goto out;
		}
		touch_random(base, npages, prefetch, samples, 7, lat, pages);
		for (unsigned i = 0; i < samples && !r; i++)
			r = verify_range(base, seed, pages[i], 1);
	} else {
		*secs = touch_seq(base, npages);
		r = verify_range(base, seed, 0, npages);
	}
	gvm_engine_stats(e, st);
	sample_fds(peak_fds); /* the engine's connections are still open */
out:
	engine_region_close(e, base, len);
	free(pages);
	return r;
}

/* ------------------------------------------------------------ eviction */

struct rmw_result {
	double secs;
	uint64_t ops;
	struct gvm_stats d;    /* the engine's counters during the pass (window: at its end) */
};

struct evict_result {
	double write_secs, read_secs;
	struct gvm_stats st;
	struct rmw_result uni, skew;
};

/* The word an RMW op on page p changes (the same each time, so one count per
 * page says what the page must hold). */
static unsigned rmw_word(uint64_t p)
{
	return (unsigned)((p * 7 + 1) % (PAGE / 8));
}

/* ops random read-modify-writes: uniform, or 90% of them on a fixed tenth
 * of the pages (spread over the region). counts[p] += 1 per op on p. */
static void rmw_pass(uint8_t *base, uint64_t npages, uint64_t ops, int skew, uint64_t seed, uint32_t *counts)
{
	uint64_t x = seed | 1, hot = npages / 10 ? npages / 10 : 1;

	for (uint64_t i = 0; i < ops; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t p = skew && (x & 1023) < 922 ? ((x >> 12) % hot) * 0x9e3779b1ull % npages
						      : (x >> 12) % npages;
		volatile uint64_t *w = (volatile uint64_t *)(base + p * PAGE) + rmw_word(p);
		*w = *w + 1;
		counts[p]++;
	}
}

/* Every page is its pattern, its RMW word advanced by counts[p]. */
static int verify_rmw(const uint8_t *base, uint64_t seed, uint64_t npages, const uint32_t *counts)
{
	uint64_t want[PAGE / 8];

	for (uint64_t p = 0; p < npages; p++) {
		pattern_page(seed, p, want);
		want[rmw_word(p)] += counts[p];
		if (memcmp(base + p * PAGE, want, PAGE)) {
			fprintf(stderr, "giantvm bench: page %" PRIu64 " differs after the random RMW passes\n", p);
			return -1;
		}
	}
	return 0;
}

static void stats_delta(const struct gvm_stats *a, const struct gvm_stats *b, struct gvm_stats *d)
{
	*d = *b;
	d->faults -= a->faults;
	d->wp_faults -= a->wp_faults;
	d->pages_fetched -= a->pages_fetched;
	d->bytes_in -= a->bytes_in;
	d->bytes_out -= a->bytes_out;
	d->writebacks -= a->writebacks;
	d->prefetch_hits -= a->prefetch_hits;
	d->prefetch_misses -= a->prefetch_misses;
	d->rmw_installs -= a->rmw_installs;
	d->room_waits -= a->room_waits;
	d->fault_p50_ns = b->fault_p50_ns; /* cumulative: the engine keeps one histogram */
}

static void rmw_run(struct gvm_engine *e, uint8_t *base, uint64_t npages, int skew, uint64_t seed,
		    uint32_t *counts, struct rmw_result *res)
{
	struct gvm_stats a, b;
	uint64_t t0;

	res->ops = 2 * npages;
	gvm_engine_stats(e, &a);
	t0 = gvm_time_ns();
	rmw_pass(base, npages, res->ops, skew, seed, counts);
	res->secs = (double)(gvm_time_ns() - t0) / 1e9;
	gvm_engine_stats(e, &b);
	stats_delta(&a, &b, &res->d);
}

static int evict_run(struct gvm_pool *pool, unsigned prefetch, uint64_t local_mem, uint64_t region,
		     const uint8_t *key, uint64_t seed, uint64_t npages, struct evict_result *res)
{
	struct gvm_engine_opts eo = { .prefetch = prefetch, .local_mem = local_mem,
				      .seal = bench_seal ? GVM_SEAL_ON : GVM_SEAL_OFF };
	struct gvm_engine *e;
	size_t len = npages * PAGE;
	uint64_t t0;
	uint8_t *base;
	int r = engine_region(pool, &eo, region, key, len, GVM_ATTACH_FRESH, &e, &base);

	if (r)
		return r;
	t0 = gvm_time_ns();
	for (uint64_t p = 0; p < npages; p++)
		pattern_page(seed, p, base + p * PAGE);
	res->write_secs = (double)(gvm_time_ns() - t0) / 1e9;
	t0 = gvm_time_ns();
	r = verify_range(base, seed, 0, npages);
	res->read_secs = (double)(gvm_time_ns() - t0) / 1e9;
	gvm_engine_stats(e, &res->st);
	if (!r) {
		uint32_t *counts = calloc(npages, sizeof(*counts));
		if (!counts) {
			r = -ENOMEM;
		} else {
			rmw_run(e, base, npages, 0, seed ^ 0x756e69ull, counts, &res->uni);
			rmw_run(e, base, npages, 1, seed ^ 0x736b6577ull, counts, &res->skew);
			r = verify_rmw(base, seed, npages, counts);
			free(counts);
		}
	}
	engine_region_close(e, base, len);
	return r;
}

static void rmw_print(const char *name, const struct rmw_result *r, int json)
{
	double ops = (double)r->ops, hits = (double)r->d.prefetch_hits,
	       probes = (double)(r->d.prefetch_hits + r->d.prefetch_misses);

	if (json) {
		printf("\"%s_ops_per_s\":%.0f,\"%s_faults_per_op\":%.3f,\"%s_pages_per_op\":%.3f,"
		       "\"%s_bytes_in_per_fault_page\":%.3f,\"%s_window_pages\":%u,\"%s_prefetch_hit_rate\":%.3f,"
		       "\"%s_rmw_installs\":%" PRIu64 ",\"%s_wp_faults\":%" PRIu64 ",\"%s_room_waits\":%" PRIu64
		       ",\"%s_writebacks\":%" PRIu64 ",",
		       name, ops / r->secs, name, (double)r->d.faults / ops, name, (double)r->d.pages_fetched / ops,
		       name, r->d.faults ? (double)r->d.bytes_in / PAGE / (double)(r->d.faults - r->d.wp_faults) : 0.0,
		       name, r->d.window_pages, name, probes ? hits / probes : 0.0, name, r->d.rmw_installs,
		       name, r->d.wp_faults, name, r->d.room_waits, name, r->d.writebacks);
		return;
	}
	printf("  %-34s %10.0f ops/s  (%.2f faults, %.2f pages fetched per op; window %u, prefetch hits %.0f%%)\n",
	       name, ops / r->secs, (double)r->d.faults / ops, (double)r->d.pages_fetched / ops, r->d.window_pages,
	       probes ? 100.0 * hits / probes : 0.0);
}

static void usage(FILE *f)
{
	fputs("usage: giantvm bench [--pool FILE] [--size SIZE] [--prefetch N] [--samples N]\n"
	      "                     [--replicas R] [--token-file F] [--local-mem B]\n"
	      "                     [--seal on|off|both] [--json]\n"
	      "\n"
	      "Fills a fresh region of SIZE (default 256M) in the pool with non-zero pages,\n"
	      "then measures in one run: the 4 KiB READ round trip to each node (tcp_rtt_us),\n"
	      "the local userfaultfd ceiling with the same window (local_fault_us,\n"
	      "local_ceiling_GBps), random single-page remote faults (remote_fault_p50_us,\n"
	      "remote_fault_p99_us) and a sequential first touch (seq_GBps). Every page read\n"
	      "is verified. --prefetch is the fault window in pages, a power of two from 1\n"
	      "to 32 (default 32).\n"
	      "Also reported: startup_ms (opening the pool: pool file + placement), peak_fds\n"
	      "(most open fds of this process), client_bytes_per_node (the pool's fixed client\n"
	      "memory per node: node records, names, placement table, connection pointers),\n"
	      "region_nodes (nodes holding the region) and seq_nodes_connected (nodes the\n"
	      "engine had connections to after the sequential pass).\n"
	      "With --local-mem B (less than SIZE), then: a fresh region of SIZE under a local\n"
	      "budget of B is written page by page (evict_write_GBps: the evictor writes\n"
	      "back what does not fit) and read back and verified (evict_read_GBps); then\n"
	      "2 x pages random read-modify-writes of one word per op, uniform\n"
	      "(rmw_uniform_*) and 90% on a tenth of the pages (rmw_hotcold_*): ops/s,\n"
	      "faults and pages fetched per op, bytes received per faulted page, the\n"
	      "prefetch window at the end and the prefetch hit rate; all pages verified.\n"
	      "--seal on|off: pages sealed (encrypted and authenticated, docs/SECURITY.md) or\n"
	      "not (default: the pool file's `seal =`, else on unless every node is on\n"
	      "loopback). --seal both: the random and sequential passes run unsealed, then\n"
	      "again on a sealed copy of the region (sealed_remote_fault_p50_us,\n"
	      "sealed_seq_GBps, seal_seq_ratio, seal_p50_delta_us, seal_version_bytes_per_page);\n"
	      "the eviction phase runs sealed. Sealed runs report seal_cipher (aegis-256 where\n"
	      "the CPU has AES-NI, else aes-256-gcm; GIANTVM_SEAL_CIPHER chooses).\n", f);
}

int cmd_bench(int argc, char **argv)
{
	struct bench_opts o = { .size = 256ull << 20, .prefetch = GVM_STRIPE_PAGES, .samples = 2000 };
	struct cli_pool cp;
	struct node_clients nc = { 0 };
	uint8_t key[GVM_REGION_KEY_SIZE];
	uint64_t region = 0, seed = 0, npages, *lat = NULL, *lpages = NULL;
	uint8_t *local_src = NULL;
	double rtt, local_secs = 0, seq_secs = 0, local_p50, remote_p50, remote_p99, dummy;
	struct gvm_stats st_rand, st_seq;
	uint64_t t_fill, t_open;
	uint32_t n_region_nodes;
	char err[1024];
	int rc = 1, peak_fds = 0;

	for (int i = 1; i < argc; i++) {
		const char *v;
		uint64_t n;
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--json")) {
			o.json = 1;
		} else if ((v = cli_optval(argc, argv, &i, "--pool"))) {
			o.pa.pool_path = v;
		} else if ((v = cli_optval(argc, argv, &i, "--token-file"))) {
			o.pa.token_file = v;
		} else if ((v = cli_optval(argc, argv, &i, "--size"))) {
			if (gvm_parse_size(v, &o.size) || o.size < (1u << 20)) {
				fprintf(stderr, "giantvm bench: --size '%s': a size of at least 1M (e.g. 256M, 1G)\n", v);
				return GVM_EXIT_USAGE;
			}
		} else if ((v = cli_optval(argc, argv, &i, "--prefetch"))) {
			if (gvm_parse_u64(v, 1, GVM_STRIPE_PAGES, &n) || (n & (n - 1))) {
				fprintf(stderr, "giantvm bench: --prefetch '%s': a power of two from 1 to %u\n", v, GVM_STRIPE_PAGES);
				return GVM_EXIT_USAGE;
			}
			o.prefetch = (unsigned)n;
		} else if ((v = cli_optval(argc, argv, &i, "--local-mem"))) {
			if (gvm_parse_size(v, &o.local_mem) || o.local_mem < (4u << 20)) {
				fprintf(stderr, "giantvm bench: --local-mem '%s': a size of at least 4M (e.g. 64M)\n", v);
				return GVM_EXIT_USAGE;
			}
		} else if ((v = cli_optval(argc, argv, &i, "--seal"))) {
			o.seal = !strcmp(v, "on") ? SEAL_ON : !strcmp(v, "off") ? SEAL_OFF :
				 !strcmp(v, "both") ? SEAL_BOTH : -1;
			if (o.seal < 0) {
				fprintf(stderr, "giantvm bench: --seal '%s': on, off or both\n", v);
				return GVM_EXIT_USAGE;
			}
		} else if ((v = cli_optval(argc, argv, &i, "--samples"))) {
			if (gvm_parse_u64(v, 10, 1000000, &n)) {
				fprintf(stderr, "giantvm bench: --samples '%s': a number from 10 to 1000000\n", v);
				return GVM_EXIT_USAGE;
			}
			o.samples = (unsigned)n;
		} else if ((v = cli_optval(argc, argv, &i, "--replicas"))) {
			if (gvm_parse_u64(v, 1, GVM_MAX_REPLICAS, &n)) {
				fprintf(stderr, "giantvm bench: --replicas '%s': a number from 1 to %u\n", v, GVM_MAX_REPLICAS);
				return GVM_EXIT_USAGE;
			}
			o.pa.replicas = (unsigned)n;
		} else {
			fprintf(stderr, "giantvm bench: unknown option '%s'\n", argv[i]);
			usage(stderr);
			return GVM_EXIT_USAGE;
		}
	}
	if (o.local_mem && o.local_mem >= o.size) {
		fprintf(stderr, "giantvm bench: --local-mem must be smaller than --size (nothing would be evicted)\n");
		return GVM_EXIT_USAGE;
	}
	npages = o.size / PAGE;
	if (o.samples > npages / o.prefetch)
		o.samples = (unsigned)(npages / o.prefetch);
	/* One fd per node touched, in the fill and in the engine: lift the soft
	 * limit before the fill (the engine would only do it when it opens). */
	if (gvm_raise_nofile() < 0)
		fprintf(stderr, "giantvm bench: cannot raise the open-files limit\n");
	t_open = gvm_time_ns();
	if (cli_pool_open_err(&cp, &o.pa, err, sizeof(err))) {
		fprintf(stderr, "giantvm bench: %s\n", err);
		return 1;
	}
	t_open = gvm_time_ns() - t_open;
	bench_seal = o.seal == SEAL_ON || (o.seal == SEAL_DEFAULT && gvm_pool_sealed(cp.pool));
	if (gvm_random(&seed, sizeof(seed)) || gvm_random(key, sizeof(key))) {
		fprintf(stderr, "giantvm bench: getrandom failed\n");
		goto out;
	}
	region = gvm_mix64(seed ^ 0x62656e6368ull);
	nc.c = calloc(gvm_pool_node_count(cp.pool), sizeof(*nc.c));
	nc.state = calloc(gvm_pool_node_count(cp.pool), 1);
	lat = calloc(o.samples, sizeof(*lat));
	lpages = calloc(o.samples, sizeof(*lpages));
	local_src = malloc(npages * PAGE);
	if (!nc.c || !nc.state || !lat || !lpages || !local_src) {
		fprintf(stderr, "giantvm bench: out of memory\n");
		goto out;
	}
	for (uint64_t p = 0; p < npages; p++)
		pattern_page(seed, p, local_src + p * PAGE);

	t_fill = gvm_time_ns();
	if (fill(cp.pool, &nc, region, key, seed, npages))
		goto out;
	t_fill = gvm_time_ns() - t_fill;
	sample_fds(&peak_fds);
	clients_close_all(cp.pool, &nc);
	rtt = measure_rtt(cp.pool, &nc, region, key, npages);
	clients_close_all(cp.pool, &nc);
	n_region_nodes = region_nodes(cp.pool, region, npages);

	/* Local ceiling: same window, pages from a local buffer. */
	if (local_run(npages, o.prefetch, local_src, 1, o.samples, lat, lpages, &dummy))
		goto out;
	local_p50 = pct_us(lat, o.samples, 0.5);
	if (local_run(npages, o.prefetch, local_src, 0, 0, NULL, NULL, &local_secs))
		goto out;

	/* Remote: random faults without readahead, then a sequential pass. */
	if (remote_run(cp.pool, o.prefetch, -1u, region, key, seed, npages, 1, o.samples, lat, &dummy,
		       &st_rand, &peak_fds))
		goto out;
	remote_p50 = pct_us(lat, o.samples, 0.5);
	remote_p99 = pct_us(lat, o.samples, 0.99);
	if (remote_run(cp.pool, o.prefetch, 0, region, key, seed, npages, 0, 0, NULL, &seq_secs, &st_seq,
		       &peak_fds))
		goto out;

	/* --seal both: the same passes over a sealed copy of the region. */
	double s_p50 = 0, s_p99 = 0, s_seq_secs = 1;
	struct gvm_stats st_srand = { 0 }, st_sseq = { 0 };
	if (o.seal == SEAL_BOTH) {
		uint64_t region2 = gvm_mix64(region ^ 0x7365616cull);
		bench_seal = 1;
		int r = fill(cp.pool, &nc, region2, key, seed, npages);
		clients_close_all(cp.pool, &nc);
		if (!r)
			r = remote_run(cp.pool, o.prefetch, -1u, region2, key, seed, npages, 1, o.samples, lat,
				       &dummy, &st_srand, &peak_fds);
		s_p50 = pct_us(lat, o.samples, 0.5);
		s_p99 = pct_us(lat, o.samples, 0.99);
		if (!r)
			r = remote_run(cp.pool, o.prefetch, 0, region2, key, seed, npages, 0, 0, NULL, &s_seq_secs,
				       &st_sseq, &peak_fds);
		clients_free_region(cp.pool, &nc, region2, key);
		if (r)
			goto out;
	}

	struct evict_result ev = { 0 };
	if (o.local_mem && evict_run(cp.pool, o.prefetch, o.local_mem, gvm_mix64(region ^ 0x65766963ull), key,
				     seed, npages, &ev))
		goto out;

	double gb = (double)o.size / 1e9;
	double startup_ms = (double)t_open / 1e6, bpn = pool_bytes_per_node(cp.pool);
	if (o.json) {
		printf("{\"nodes\":%u,\"replicas\":%u,\"size_bytes\":%" PRIu64 ",\"prefetch\":%u,"
		       "\"samples\":%u,\"fill_GBps\":%.3f,\"tcp_rtt_us\":%.1f,\"local_fault_us\":%.1f,"
		       "\"local_ceiling_GBps\":%.3f,\"remote_fault_p50_us\":%.1f,"
		       "\"remote_fault_p99_us\":%.1f,\"seq_GBps\":%.3f,\"seq_vs_ceiling\":%.3f,"
		       "\"seq_faults\":%" PRIu64 ",\"seq_readahead_pages\":%" PRIu64 ","
		       "\"startup_ms\":%.3f,\"peak_fds\":%d,\"client_bytes_per_node\":%.1f,"
		       "\"region_nodes\":%u,\"seq_nodes_connected\":%u,",
		       gvm_pool_node_count(cp.pool), gvm_pool_replicas(cp.pool), o.size, o.prefetch, o.samples,
		       gb * (double)gvm_pool_replicas(cp.pool) / ((double)t_fill / 1e9), rtt, local_p50,
		       gb / local_secs, remote_p50, remote_p99, gb / seq_secs,
		       (gb / seq_secs) / (gb / local_secs), st_seq.faults, st_seq.readahead_pages,
		       startup_ms, peak_fds, bpn, n_region_nodes, st_seq.nodes_connected);
		if (o.local_mem)
			printf("\"local_mem_bytes\":%" PRIu64 ",\"evict_write_GBps\":%.3f,\"evict_read_GBps\":%.3f,"
			       "\"evict_writebacks\":%" PRIu64 ",\"evict_clean_drops\":%" PRIu64 ","
			       "\"evict_fault_p99_us\":%.1f,",
			       o.local_mem, gb / ev.write_secs, gb / ev.read_secs, ev.st.writebacks,
			       ev.st.clean_drops, (double)ev.st.fault_p99_ns / 1e3);
		if (o.local_mem) {
			rmw_print("rmw_uniform", &ev.uni, 1);
			rmw_print("rmw_hotcold", &ev.skew, 1);
		}
		printf("\"sealed\":\"%s\",", o.seal == SEAL_BOTH ? "both" : bench_seal ? "on" : "off");
		if (o.seal == SEAL_BOTH || bench_seal)
			printf("\"seal_cipher\":\"%s\",", gvm_seal_cipher());
		if (o.seal == SEAL_BOTH)
			printf("\"sealed_remote_fault_p50_us\":%.1f,\"sealed_remote_fault_p99_us\":%.1f,"
			       "\"sealed_seq_GBps\":%.3f,\"seal_seq_ratio\":%.3f,\"seal_p50_delta_us\":%.1f,"
			       "\"seal_pages_rejected\":%" PRIu64 ",",
			       s_p50, s_p99, gb / s_seq_secs, seq_secs / s_seq_secs, s_p50 - remote_p50,
			       st_srand.pages_rejected + st_sseq.pages_rejected);
		if (o.seal == SEAL_BOTH || bench_seal)
			printf("\"seal_version_bytes_per_page\":%.1f,",
			       (double)(o.seal == SEAL_BOTH ? st_sseq.seal_bytes : st_seq.seal_bytes) / (double)npages);
		printf("\"verified\":true}\n");
	} else {
		printf("giantvm bench: %u node%s (%s), replicas %u, region %s, window %u pages\n",
		       gvm_pool_node_count(cp.pool), gvm_pool_node_count(cp.pool) == 1 ? "" : "s", cp.source,
		       gvm_pool_replicas(cp.pool), gvm_fmt_size(o.size, (char[32]){ 0 }, 32), o.prefetch);
		printf("  %-34s %10.3f GB/s\n", "fill (all replicas)", gb * (double)gvm_pool_replicas(cp.pool) / ((double)t_fill / 1e9));
		printf("  %-34s %10.1f us\n", "tcp_rtt_us (4 KiB READ, p50)", rtt);
		printf("  %-34s %10.1f us\n", "local_fault_us (p50)", local_p50);
		printf("  %-34s %10.3f GB/s\n", "local_ceiling_GBps", gb / local_secs);
		printf("  %-34s %10.1f us\n", "remote_fault_p50_us", remote_p50);
		printf("  %-34s %10.1f us\n", "remote_fault_p99_us", remote_p99);
		printf("  %-34s %10.3f GB/s  (%.2fx ceiling)\n", "seq_GBps", gb / seq_secs,
		       (gb / seq_secs) / (gb / local_secs));
		printf("  %-34s %10.3f ms\n", "startup_ms (open the pool)", startup_ms);
		printf("  %-34s %10d\n", "peak_fds", peak_fds);
		printf("  %-34s %10.1f B\n", "client_bytes_per_node", bpn);
		printf("  %-34s %10u of %u\n", "region_nodes", n_region_nodes, gvm_pool_node_count(cp.pool));
		printf("  %-34s %10u\n", "seq_nodes_connected", st_seq.nodes_connected);
		if (o.local_mem) {
			printf("  eviction, --local-mem %s:\n", gvm_fmt_size(o.local_mem, (char[32]){ 0 }, 32));
			printf("  %-34s %10.3f GB/s\n", "evict_write_GBps", gb / ev.write_secs);
			printf("  %-34s %10.3f GB/s\n", "evict_read_GBps", gb / ev.read_secs);
			printf("  %-34s %10" PRIu64 " / %" PRIu64 "\n", "write-backs / clean drops", ev.st.writebacks,
			       ev.st.clean_drops);
			printf("  %-34s %10.1f us\n", "evict_fault_p99_us", (double)ev.st.fault_p99_ns / 1e3);
			rmw_print("rmw_uniform", &ev.uni, 0);
			rmw_print("rmw_hotcold", &ev.skew, 0);
		}
		if (o.seal == SEAL_BOTH) {
			printf("  sealed (%s per page), the same passes:\n", gvm_seal_cipher());
			printf("  %-34s %10.1f us  (%+.1f us)\n", "sealed_remote_fault_p50_us", s_p50, s_p50 - remote_p50);
			printf("  %-34s %10.1f us\n", "sealed_remote_fault_p99_us", s_p99);
			printf("  %-34s %10.3f GB/s  (%.2fx unsealed)\n", "sealed_seq_GBps", gb / s_seq_secs,
			       seq_secs / s_seq_secs);
			printf("  %-34s %10.1f B\n", "version memory per guest page",
			       (double)st_sseq.seal_bytes / (double)npages);
		} else {
			printf("  %-34s %10s\n", "pages sealed", bench_seal ? "yes" : "no");
		}
		printf("  every page read was verified (%u random, %" PRIu64 " sequential)\n", o.samples, npages);
	}
	fflush(stdout);
	rc = 0;
out:
	if (nc.c && nc.state)
		clients_free_region(cp.pool, &nc, region, key);
	free(nc.c);
	free(nc.state);
	free(lat);
	free(lpages);
	free(local_src);
	cli_pool_close(&cp);
	return rc;
}
