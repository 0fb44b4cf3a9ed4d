/*
 * The evictor: keeps resident pages under the local memory budget.
 *
 * DESIGN
 * A thread of its own (it reads guest memory to write pages back, which the
 * engine thread must never do), woken when the engine's resident count
 * passes the high watermark; it evicts down to the low watermark, so faults
 * do not wait on it. Above the budget the engine only stops readahead.
 *
 * Policy: CLOCK over pages, in three classes (see collect()). PG_REF is set
 * on every install and on every write fault; the hand clears it (second
 * chance). A read of a resident page takes no fault, so it cannot set
 * PG_REF; what stands in for it is the refault distance: a page installed
 * again soon after its drop is "hot" (fault.c mark_refault()). Clean
 * pages that are not hot go first, then dirty ones, then hot ones.
 * Victims are written back in runs within a stripe, so one WRITE per run
 * goes to each replica (batched per node).
 *
 * Dirty tracking is userfaultfd write-protect (Linux 5.7+, also Ubuntu
 * 22.04's 5.15): every page is installed protected, the first write faults
 * and the engine marks the page PG_DIRTY and unprotects it. Eviction of one
 * page, against a concurrent writer:
 *   1. CAS  +EVICTING                      (the evictor owns the page)
 *   2. if DIRTY: clear DIRTY, protect, copy, WRITE to every live replica,
 *      wait for the acks. A write before the protect is in the copy; a
 *      write after it faults, and the engine sets DIRTY again.
 *   3. CAS  +DROPPING, only if not DIRTY   (else: keep the page, it is dirty)
 *      The engine sets DIRTY by CAS too and defers faults on DROPPING pages,
 *      so exactly one of "write lands" and "page drops" wins.
 *   4. drop (the whole batch in one process_madvise(MADV_DONTNEED) where
 *      the kernel has it, else run by run: UFFDIO_MOVE into a scratch area,
 *      else MADV_DONTNEED), clear the flags, let the engine replay deferred
 *      faults: they fault again as MISSING and read the written-back page.
 * A page whose content was never written is dropped without any write: the
 * pool has it (or it is zero).
 *
 * The evictor reaches the engine only through the ops it is given at start
 * (write_back, dropped); of the engine's state it reads the regions and the
 * resident count, and writes only page state (pagestate.h) and its own
 * `dropped` counter.
 */
#define LOG_PREFIX "evict: "
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "evict.h"
#include "log.h"
#include "placement.h"
#include "uffd.h"
#include "util.h"

#define EV_BATCH 512u
#define EV_PIPE  4u    /* batches whose write-backs are in flight at once */
#define EV_WINDOW_MAX (256u * 1024) /* dirty/hot pages the hand may pass over per batch */

struct victim {
	struct gvm_region *rg;
	uint64_t p;
	uint8_t dirty;
	uint8_t keep;
};

struct batch {
	struct victim v[EV_BATCH];
	unsigned n;
	int err;
	struct gvm_waiter wt; /* the batch's write-backs */
};

struct gvm_evictor {
	struct gvm_evict_params p;
	int pidfd;              /* this process, for process_madvise drops, or -1 */
	uint8_t *move_scratch;  /* else the destination of UFFDIO_MOVE drops, or NULL */
	struct iovec iov[EV_BATCH]; /* evict_finish(): the runs to drop ... */
	unsigned run_end[EV_BATCH]; /* ... the victim after each run ... */
	uint8_t refused[EV_BATCH];  /* ... and whether the kernel refused (part of) it */
	unsigned drop_warned;   /* drops refused so far (logged once) ... */
	unsigned pm_warned;     /* ... and batches process_madvise stopped short (logged once) */
	int advice;             /* process_madvise: MADV_DONTNEED, or _LOCKED once that was needed */
	pthread_t thread;
	int quit;
	pthread_mutex_t mu;     /* guards kick */
	pthread_cond_t cv;
	int kick;
	struct gvm_evict_counters ctr;
};

