/*
 * Faults: from a userfaultfd message to the pages installed.
 *
 * DESIGN
 * Runs on the engine thread only (engine.c), so fetch state needs no lock;
 * the page flags it shares with the evictor are atomics (pagestate.h).
 * A missing-page fault fetches the prefetch-aligned window around the page
 * (within its stripe, so from one node) with one READ; the reply installs
 * the faulting page first, so its thread resumes after one page copy, then
 * the rest of the window in runs (UFFDIO_COPY / UFFDIO_ZEROPAGE, resuming
 * after EEXIST/EAGAIN). A fault on a page already in flight only waits:
 * the install wakes every waiter on the range.
 *
 * Sequential readahead: a fault at window w that continues a run fetches
 * the next `readahead` windows and installs them before they are touched.
 * To keep the run going without a fault, the first page of the window half
 * way through the readahead is held back in a one-page buffer; touching it
 * faults, is served from the buffer at once, and extends the readahead.
 *
 * Window size: a fault that does not continue a run fetches rg->win pages
 * (the aligned window around it), and win adapts to what the guest does
 * with them. A read of a resident page is invisible, so the engine learns
 * by holding one prefetched page of each such window back in a buffer (a
 * probe, GVM_PROBES per region; the page farthest from the fault, which a
 * guest using the window reaches and one reading a short record does not)
 * instead of installing it: if the guest touches it, the fault is served
 * from the buffer at once and counts as a hit (win doubles); a probe still untouched when its slot is needed again
 * is a miss (win halves, down to one page) and is simply forgotten: the
 * page is clean, the pool has it. Linux's swap readahead grows and shrinks
 * its window on readahead hits the same way. At one page there is nothing to
 * probe, so every EXPLORE_EVERY-th such fault fetches two. A run starts
 * with a fault at most a page past what the last fault fetched, and ramps
 * up: 2, 4, 8, 16 pages from the fault, then whole windows (each such step
 * doubles win too: a run is locality), with readahead as above once whole
 * windows follow each other.
 *
 * Writes after reads: with a local memory budget, pages are installed
 * write-protected and the first write to each is a write-protect fault that
 * marks it dirty for the evictor. A guest that reads a page and then writes
 * it (read-modify-write: a database, a counter) would pay that second round
 * trip on every fault, so the engine remembers recent read faults and, when
 * most are followed by a write (rmw_score), installs the faulting page of a
 * read fault dirty and writable at once; one read fault in RMW_PROBE_EVERY
 * is still installed protected, to keep measuring. The price of a wrong
 * guess is one write-back of a page that was not written; no write can be
 * lost, since a page installed dirty is written back before any drop.
 *
 * Above the high watermark readahead stops, and a fetch that would pass the
 * budget waits for the evictor to make room.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine_int.h"
#include "log.h"
#include "uffd.h"

#define UFFD_BATCH 32 /* fault messages read at once */
#define EXPLORE_EVERY 8    /* at a window of 1, every 8th non-sequential fault tries 2 */
#define RUN_GAP  2u        /* a run starts with a fault at most this many pages after the last */
#define RUN_RAMP 2u        /* pages a run's first step fetches; each next step twice as many */
#define RMW_PROBE_EVERY 16 /* while installing reads dirty, 1 in 16 stays protected (measured) */
#define RMW_SCORE_MAX 16
#define RMW_ON 8           /* rmw_score above this: read faults install dirty */

/* Zero pages for UFFDIO_COPY: a zero page about to be written is cheaper to
 * install allocated (one copy) than as the shared zero page, whose first
 * write takes a second, copy-on-write fault. */
static const uint8_t zero_window[GVM_STRIPE_PAGES * GVM_PAGE_SIZE] __attribute__((aligned(4096)));

static struct gvm_region *region_of(struct gvm_engine *e, uintptr_t addr)
{
	unsigned n = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE);

	for (unsigned i = 0; i < n; i++) {
		struct gvm_region *rg = e->regions[i];
		if (addr - rg->base < rg->len)
			return rg;
	}
	return NULL;
}

static void uffd_wake(struct gvm_engine *e, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };

	if (ioctl(e->uffd, UFFDIO_WAKE, &r) < 0 && errno != ENOENT)
		pr_perror("UFFDIO_WAKE %#lx", (unsigned long)addr);
}

static int uffd_fill(struct gvm_engine *e, uintptr_t dst, const uint8_t *src, size_t len, int protect)
{
	return gvm_uffd_fill(e->uffd, dst, src, len, protect);
}

/*
 * A page back in memory before the evictor's clock moved a budget's worth
 * since its drop would have stayed in a cache of this size under LRU: it
 * is in the working set (Linux's refault distance). The evictor keeps such
 * "hot" pages longest (evict.c).
 */
static void mark_refault(struct gvm_engine *e, struct gvm_region *rg, uint64_t p)
{
	uint32_t t;

	if (!rg->estamp || !(t = __atomic_load_n(&rg->estamp[p], __ATOMIC_RELAXED)))
		return;
	if ((uint32_t)__atomic_load_n(&e->pages.dropped, __ATOMIC_RELAXED) - t < e->budget_pages)
		__atomic_store_n(&rg->hot[p], 1, __ATOMIC_RELAXED);
}

/* Discards (see "Discards" below): page p reads as zero, not as the
 * pool's copy. Written by this thread only, read by flush too: atomics. */
static int zeroed(struct gvm_region *rg, uint64_t p)
{
	return gvm_region_zeroed(rg, p);
}

static void zeroed_set(struct gvm_region *rg, uint64_t p)
{
	__atomic_fetch_or(&rg->zeroed[p >> 3], (uint8_t)(1u << (p & 7)), __ATOMIC_RELEASE);
}

static void zeroed_clear(struct gvm_region *rg, uint64_t p)
{
	__atomic_fetch_and(&rg->zeroed[p >> 3], (uint8_t)~(1u << (p & 7)), __ATOMIC_RELEASE);
}

#define IR_WRITABLE 1 /* zero pages allocated (UFFDIO_COPY), not the shared zero page */
#define IR_DIRTY    2 /* being written right now: install unprotected, already dirty */
#define IR_LOCAL    4 /* zero pages that never left this engine: counted in local_zero_pages */

/* Count n pages installed (n < 0: take them back): zero-filled here
 * (local), or received (zero: the pool holds them as zero). */
static void count_install(struct gvm_engine *e, int local, int zero, int64_t n)
{
	if (local) {
		CTR_ADD(e, local_zero_pages, (uint64_t)n);
		return;
	}
	if (n < 0 && zero) /* taken back: zero_pages first, the other way round */
		__atomic_fetch_add(&e->ctr.zero_pages, (uint64_t)n, __ATOMIC_RELEASE);
	CTR_ADD(e, pages_fetched, (uint64_t)n);
	if (n > 0 && zero)
		__atomic_fetch_add(&e->ctr.zero_pages, (uint64_t)n, __ATOMIC_RELEASE);
}

/* Install pages [p, p+n) of a region that are not resident yet; src NULL
 * means zero pages. */
