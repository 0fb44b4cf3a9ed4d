/*
 * An attached range of guest memory and its per-page state: shared by the
 * engine's files and the evictor. Fields are written by the engine thread
 * unless said otherwise; pg[], estamp[] and hot[] are the page state both
 * threads use (pagestate.h), always with atomics.
 */
#ifndef GVM_REGION_H
#define GVM_REGION_H

#include <stddef.h>
#include <stdint.h>

#include "pagestate.h"
#include "proto.h"
#include "seal.h"

/* Per-stripe flags (one byte per stripe, engine thread only). */
#define STRIPE_WRITTEN  0x01  /* this engine wrote pages of it to the pool */
#define STRIPE_DEGRADED 0x02  /* some replica may lack it: re-sync from a live one */
#define STRIPE_RESYNC   0x04  /* a re-sync copy is in flight */
#define STRIPE_STALE    0x08  /* written back during that copy: the copy must not land */

/* Prefetched pages held back per region, to learn whether windows pay. */
#define GVM_PROBES 4
/* Recent read faults remembered per region, to see writes follow reads. */
#define GVM_READ_RING 8

/* A probe page keeps PG_INFLIGHT while it is held (like the readahead
 * marker), so the evictor, which skips pages in flight, never takes it, and
 * no other fetch asks for it. Engine thread only. */
struct gvm_probe {
	uint64_t page;        /* held back, or UINT64_MAX */
	int zero;             /* the page is all zero */
	uint8_t buf[GVM_PAGE_SIZE];
};

struct gvm_region {
	uint64_t id;          /* region id on the wire */
	uint8_t *stripe;      /* per-stripe STRIPE_* flags */
	int fresh;            /* GVM_ATTACH_FRESH: unwritten stripes are zero, locally */
	uint64_t nstripes;
	uintptr_t base;       /* first byte */
	size_t len;
	uint64_t npages;
	uint8_t *pg;          /* npages PG_* flag bytes */
	uint32_t *estamp;     /* with a budget: eviction clock when each page was last dropped (0: never; evictor writes) */
	uint8_t *hot;         /* with a budget: 1 = refaulted soon after a drop (engine sets, evictor clears) */
	uint8_t *zeroed;      /* bitmap: discarded by the owner since last written, so it reads as
	                       * zero and the pool's copy is stale (fault.c "Discards"; written by
	                       * the engine thread with atomics) */
	uint64_t last_win;    /* last faulting window (UINT64_MAX: none) */
	uint64_t last_p;      /* page of the last missing-page fault (UINT64_MAX: none) ... */
	uint64_t next_p;      /* ... and the first page after what it fetched */
	uint64_t ra_next;     /* first window readahead has not requested */
	int write_bias;       /* recent faults: +1 per write, -1 per read, in [0, 16] */
	uint64_t held;        /* readahead marker page held back, or UINT64_MAX (evictor reads it racily: skips it) */
	int held_zero;        /* the held page is all zero */
	uint8_t held_buf[GVM_PAGE_SIZE];
	/* Adaptive window (fault.c, "Window size"): */
	unsigned win;         /* pages a non-sequential fault fetches, 1..prefetch (power of two) */
	unsigned run_len;     /* faults in a row that continued a run */
	unsigned explore;     /* non-sequential faults since a window of 1 last tried 2 */
	unsigned probe_next;  /* the probe slot the next window takes */
	struct gvm_probe probe[GVM_PROBES];
	/* Read-modify-write (fault.c, "Writes after reads"): */
	int rmw_score;        /* in [0, 16]: high when read faults are followed by writes */
	unsigned rmw_tick;    /* read faults counted, to keep probing while installing dirty */
	unsigned read_next;
	uint64_t read_ring[GVM_READ_RING]; /* pages of recent protected read-fault installs */
	/* Sealed pages (seal.h): */
	uint32_t *ver;        /* per page: the version last written (atomics: write-back submitters and the engine) */
	uint32_t *ver_done;   /* per page: the version of its last write-back the replicas acked; a
	                       * node may still hold any version from this one to ver (a flush in
	                       * flight while the page was dropped clean) */
	uint8_t seal_key[32]; /* AES-256-GCM key of this region's pages */
	struct gvm_sealer *opener; /* engine thread: checks and decrypts READ replies */
};


/* Page p was discarded since last written (gvm_region.zeroed); any thread. */
static inline int gvm_region_zeroed(struct gvm_region *rg, uint64_t p)
{
	return (__atomic_load_n(&rg->zeroed[p >> 3], __ATOMIC_ACQUIRE) >> (p & 7)) & 1;
}

#endif