/* The evictor thread's working state. */
struct ev_state {
	unsigned ri;          /* CLOCK hand: region index ... */
	uint64_t hand;        /* ... and page */
	struct batch b[EV_PIPE];
	struct victim hot_cand[EV_BATCH]; /* collect(): hot pages noted */
	struct victim cand[EV_BATCH]; /* collect(): dirty pages noted ... */
	unsigned cand_ri[EV_BATCH];   /* ... their region index ... */
	uint64_t cand_at[EV_BATCH];   /* ... and scan position */
	unsigned head, pending; /* ring of batches in flight */
	unsigned refused;     /* victims the kernel would not drop this round: pause, do not spin */
	int fruitless;        /* the last collect() found no victim */
	uint64_t pending_pages;
};

void gvm_evictor_kick(struct gvm_evictor *ev)
{
	/* Called on the engine thread for every install above the high
	 * watermark: only signal when the evictor is not already busy. */
	if (__atomic_load_n(&ev->kick, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&ev->mu);
	ev->kick = 1;
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->mu);
}

static int claim(struct gvm_region *rg, uint64_t p, uint8_t s)
{
	return pg_cas(rg->pg, p, &s, (uint8_t)(s | PG_EVICTING));
}

static int victim_cmp(const void *a, const void *b)
{
	const struct victim *x = a, *y = b;

	if (x->rg != y->rg)
		return x->rg->id < y->rg->id ? -1 : 1;
	return x->p < y->p ? -1 : x->p > y->p;
}

/*
 * CLOCK in three classes, cheapest first:
 *   1. clean and not hot: dropping costs nothing now and, as far as the
 *      engine can tell, nothing later;
 *   2. dirty (a write-back each);
 *   3. hot: asked for again soon after its last drop, i.e. in the working
 *      set, whose hits the engine cannot see (a resident page takes no
 *      fault when read).
 * The hand takes class 1 pages and only notes the others, until it has a
 * batch or has noted `window` pages (a lap of the budget, at most
 * EV_WINDOW_MAX). Short of a batch it takes noted class 2 pages, then
 * class 3 ones, in hand order; when a class 2 page completes the batch the
 * hand stops right after it, so with only dirty pages around (a guest
 * writing) this is plain CLOCK. Victims are returned sorted, so neighbours
 * form runs for protect/drop.
 */
static unsigned collect(struct gvm_evictor *ev, struct ev_state *ws, struct victim *v)
{
	struct gvm_region *const *regions = ev->p.regions;
	unsigned nreg = __atomic_load_n(ev->p.n_regions, __ATOMIC_ACQUIRE), n = 0, nd = 0, nh = 0;
	uint64_t total = 0, scanned = 0, noted = 0, last_cheap = 0;
	uint64_t window = GVM_MAX((uint64_t)4 * EV_BATCH, GVM_MIN(ev->p.budget_pages, EV_WINDOW_MAX));

	for (unsigned i = 0; i < nreg; i++)
		total += regions[i]->npages;
	while (n < EV_BATCH && scanned < 2 * total && noted < window) {
		struct gvm_region *rg;
		uint8_t s;

		if (ws->ri >= nreg)
			ws->ri = 0;
		rg = regions[ws->ri];
		if (ws->hand >= rg->npages) {
			ws->hand = 0;
			ws->ri++;
			continue;
		}
		uint64_t p = ws->hand++;
		scanned++;
		s = pg_get(rg->pg, p);
		if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_EVICTING | PG_DROPPING | PG_LOST)) ||
		    p == __atomic_load_n(&rg->held, __ATOMIC_ACQUIRE))
			continue;
		if (s & PG_REF) {
			pg_clear(rg->pg, p, PG_REF);
			continue;
		}
		if (__atomic_load_n(&rg->hot[p], __ATOMIC_RELAXED)) {
			noted++;
			if (nh < EV_BATCH)
				ws->hot_cand[nh++] = (struct victim){ rg, p, 0, 0 };
			continue;
		}
		if (s & PG_DIRTY) {
			noted++;
			if (nd < EV_BATCH) {
				ws->cand[nd] = (struct victim){ rg, p, 0, 0 };
				ws->cand_ri[nd] = ws->ri;
				ws->cand_at[nd++] = scanned;
			}
			continue;
		}
		if (!claim(rg, p, s))
			continue;
		v[n++] = (struct victim){ rg, p, 0, 0 };
		last_cheap = scanned;
	}
	for (unsigned k = 0; k < nd + nh && n < EV_BATCH; k++) {
		struct victim *c = k < nd ? &ws->cand[k] : &ws->hot_cand[k - nd];
		uint8_t s = pg_get(c->rg->pg, c->p);
		if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_EVICTING | PG_DROPPING | PG_LOST | PG_REF)) ||
		    c->p == __atomic_load_n(&c->rg->held, __ATOMIC_ACQUIRE) || !claim(c->rg, c->p, s))
			continue;
		v[n++] = (struct victim){ c->rg, c->p, (uint8_t)!!(s & PG_DIRTY), 0 };
		if (n == EV_BATCH && k < nd && ws->cand_at[k] > last_cheap) {
			/* A dirty page completed the batch: resume right after it. */
			ws->ri = ws->cand_ri[k];
			ws->hand = c->p + 1;
		}
	}
	qsort(v, n, sizeof(*v), victim_cmp);
	return n;
}