static uint64_t install_run(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint64_t n,
			    const uint8_t *src, int flags)
{
	int writable = flags & IR_WRITABLE;
	/* The page a write fault waits for would fault again at once on a
	 * protected install: install it writable and count it dirty. */
	int dirty = e->wp && ((flags & IR_DIRTY) || (!src && writable));
	/* Zero pages of a writing run go in dirty too: each would take a
	 * write-protect fault next, and writing back a zero page costs one
	 * bitmap bit (zero pages are never sent). */
	int protect = e->wp && !dirty;
	uint64_t i = 0, installed = 0;

	while (i < n) {
		uint64_t j;
		if (pg_get(rg->pg, p + i) & PG_RESIDENT) {
			i++;
			continue;
		}
		/* A page discarded while its data was on the way reads as
		 * zero: runs of data split at such pages. */
		int z = src && zeroed(rg, p + i);
		for (j = i; j < n && !(pg_get(rg->pg, p + j) & PG_RESIDENT) && (!src || zeroed(rg, p + j) == z); j++)
			;
		/* With write-protect tracking every page is installed protected
		 * (UFFDIO_COPY_MODE_WP), zero pages too: a shared zero page could
		 * be written without a fault, and the write would go unseen. */
		const uint8_t *from = src && !z ? src + (i << GVM_PAGE_SHIFT) :
				      (writable || e->wp) ? zero_window : NULL;
		/* Counted before the fill wakes the waiting thread, which may
		 * read the stats at once; zero_pages after pages_fetched, and
		 * read in the other order (stats.c), so a reader never sees
		 * more zero pages than pages fetched. Undone if the fill fails. */
		int local = (flags & IR_LOCAL) || z;
		count_install(e, local, !src, (int64_t)(j - i));
		int ok = 0;
		if (from == zero_window) {
			for (uint64_t k = i; k < j && ok >= 0; k += GVM_STRIPE_PAGES)
				ok = uffd_fill(e, rg->base + ((p + k) << GVM_PAGE_SHIFT), zero_window,
					       GVM_MIN((uint64_t)GVM_STRIPE_PAGES, j - k) << GVM_PAGE_SHIFT,
					       protect);
		} else {
			ok = uffd_fill(e, rg->base + ((p + i) << GVM_PAGE_SHIFT), from,
				       (j - i) << GVM_PAGE_SHIFT, protect);
		}
		if (ok >= 0) {
			/* Counted before the evictor can see them resident, so its
			 * `dropped` never passes `installed`. */
			uint64_t res = pg_add_installed(&e->pages, j - i);
			for (uint64_t k = i; k < j; k++) {
				/* Dirty: the pool gets what it holds now before any drop. */
				if (dirty)
					zeroed_clear(rg, p + k);
				mark_refault(e, rg, p + k);
				pg_set(rg->pg, p + k, PG_RESIDENT | PG_REF | (dirty ? PG_DIRTY : 0));
				pg_clear(rg->pg, p + k, PG_INFLIGHT | PG_WANTED);
			}
			installed += j - i;
			if (e->budget_pages && res > e->high_pages)
				gvm_evictor_kick(e->ev);
		} else {
			count_install(e, local, !src, -(int64_t)(j - i));
			for (uint64_t k = i; k < j; k++)
				pg_clear(rg->pg, p + k, PG_INFLIGHT | PG_WANTED);
			/* A thread waiting on one of them faults again (and gets
			 * a new fetch) instead of waiting for good. */
			uffd_wake(e, rg->base + ((p + i) << GVM_PAGE_SHIFT), (j - i) << GVM_PAGE_SHIFT);
		}
		i = j;
	}
	return installed;
}

/* Install a READ reply's pages: the faulting page first (its thread
 * resumes at once), then runs of equal kind. A window fetched for a
 * writing run (`writable`: a write fault, or mostly write faults lately)
 * goes in writable and dirty, data pages too: a guest that writes where it
 * faulted, e.g. a kernel clearing pages it reuses, would otherwise take a
 * write-protect fault (a round trip to this thread) on every page of the
 * window; the price is a write-back of any of them it then leaves alone. */
static void win_grow(struct gvm_engine *e, struct gvm_region *rg)
{
	rg->win = GVM_MIN(rg->win * 2, e->prefetch);
	__atomic_store_n(&e->ctr.window, rg->win, __ATOMIC_RELAXED);
}

static void win_shrink(struct gvm_engine *e, struct gvm_region *rg)
{
	rg->win = GVM_MAX(rg->win / 2, 1u);
	__atomic_store_n(&e->ctr.window, rg->win, __ATOMIC_RELAXED);
}

/* Forget a probe nobody touched: a miss. The page was never installed and
 * stays in the pool; it was left INFLIGHT while held, like the readahead
 * marker, so nothing else fetched it meanwhile. */
static void probe_retire(struct gvm_engine *e, struct gvm_region *rg, struct gvm_probe *pr)
{
	uint64_t p = pr->page;

	pr->page = UINT64_MAX;
	e->reserved--;
	if (!(pg_get(rg->pg, p) & PG_RESIDENT))
		pg_clear(rg->pg, p, PG_INFLIGHT | PG_WANTED);
	CTR_ADD(e, probe_misses, 1);
	win_shrink(e, rg);
}

/* Hold page probe (in this reply) back as a probe; returns it, or
 * UINT64_MAX when it is not to be held. */
static uint64_t probe_hold(struct gvm_engine *e, struct gvm_region *rg, uint64_t page0, unsigned count,
			   const uint8_t *bm, const uint8_t *data, uint64_t probe)
{
	struct gvm_probe *pr;
	long pi;

	/* Only a page in flight (nothing else installs it, the evictor skips
	 * it) that no thread waits for. */
	if (probe < page0 || probe >= page0 + count ||
	    (pg_get(rg->pg, probe) & (PG_INFLIGHT | PG_RESIDENT | PG_WANTED)) != PG_INFLIGHT)
		return UINT64_MAX;
	pr = &rg->probe[rg->probe_next];
	rg->probe_next = (rg->probe_next + 1) % GVM_PROBES;
	if (pr->page != UINT64_MAX)
		probe_retire(e, rg, pr);
	e->reserved++; /* promised room until it is touched or forgotten */
	pi = gvm_packed_index(bm, (unsigned)(probe - page0));
	pr->zero = pi < 0;
	if (pi >= 0)
		memcpy(pr->buf, data + ((size_t)pi << GVM_PAGE_SHIFT), GVM_PAGE_SIZE);
	pr->page = probe;
	pg_set(rg->pg, probe, PG_RESIDENT);
	return probe;
}

/* Pages of the window this fetch owns (gvm_fetch.own) are the only ones
 * installed, held or probed. */
static int owned(const uint8_t *own, uint64_t page0, unsigned count, uint64_t p)
{
	return p >= page0 && p < page0 + count && gvm_bitmap_test(own, (unsigned)(p - page0));
}

static void install_payload(struct gvm_engine *e, struct gvm_region *rg, uint64_t page0,
			    unsigned count, const uint8_t *payload, const uint8_t *own, uint64_t fault_page,
			    uint64_t hold_page, uint64_t probe_page, int writable, int write_fault)
{
	const uint8_t *bm = payload, *data = payload + GVM_BITMAP_BYTES(count);
	int wr = writable ? IR_WRITABLE | IR_DIRTY : 0;
	unsigned i = 0;
	long k = 0;

	if (!owned(own, page0, count, hold_page))
		hold_page = UINT64_MAX;
	if (!owned(own, page0, count, probe_page))
		probe_page = UINT64_MAX;
	if (owned(own, page0, count, fault_page)) {
		long fi = gvm_packed_index(bm, (unsigned)(fault_page - page0));
		install_run(e, rg, fault_page, 1, fi < 0 ? NULL : data + ((size_t)fi << GVM_PAGE_SHIFT),
			    wr | (write_fault ? IR_DIRTY : 0));
	}
	/* Hold the marker back only if nobody waits for it: a thread that
	 * faulted on it while in flight is woken by the install alone. */
	if (hold_page >= page0 && hold_page < page0 + count &&
	    !(pg_get(rg->pg, hold_page) & (PG_RESIDENT | PG_WANTED))) {
		long hi = gvm_packed_index(bm, (unsigned)(hold_page - page0));
		if (rg->held != UINT64_MAX && !(pg_get(rg->pg, rg->held) & PG_RESIDENT))
			install_run(e, rg, rg->held, 1, rg->held_zero ? NULL : rg->held_buf, wr);
		if (rg->held == UINT64_MAX)
			e->reserved++; /* a held page is promised room, like a page in flight */
		rg->held_zero = hi < 0;
		if (hi >= 0)
			memcpy(rg->held_buf, data + ((size_t)hi << GVM_PAGE_SHIFT), GVM_PAGE_SIZE);
		__atomic_store_n(&rg->held, hold_page, __ATOMIC_RELEASE);
		pg_set(rg->pg, hold_page, PG_RESIDENT); /* keep install_run off it */
	}
	if (probe_page != fault_page)
		probe_page = probe_hold(e, rg, page0, count, bm, data, probe_page);
	while (i < count) {
		int nz = gvm_bitmap_test(bm, i), mine = gvm_bitmap_test(own, i);
		unsigned j = i;
		while (j < count && gvm_bitmap_test(bm, j) == nz && gvm_bitmap_test(own, j) == mine)
			j++;
		if (mine)
			install_run(e, rg, page0 + i, j - i, nz ? data + ((size_t)k << GVM_PAGE_SHIFT) : NULL, wr);
		if (nz)
			k += j - i;
		i = j;
	}
	if (hold_page >= page0 && hold_page < page0 + count && rg->held == hold_page)
		pg_clear(rg->pg, hold_page, PG_RESIDENT);
	if (probe_page != UINT64_MAX)
		pg_clear(rg->pg, probe_page, PG_RESIDENT);
}

