/* The engine's insides: shared by engine.c and the evictor only. */
#ifndef GVM_ENGINE_INT_H
#define GVM_ENGINE_INT_H

#include <pthread.h>
#include <stdint.h>

#include "giantvm.h"
#include "evict.h"
#include "placement.h"
#include "pool_int.h"
#include "proto.h"
#include "region.h"
#include "transport.h"

#define GVM_MAX_REGIONS 64
#define GVM_HIST_BUCKETS 256

/* What a request's ctx points at (first byte of each). */
enum { CTX_FETCH = 1, CTX_WB, CTX_RESYNC };

struct gvm_fetch {            /* one READ of a window, until installed */
	uint8_t kind;         /* CTX_FETCH */
	struct gvm_region *rg;
	uint64_t page;        /* first page */
	uint32_t count;
	uint8_t tries;        /* replicas tried this round */
	uint8_t parked;
	uint8_t room;         /* parked waiting for room under the budget */
	uint8_t hold;         /* readahead marker window: hold its first page */
	uint8_t writable;     /* install zero pages writable (COPY), not ZEROPAGE */
	uint8_t write_fault;  /* fault_page waits on a write: install it dirty, unprotected */
	uint32_t reserved;    /* pages counted against the budget while in flight */
	uint64_t fault_page;  /* page a thread waits on, or UINT64_MAX */
	uint64_t fault_ns;    /* when that fault was read (0: readahead) */
	uint64_t start_ns;    /* first attempt, for the deadline */
	uint64_t retry_ns;    /* parked until */
	struct gvm_fetch *next;
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
};

struct gvm_resync {           /* copy one stripe from a live replica to the others */
	uint8_t kind;         /* CTX_RESYNC */
	struct gvm_region *rg;
	uint64_t stripe;
	uint32_t targets[GVM_MAX_REPLICAS];
	unsigned n_targets;
	unsigned outstanding, acks;
};

struct gvm_engine_counters {
	uint64_t faults, pages_fetched, zero_pages, readahead_pages, bytes_in, bytes_out;
	uint64_t errors, lost_pages, resynced_stripes;
	uint64_t local_zero_pages, wp_faults;
};

struct gvm_engine {
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
	int lost_policy;
	void (*on_fatal)(const char *why, void *arg);
	void *fatal_arg;
	uint64_t idle_ns;         /* close node connections idle this long */
	uint64_t budget_pages;    /* 0 = unlimited */
	uint64_t high_pages;      /* evictor starts above this ... */
	uint64_t low_pages;       /* ... and stops at this */
	int wp;                   /* regions registered with write-protect (dirty tracking) */
	struct gvm_evictor *ev;   /* with a budget */
	uint64_t *deferred;       /* fault addresses waiting for a drop to finish (bit 0: write) */
	size_t n_deferred, cap_deferred;
	uint8_t *suspect;         /* per node: came back after failing, may have lost pages */
	uint64_t degraded;        /* stripes with STRIPE_DEGRADED */
	unsigned rs_region;       /* re-sync cursor: region ... */
	uint64_t rs_stripe;       /* ... and stripe */
	unsigned rs_inflight;     /* re-sync copies in flight */
	int rs_found;             /* the current pass met a degraded stripe */
	struct gvm_region *regions[GVM_MAX_REGIONS];
	unsigned n_regions;       /* published with release after regions[] */
	struct gvm_transport tp;
	struct gvm_fetch *free_fetch;
	struct gvm_fetch *parked; /* fetches waiting for a replica to come back */
	struct gvm_wb *parked_wb;
	uint64_t inflight;        /* fetches outstanding */
	struct gvm_page_count pages; /* resident pages, all regions: installed here, dropped by the evictor */
	uint64_t reserved;        /* pages of fetches in flight (engine thread only) */
	pthread_mutex_t cmd_mu;   /* guards cmd_head/cmd_tail and wb_spare */
	struct gvm_wb *cmd_head, *cmd_tail;
	struct gvm_wb *wb_spare;  /* stripe-sized write-back buffers for reuse */
	unsigned n_wb_spare;
	struct gvm_engine_counters ctr;
	uint64_t hist[GVM_HIST_BUCKETS]; /* fault latency, quarter-octave buckets of ns */
};

#endif