/* Consecutive victims [i, j) in one region with contiguous pages and the
 * same value of `dirty` (when only_dirty), optionally within one stripe. */
static unsigned run_end(const struct victim *v, unsigned i, unsigned n, int only_dirty, int stripe)
{
	unsigned j = i + 1;

	while (j < n && v[j].rg == v[i].rg && v[j].p == v[j - 1].p + 1 && !v[j].keep &&
	       (!only_dirty || v[j].dirty) &&
	       (!stripe || v[j].p / GVM_STRIPE_PAGES == v[i].p / GVM_STRIPE_PAGES))
		j++;
	return j;
}

static int protect(struct gvm_evictor *ev, struct gvm_region *rg, uint64_t p, uint64_t n)
{
	struct uffdio_writeprotect wp = { .range = { rg->base + (p << GVM_PAGE_SHIFT), n << GVM_PAGE_SHIFT },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	if (ioctl(ev->p.uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		pr_perror("UFFDIO_WRITEPROTECT");
		return -errno;
	}
	return 0;
}

/*
 * Drop [a, a+len). With UFFDIO_MOVE, it is moved to the scratch area at
 * *moved (bytes of this batch moved so far), atomically and without a copy;
 * the caller empties the scratch once per batch (scratch_empty): each
 * MADV_DONTNEED is a TLB shootdown. Returns -1 if the kernel refused some
 * of it (which part: see evict_finish), else 0.
 */
static int drop(struct gvm_evictor *ev, uintptr_t a, size_t len, size_t *moved)
{
	if (ev->move_scratch) {
		/* Holes: pages the owner dropped itself (a madvise that did not
		 * go through gvm_engine_discard). */
		struct uffdio_move mv = { .dst = (uintptr_t)ev->move_scratch + *moved, .src = a, .len = len,
					  .mode = UFFDIO_MOVE_MODE_DONTWAKE | UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES };
		if (ioctl(ev->p.uffd, UFFDIO_MOVE, &mv) == 0) {
			*moved += len;
			return 0;
		}
		/* Partly moved, or refused (e.g. a huge page that could not be
		 * split): DONTNEED whatever is left. */
		if (mv.move > 0)
			*moved += (size_t)mv.move;
		a += mv.move > 0 ? (size_t)mv.move : 0;
		len -= mv.move > 0 ? (size_t)mv.move : 0;
	}
	/* MADV_DONTNEED refuses locked memory (QEMU's -overcommit mem-lock=on). */
	if (!len || gvm_madvise(a, len, MADV_DONTNEED) == 0 ||
	    (ev->p.use_locked && gvm_madvise(a, len, MADV_DONTNEED_LOCKED) == 0))
		return 0;
	if (!ev->drop_warned++)
		pr_perror("madvise(MADV_DONTNEED %#lx+%zu): keeping locked pages resident, "
			  "retrying every 100 ms", (unsigned long)a, len);
	/* The run may span mappings, the refusing one first: page by page,
	 * so only the pages refused stay. */
	for (size_t off = 0; len > GVM_PAGE_SIZE && off < len; off += GVM_PAGE_SIZE)
		(void)gvm_madvise(a + off, GVM_PAGE_SIZE, MADV_DONTNEED); /* mincore tells (evict_finish) */
	return -1;
}

/* Free what a batch's drops moved to the scratch area. */
static void scratch_empty(struct gvm_evictor *ev, size_t moved)
{
	if (moved && gvm_madvise((uintptr_t)ev->move_scratch, moved, MADV_DONTNEED) < 0)
		pr_perror("madvise(scratch)");
}

/*
 * Drop a batch's runs iov[0, n). Where the kernel takes it (ev->pidfd), one
 * process_madvise(MADV_DONTNEED) for all of them: recent kernels (6.18 here) flush the
 * TLB once for the whole vector, where a drop per run (UFFDIO_MOVE or
 * madvise) is a shootdown per run, an IPI to the CPU running the guest, and
 * random victims are runs of one page (measured here: 512 one-page
 * madvises 2.1 ms and 1024 IPIs, one vector of them 0.33 ms and 2).
 * Whatever the vector left is dropped run by run. refused[i] is set if the
 * kernel would not drop (all or part of) run i.
 */
static void drop_runs(struct gvm_evictor *ev, struct iovec *iov, unsigned n, uint8_t *refused)
{
	size_t moved = 0;
	unsigned i = 0;

	memset(refused, 0, n);
	if (ev->pidfd >= 0 && n) {
		long r = gvm_process_madvise(ev->pidfd, iov, n, ev->advice);
		/* Locked memory (QEMU's -overcommit mem-lock=on) takes only
		 * MADV_DONTNEED_LOCKED (Linux 5.18+): from then on, that. */
		if (r == -EINVAL && ev->advice == MADV_DONTNEED && ev->p.use_locked &&
		    (r = gvm_process_madvise(ev->pidfd, iov, n, MADV_DONTNEED_LOCKED)) >= 0)
			ev->advice = MADV_DONTNEED_LOCKED;
		size_t done = r > 0 ? (size_t)r : 0;

		while (i < n && done >= iov[i].iov_len)
			done -= iov[i++].iov_len;
		if (i < n && !ev->pm_warned++)
			pr_warn("process_madvise(MADV_DONTNEED): %s after %u of %u runs; dropping the rest one by one",
				r < 0 ? strerror((int)-r) : "stopped", i, n);
		if (i < n) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + done;
			iov[i].iov_len -= done;
		}
	}
	for (; i < n; i++)
		refused[i] = drop(ev, (uintptr_t)iov[i].iov_base, iov[i].iov_len, &moved) < 0;
	scratch_empty(ev, moved);
}

/* Steps 1-2 for a batch: protect and copy the dirty victims and hand their
 * write-backs to the engine, without waiting. */
static void evict_begin(struct gvm_evictor *ev, struct batch *b)
{
	struct victim *v = b->v;
	unsigned i, j, n = b->n;
	int err = 0;

	b->wt.pending = 0;
	b->wt.err = 0;
	/* 2. dirty pages: clear DIRTY, protect, copy and write back. */
	for (i = 0; i < n; i++)
		if (v[i].dirty)
			pg_clear(v[i].rg->pg, v[i].p, PG_DIRTY);
	for (i = 0; i < n; i = j) {
		j = v[i].dirty ? run_end(v, i, n, 1, 0) : i + 1;
		if (v[i].dirty && protect(ev, v[i].rg, v[i].p, v[j - 1].p - v[i].p + 1))
			for (unsigned k = i; k < j; k++)
				v[k].keep = 1;
	}
	for (i = 0; i < n && !err; i = j) {
		j = (v[i].dirty && !v[i].keep) ? run_end(v, i, n, 1, 1) : i + 1;
		if (!v[i].dirty || v[i].keep)
			continue;
		err = ev->p.ops->write_back(ev->p.ctx, v[i].rg, v[i].p, (uint32_t)(j - i), &b->wt);
	}
	b->err = err;
}

/*
 * The kernel refused to drop (part of) the n victims at v, one run (e.g.
 * locked memory on a kernel without MADV_DONTNEED_LOCKED; a run across two
 * mappings may be half dropped). Those still mapped stay resident: clean
 * (written back if they were dirty), still protected. The rest count as
 * dropped: one counted resident but gone would read as zero at its next
 * fault (fault.c refill_zero), where one counted dropped but still mapped
 * is only memory the budget does not see (its next write zaps it). So if
 * mincore fails, all count as dropped. Returns how many stay.
 */
static unsigned keep_present(struct victim *v, unsigned n)
{
	unsigned char vec[EV_BATCH];
	unsigned kept = 0;

	if (mincore((void *)(v[0].rg->base + (v[0].p << GVM_PAGE_SHIFT)), (size_t)n << GVM_PAGE_SHIFT, vec) < 0) {
		pr_perror("mincore");
		return 0;
	}
	for (unsigned k = 0; k < n; k++) {
		if (!(vec[k] & 1))
			continue;
		/* Last choice from now on, like a page in the working set. */
		__atomic_store_n(&v[k].rg->hot[v[k].p], 1, __ATOMIC_RELAXED);
		pg_clear(v[k].rg->pg, v[k].p, PG_EVICTING | PG_DROPPING);
		v[k].keep = 1;
		kept++;
	}
	return kept;
}

/* Steps 2 (wait) to 4 for a batch begun earlier. Returns how many victims
 * the kernel would not drop. */
static unsigned evict_finish(struct gvm_evictor *ev, struct batch *b)
{
	struct victim *v = b->v;
	uint64_t dropped = 0, written = 0, clean = 0;
	unsigned i, j, n = b->n, refused = 0;
	int err = b->err;

	pthread_mutex_lock(&b->wt.mu);
	while (b->wt.pending)
		pthread_cond_wait(&b->wt.cv, &b->wt.mu);
	pthread_mutex_unlock(&b->wt.mu);
	if (!err)
		err = b->wt.err;
	if (err) {
		pr_warn("write-back failed (%s): keeping %u pages resident", strerror(-err), n);
		for (i = 0; i < n; i++)
			v[i].keep = 1;
	}

	/* 3. claim the drop, unless a write came in meanwhile. */
	for (i = 0; i < n; i++) {
		uint8_t *pg = v[i].rg->pg;
		uint64_t p = v[i].p;
		uint8_t s = pg_get(pg, p);
		for (;;) {
			if (v[i].keep || (s & PG_DIRTY)) {
				if (v[i].dirty && !(s & PG_DIRTY))
					pg_set(pg, p, PG_DIRTY); /* unknown to the pool */
				pg_clear(pg, p, PG_EVICTING);
				v[i].keep = 1;
				break;
			}
			if (pg_cas(pg, p, &s, (uint8_t)(s | PG_DROPPING)))
				break;
		}
	}

	/* 4. drop, then release the pages to the engine. */
	unsigned nrun = 0;
	for (i = 0; i < n; i = j) {
		if (v[i].keep) {
			j = i + 1;
			continue;
		}
		j = run_end(v, i, n, 0, 0);
		ev->run_end[nrun] = j;
		ev->iov[nrun++] = (struct iovec){ (void *)(v[i].rg->base + (v[i].p << GVM_PAGE_SHIFT)),
						  (size_t)(j - i) << GVM_PAGE_SHIFT };
	}
	drop_runs(ev, ev->iov, nrun, ev->refused);
	for (unsigned r = 0; r < nrun; r++)
		if (ev->refused[r])
			refused += keep_present(&v[ev->run_end[r] - (ev->iov[r].iov_len >> GVM_PAGE_SHIFT)],
						 ev->iov[r].iov_len >> GVM_PAGE_SHIFT);
	uint32_t now = (uint32_t)__atomic_load_n(&ev->p.count->dropped, __ATOMIC_RELAXED) | 1;
	for (i = 0; i < n; i++) {
		if (v[i].keep)
			continue;
		__atomic_store_n(&v[i].rg->estamp[v[i].p], now, __ATOMIC_RELAXED);
		__atomic_store_n(&v[i].rg->hot[v[i].p], 0, __ATOMIC_RELAXED);
		pg_clear(v[i].rg->pg, v[i].p, PG_RESIDENT | PG_EVICTING | PG_DROPPING | PG_REF | PG_DIRTY);
		dropped++;
		if (v[i].dirty)
			written++;
		else
			clean++;
	}
	__atomic_fetch_add(&ev->p.count->dropped, dropped, __ATOMIC_RELEASE);
	__atomic_fetch_add(&ev->ctr.writebacks, written, __ATOMIC_RELAXED);
	__atomic_fetch_add(&ev->ctr.clean_drops, clean, __ATOMIC_RELAXED);
	ev->p.ops->dropped(ev->p.ctx); /* replay faults deferred on DROPPING pages */
	return refused;
}

static void finish_oldest(struct gvm_evictor *ev, struct ev_state *ws)
{
	struct batch *b = &ws->b[ws->head];

	ws->refused += evict_finish(ev, b);
	ws->pending_pages -= b->n;
	ws->head = (ws->head + 1) % EV_PIPE;
	ws->pending--;
}

static void *evictor_main(void *arg)
{
	struct gvm_evictor *ev = arg;
	struct ev_state *ws = calloc(1, sizeof(*ws));

	if (!ws) {
		pr_err("out of memory: no eviction");
		return NULL;
	}
	for (unsigned i = 0; i < EV_PIPE; i++) {
		pthread_mutex_init(&ws->b[i].wt.mu, NULL);
		pthread_cond_init(&ws->b[i].wt.cv, NULL);
	}
	while (!__atomic_load_n(&ev->quit, __ATOMIC_ACQUIRE)) {
		struct timespec ts;

		if (ws->refused) {
			/* The kernel would not drop pages (see drop()): retrying at
			 * once would only spin. */
			struct timespec pause = { 0, 100 * 1000000 };
			ws->refused = 0;
			while (nanosleep(&pause, &pause) < 0 && errno == EINTR)
				;
		}
		pthread_mutex_lock(&ev->mu);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		/* After a round that found nothing to evict (every page in flight,
		 * held or lost), wait for the next install even above the mark. */
		while (!ev->kick && !__atomic_load_n(&ev->quit, __ATOMIC_ACQUIRE) &&
		       (ws->fruitless || pg_resident(ev->p.count) <= ev->p.high_pages))
			if (pthread_cond_timedwait(&ev->cv, &ev->mu, &ts) == ETIMEDOUT)
				break;
		pthread_mutex_unlock(&ev->mu);
		/* Keep up to EV_PIPE batches in flight: the next batch is copied
		 * and sent while the previous ones wait for their acks. */
		while (!__atomic_load_n(&ev->quit, __ATOMIC_ACQUIRE) &&
		       pg_resident(ev->p.count) + __atomic_load_n(&ev->p.count->reserved, __ATOMIC_RELAXED) >
			       ev->p.low_pages + ws->pending_pages) {
			if (ws->pending == EV_PIPE) {
				finish_oldest(ev, ws);
				continue;
			}
			struct batch *b = &ws->b[(ws->head + ws->pending) % EV_PIPE];
			b->n = collect(ev, ws, b->v);
			ws->fruitless = !b->n;
			if (!b->n)
				break;
			evict_begin(ev, b);
			ws->pending++;
			ws->pending_pages += b->n;
		}
		while (ws->pending)
			finish_oldest(ev, ws);
		__atomic_store_n(&ev->kick, 0, __ATOMIC_RELAXED);
	}
	for (unsigned i = 0; i < EV_PIPE; i++) {
		pthread_mutex_destroy(&ws->b[i].wt.mu);
		pthread_cond_destroy(&ws->b[i].wt.cv);
	}
	free(ws);
	return NULL;
}

/* A scratch area registered with the uffd for UFFDIO_MOVE to move pages
 * into, or NULL (drops then use MADV_DONTNEED). */
static uint8_t *move_scratch_map(int uffd)
{
	size_t len = (size_t)EV_BATCH << GVM_PAGE_SHIFT;
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return NULL;
	/* UFFDIO_MOVE wants its destination registered with this uffd. */
	reg.range.start = (uintptr_t)m;
	reg.range.len = len;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
		pr_warn("UFFDIO_MOVE scratch: %s; dropping with MADV_DONTNEED", strerror(errno));
		munmap(m, len);
		return NULL;
	}
	return m;
}