static struct gvm_fetch *fetch_alloc(struct gvm_engine *e)
{
	struct gvm_fetch *f = e->free_fetch;

	if (f) {
		struct gvm_fetch *all = f->all_next;
		e->free_fetch = f->next;
		memset(f, 0, sizeof(*f));
		f->all_next = all;
	} else {
		f = calloc(1, sizeof(*f));
		if (f) {
			f->all_next = e->all_fetches;
			e->all_fetches = f;
		}
	}
	if (f)
		f->kind = CTX_FETCH;
	return f;
}

static void fetch_free(struct gvm_engine *e, struct gvm_fetch *f)
{
	e->reserved -= f->reserved;
	f->next = e->free_fetch;
	e->free_fetch = f;
	e->inflight--;
}

static void fetch_park(struct gvm_engine *e, struct gvm_fetch *f, uint64_t now, uint64_t delay_ns)
{
	f->parked = 1;
	f->retry_ns = now + delay_ns;
	f->next = e->parked;
	e->parked = f;
}

/*
 * Poison page p: the thread waiting on it (and any later access) gets
 * SIGBUS. Counted in lost_pages before the ioctl: the woken thread may read
 * the stats at once. EEXIST (already there), ENOENT and ESRCH (the range
 * unmapped, the process exiting: nobody can be waiting on it) are not
 * failures. Returns 0, or -1 with errno (not poisoned, not counted).
 */
static int poison_page(struct gvm_engine *e, struct gvm_region *rg, uint64_t p)
{
	struct uffdio_poison po = { .range = { rg->base + (p << GVM_PAGE_SHIFT), GVM_PAGE_SIZE } };

	/* Discarded: no replica needed, it is zero. */
	if (zeroed(rg, p) && install_run(e, rg, p, 1, NULL, IR_LOCAL) == 1)
		return 0;
	if (!(e->features & UFFD_FEATURE_POISON)) {
		errno = ENOTSUP;
		return -1;
	}
	CTR_ADD(e, lost_pages, 1);
	if (ioctl(e->uffd, UFFDIO_POISON, &po) < 0 && errno != EEXIST && errno != ENOENT && errno != ESRCH) {
		int err = errno;
		CTR_ADD(e, lost_pages, (uint64_t)-1);
		errno = err;
		return -1;
	}
	pg_set(rg->pg, p, PG_RESIDENT | PG_LOST);
	pg_clear(rg->pg, p, PG_INFLIGHT | PG_WANTED);
	return 0;
}

/* Poison (or report) the pages of a fetch that cannot be served. */
static void fetch_give_up(struct gvm_engine *e, struct gvm_fetch *f)
{
	struct gvm_region *rg = f->rg;
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&e->pool->pl, rg->id, f->page / GVM_STRIPE_PAGES,
					     e->pool->replicas, nodes);
	char who[256] = "";
	size_t off = 0;
	uint32_t left = 0;

	/* Discarded pages need no replica: they are zero, here. */
	for (uint32_t i = 0; i < f->count; i++) {
		uint64_t p = f->page + i;
		if (!gvm_bitmap_test(f->own, i) || (pg_get(rg->pg, p) & PG_RESIDENT))
			continue;
		if (zeroed(rg, p) && install_run(e, rg, p, 1, NULL, IR_LOCAL) == 1)
			gvm_bitmap_clear(f->own, i);
		else
			left++;
	}
	if (!left) {
		fetch_free(e, f);
		return;
	}
	for (unsigned i = 0; i < nr && off < sizeof(who) - 1; i++) {
		int n = snprintf(who + off, sizeof(who) - off, "%s%s", i ? ", " : "",
				 gvm_node_name(&e->pool->cfg, nodes[i]));
		if (n < 0)
			break;
		off += (size_t)n;
	}
	pr_err("pages %#lx-%#lx (region %016" PRIx64 " pages %" PRIu64 "-%" PRIu64
	       ") could not be fetched within %d ms from any replica: %s",
	       (unsigned long)(rg->base + (f->page << GVM_PAGE_SHIFT)),
	       (unsigned long)(rg->base + ((f->page + f->count) << GVM_PAGE_SHIFT) - 1), rg->id,
	       f->page, f->page + f->count - 1, e->pool->deadline_ms, who);
	uint32_t unpoisoned = left;
	int poison_err = 0;
	if (e->lost_policy == GVM_LOST_POISON && (e->features & UFFD_FEATURE_POISON)) {
		/* Said first: the accessor may die of the SIGBUS at once. */
		pr_err("those pages are poisoned: a guest access gets SIGBUS (memory error)");
		unpoisoned = 0;
		for (uint32_t i = 0; i < f->count; i++) {
			uint64_t p = f->page + i;
			/* Pages another fetch claimed are its to serve or lose. */
			if (!gvm_bitmap_test(f->own, i) || (pg_get(rg->pg, p) & PG_RESIDENT))
				continue;
			if (poison_page(e, rg, p) < 0) {
				/* Not poisoned, so not answered: a thread waiting on
				 * it would hang. Handled as without POISON below. */
				poison_err = errno;
				pr_perror("UFFDIO_POISON");
				unpoisoned++;
				continue;
			}
			gvm_bitmap_clear(f->own, i);
		}
		if (!unpoisoned) {
			fetch_free(e, f);
			return;
		}
	}
	CTR_ADD(e, lost_pages, unpoisoned);
	if (e->on_fatal) {
		char why[512];
		snprintf(why, sizeof(why), "guest memory lost: every replica (%s) unreachable for %d ms%s%s%s",
			 who, e->pool->deadline_ms,
			 poison_err ? " and UFFDIO_POISON failed (" : !(e->features & UFFD_FEATURE_POISON) ?
			 " (no UFFDIO_POISON on this kernel)" : "",
			 poison_err ? strerror(poison_err) : "", poison_err ? ")" : "");
		e->on_fatal(why, e->fatal_arg);
	}
	/* No poison and the fatal hook returned: keep trying; the log says why. */
	f->tries = 0;
	f->start_ns = gvm_now_ns();
	fetch_park(e, f, f->start_ns, 50ull * 1000000ull);
}

/* The replicas to read a stripe from, trusted nodes first. A degraded
 * stripe (written while some replica was unreachable) is never read from an
 * untrusted node: its copy there may be old, and old data is worse than a
 * poisoned page. */
static unsigned replicas_ordered(struct gvm_engine *e, struct gvm_region *rg, uint64_t stripe,
				 uint32_t *out)
{
	uint32_t all[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&e->pool->pl, rg->id, stripe, e->pool->replicas, all);
	unsigned k = 0;

	for (unsigned i = 0; i < nr; i++)
		if (!gvm_node_untrusted(e, all[i]))
			out[k++] = all[i];
	if (rg->stripe[stripe] & STRIPE_DEGRADED)
		return k;
	for (unsigned i = 0; i < nr; i++)
		if (gvm_node_untrusted(e, all[i]))
			out[k++] = all[i];
	return nr;
}

