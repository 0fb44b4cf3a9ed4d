/*
 * The engine's insides, shared by its files and by nothing else (the
 * evictor sees region.h, pagestate.h and its own evict.h only):
 *   engine.c     event loop, open/close, attach, transport callbacks
 *   fault.c      userfaultfd faults, fetch windows, readahead, install
 *   writeback.c  WRITEs of pages to every replica, flush
 *   resync.c     copying degraded stripes to replicas that lack them
 *   stats.c      counters and fault latency, as gvm_stats and JSON
 * Calls go one way: engine.c calls the others; fault.c and writeback.c
 * call resync.c; stats.c calls the evictor for its counters.
 */
#ifndef GVM_ENGINE_INT_H
#define GVM_ENGINE_INT_H

#include <pthread.h>
#include <stdint.h>

#include "giantvm.h"
#include "evict.h"
#include "placement.h"
#include "poller.h"
#include "pool_int.h"
#include "proto.h"
#include "region.h"
#include "transport.h"
#include "util.h"

#define GVM_MAX_REGIONS 64
#define GVM_HIST_BUCKETS 256

/* What a request's ctx points at (first byte of each). */
enum { CTX_FETCH = 1, CTX_WB, CTX_RESYNC };

struct gvm_fetch {            /* one READ of a window, until installed */
	uint8_t kind;         /* CTX_FETCH */
	struct gvm_region *rg;
	uint64_t page;        /* first page */
	uint32_t count;
	uint8_t tries;        /* replicas asked this round ... */
	uint32_t tried[GVM_MAX_REPLICAS]; /* ... which (a trust change may reorder the list between tries) */
	uint8_t parked;
	uint8_t room;         /* parked waiting for room under the budget */
	uint8_t hold;         /* readahead marker window: hold its first page */
	uint64_t probe_page;  /* a page to hold back as a probe (fault.c), or UINT64_MAX */
	uint8_t writable;     /* install zero pages writable (COPY), not ZEROPAGE */
	uint8_t write_fault;  /* fault_page waits on a write: install it dirty, unprotected */
	uint32_t reserved;    /* pages counted against the budget while in flight */
	uint64_t fault_page;  /* page a thread waits on, or UINT64_MAX */
	uint64_t fault_ns;    /* when that fault was read (0: readahead) */
	uint64_t start_ns;    /* first attempt, for the deadline */
	uint64_t retry_ns;    /* parked until */
	uint8_t timed;        /* fault_page installed and its latency recorded (sealed, before the rest) */
	/* Pages this fetch claimed (set INFLIGHT): only it installs them. A
	 * page of the window already in flight in another fetch, or resident
	 * when this one started, is that fetch's or nobody's: installing it
	 * from this reply could put back data older than a write-back that
	 * completed meanwhile (a reply opened on the opener thread is
	 * installed after later replies and acks were handled). */
	uint8_t own[GVM_BITMAP_BYTES(GVM_MAX_PAGES)];
	struct gvm_fetch *next;
	struct gvm_fetch *all_next; /* every fetch ever allocated (e->all_fetches), for the close:
	                             * one in flight then is owned by no list */
};

struct gvm_wb {               /* one WRITE of a run of pages to every replica */
	uint8_t kind;         /* CTX_WB */
	struct gvm_region *rg;
	uint32_t nreplicas;   /* replicas the stripe should be on */
	uint64_t region;
	uint64_t page;
	uint32_t count;
	uint32_t nonzero;
	uint8_t *payload;     /* bitmap + non-zero pages */
	size_t len;
	uint32_t outstanding; /* replicas not yet answered */
	uint32_t acks;
	int err;
	uint64_t start_ns;
	uint64_t retry_ns;
	struct gvm_waiter *waiter;
	struct gvm_wb *next;
	uint8_t pooled;       /* stripe-sized: goes back to wb_spare */
	uint8_t tagged;       /* sealed: the payload ends with the pages' tags */
	uint32_t *vers;       /* sealed: the version each page was written at (count entries) */
};

struct gvm_resync {           /* copy one stripe from a live replica to the others */
	uint8_t kind;         /* CTX_RESYNC */
	struct gvm_region *rg;
	uint64_t stripe;
	uint32_t targets[GVM_MAX_REPLICAS];
	unsigned n_targets;
	unsigned outstanding, acks;
	struct gvm_resync *next, **pprev; /* e->rs_jobs, for the close */
};

struct gvm_engine_counters {
	uint64_t faults, pages_fetched, zero_pages, readahead_pages, bytes_in, bytes_out;
	uint64_t errors, lost_pages, resynced_stripes;
	uint64_t local_zero_pages, wp_faults;
	uint64_t probe_hits, probe_misses; /* held-back prefetched pages touched / never touched */
	uint64_t rmw_installs;             /* read faults installed dirty (a write was expected) */
	uint64_t room_waits;               /* faults whose fetch waited for the evictor to make room */
	uint64_t window;                   /* pages the last non-sequential fault fetched */
	uint64_t pages_rejected;           /* sealed pages that failed verification */
	uint64_t discarded_pages;          /* pages the owner discarded (gvm_engine_discard) */
};