int gvm_evictor_start(struct gvm_evictor **out, const struct gvm_evict_params *p)
{
	struct gvm_evictor *ev = calloc(1, sizeof(*ev));
	int r;

	if (!ev)
		return -ENOMEM;
	ev->p = *p;
	ev->pidfd = -1;
	ev->advice = MADV_DONTNEED;
	if (p->use_batch) {
		r = gvm_self_madvise_fd();
		if (r >= 0)
			ev->pidfd = r;
		else
			pr_debug("no batched drops: %s", strerror(-r));
	}
	if (ev->pidfd < 0 && p->use_move)
		ev->move_scratch = move_scratch_map(p->uffd);
	pthread_mutex_init(&ev->mu, NULL);
	pthread_cond_init(&ev->cv, NULL);
	r = pthread_create(&ev->thread, NULL, evictor_main, ev);
	if (r) {
		pr_err("pthread_create(evictor): %s", strerror(r));
		goto err_free;
	}
	r = pthread_setname_np(ev->thread, "gvm-evict"); /* a failure only loses the name */
	if (r)
		pr_debug("pthread_setname_np: %s", strerror(r));
	*out = ev;
	return 0;

err_free:
	pthread_mutex_destroy(&ev->mu);
	pthread_cond_destroy(&ev->cv);
	if (ev->move_scratch)
		munmap(ev->move_scratch, (size_t)EV_BATCH << GVM_PAGE_SHIFT);
	if (ev->pidfd >= 0)
		close(ev->pidfd);
	free(ev);
	return -r;
}