/* The replicas of f's stripe not asked yet this round, in the order to ask
 * them. By node, not by position: the order changes when a node's trust
 * does, and a position would then skip one node and ask another twice. */
static unsigned untried(struct gvm_engine *e, struct gvm_fetch *f, uint32_t *out)
{
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = replicas_ordered(e, f->rg, f->page / GVM_STRIPE_PAGES, nodes), k = 0;

	for (unsigned i = 0; i < nr; i++) {
		unsigned j = 0;
		while (j < f->tries && f->tried[j] != nodes[i])
			j++;
		if (j == f->tries)
			out[k++] = nodes[i];
	}
	return k;
}

/* Send the fetch to the first usable replica not asked yet this round. */
static void fetch_send(struct gvm_engine *e, struct gvm_fetch *f)
{
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = untried(e, f, nodes);
	uint64_t now = gvm_now_ns();

	for (unsigned i = 0; i < nr && f->tries < GVM_MAX_REPLICAS; i++) {
		struct gvm_hdr h = { .op = GVM_OP_READ, .region = f->rg->id, .page = f->page,
				     .count = f->count, .flags = e->seal ? GVM_HF_TAGS : 0 };
		f->tried[f->tries++] = nodes[i];
		if (gvm_transport_usable(&e->tp, nodes[i], now) &&
		    gvm_transport_send(&e->tp, nodes[i], &h, NULL, 0, f) == 0)
			return;
	}
	if (now - f->start_ns >= (uint64_t)e->pool->deadline_ms * 1000000ull) {
		fetch_give_up(e, f);
		return;
	}
	f->tries = 0;
	fetch_park(e, f, now, 50ull * 1000000ull);
}

/* Over the budget: a fetch waits for the evictor (which never waits for a
 * fetch, so this cannot deadlock). */
static int over_budget(struct gvm_engine *e, uint32_t more)
{
	/* Pages in flight are already promised: count them, or a burst of
	 * fetches would land above the budget together. */
	return e->budget_pages &&
	       pg_resident(&e->pages) + e->reserved + more > e->budget_pages;
}

/* A stripe of a fresh region that never left this engine is zero: fill it
 * here, the waiting page first. */
static void fetch_local(struct gvm_engine *e, struct gvm_fetch *f)
{
	struct gvm_region *rg = f->rg;
	int wflag = (f->writable ? IR_WRITABLE : 0) | IR_LOCAL;

	if (owned(f->own, f->page, f->count, f->fault_page))
		install_run(e, rg, f->fault_page, 1, NULL, wflag | (f->write_fault ? IR_DIRTY : 0));
	for (uint32_t i = 0, j; i < f->count; i = j) {
		int mine = gvm_bitmap_test(f->own, i);
		for (j = i + 1; j < f->count && gvm_bitmap_test(f->own, j) == mine; j++)
			;
		if (mine)
			install_run(e, rg, f->page + i, j - i, NULL, wflag);
	}
	if (f->fault_ns)
		gvm_hist_add(e, gvm_now_ns() - f->fault_ns);
	fetch_free(e, f);
}

static void fetch_go(struct gvm_engine *e, struct gvm_fetch *f, uint64_t now)
{
	if (over_budget(e, f->reserved ? 0 : f->count)) {
		/* Waiting for room is waiting on write-backs: if no replica can take
		 * them, the deadline resolves the fault like any other. */
		if (now - f->start_ns >= (uint64_t)e->pool->deadline_ms * 1000000ull) {
			pr_err("no room under the local memory budget for %d ms: write-backs are failing",
			       e->pool->deadline_ms);
			fetch_give_up(e, f);
			return;
		}
		/* Room promised to fetches in flight counts: with fetches
		 * parked on a dead node holding theirs, the evictor would
		 * otherwise stop at its low watermark with this one still
		 * over the budget, until the deadline poisons its page. */
		__atomic_store_n(&e->pages.reserved, e->reserved, __ATOMIC_RELAXED);
		gvm_evictor_kick(e->ev);
		fetch_park(e, f, now, 500000ull);
		if (!f->room && f->fault_ns)
			CTR_ADD(e, room_waits, 1);
		f->room = 1; /* retried at once when the evictor frees pages */
		return;
	}
	f->room = 0;
	if (f->rg->fresh && !(f->rg->stripe[f->page / GVM_STRIPE_PAGES] & STRIPE_WRITTEN)) {
		fetch_local(e, f);
		return;
	}
	if (!f->reserved) {
		f->reserved = f->count;
		e->reserved += f->count;
	}
	fetch_send(e, f);
}

/* Start fetching [page, page+count) unless every page is resident or in
 * flight. fault_page is the page a thread waits on (or UINT64_MAX). */
static void fetch_start(struct gvm_engine *e, struct gvm_region *rg, uint64_t page, uint32_t count,
			uint64_t fault_page, uint64_t now, int hold, uint64_t probe, int writable,
			int write_fault)
{
	struct gvm_fetch *f;
	uint32_t want = 0;

	for (uint32_t i = 0; i < count; i++)
		if (!(pg_get(rg->pg, page + i) & (PG_RESIDENT | PG_INFLIGHT)))
			want++;
	if (!want)
		return;
	f = fetch_alloc(e);
	if (!f) {
		pr_err("out of memory for a fetch");
		if (fault_page != UINT64_MAX) /* it faults again */
			uffd_wake(e, rg->base + (fault_page << GVM_PAGE_SHIFT), GVM_PAGE_SIZE);
		return;
	}
	for (uint32_t i = 0; i < count; i++)
		if (!(pg_get(rg->pg, page + i) & (PG_RESIDENT | PG_INFLIGHT))) {
			pg_set(rg->pg, page + i, PG_INFLIGHT);
			gvm_bitmap_set(f->own, i);
		}
	f->rg = rg;
	f->page = page;
	f->count = count;
	f->fault_page = fault_page;
	f->fault_ns = fault_page == UINT64_MAX ? 0 : now;
	f->start_ns = now;
	f->hold = hold;
	f->probe_page = probe;
	f->writable = writable;
	f->write_fault = write_fault;
	e->inflight++;
	fetch_go(e, f, now);
}

static void ra_extend(struct gvm_engine *e, struct gvm_region *rg, uint64_t w, uint64_t now)
{
	uint64_t nwin = (rg->npages + e->prefetch - 1) / e->prefetch;
	uint64_t from = GVM_MAX(rg->ra_next, w + 1), to = GVM_MIN(w + e->readahead, nwin - 1);
	uint64_t hold_win = w + (e->readahead + 1) / 2;

	if (!e->readahead || w + 1 >= nwin)
		return;
	/* Under memory pressure, fetch only what is asked for: measured on
	 * the swap bench, readahead then evicts about as much as it saves. */
	if (e->budget_pages && pg_resident(&e->pages) > e->high_pages)
		return;
	for (uint64_t x = from; x <= to; x++) {
		uint64_t p = x * e->prefetch;
		fetch_start(e, rg, p, (uint32_t)GVM_MIN((uint64_t)e->prefetch, rg->npages - p),
			    UINT64_MAX, now, x == hold_win, UINT64_MAX, rg->write_bias > 8, 0);
	}
	rg->ra_next = GVM_MAX(rg->ra_next, to + 1);
}

static void defer_fault(struct gvm_engine *e, uintptr_t addr, int write)
{
	if (e->n_deferred == e->cap_deferred) {
		size_t ncap = e->cap_deferred ? e->cap_deferred * 2 : 64;
		uint64_t *d = realloc(e->deferred, ncap * sizeof(*d));
		if (!d) {
			/* Not kept: wake the thread now, it faults again. */
			pr_err("out of memory deferring a fault");
			uffd_wake(e, addr & ~(uintptr_t)(GVM_PAGE_SIZE - 1), GVM_PAGE_SIZE);
			return;
		}
		e->deferred = d;
		e->cap_deferred = ncap;
	}
	e->deferred[e->n_deferred++] = (addr & ~(uint64_t)(GVM_PAGE_SIZE - 1)) | (write ? 1 : 0);
}

