/*
 * giantvm: a memory range whose pages live in a pool of memory servers.
 *
 * A pool is a set of memory nodes (cluster_uffd.conf) and a placement
 * function. An engine owns one userfaultfd and one event thread; regions are
 * attached to it: a missing page of a region is fetched from the node that
 * owns its stripe and installed with UFFDIO_COPY (UFFDIO_ZEROPAGE for zero
 * pages). Functions return >= 0 on success and -errno on failure; they never
 * print to stdout and never exit the process.
 */
#ifndef GIANTVM_H
#define GIANTVM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The one place the version is written (the Makefile and `make deb` read it here). */
#define GVM_VERSION "0.1.0"
#define GVM_REGION_KEY_SIZE 32
#define GVM_PAGE_SIZE     4096u
#define GVM_STRIPE_PAGES  32u   /* pages per stripe: the unit of placement (docs/PROTOCOL.md) */
#define GVM_MAX_REPLICAS  8u

struct gvm_pool;
struct gvm_engine;

struct gvm_pool_opts {
	const char *config_path;      /* cluster_uffd.conf, or NULL to use nodes[] */
	const char *const *nodes;     /* "HOST[:PORT]" list when config_path is NULL */
	unsigned n_nodes;
	const void *token;            /* shared secret for HELLO, or NULL */
	size_t token_len;
	unsigned replicas;            /* copies of each stripe; 0 = 2 if >= 2 nodes, else 1 */
	int request_timeout_ms;       /* no reply within this: fail over; 0 = 2000 */
	int fault_deadline_ms;        /* every replica down this long: give up; 0 = 10000 */
};

/* Load the config and build the placement. On error, err holds "FILE:LINE: why". */
int gvm_pool_open(struct gvm_pool **out, const struct gvm_pool_opts *opts, char *err, size_t errlen);
void gvm_pool_close(struct gvm_pool *pool);
unsigned gvm_pool_node_count(const struct gvm_pool *pool);
const char *gvm_pool_node_name(const struct gvm_pool *pool, unsigned node);
unsigned gvm_pool_replicas(const struct gvm_pool *pool);
/* 1 if an engine with seal = GVM_SEAL_AUTO seals this pool's pages: the
 * pool file says `seal = on`, or says nothing and a node is not on loopback. */
int gvm_pool_sealed(const struct gvm_pool *pool);
/* The page cipher sealed pages use in this process: "aegis-256" where the
 * CPU has AES-NI, else "aes-256-gcm" ($GIANTVM_SEAL_CIPHER chooses). */
const char *gvm_seal_cipher(void);
/* The nodes holding stripe `stripe` (pages stripe*GVM_STRIPE_PAGES...) of
 * `region`, primary first, into nodes[GVM_MAX_REPLICAS]; returns how many. */
unsigned gvm_pool_stripe_nodes(const struct gvm_pool *pool, uint64_t region, uint64_t stripe,
			       unsigned nodes[GVM_MAX_REPLICAS]);
/* The pool's fixed client memory (node table, placement, connection slots), bytes. */
uint64_t gvm_pool_client_bytes(const struct gvm_pool *pool);
/*
 * Forget regions[0..n) on every node of the pool (their pages are freed), with
 * the keys derived from `secret` (gvm_region_key). Best effort: a node that
 * cannot be reached within timeout_ms is skipped. Returns how many nodes
 * answered, or -errno.
 */
int gvm_pool_free_regions(struct gvm_pool *pool, const uint64_t *regions, unsigned n,
			  const void *secret, size_t secret_len, int timeout_ms);
/* Try to connect to every node (HELLO included) within timeout_ms; -EHOSTUNREACH
 * with the first unreachable node's name in err. For "is the pool up" checks. */
int gvm_pool_probe(const struct gvm_pool *pool, int timeout_ms, char *err, size_t errlen);

/* What to do when a page cannot be fetched from any replica before the deadline. */
enum gvm_lost_policy {
	GVM_LOST_POISON = 0,  /* UFFDIO_POISON: the accessor gets SIGBUS (kernel >= 6.6), else FATAL */
	GVM_LOST_FATAL,       /* call on_fatal (default: log; the caller decides to stop) */
};

struct gvm_engine_opts {
	unsigned prefetch;            /* pages fetched per fault, 1..32 (power of 2); 0 = 32 */
	unsigned readahead;           /* windows fetched ahead of a sequential run; 0 = default 8, -1u = none */
	uint64_t local_mem;           /* resident-page budget in bytes; 0 = unlimited */
	int lost_policy;              /* enum gvm_lost_policy */
	/* Called on the engine thread when the engine cannot go on (e.g. pages
	 * lost with no POISON support). May not return. NULL = log only. */
	void (*on_fatal)(const char *why, void *arg);
	void *fatal_arg;
	int seal;                     /* enum gvm_seal_mode */
};

