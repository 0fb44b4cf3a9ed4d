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
 * again soon after its drop is "hot" (engine.c mark_refault()). Clean
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
 *   4. drop (UFFDIO_MOVE into a scratch area where the kernel has it, else
 *      MADV_DONTNEED), clear the flags, let the engine replay deferred
 *      faults: they fault again as MISSING and read the written-back page.
 * A page whose content was never written is dropped without any write: the
 * pool has it (or it is zero).
 */
#define LOG_PREFIX "evict: "
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "log.h"
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

struct ev_state {
	unsigned ri;          /* CLOCK hand: region index ... */
	uint64_t hand;        /* ... and page */
	struct batch b[EV_PIPE];
	struct victim hot_cand[EV_BATCH]; /* collect(): hot pages noted */
	struct victim cand[EV_BATCH]; /* collect(): dirty pages noted ... */
	unsigned cand_ri[EV_BATCH];   /* ... their region index ... */
	uint64_t cand_at[EV_BATCH];   /* ... and scan position */
	unsigned head, pending; /* ring of batches in flight */
	uint64_t pending_pages;
};

static inline uint8_t pg_load(struct gvm_region *rg, uint64_t p)
{
	return __atomic_load_n(&rg->pg[p], __ATOMIC_ACQUIRE);
}