/*
 * A write to a write-protected page: it becomes dirty. Races with the
 * evictor are settled by one CAS on the page's flags: either we set DIRTY
 * first (the evictor then keeps the page) or the evictor set DROPPING first
 * (we wait for the drop, and the write faults again as MISSING and is served
 * from the pool, which has the written-back data).
 */
/* Mark a resident page written (it is about to be unprotected). 0 if it is
 * being dropped: the caller must not unprotect it; -1 if it is gone (dropped
 * or discarded after the fault was queued: the thread must fault again, as
 * missing). A written page is written back before any drop, so the pool's
 * copy is no longer stale. */
static int mark_written(struct gvm_region *rg, uint64_t p)
{
	uint8_t s = pg_get(rg->pg, p);

	for (;;) {
		if (s & PG_DROPPING)
			return 0;
		if (!(s & PG_RESIDENT))
			return -1;
		if (pg_cas(rg->pg, p, &s, (uint8_t)(s | PG_DIRTY | PG_REF))) {
			zeroed_clear(rg, p);
			return 1;
		}
	}
}

/*
 * First write to a clean page: mark it dirty (by CAS, against the evictor)
 * and unprotect it. If the page before it is dirty too, the guest is
 * writing a run (e.g. its kernel clearing pages it reuses): the resident
 * pages after it, up to a window, are marked and unprotected with it, so
 * the run does not take one write-protect fault (a round trip to this
 * thread) per page. Marking a page dirty early only costs a write-back.
 */
static void on_wp_fault(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uintptr_t addr)
{
	uint64_t end = p + 1;

	for (unsigned i = 0; i < GVM_READ_RING; i++) {
		if (rg->read_ring[i] == p) {
			/* Written soon after its read fault installed it. */
			rg->read_ring[i] = UINT64_MAX;
			rg->rmw_score = GVM_MIN(rg->rmw_score + 2, RMW_SCORE_MAX);
			break;
		}
	}

	int m = mark_written(rg, p);
	if (m == 0) {
		defer_fault(e, addr, 1);
		return;
	}
	if (m < 0) {
		/* Not resident as far as the engine knows (dropped or discarded
		 * since the fault was queued; or left mapped by a failed fill or
		 * drop): make sure it is gone, so the write faults as missing
		 * instead of on write-protect again. */
		uintptr_t a = addr & ~(uintptr_t)(GVM_PAGE_SIZE - 1);
		if (gvm_madvise(a, GVM_PAGE_SIZE, MADV_DONTNEED) < 0 &&
		    gvm_madvise(a, GVM_PAGE_SIZE, MADV_DONTNEED_LOCKED) < 0)
			pr_perror("madvise(%#lx)", (unsigned long)a);
		uffd_wake(e, a, GVM_PAGE_SIZE);
		return;
	}
	if (p > 0 && (pg_get(rg->pg, p - 1) & (PG_RESIDENT | PG_DIRTY)) == (PG_RESIDENT | PG_DIRTY)) {
		uint64_t lim = GVM_MIN(p + e->prefetch, rg->npages);
		while (end < lim) {
			uint8_t s = pg_get(rg->pg, end);
			if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_LOST | PG_EVICTING)) || end == rg->held ||
			    mark_written(rg, end) <= 0)
				break;
			end++;
		}
	}
	struct uffdio_writeprotect wp = { .range = { rg->base + (p << GVM_PAGE_SHIFT),
						     (end - p) << GVM_PAGE_SHIFT },
					  .mode = 0 };
	if (ioctl(e->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 && errno != ENOENT) {
		pr_perror("UFFDIO_WRITEPROTECT (unprotect %#lx)", (unsigned long)wp.range.start);
		uffd_wake(e, addr & ~(uintptr_t)(GVM_PAGE_SIZE - 1), GVM_PAGE_SIZE); /* it faults again */
	}
	/* The evictor may have taken one of these pages as a dirty victim
	 * between our mark and the unprotect: cleared DIRTY and protected
	 * it, which we just undid. Left so, a write from now on would land
	 * without a fault after its copy, and the page would drop with the
	 * write lost. Mark it again: the evictor decides the drop only after
	 * its write-back is acknowledged, which this thread has yet to
	 * handle, so it will see DIRTY and keep the page. */
	for (uint64_t k = p; k < end; k++)
		if ((pg_get(rg->pg, k) & (PG_RESIDENT | PG_DIRTY | PG_DROPPING)) == PG_RESIDENT)
			mark_written(rg, k);
}

/* A read fault on p, with write-protect tracking: should its page go in
 * dirty and writable, because a write is expected right after? Every read
 * fault that is installed protected is remembered, and the write-protect
 * fault that follows it (on_wp_fault) raises rmw_score; each remembered one
 * lowers it, so the score is high when most reads are followed by writes. */
static int read_then_write(struct gvm_engine *e, struct gvm_region *rg, uint64_t p)
{
	if (rg->rmw_score > RMW_ON && ++rg->rmw_tick % RMW_PROBE_EVERY) {
		CTR_ADD(e, rmw_installs, 1);
		return 1;
	}
	rg->read_ring[rg->read_next] = p;
	rg->read_next = (rg->read_next + 1) % GVM_READ_RING;
	rg->rmw_score = GVM_MAX(rg->rmw_score - 1, 0);
	return 0;
}

/*
 * A fault on a page the engine holds resident: either the page was
 * installed after the fault was queued (UFFDIO_COPY fails with EEXIST: wake
 * the thread), or its owner dropped it without telling us (a madvise that
 * did not go through gvm_engine_discard): it reads as zero from now on, and
 * since it is installed clean, the pool's copy must never come back.
 */
static void refill_zero(struct gvm_engine *e, struct gvm_region *rg, uint64_t p)
{
	uintptr_t a = rg->base + (p << GVM_PAGE_SHIFT);
	/* 1: it was there (installed since); < 0: failed (the thread faults again). */
	int r = gvm_uffd_fill(e->uffd, a, e->wp ? zero_window : NULL, GVM_PAGE_SIZE,
			      (e->wp ? GVM_FILL_WP : 0) | GVM_FILL_DONTWAKE);

	if (r == 0) {
		/* It was gone. Its owner dropped it, unless the evictor took it
		 * between the caller's look at its flags and the fill, and
		 * dropped it (DROPPING, then RESIDENT cleared): then this zero
		 * must not stay, the pool has the page. */
		uint8_t s = pg_get(rg->pg, p);
		if ((s & PG_RESIDENT) && !(s & PG_DROPPING))
			zeroed_set(rg, p);
		else if (gvm_madvise(a, GVM_PAGE_SIZE, MADV_DONTNEED) < 0 &&
			 gvm_madvise(a, GVM_PAGE_SIZE, MADV_DONTNEED_LOCKED) < 0)
			pr_perror("madvise(%#lx)", (unsigned long)a);
	}
	uffd_wake(e, a, GVM_PAGE_SIZE);
}

/*
 * Discards. The owner of a region (QEMU: a balloon, free page reporting,
 * virtio-mem) gives pages up with MADV_DONTNEED: from then on they read as
 * zero, and a guest may rely on it (init_on_free). Told right after the
 * madvise succeeded (gvm_engine_discard), the engine marks them `zeroed`: a
 * later fault installs zero here instead of fetching the pool's stale copy
 * (a data reply still on its way installs zero too), and the page stays
 * zero through clean drops until it is written (a written page is written
 * back before any drop, and the mark goes). Resident pages stop counting
 * against the budget and are never written back; one that a reply
 * installed again between the owner's madvise and now is dropped here.
 * Pages the evictor owns are left to it: once dropped they read as zero
 * like the rest. (The owner does not touch the pages meanwhile: a guest
 * gets reported or ballooned pages back only after QEMU answered.)
 */