struct gvm_engine {
	/* Set up by engine.c; fixed once the engine runs. */
	struct gvm_pool *pool;
	int uffd;                 /* the userfaultfd */
	int epfd;                 /* engine thread's epoll */
	int evfd;                 /* eventfd: commands queued, or quit */
	pthread_t thread;
	int running;
	int quit;
	uint64_t features;        /* uffd features enabled */
	uint64_t avail;           /* uffd features the kernel has */
	char features_str[160];
	unsigned prefetch;        /* pages per fault window */
	unsigned readahead;       /* windows ahead on sequential runs */
	int fixed_window;         /* $GIANTVM_FIXED_WINDOW: always `prefetch` pages, no probes, no RMW guess */
	int lost_policy;
	int seal;                 /* pages sealed (seal.h) */
	void (*on_fatal)(const char *why, void *arg);
	void *fatal_arg;
	uint64_t idle_ns;         /* close node connections idle this long */
	uint64_t budget_pages;    /* 0 = unlimited */
	uint64_t high_pages;      /* evictor starts above this ... */
	uint64_t low_pages;       /* ... and stops at this */
	int wp;                   /* regions registered with write-protect (dirty tracking) */
	struct gvm_opener *opener; /* sealed: opens READ replies off this thread (opener.c) */
	struct gvm_evictor *ev;   /* with a budget */
	struct gvm_region *regions[GVM_MAX_REGIONS];
	unsigned n_regions;       /* published with release after regions[] */
	struct gvm_transport tp;
	struct gvm_page_count pages; /* resident pages, all regions: installed here, dropped by the evictor */

	/* fault.c (engine thread only) */
	struct gvm_fetch *free_fetch;
	struct gvm_fetch *all_fetches; /* see gvm_fetch.all_next */
	struct gvm_fetch *parked; /* fetches waiting for a replica to come back, or for room */
	uint64_t inflight;        /* fetches outstanding */
	uint64_t reserved;        /* pages of fetches in flight, and pages held back (readahead marker, probes) */
	uint64_t *deferred;       /* fault addresses waiting for a drop to finish (bit 0: write) */
	size_t n_deferred, cap_deferred;

	/* writeback.c */
	pthread_mutex_t cmd_mu;   /* guards cmd_head/cmd_tail, wb_spare and the barrier */
	pthread_cond_t barrier_cv; /* gvm_engine_barrier(): barrier_done caught up */
	uint64_t barrier_req, barrier_done;
	pthread_mutex_t seal_mu;  /* sealed: taking versions and queueing a write-back, as one step */
	struct gvm_wb *cmd_head, *cmd_tail;
	struct gvm_discard *discards; /* gvm_engine_discard()s waiting for this thread */
	struct gvm_wb *wb_spare;  /* stripe-sized write-back buffers for reuse */
	unsigned n_wb_spare;
	struct gvm_wb *parked_wb; /* write-backs no replica could take yet, oldest first (engine thread) */
	struct gvm_wb *parked_wb_last; /* ... and the newest */
	struct gvm_wb *wbq_head, *wbq_tail; /* write-backs waiting for the send window (engine thread) */
	uint64_t wb_inflight;     /* write-back bytes sent to nodes and not answered yet (engine thread) */

	/* resync.c (engine thread; `degraded` is read by flush and stats) */
	uint8_t *suspect;         /* per node: came back after failing, may have lost pages */
	uint64_t degraded;        /* stripes with STRIPE_DEGRADED */
	unsigned rs_region;       /* re-sync cursor: region ... */
	uint64_t rs_stripe;       /* ... and stripe */
	unsigned rs_inflight;     /* re-sync copies in flight ... */
	struct gvm_resync *rs_jobs; /* ... listed */

	struct gvm_poller *poller; /* keeps a CPU awake through fault bursts (poller.c), or NULL */

	/* written by the engine thread, read by stats.c */
	struct gvm_engine_counters ctr;
	uint64_t hist[GVM_HIST_BUCKETS]; /* fault latency, quarter-octave buckets of ns */
	uint64_t lat[GVM_LAT_BUCKETS + 1]; /* the same on the fixed buckets Prometheus sees */
	uint64_t lat_sum_ns;      /* of every latency in lat[] */
	uint64_t missing_shown;   /* stats.c: the largest missing-fault count reported (monotonic) */
};

#define CTR_ADD(e, f, n) __atomic_fetch_add(&(e)->ctr.f, (n), __ATOMIC_RELAXED)

/* Fault latency histogram: quarter-octave buckets of ns. */
static inline unsigned gvm_hist_bucket(uint64_t ns)
{
	unsigned b, sub;

	if (ns < 4)
		return (unsigned)ns;
	b = 63u - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)((ns >> (b - 2)) & 3u);
	return GVM_MIN(b * 4u + sub, GVM_HIST_BUCKETS - 1u);
}