/* Sealed pages (docs/SECURITY.md): pages are encrypted and authenticated
 * on this host before they leave; a node that alters, swaps or replays a
 * page is caught. */
enum gvm_seal_mode {
	GVM_SEAL_AUTO = 0,            /* the pool's `seal =` line, else on unless every node is on loopback */
	GVM_SEAL_ON,
	GVM_SEAL_OFF,
};

int gvm_engine_open(struct gvm_engine **out, struct gvm_pool *pool, const struct gvm_engine_opts *opts);
/*
 * Register [addr, addr+len) (page aligned, anonymous private memory) with
 * userfaultfd under `region` and its key. Pages already present stay as they
 * are and count as resident (dirty: the pool does not have them). No thread
 * may touch the range until this returns: a page first touched in between
 * would be missed by that count, and a fault taken before the region is
 * known would wait for good. Returns 0 or -errno.
 */
int gvm_engine_attach(struct gvm_engine *e, uint64_t region, const uint8_t key[GVM_REGION_KEY_SIZE],
		      void *addr, size_t len);
/* The region is new: the pool holds nothing for it that this engine did not
 * write, so a stripe never written back is zero-filled locally, with no
 * network round trip. Right only when no one else writes the region (e.g.
 * a region id made unique per run, as `giantvm run` does). */
#define GVM_ATTACH_FRESH 1u
/* Sealed engines: the pool already holds every page of the region sealed at
 * version 1 (written with gvm_node_client_seal(); `giantvm bench`'s fill). */
#define GVM_ATTACH_SEALED_V1 2u
int gvm_engine_attach_flags(struct gvm_engine *e, uint64_t region,
			    const uint8_t key[GVM_REGION_KEY_SIZE], void *addr, size_t len,
			    unsigned flags);
/* Write every resident page of every region to the pool and wait for the
 * acknowledgements. Zero pages are not sent (the pool forgets them). 0, or
 * -errno: -ETIMEDOUT if a page the evictor held was not let go within the
 * fault deadline (it was not flushed), or the first write-back's error. */
int gvm_engine_flush(struct gvm_engine *e);
/*
 * The owner dropped [addr, addr+len) with MADV_DONTNEED (a balloon, free
 * page reporting): call this once madvise succeeded, before the pages are
 * used again. Pages of attached regions in the range read as zero from then on,
 * are never fetched again until written, stop counting against the local
 * budget and are not written back (stats: discarded_pages). Waits for the
 * engine thread; a range outside every region returns at once. 0 or
 * -ENOMEM. (`giantvm run`'s preload library calls it for QEMU's madvise.)
 */
int gvm_engine_discard(struct gvm_engine *e, void *addr, size_t len);
void gvm_engine_close(struct gvm_engine *e);

/* Fixed latency buckets shared by every histogram giantvm exports (the
 * fault latency, the memory server's request service time): bound i in ns,
 * 1 us ... 10 s. */
#define GVM_LAT_BUCKETS 20u
uint64_t gvm_lat_bound_ns(unsigned i);
/* The bucket of a latency: 0..GVM_LAT_BUCKETS (the last: above every bound). */
unsigned gvm_lat_bucket(uint64_t ns);