void gvm_fault_discard(struct gvm_engine *e, uintptr_t start, uintptr_t end)
{
	uint64_t gone = 0;

	for (unsigned i = 0; i < e->n_regions; i++) {
		struct gvm_region *rg = e->regions[i];
		uintptr_t a = GVM_MAX(start, rg->base), b = GVM_MIN(end, rg->base + rg->len);
		uint64_t run = 0, run0 = 0;
		if (a >= b)
			continue;
		uint64_t p0 = (a - rg->base) >> GVM_PAGE_SHIFT, p1 = (b - rg->base + GVM_PAGE_SIZE - 1) >> GVM_PAGE_SHIFT;
		for (uint64_t p = p0; p <= p1; p++) {
			int cleared = 0;
			if (p < p1) {
				uint8_t s = pg_get(rg->pg, p);
				zeroed_set(rg, p);
				CTR_ADD(e, discarded_pages, 1);
				while ((s & PG_RESIDENT) && !(s & (PG_EVICTING | PG_DROPPING))) {
					/* Poisoned pages were never counted resident. */
					if (pg_cas(rg->pg, p, &s, (uint8_t)(s & ~(PG_RESIDENT | PG_DIRTY | PG_REF | PG_LOST)))) {
						gone += !(s & PG_LOST);
						cleared = 1;
						break;
					}
				}
			}
			if (cleared) {
				run0 = run ? run0 : p;
				run++;
			} else if (run) {
				/* Mostly already gone; whatever was installed since is not. */
				uintptr_t ra = rg->base + (run0 << GVM_PAGE_SHIFT);
				if (gvm_madvise(ra, run << GVM_PAGE_SHIFT, MADV_DONTNEED) < 0 &&
				    gvm_madvise(ra, run << GVM_PAGE_SHIFT, MADV_DONTNEED_LOCKED) < 0)
					pr_perror("madvise(discarded pages)");
				run = 0;
			}
		}
	}
	/* installed has one writer, this thread; the evictor never drops a page
	 * that is not resident, so resident = installed - dropped stays >= 0. */
	if (gone)
		__atomic_fetch_sub(&e->pages.installed, gone, __ATOMIC_RELEASE);
}

static void on_fault(struct gvm_engine *e, uintptr_t addr, int write, int wp, uint64_t now)
{
	struct gvm_region *rg = region_of(e, addr);
	uint64_t p, w;
	uint8_t fl;

	if (!rg) {
		pr_err("fault at %#lx outside every region", (unsigned long)addr);
		return;
	}
	CTR_ADD(e, faults, 1);
	gvm_poller_kick(e->poller, now); /* a burst: keep a CPU awake for the hand-offs to come */
	p = (addr - rg->base) >> GVM_PAGE_SHIFT;
	if (wp) {
		CTR_ADD(e, wp_faults, 1);
		on_wp_fault(e, rg, p, addr);
		return;
	}
	if (pg_get(rg->pg, p) & PG_DROPPING) {
		defer_fault(e, addr, write);
		return;
	}
	w = p / e->prefetch;
	rg->write_bias = write ? GVM_MIN(rg->write_bias + 1, 16) : GVM_MAX(rg->write_bias - 1, 0);
	if (p == rg->held) {
		/* The readahead marker: serve it now and keep the run going. */
		__atomic_store_n(&rg->held, UINT64_MAX, __ATOMIC_RELEASE);
		e->reserved--;
		install_run(e, rg, p, 1, rg->held_zero ? NULL : rg->held_buf,
			    write ? IR_WRITABLE | IR_DIRTY : 0);
		gvm_hist_add(e, gvm_now_ns() - now);
		ra_extend(e, rg, w, now);
		rg->last_win = w;
		rg->last_p = p;
		rg->next_p = p + 1;
		return;
	}
	for (unsigned i = 0; i < GVM_PROBES; i++) {
		struct gvm_probe *pr = &rg->probe[i];
		if (pr->page != p)
			continue;
		/* A probe touched: the window it came with paid. */
		pr->page = UINT64_MAX;
		e->reserved--;
		install_run(e, rg, p, 1, pr->zero ? NULL : pr->buf, write ? IR_WRITABLE | IR_DIRTY : 0);
		gvm_hist_add(e, gvm_now_ns() - now);
		CTR_ADD(e, probe_hits, 1);
		win_grow(e, rg);
		return;
	}
	fl = pg_get(rg->pg, p);
	if (fl & PG_INFLIGHT) {
		pg_set(rg->pg, p, PG_WANTED); /* the install wakes it; never hold it back */
		return;
	}
	if (fl & PG_RESIDENT) {
		/* The evictor claimed its drop since the check above (and may
		 * have zapped it already: a zero filled in now would stay
		 * present and uncounted once it clears RESIDENT). Its batch
		 * ends with a replay of this fault. Not for a page it is only
		 * writing back (EVICTING): its copy may be what faulted here,
		 * on a page the owner dropped, and must get the zero. */
		if (fl & PG_DROPPING) {
			defer_fault(e, addr, write);
			return;
		}
		/* Filled since the fault was queued (wake it), or dropped by
		 * its owner behind our back (zero is what it reads as). */
		if (!(fl & PG_LOST))
			refill_zero(e, rg, p);
		return;
	}
	if (zeroed(rg, p)) {
		/* Discarded by the owner: zero, here, not the pool's copy; so are
		 * the other discarded pages of its window (a guest reusing freed
		 * memory goes through it in order), as for a fresh stripe. */
		int wflag = IR_LOCAL | (write ? IR_WRITABLE : 0);
		uint64_t w0 = p & ~(uint64_t)(e->prefetch - 1), w1 = GVM_MIN(w0 + e->prefetch, rg->npages);
		install_run(e, rg, p, 1, NULL, wflag | (write ? IR_DIRTY : 0));
		gvm_hist_add(e, gvm_now_ns() - now);
		for (uint64_t k = w0, j; k < w1; k = j + 1) {
			for (j = k; j < w1 && zeroed(rg, j) && !(pg_get(rg->pg, j) & (PG_RESIDENT | PG_INFLIGHT)); j++)
				;
			if (j > k)
				install_run(e, rg, k, j - k, NULL, wflag);
		}
		return;
	}
	/* A run goes on in the same window or the next ones; it starts only
	 * with a fault right after the last one. Two faults that land in one
	 * window by chance (a record and its neighbour: Redis's values, a
	 * database row) are not a stream, and fetching the whole window for
	 * them was most of Redis's 4.6 pages received per page faulted. */
	int run = rg->last_win != UINT64_MAX &&
		  (w == rg->last_win || (w > rg->last_win && w <= GVM_MAX(rg->ra_next, rg->last_win + 1))) &&
		  (e->fixed_window || rg->run_len >= 1 || (p > rg->last_p && p < rg->next_p + RUN_GAP));
	uint64_t end;
	int dirty = write || (!write && e->wp && !e->fixed_window && read_then_write(e, rg, p));
	if (e->fixed_window && !run && e->budget_pages && pg_resident(&e->pages) > e->high_pages) {
		/* The fixed policy (GIANTVM_FIXED_WINDOW, for comparison): under
		 * memory pressure a fault off any run fetches its page alone. */
		rg->last_win = w;
		rg->last_p = p;
		rg->next_p = p + 1;
		fetch_start(e, rg, p, 1, p, now, 0, UINT64_MAX, write, write);
		return;
	}
	uint64_t step = run ? (uint64_t)RUN_RAMP << GVM_MIN(rg->run_len, 20u) : 0;
	if (run && !e->fixed_window && step < e->prefetch) {
		/* A run's first steps fetch from the fault on, twice as much at
		 * each step (2, 4, 8, 16 pages with the default 32), like
		 * Linux's readahead ramp-up: what a short record does not use
		 * stays below what it did use. A record of two pages is not
		 * locality enough to widen the windows of random faults. */
		if (rg->run_len)
			win_grow(e, rg);
		end = GVM_MIN(p + step, GVM_MIN((w + 1) * e->prefetch, rg->npages));
		fetch_start(e, rg, p, (uint32_t)(end - p), p, now, 0, UINT64_MAX, write || rg->write_bias > 8, dirty);
	} else if (run || e->fixed_window) {
		/* A run: whole windows, and readahead ahead of it. */
		win_grow(e, rg);
		end = GVM_MIN((w + 1) * e->prefetch, rg->npages);
		fetch_start(e, rg, w * e->prefetch, (uint32_t)(end - w * e->prefetch), p, now, 0,
			    UINT64_MAX, write || rg->write_bias > 8, dirty);
		/* Readahead once the run is confirmed (two faults in a row, and
		 * the ramp done): a random fault that lands next to the previous
		 * one by chance would otherwise fetch readahead windows nobody
		 * reads. */
		if (run && w > rg->last_win && (rg->run_len >= 1 || e->fixed_window))
			ra_extend(e, rg, w, now);
		else if (!run)
			rg->ra_next = w + 1;
	} else {
		unsigned win = rg->win;
		if (win == 1 && e->prefetch > 1 && ++rg->explore >= EXPLORE_EVERY) {
			rg->explore = 0;
			win = 2;
		}
		uint64_t p0 = p & ~(uint64_t)(win - 1);
		uint32_t n = (uint32_t)GVM_MIN((uint64_t)win, rg->npages - p0);
		/* The probe: the page of the window farthest from the fault. A
		 * guest that uses the window reaches it; one that reads a record
		 * of a page or two does not (the neighbour, probed before, was
		 * touched by every two-page Redis value: the window grew to 32
		 * pages of which two were used). */
		uint64_t probe = n < 2 ? UINT64_MAX : p - p0 < n / 2 ? p0 + n - 1 : p0;
		fetch_start(e, rg, p0, n, p, now, 0, probe, write || rg->write_bias > 8, dirty);
		rg->ra_next = w + 1;
		end = p0 + n;
	}
	rg->run_len = run ? rg->run_len + 1 : 0;
	rg->last_win = w;
	rg->last_p = p;
	rg->next_p = end;
}

