/*
 * The evictor, as the engine sees it: started with what it may read and
 * the two things it may ask of the engine (gvm_evict_ops); it writes no
 * engine field. Calls go one way: the engine starts, kicks and stops the
 * evictor; the evictor reaches the engine only through its ops.
 */
#ifndef GVM_EVICT_H
#define GVM_EVICT_H

#include <pthread.h>
#include <stdint.h>

#include "pagestate.h"
#include "region.h"

/* Write-backs a thread waits for: the engine decrements `pending` (and
 * sets `err` on a failure) under `mu`, and broadcasts `cv`. */
struct gvm_waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t pending;
	uint64_t wake_at;     /* the waiter wants a wake-up when pending falls to this (under mu) */
	int err;
};

struct gvm_evict_ops {
	/* Copy pages [p, p+n) of rg (resident, within one stripe) on this
	 * thread and queue their WRITE to every replica; wt->pending counts
	 * it until it is done. 0 or -errno. */
	int (*write_back)(void *ctx, struct gvm_region *rg, uint64_t p, uint32_t n,
			  struct gvm_waiter *wt);
	/* Pages were dropped: faults waiting on them, and fetches waiting
	 * for room under the budget, may go on. */
	void (*dropped)(void *ctx);
};

struct gvm_evict_params {
	int uffd;                            /* the engine's userfaultfd (protect, move) */
	int use_batch;                       /* drop a batch with one process_madvise where the kernel can */
	int use_move;                        /* else drop with UFFDIO_MOVE (falls back to MADV_DONTNEED) */
	int use_locked;                      /* drop locked memory with MADV_DONTNEED_LOCKED (Linux 5.18+) */
	uint64_t budget_pages, high_pages, low_pages;
	struct gvm_region *const *regions;   /* the engine's regions ... */
	const unsigned *n_regions;           /* ... how many (read with acquire) */
	struct gvm_page_count *count;        /* the evictor writes `dropped` only */
	const struct gvm_evict_ops *ops;
	void *ctx;                           /* passed to ops */
};

struct gvm_evict_counters {
	uint64_t writebacks;  /* dirty pages written back and dropped */
	uint64_t clean_drops; /* clean pages dropped without a write */
};

struct gvm_evictor;

/* Start the evictor thread. 0 or -errno. */
int gvm_evictor_start(struct gvm_evictor **out, const struct gvm_evict_params *p);
/* Stop it and wait for its write-backs (the engine must still run). NULL is fine.
 * The engine thread may still kick it until that thread has ended. */
void gvm_evictor_stop(struct gvm_evictor *ev);
/* Free a stopped evictor, once nothing can kick it. NULL is fine. */
void gvm_evictor_free(struct gvm_evictor *ev);
/* Resident pages passed the high watermark (engine thread, on every such
 * install: cheap when the evictor is already busy). */
void gvm_evictor_kick(struct gvm_evictor *ev);
/* How pages are dropped: "process_madvise", "UFFDIO_MOVE" or "MADV_DONTNEED". */
const char *gvm_evictor_drop_method(const struct gvm_evictor *ev);
/* The evictor's own counters (racy reads, for display). */
void gvm_evictor_counters(const struct gvm_evictor *ev, struct gvm_evict_counters *c);

#endif