struct gvm_stats {
	uint64_t faults;              /* userfaultfd faults handled */
	uint64_t pages_fetched;       /* pages installed from the pool (incl. zero) */
	uint64_t zero_pages;          /* of which zero (nothing sent) */
	uint64_t local_zero_pages;    /* zero-filled without asking the pool (fresh region, discarded pages) */
	uint64_t readahead_pages;     /* installed ahead of any fault */
	uint64_t bytes_in;            /* page bytes received */
	uint64_t bytes_out;           /* page bytes written to the pool */
	uint64_t resident_pages;
	uint64_t budget_pages;        /* 0 = unlimited */
	uint64_t evictions;           /* pages dropped */
	uint64_t writebacks;          /* dirty pages written back */
	uint64_t clean_drops;         /* pages dropped without a write */
	uint64_t errors;              /* failed requests, connection losses */
	uint64_t lost_pages;          /* pages given up on (poisoned or fatal) */
	uint64_t fault_p50_ns;
	uint64_t fault_p99_ns;
	uint64_t under_replicated;    /* stripes some replica may lack (re-sync pending) */
	uint64_t resynced_stripes;    /* stripes copied to a replica that came back */
	unsigned nodes;               /* nodes in the pool */
	unsigned nodes_connected;
	unsigned nodes_down;
	uint64_t wp_faults;           /* of faults: first writes to a clean page (dirty tracking) */
	uint64_t prefetch_hits;       /* prefetched pages held back as probes and then touched ... */
	uint64_t prefetch_misses;     /* ... and never touched: hits / (hits + misses) estimates the
	                               * share of prefetched pages a guest uses */
	uint32_t window_pages;        /* pages a fault off any run fetches now (adapts, 1..prefetch) */
	uint64_t rmw_installs;        /* read faults installed writable: a write was expected next */
	uint64_t room_waits;          /* faults that waited for the evictor to make room */
	/* Fault latency on fixed buckets (gvm_lat_bound_ns): counts[i] faults took
	 * at most bound(i) and more than bound(i-1); counts[GVM_LAT_BUCKETS] took
	 * longer than the last bound. Not cumulative. */
	uint64_t fault_lat_counts[GVM_LAT_BUCKETS + 1];
	uint64_t fault_lat_sum_ns;    /* of every fault in the histogram */
	uint64_t missing_faults;      /* of faults: on a missing page (the rest are wp_faults) */
	uint64_t pages_rejected;      /* sealed pages a node returned that failed verification */
	int sealed;                   /* pages are sealed (1) or sent in clear (0) */
	uint64_t seal_bytes;          /* engine memory for page versions (4 bytes a guest page) */
	uint64_t poll_ns;             /* CPU time the poller spent keeping a CPU awake (SCHED_IDLE) */
	uint64_t discarded_pages;     /* pages the owner discarded (MADV_DONTNEED/MADV_REMOVE: a balloon,
	                               * free page reporting): zero from then on, never fetched */
};
int gvm_engine_stats(struct gvm_engine *e, struct gvm_stats *st);
/* Per-node figures as a JSON array into buf (nodes with traffic only). */
int gvm_engine_nodes_json(struct gvm_engine *e, char *buf, size_t len);

/* Kernel userfaultfd features found at engine open, as text (for logs). */
const char *gvm_engine_features(const struct gvm_engine *e);

/* --- One blocking connection to one node (tools, `giantvm bench`'s fill).
 * The fault engine does not use it. Each call returns >= 0 or -errno (a
 * server's refusal as its errno, e.g. -EACCES, -ENOSPC). */
struct gvm_node_client;
int gvm_node_client_open(struct gvm_node_client **out, const struct gvm_pool *pool, unsigned node,
			 int timeout_ms);
void gvm_node_client_close(struct gvm_node_client *c);
/* Bind `region` to this connection with its key (the first holder binds it). */
int gvm_node_client_bind(struct gvm_node_client *c, uint64_t region, const uint8_t key[GVM_REGION_KEY_SIZE]);
/* count <= GVM_STRIPE_PAGES pages from/to buf; zero pages are not sent. */
int gvm_node_client_read(struct gvm_node_client *c, uint64_t region, uint64_t page, unsigned count, void *buf);
int gvm_node_client_write(struct gvm_node_client *c, uint64_t region, uint64_t page, unsigned count,
			  const void *buf);
int gvm_node_client_free(struct gvm_node_client *c, uint64_t region);
/* Seal the pages this client writes from now on (version `version` for every
 * page), as a sealed engine attached with GVM_ATTACH_SEALED_V1 expects. */
int gvm_node_client_seal(struct gvm_node_client *c, uint64_t region,
			 const uint8_t key[GVM_REGION_KEY_SIZE], uint32_t version);

/* --- The local ceiling: a plain userfaultfd handler that serves
 * [addr, addr+len) from src (same layout) a window of `window` pages per
 * fault, on its own thread; no network, no engine. What the fault path costs
 * with nothing to fetch. */
struct gvm_local_server;
int gvm_local_server_start(struct gvm_local_server **out, void *addr, size_t len, const void *src,
			   unsigned window);
/* Stop the thread and unregister; returns the faults it served, or -errno. */
int64_t gvm_local_server_stop(struct gvm_local_server *s);

/* userfaultfd features this kernel offers (a probe fd), as a mask (>= 0) and
 * as text ("WP MOVE POISON ...") in buf; -errno when unavailable. */
int64_t gvm_uffd_features(char *buf, size_t len);

/* --- Helpers shared with the tools --- */
/* "512M", "16G", "4096", "1.5G" (K/M/G/T, powers of 1024, optional "iB"/"B"). 0 or -EINVAL. */
int gvm_parse_size(const char *s, uint64_t *out);
/* Decimal unsigned integer in [min, max]; 0 or -EINVAL / -ERANGE. */
int gvm_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* "1.5 GiB"-style text into buf; returns buf. */
const char *gvm_fmt_size(uint64_t bytes, char *buf, size_t len);
/* Fill buf from the kernel's CSPRNG (getrandom). 0 or -errno. */
int gvm_random(void *buf, size_t n);
/* Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit. */
long gvm_raise_nofile(void);
/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t gvm_time_ns(void);
/* A pool token from a file (16..4096 bytes, not readable by others), malloc'd
 * into *out. 0 or -errno with "FILE: why" in err. */