void gvm_fault_drain(struct gvm_engine *e)
{
	struct uffd_msg msgs[UFFD_BATCH];

	for (;;) {
		ssize_t n = read(e->uffd, msgs, sizeof(msgs));
		uint64_t now = gvm_now_ns();

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				pr_perror("read(userfaultfd)");
			return;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(e, (uintptr_t)msgs[i].arg.pagefault.address,
					 !!(msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE),
					 !!(msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP), now);
		}
		if ((size_t)n < sizeof(msgs))
			return;
	}
}

/*
 * Is page p as a node returned it (set: non-zero, sealed in `data` with
 * `tag`) a version this engine wrote? Normally only the last one (ver); while
 * a write-back is still in flight (a flush of a page that was then dropped
 * clean) the versions back to the last one acked (ver_done) too. Decrypts in
 * place; 1 if good. Any thread (versions are read with atomics).
 */
static int seal_open_one(struct gvm_sealer *s, struct gvm_region *rg, uint64_t p, int set,
			 uint8_t *data, const uint8_t *tag)
{
	uint32_t cur = __atomic_load_n(&rg->ver[p], __ATOMIC_RELAXED);
	uint32_t done = __atomic_load_n(&rg->ver_done[p], __ATOMIC_RELAXED);
	uint64_t hi = gvm_seal_order(cur), lo = gvm_seal_order(done);
	uint8_t save[GVM_PAGE_SIZE];
	int tries = 0;

	if (lo >= hi) {
		uint32_t v = gvm_seal_live(cur);
		return set ? v && gvm_open_page(s, p, v, data, tag) == 0 : v == 0;
	}
	if (!set)   /* zero: right if the page was zero at either end */
		return !gvm_seal_live(cur) || !gvm_seal_live(done) || !done;
	memcpy(save, data, GVM_PAGE_SIZE);
	for (uint64_t o = hi; o >= lo && o > 1 && tries < 8; o--) {
		if (o & 1)
			continue;  /* a zero state: not this */
		if (tries++)
			memcpy(data, save, GVM_PAGE_SIZE);
		if (gvm_open_page(s, p, (uint32_t)(o >> 1), data, tag) == 0)
			return 1;
	}
	return 0;
}

/* A sealed READ payload of count pages: its packed pages and, after them,
 * one tag per non-zero page. */
static uint8_t *sealed_layout(uint8_t *payload, unsigned count, const uint8_t **tags)
{
	unsigned nz = 0;

	for (unsigned i = 0; i < count; i++)
		nz += gvm_bitmap_test(payload, i);
	*tags = payload + GVM_BITMAP_BYTES(count) + (size_t)nz * GVM_PAGE_SIZE;
	return payload + GVM_BITMAP_BYTES(count);
}

unsigned gvm_seal_open_window(struct gvm_sealer *s, struct gvm_region *rg, uint64_t page0,
			      unsigned count, uint8_t *payload, const uint8_t *todo, uint8_t *bad)
{
	const uint8_t *bm = payload, *tags;
	uint8_t *data = sealed_layout(payload, count, &tags);
	unsigned nbad = 0;

	for (unsigned i = 0, k = 0; i < count; i++) {
		int set = gvm_bitmap_test(bm, i);
		if (gvm_bitmap_test(todo, i) &&
		    !seal_open_one(s, rg, page0 + i, set, data + ((size_t)k << GVM_PAGE_SHIFT),
				   tags + (size_t)k * GVM_TAG_SIZE)) {
			gvm_bitmap_set(bad, i);
			nbad++;
		}
		k += set;
	}
	return nbad;
}

/*
 * Some pages of a sealed reply failed (altered, another page's or region's,
 * an older version, or claimed zero when it was written): none is ever
 * installed. The read goes to the next replica, as if this one had failed;
 * with none left, the failing pages are poisoned and the rest installed.
 * Returns 0 (install the rest) or -EBADMSG (the fetch was handled).
 */
static int seal_reject(struct gvm_engine *e, struct gvm_conn *c, struct gvm_fetch *f,
		       const uint8_t *badmap, unsigned bad)
{
	struct gvm_region *rg = f->rg;

	c->pages_rejected += bad;
	CTR_ADD(e, pages_rejected, bad);
	CTR_ADD(e, errors, 1);
	pr_warn("node %s: %u page(s) of region %016" PRIx64 " pages %" PRIu64 "-%" PRIu64
		" failed verification (altered, swapped, stale or foreign): not installed",
		gvm_node_name(&e->pool->cfg, c->node), bad, rg->id, f->page, f->page + f->count - 1);
	uint32_t nodes[GVM_MAX_REPLICAS];
	if (untried(e, f, nodes)) {
		fetch_send(e, f);
		return -EBADMSG;
	}
	/* No replica left to ask: never a wrong byte, so the failing pages are
	 * lost (poisoned: SIGBUS for whoever touches them); the rest go in. */
	pr_err("no replica served region %016" PRIx64 " pages %" PRIu64 "-%" PRIu64
	       " intact: poisoning the %u failing page(s)", rg->id, f->page, f->page + f->count - 1, bad);
	for (unsigned i = 0; i < f->count; i++) {
		uint64_t p = f->page + i;
		if (!gvm_bitmap_test(badmap, i) || !gvm_bitmap_test(f->own, i) || (pg_get(rg->pg, p) & PG_RESIDENT))
			continue;
		if (poison_page(e, rg, p) < 0) {
			/* Cannot poison: keep it unresolved rather than install it. */
			pr_err("cannot poison page %#lx: %s", (unsigned long)(rg->base + (p << GVM_PAGE_SHIFT)),
			       (e->features & UFFD_FEATURE_POISON) ? strerror(errno) : "no UFFDIO_POISON");
			fetch_give_up(e, f);
			return -EBADMSG;
		}
		gvm_bitmap_clear(f->own, i);
	}
	return 0;
}

/* Hand the rest of a window to the opener when it has at least this many
 * pages to open (below, the hand-over costs more than it saves). */