void gvm_evictor_kick(struct gvm_engine *e)
{
	/* Called on the engine thread for every install above the high
	 * watermark: only signal when the evictor is not already busy. */
	if (__atomic_load_n(&e->ev_kick, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&e->ev_mu);
	e->ev_kick = 1;
	pthread_cond_signal(&e->ev_cv);
	pthread_mutex_unlock(&e->ev_mu);
}

static int claim(struct gvm_region *rg, uint64_t p, uint8_t s)
{
	return __atomic_compare_exchange_n(&rg->pg[p], &s, (uint8_t)(s | PG_EVICTING), 0, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE);
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
static unsigned collect(struct gvm_engine *e, struct ev_state *ev, struct victim *v)
{
	unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE), n = 0, nd = 0, nh = 0;
	uint64_t total = 0, scanned = 0, noted = 0, last_cheap = 0;
	uint64_t window = GVM_MAX((uint64_t)4 * EV_BATCH, GVM_MIN(e->budget_pages, EV_WINDOW_MAX));

	for (unsigned i = 0; i < nreg; i++)
		total += e->regions[i]->npages;
	while (n < EV_BATCH && scanned < 2 * total && noted < window) {
		struct gvm_region *rg;
		uint8_t s;

		if (ev->ri >= nreg)
			ev->ri = 0;
		rg = e->regions[ev->ri];
		if (ev->hand >= rg->npages) {
			ev->hand = 0;
			ev->ri++;
			continue;
		}
		uint64_t p = ev->hand++;
		scanned++;
		s = pg_load(rg, p);
		if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_EVICTING | PG_DROPPING | PG_LOST)) ||
		    p == rg->held)
			continue;
		if (s & PG_REF) {
			__atomic_fetch_and(&rg->pg[p], (uint8_t)~PG_REF, __ATOMIC_RELAXED);
			continue;
		}
		if (__atomic_load_n(&rg->hot[p], __ATOMIC_RELAXED)) {
			noted++;
			if (nh < EV_BATCH)
				ev->hot_cand[nh++] = (struct victim){ rg, p, 0, 0 };
			continue;
		}
		if (s & PG_DIRTY) {
			noted++;
			if (nd < EV_BATCH) {
				ev->cand[nd] = (struct victim){ rg, p, 0, 0 };
				ev->cand_ri[nd] = ev->ri;
				ev->cand_at[nd++] = scanned;
			}
			continue;
		}
		if (!claim(rg, p, s))
			continue;
		v[n++] = (struct victim){ rg, p, 0, 0 };
		last_cheap = scanned;
	}
	for (unsigned k = 0; k < nd + nh && n < EV_BATCH; k++) {
		struct victim *c = k < nd ? &ev->cand[k] : &ev->hot_cand[k - nd];
		uint8_t s = pg_load(c->rg, c->p);
		if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_EVICTING | PG_DROPPING | PG_LOST | PG_REF)) ||
		    c->p == c->rg->held || !claim(c->rg, c->p, s))
			continue;
		v[n++] = (struct victim){ c->rg, c->p, (uint8_t)!!(s & PG_DIRTY), 0 };
		if (n == EV_BATCH && k < nd && ev->cand_at[k] > last_cheap) {
			/* A dirty page completed the batch: resume right after it. */
			ev->ri = ev->cand_ri[k];
			ev->hand = c->p + 1;
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

static int protect(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint64_t n)
{
	struct uffdio_writeprotect wp = { .range = { rg->base + (p << GVM_PAGE_SHIFT), n << GVM_PAGE_SHIFT },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	if (ioctl(e->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		pr_perror("UFFDIO_WRITEPROTECT");
		return -errno;
	}
	return 0;
}

static void drop(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint64_t n)
{
	uintptr_t a = rg->base + (p << GVM_PAGE_SHIFT);
	size_t len = n << GVM_PAGE_SHIFT;

	if (e->use_move) {
		/* Moving the pages out frees nothing by itself but detaches them
		 * atomically and without a copy; then the scratch is emptied. */
		struct uffdio_move mv = { .dst = (uintptr_t)e->move_scratch, .src = a, .len = len,
					  .mode = UFFDIO_MOVE_MODE_DONTWAKE };
		if (ioctl(e->uffd, UFFDIO_MOVE, &mv) == 0) {
			if (madvise(e->move_scratch, len, MADV_DONTNEED) < 0)
				pr_perror("madvise(scratch)");
			return;
		}
		/* Partly moved, or refused (e.g. a huge page that could not be
		 * split): DONTNEED whatever is left. */
		if (mv.move > 0 && madvise(e->move_scratch, (size_t)mv.move, MADV_DONTNEED) < 0)
			pr_perror("madvise(scratch)");
	}
	if (madvise((void *)a, len, MADV_DONTNEED) < 0)
		pr_perror("madvise(MADV_DONTNEED %#lx+%zu)", (unsigned long)a, len);
}

/* Steps 1-2 for a batch: protect and copy the dirty victims and hand their
 * write-backs to the engine, without waiting. */
static void evict_begin(struct gvm_engine *e, struct batch *b)
{
	struct victim *v = b->v;
	unsigned i, j, n = b->n;
	int err = 0;

	b->wt.pending = 0;
	b->wt.err = 0;
	/* 2. dirty pages: clear DIRTY, protect, copy and write back. */
	for (i = 0; i < n; i++)
		if (v[i].dirty)
			__atomic_fetch_and(&v[i].rg->pg[v[i].p], (uint8_t)~PG_DIRTY, __ATOMIC_ACQ_REL);
	for (i = 0; i < n; i = j) {
		j = v[i].dirty ? run_end(v, i, n, 1, 0) : i + 1;
		if (v[i].dirty && protect(e, v[i].rg, v[i].p, v[j - 1].p - v[i].p + 1))
			for (unsigned k = i; k < j; k++)
				v[k].keep = 1;
	}
	for (i = 0; i < n && !err; i = j) {
		j = (v[i].dirty && !v[i].keep) ? run_end(v, i, n, 1, 1) : i + 1;
		if (!v[i].dirty || v[i].keep)
			continue;
		err = gvm_engine_wb_run(e, v[i].rg, v[i].p, (uint32_t)(j - i), &b->wt);
	}
	b->err = err;
}

/* Steps 2 (wait) to 4 for a batch begun earlier. */
static void evict_finish(struct gvm_engine *e, struct batch *b)
{
	struct victim *v = b->v;
	uint64_t dropped = 0, written = 0, clean = 0;
	unsigned i, j, n = b->n;
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
		uint8_t *f = &v[i].rg->pg[v[i].p];
		uint8_t s = __atomic_load_n(f, __ATOMIC_ACQUIRE);
		for (;;) {
			if (v[i].keep || (s & PG_DIRTY)) {
				if (v[i].dirty && !(s & PG_DIRTY))
					__atomic_fetch_or(f, PG_DIRTY, __ATOMIC_ACQ_REL); /* unknown to the pool */
				__atomic_fetch_and(f, (uint8_t)~PG_EVICTING, __ATOMIC_ACQ_REL);
				v[i].keep = 1;
				break;
			}
			if (__atomic_compare_exchange_n(f, &s, (uint8_t)(s | PG_DROPPING), 0, __ATOMIC_ACQ_REL,
							__ATOMIC_ACQUIRE))
				break;
		}
	}

	/* 4. drop, then release the pages to the engine. */
	for (i = 0; i < n; i = j) {
		if (v[i].keep) {
			j = i + 1;
			continue;
		}
		j = run_end(v, i, n, 0, 0);
		drop(e, v[i].rg, v[i].p, j - i);
		uint32_t now = (uint32_t)__atomic_load_n(&e->evict_clock, __ATOMIC_RELAXED) | 1;
		for (unsigned k = i; k < j; k++) {
			__atomic_store_n(&v[k].rg->estamp[v[k].p], now, __ATOMIC_RELAXED);
			__atomic_store_n(&v[k].rg->hot[v[k].p], 0, __ATOMIC_RELAXED);
			__atomic_fetch_and(&v[k].rg->pg[v[k].p],
					   (uint8_t)~(PG_RESIDENT | PG_EVICTING | PG_DROPPING | PG_REF | PG_DIRTY),
					   __ATOMIC_ACQ_REL);
			dropped++;
			if (v[k].dirty)
				written++;
			else
				clean++;
		}
	}
	__atomic_fetch_add(&e->evict_clock, dropped, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&e->resident, dropped, __ATOMIC_RELAXED);
	__atomic_fetch_add(&e->ctr.evictions, dropped, __ATOMIC_RELAXED);
	__atomic_fetch_add(&e->ctr.writebacks, written, __ATOMIC_RELAXED);
	__atomic_fetch_add(&e->ctr.clean_drops, clean, __ATOMIC_RELAXED);
	gvm_engine_poke(e); /* replay faults deferred on DROPPING pages */
}

static void finish_oldest(struct gvm_engine *e, struct ev_state *ev)
{
	struct batch *b = &ev->b[ev->head];

	evict_finish(e, b);
	ev->pending_pages -= b->n;
	ev->head = (ev->head + 1) % EV_PIPE;
	ev->pending--;
}

static void *evictor_main(void *arg)
{
	struct gvm_engine *e = arg;
	struct ev_state *ev = calloc(1, sizeof(*ev));

	if (!ev) {
		pr_err("out of memory: no eviction");
		return NULL;
	}
	for (unsigned i = 0; i < EV_PIPE; i++) {
		pthread_mutex_init(&ev->b[i].wt.mu, NULL);
		pthread_cond_init(&ev->b[i].wt.cv, NULL);
	}
	while (!__atomic_load_n(&e->quit, __ATOMIC_ACQUIRE)) {
		struct timespec ts;

		pthread_mutex_lock(&e->ev_mu);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		while (!e->ev_kick && !__atomic_load_n(&e->quit, __ATOMIC_ACQUIRE) &&
		       __atomic_load_n(&e->resident, __ATOMIC_RELAXED) <= e->high_pages)
			if (pthread_cond_timedwait(&e->ev_cv, &e->ev_mu, &ts) == ETIMEDOUT)
				break;
		pthread_mutex_unlock(&e->ev_mu);
		/* Keep up to EV_PIPE batches in flight: the next batch is copied
		 * and sent while the previous ones wait for their acks. */
		while (!__atomic_load_n(&e->quit, __ATOMIC_ACQUIRE) &&
		       __atomic_load_n(&e->resident, __ATOMIC_RELAXED) > e->low_pages + ev->pending_pages) {
			if (ev->pending == EV_PIPE) {
				finish_oldest(e, ev);
				continue;
			}
			struct batch *b = &ev->b[(ev->head + ev->pending) % EV_PIPE];
			b->n = collect(e, ev, b->v);
			if (!b->n)
				break;
			evict_begin(e, b);
			ev->pending++;
			ev->pending_pages += b->n;
		}
		while (ev->pending)
			finish_oldest(e, ev);
		__atomic_store_n(&e->ev_kick, 0, __ATOMIC_RELAXED);
	}
	for (unsigned i = 0; i < EV_PIPE; i++) {
		pthread_mutex_destroy(&ev->b[i].wt.mu);
		pthread_cond_destroy(&ev->b[i].wt.cv);
	}
	free(ev);
	return NULL;
}

int gvm_evictor_start(struct gvm_engine *e)
{
	int r;

	if (e->use_move) {
		struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
		e->move_scratch = mmap(NULL, (size_t)EV_BATCH << GVM_PAGE_SHIFT, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (e->move_scratch == MAP_FAILED) {
			e->move_scratch = NULL;
			e->use_move = 0;
		} else {
			/* UFFDIO_MOVE wants its destination registered with this uffd. */
			reg.range.start = (uintptr_t)e->move_scratch;
			reg.range.len = (size_t)EV_BATCH << GVM_PAGE_SHIFT;
			if (ioctl(e->uffd, UFFDIO_REGISTER, &reg) < 0) {
				pr_warn("UFFDIO_MOVE scratch: %s; dropping with MADV_DONTNEED", strerror(errno));
				munmap(e->move_scratch, (size_t)EV_BATCH << GVM_PAGE_SHIFT);
				e->move_scratch = NULL;
				e->use_move = 0;
			}
		}
	}
	r = pthread_create(&e->evictor, NULL, evictor_main, e);
	if (r) {
		pr_err("pthread_create(evictor): %s", strerror(r));
		return -r;
	}
	r = pthread_setname_np(e->evictor, "gvm-evict"); /* a failure only loses the name */
	if (r)
		pr_debug("pthread_setname_np: %s", strerror(r));
	e->evictor_running = 1;
	return 0;
}

void gvm_evictor_stop(struct gvm_engine *e)
{
	if (!e->evictor_running)
		return;
	__atomic_store_n(&e->quit, 1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&e->ev_mu);
	e->ev_kick = 1;
	pthread_cond_signal(&e->ev_cv);
	pthread_mutex_unlock(&e->ev_mu);
	pthread_join(e->evictor, NULL);
	e->evictor_running = 0;
	if (e->move_scratch)
		munmap(e->move_scratch, (size_t)EV_BATCH << GVM_PAGE_SHIFT);
}