int gvm_auth_load_token(const char *path, uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* --- Prometheus text exposition format 0.0.4 (docs/METRICS.md) ---
 * A text buffer that grows up to `max` bytes; the first failure (no memory,
 * over max) sticks in err (-ENOMEM, -E2BIG) and later writes do nothing. */
struct gvm_prom {
	char *buf;
	size_t len, cap, max;
	int err;
};
void gvm_prom_init(struct gvm_prom *p, size_t max);
void gvm_prom_fini(struct gvm_prom *p);
/* "# HELP name help" and "# TYPE name type" (type: counter, gauge, histogram). */
void gvm_prom_family(struct gvm_prom *p, const char *name, const char *type, const char *help);
/* Label pairs k1, v1, k2, v2, ..., NULL as `k1="v1",k2="v2"` into buf (values
 * escaped); "" for none. Returns the length, or -ENOSPC. */
int gvm_prom_labels(char *buf, size_t len, ...);
/* One sample line: name{labels} value (labels from gvm_prom_labels, or NULL). */
void gvm_prom_u64(struct gvm_prom *p, const char *name, const char *labels, uint64_t v);
void gvm_prom_f64(struct gvm_prom *p, const char *name, const char *labels, double v);
/* A histogram's samples from counts on the gvm_lat_bound_ns buckets (as in
 * gvm_stats.fault_lat_counts): name_bucket{le=...} (cumulative), name_sum
 * (seconds), name_count. */
void gvm_prom_lat_histogram(struct gvm_prom *p, const char *name, const char *labels,
			    const uint64_t counts[GVM_LAT_BUCKETS + 1], uint64_t sum_ns);

/* --- A small HTTP/1.x responder for GET /metrics, bounded: at most
 * max_conns scrapers at once (more are accepted and closed at once), each
 * closed after its response or timeout_ms after it connected, whatever it
 * sends; a request head over 4 KiB is refused. It never blocks: run it from
 * an event loop (poll gvm_http_fd for input) or a thread of its own. */
struct gvm_http;
/* Fill p with the body of GET /metrics; 0, or -errno for a 500. */
typedef int (*gvm_http_render_fn)(struct gvm_prom *p, void *arg);
struct gvm_http_opts {
	const char *listen;           /* "HOST:PORT", "[V6]:PORT"; port 0 = any */
	unsigned max_conns;           /* 0 = 8 */
	int timeout_ms;               /* 0 = 5000 */
	size_t max_body;              /* bytes a response may take; 0 = 4 MiB */
	gvm_http_render_fn render;
	void *arg;
};
struct gvm_http_counters {
	uint64_t scrapes;             /* 200 responses to GET /metrics */
	uint64_t rejected;            /* connections over max_conns */
	uint64_t bad_requests;        /* 4xx answers (not GET, not /metrics, garbage, head too big) */
	uint64_t timeouts;            /* closed at timeout_ms before their response was sent */
	unsigned active;              /* connections now */
};
/* Bind and listen; 0, or -errno with "LISTEN: why" in err. */
int gvm_http_open(struct gvm_http **out, const struct gvm_http_opts *o, char *err, size_t errlen);
void gvm_http_close(struct gvm_http *h);
/* An fd that polls readable when the responder has work (its epoll fd). */
int gvm_http_fd(const struct gvm_http *h);
int gvm_http_port(const struct gvm_http *h);
/* "HOST:PORT" as bound. */
const char *gvm_http_name(const struct gvm_http *h);
/* Do the work that is ready, waiting at most wait_ms for some (0: none, -1:
 * until there is). Returns the ms until its next timeout (-1: none
 * pending), or -errno. */
int gvm_http_service(struct gvm_http *h, int wait_ms);
void gvm_http_counters(const struct gvm_http *h, struct gvm_http_counters *c);

/* The release, as `giantvm --version` prints it (build_info metrics). */
const char *gvm_version(void);

/* splitmix64 finaliser: the mixing step of every hash in docs/PROTOCOL.md. */
static inline uint64_t gvm_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Region id for a VM's RAM block: FNV/mix hash of "vm-id/block-name". */
uint64_t gvm_region_id(const char *vm_id, const char *block);
/* Region key: HMAC-SHA256(secret, "giantvm-region-key" || region) into key. */
int gvm_region_key(const void *secret, size_t secret_len, uint64_t region,
		   uint8_t key[GVM_REGION_KEY_SIZE]);

#ifdef __cplusplus
}
#endif
#endif