static inline void gvm_hist_add(struct gvm_engine *e, uint64_t ns)
{
	__atomic_fetch_add(&e->hist[gvm_hist_bucket(ns)], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&e->lat[gvm_lat_bucket(ns)], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&e->lat_sum_ns, ns, __ATOMIC_RELAXED);
}

/* A node that failed (and may have missed writes) or came back after
 * failing (and may have lost pages), until the re-sync is done. */
static inline int gvm_node_untrusted(struct gvm_engine *e, uint32_t node)
{
	struct gvm_conn *c = e->tp.conns[node];

	return e->suspect[node] || (c && (c->failures || c->state == GVM_CONN_DOWN));
}

/* fault.c (engine thread) */
void gvm_fault_drain(struct gvm_engine *e);
void gvm_fault_discard(struct gvm_engine *e, uintptr_t start, uintptr_t end);
void gvm_fault_on_reply(struct gvm_engine *e, struct gvm_conn *c, struct gvm_fetch *f,
			const struct gvm_hdr *h, const uint8_t *payload);
void gvm_fault_on_fail(struct gvm_engine *e, struct gvm_fetch *f);
void gvm_fault_retry_parked(struct gvm_engine *e, uint64_t now);
/* Pages may have been dropped: fetches waiting for room go, faults
 * deferred on a dropped page are woken. */
void gvm_fault_resume(struct gvm_engine *e);
void gvm_fault_fini(struct gvm_engine *e);

/* A sealed READ reply handed to the opener (opener.c): the engine thread
 * fills it and gets it back; the opener thread writes buf (in place), bad
 * and nbad. */
struct gvm_open_job {
	struct gvm_open_job *next;
	struct gvm_conn *c;           /* the node that served it */
	struct gvm_fetch *f;
	struct gvm_region *rg;
	uint64_t page;
	uint32_t count;
	unsigned npages;              /* pages to open (set in todo) */
	unsigned nbad;                /* pages that failed */
	int inline_open;              /* the opener could not: open on the engine thread */
	uint8_t todo[GVM_BITMAP_BYTES(GVM_MAX_PAGES)];
	uint8_t bad[GVM_BITMAP_BYTES(GVM_MAX_PAGES)];
	uint8_t *buf;                 /* the payload: bitmap, pages, tags */
	size_t cap;
};

/* fault.c: open (check and decrypt in place) the pages set in todo of a
 * sealed READ payload; sets each failing one in bad; returns how many
 * failed. Any thread, with its own sealer. */
unsigned gvm_seal_open_window(struct gvm_sealer *s, struct gvm_region *rg, uint64_t page0,
			      unsigned count, uint8_t *payload, const uint8_t *todo, uint8_t *bad);
/* fault.c (engine thread): the opener finished a job. */
void gvm_fault_on_opened(struct gvm_engine *e, struct gvm_open_job *j);

/* opener.c */
int gvm_opener_start(struct gvm_opener **out);
int gvm_opener_fd(const struct gvm_opener *o);
void gvm_opener_stop(struct gvm_opener *o);   /* after the engine thread has ended */
/* Engine thread: queue the rest of a window (payload copied); -EAGAIN when
 * the queue is full, or not empty and only_if_idle (open inline then). */
int gvm_opener_submit(struct gvm_opener *o, struct gvm_conn *c, struct gvm_fetch *f,
		      const uint8_t *payload, size_t len, const uint8_t *todo, unsigned npages,
		      int only_if_idle);
void gvm_opener_complete(struct gvm_engine *e);  /* engine thread: its eventfd is readable */

/* writeback.c: gvm_wb_submit on any thread but the engine's, the rest on it */
int gvm_wb_submit(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint32_t n,
		  struct gvm_waiter *wt);
void gvm_wb_run_queue(struct gvm_engine *e);
void gvm_wb_on_reply(struct gvm_engine *e, struct gvm_conn *c, struct gvm_wb *w, const struct gvm_hdr *h);
void gvm_wb_on_fail(struct gvm_engine *e, struct gvm_wb *w);
void gvm_wb_retry_parked(struct gvm_engine *e, uint64_t now);
void gvm_wb_fini(struct gvm_engine *e);

/* resync.c (engine thread) */
void gvm_resync_mark_degraded(struct gvm_engine *e, struct gvm_region *rg, uint64_t stripe);
void gvm_resync_pump(struct gvm_engine *e, uint64_t now);
void gvm_resync_on_reply(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req,
			 const struct gvm_hdr *h, const uint8_t *payload);
void gvm_resync_on_fail(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req);
void gvm_resync_on_up(void *owner, struct gvm_conn *c);
void gvm_resync_fini(struct gvm_engine *e);

/*
 * Wait until the engine thread has finished whatever it was doing when this
 * was called (engine.c). An install wakes the faulting thread (UFFDIO_COPY)
 * just before it marks the page resident: a thread that writes the page and
 * then calls gvm_engine_flush() must not find it still unmarked.
 */
void gvm_engine_barrier(struct gvm_engine *e);

#endif