void gvm_evictor_stop(struct gvm_evictor *ev)
{
	if (!ev)
		return;
	__atomic_store_n(&ev->quit, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&ev->mu);
	ev->kick = 1;
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->mu);
	pthread_join(ev->thread, NULL);
}

void gvm_evictor_free(struct gvm_evictor *ev)
{
	if (!ev)
		return;
	if (ev->move_scratch)
		munmap(ev->move_scratch, (size_t)EV_BATCH << GVM_PAGE_SHIFT);
	if (ev->pidfd >= 0)
		close(ev->pidfd);
	pthread_mutex_destroy(&ev->mu);
	pthread_cond_destroy(&ev->cv);
	free(ev);
}

const char *gvm_evictor_drop_method(const struct gvm_evictor *ev)
{
	return ev->pidfd >= 0 ? "process_madvise" : ev->move_scratch ? "UFFDIO_MOVE" : "MADV_DONTNEED";
}

void gvm_evictor_counters(const struct gvm_evictor *ev, struct gvm_evict_counters *c)
{
	if (!ev) {
		*c = (struct gvm_evict_counters){ 0 };
		return;
	}
	c->writebacks = __atomic_load_n(&ev->ctr.writebacks, __ATOMIC_RELAXED);
	c->clean_drops = __atomic_load_n(&ev->ctr.clean_drops, __ATOMIC_RELAXED);
}