#define OPEN_ASYNC_MIN 4u

/*
 * Sealed pages: check and decrypt a READ reply (the payload is the
 * connection's receive buffer, consumed with this reply). Pages resident
 * here are skipped: they are not installed, and their version may be moving
 * (a write-back in flight). Returns 0 (install the payload), -EBADMSG (the
 * fetch was handled) or -EINPROGRESS (handed to the opener:
 * gvm_fault_on_opened installs it).
 */
static int seal_verify(struct gvm_engine *e, struct gvm_conn *c, struct gvm_fetch *f,
		       const struct gvm_hdr *h, uint8_t *payload)
{
	struct gvm_region *rg = f->rg;
	const uint8_t *bm = payload;
	unsigned bad, ntodo = 0;
	uint8_t badmap[GVM_BITMAP_BYTES(GVM_MAX_PAGES)] = { 0 };
	uint8_t todo[GVM_BITMAP_BYTES(GVM_MAX_PAGES)] = { 0 };

	if (!(h->flags & GVM_HF_TAGS)) {
		/* A node that drops the tags proves nothing. */
		memset(badmap, 0xff, GVM_BITMAP_BYTES(f->count));
		return seal_reject(e, c, f, badmap, f->count);
	}
	const uint8_t *tags;
	uint8_t *data = sealed_layout(payload, f->count, &tags);
	/* The page a thread waits for first: checked, opened and installed
	 * before the rest of the window is decrypted (AES-GCM costs about 1.5
	 * us a page here; a 32-page window would otherwise add ~50 us to the
	 * fault). If it fails, so does the reply, below. */
	if (owned(f->own, f->page, f->count, f->fault_page) &&
	    !(pg_get(rg->pg, f->fault_page) & PG_RESIDENT)) {
		unsigned fi = (unsigned)(f->fault_page - f->page);
		long pi = gvm_packed_index(bm, fi);
		uint8_t *pd = pi < 0 ? NULL : data + ((size_t)pi << GVM_PAGE_SHIFT);
		if (seal_open_one(rg->opener, rg, f->fault_page, pi >= 0, pd,
				  pi < 0 ? NULL : tags + (size_t)pi * GVM_TAG_SIZE)) {
			install_run(e, rg, f->fault_page, 1, pd,
				    (f->writable ? IR_WRITABLE | IR_DIRTY : 0) | (f->write_fault ? IR_DIRTY : 0));
			/* Installed: no longer this fetch's. The rest of the window
			 * may be installed much later (opener, next replica), by
			 * when the page may have been written, written back and
			 * dropped: it must not come back from this copy. */
			gvm_bitmap_clear(f->own, fi);
			if (f->fault_ns) {
				gvm_hist_add(e, gvm_now_ns() - f->fault_ns);
				f->timed = 1;
			}
		}
	}
	/* Every page of ours not resident, even after a failure: the good ones
	 * are installed if no replica is left, so each must be opened (or be
	 * left out). */
	for (unsigned i = 0; i < f->count; i++)
		if (gvm_bitmap_test(f->own, i) && !(pg_get(rg->pg, f->page + i) & PG_RESIDENT)) {
			gvm_bitmap_set(todo, i);
			ntodo++;
		}
	/* The rest of a window a thread faulted in goes to the opener, so the
	 * next fault is not held behind it. A readahead window (nobody waits
	 * for it yet) goes only when the opener is idle, so the two threads
	 * share a sequential stream; queued behind other windows it would only
	 * add the hand-over's copy (measured, `giantvm bench --seal both`, 12
	 * runs each: sequential 0.88x unsealed this way, 0.78x with readahead
	 * always opened here). */
	if (e->opener && ntodo >= OPEN_ASYNC_MIN &&
	    gvm_opener_submit(e->opener, c, f, payload, h->len, todo, ntodo, !f->fault_ns) == 0)
		return -EINPROGRESS;
	bad = gvm_seal_open_window(rg->opener, rg, f->page, f->count, payload, todo, badmap);
	return bad ? seal_reject(e, c, f, badmap, bad) : 0;
}

/* A reply's pages are open and checked: install them, free the fetch. */
static void fetch_installed(struct gvm_engine *e, struct gvm_fetch *f, const uint8_t *payload)
{
	install_payload(e, f->rg, f->page, f->count, payload, f->own, f->fault_page,
			f->hold ? f->page : UINT64_MAX, f->probe_page, f->writable, f->write_fault);
	if (!f->fault_ns)
		CTR_ADD(e, readahead_pages, f->count);
	else if (!f->timed)
		gvm_hist_add(e, gvm_now_ns() - f->fault_ns);
	fetch_free(e, f);
}

/* A READ reply: install it, or try the next replica. */
void gvm_fault_on_reply(struct gvm_engine *e, struct gvm_conn *c, struct gvm_fetch *f,
			const struct gvm_hdr *h, const uint8_t *payload)
{
	if (h->status) {
		pr_warn("node %s: READ failed: %s", gvm_node_name(&e->pool->cfg, c->node),
			strerror(-h->status));
		CTR_ADD(e, errors, 1);
		if (h->status == -EACCES) {
			/* Not ours to read (wrong region key): retrying cannot help. */
			fetch_give_up(e, f);
			return;
		}
		fetch_send(e, f);
		return;
	}
	/* What came over the network, installed or not (a reply that fails
	 * verification was received too). */
	c->pages_in += f->count;
	CTR_ADD(e, bytes_in, h->len);
	if (e->seal) {
		int r = seal_verify(e, c, f, h, (uint8_t *)payload);
		if (r == -EBADMSG || r == -EINPROGRESS)
			return;
	}
	fetch_installed(e, f, payload);
}

void gvm_fault_on_opened(struct gvm_engine *e, struct gvm_open_job *j)
{
	struct gvm_fetch *f = j->f;

	if (j->inline_open)
		j->nbad = gvm_seal_open_window(f->rg->opener, f->rg, j->page, j->count, j->buf, j->todo, j->bad);
	if (j->nbad && seal_reject(e, j->c, f, j->bad, j->nbad) < 0)
		return;
	fetch_installed(e, f, j->buf);
}

/* The connection failed with the READ outstanding: try the next replica. */
void gvm_fault_on_fail(struct gvm_engine *e, struct gvm_fetch *f)
{
	fetch_send(e, f);
}

void gvm_fault_retry_parked(struct gvm_engine *e, uint64_t now)
{
	struct gvm_fetch *f, **pf = &e->parked;

	while ((f = *pf)) {
		if (now < f->retry_ns) {
			pf = &f->next;
			continue;
		}
		*pf = f->next;
		f->parked = 0;
		fetch_go(e, f, now);
	}
}

void gvm_fault_resume(struct gvm_engine *e)
{
	size_t keep = 0, n = e->n_deferred;

	/* The evictor may have made room: fetches waiting for it go now. */
	for (struct gvm_fetch *f = e->parked; f; f = f->next)
		if (f->room)
			f->retry_ns = 0;
	/* Faults that waited for a drop: replay those whose page is dropped. */
	for (size_t i = 0; i < n; i++) {
		uint64_t a = e->deferred[i] & ~1ull;
		struct gvm_region *rg = region_of(e, (uintptr_t)a);
		if (rg && (pg_get(rg->pg, (a - rg->base) >> GVM_PAGE_SHIFT) & PG_DROPPING)) {
			e->deferred[keep++] = e->deferred[i];
			continue;
		}
		/* The page is gone: wake the thread; it faults again as MISSING. */
		uffd_wake(e, (uintptr_t)a, GVM_PAGE_SIZE);
	}
	e->n_deferred = keep;
}

void gvm_fault_fini(struct gvm_engine *e)
{
	/* Free, parked and in flight alike (the transport drops its requests at
	 * close without calling back). */
	while (e->all_fetches) {
		struct gvm_fetch *f = e->all_fetches;
		e->all_fetches = f->all_next;
		free(f);
	}
	e->free_fetch = e->parked = NULL;
	free(e->deferred);
}
