/*
 * Fault engine: serves userfaultfd faults of attached regions from the pool.
 *
 * DESIGN
 * One event thread owns the userfaultfd, every node connection (transport.c)
 * and all fetch state; it blocks in epoll_wait on the uffd, an eventfd
 * (commands and quit) and the node sockets, so it never spins and needs no
 * lock on the fault path. Concurrency comes from pipelining, not threads: a
 * fault sends READ for its window and the thread goes back to epoll, so any
 * number of faults (vCPUs, readahead, several regions) are in flight at once
 * over one connection per node.
 *
 * Rule: the event thread never reads or writes guest memory. Guest memory
 * that it believes resident may have been discarded by the owner (e.g. QEMU
 * balloon), and touching it would fault into our own uffd and deadlock.
 * Page contents are read by API threads (flush) and the evictor, which the
 * event thread serves like any other faulting thread.
 *
 * Per page the engine keeps one byte of flags (pg[]), written by the event
 * thread and read by others with atomics:
 *   RESIDENT  installed (or present at attach): a fault on it means the
 *             owner discarded it, and it is refilled with zeros as discard
 *             semantics require;
 *   INFLIGHT  a READ covering it is outstanding: a fault on it waits for the
 *             install, which wakes every waiter on the range.
 *
 * Sequential readahead: a fault at window w that continues a run fetches
 * the next `readahead` windows and installs them before they are touched.
 * To keep the run going without a fault, the first page of the window half
 * way through the readahead is held back in a one-page buffer; touching it
 * faults, is served from the buffer at once, and extends the readahead.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine_int.h"
#include "log.h"
#include "uffd.h"
#include "util.h"

#define MAX_EVENTS 64
#define UFFD_BATCH 32

static char uffd_tag, cmd_tag; /* epoll data.ptr sentinels */

/* Zero pages for UFFDIO_COPY: a zero page about to be written is cheaper to
 * install allocated (one copy) than as the shared zero page, whose first
 * write takes a second, copy-on-write fault. */
static const uint8_t zero_window[GVM_STRIPE_PAGES * GVM_PAGE_SIZE] __attribute__((aligned(4096)));

/* ---------------------------------------------------------------- stats */

static unsigned hist_bucket(uint64_t ns)
{
	unsigned b, sub;

	if (ns < 4)
		return (unsigned)ns;
	b = 63u - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)((ns >> (b - 2)) & 3u);
	return GVM_MIN(b * 4u + sub, GVM_HIST_BUCKETS - 1u);
}

static uint64_t hist_value(unsigned bucket)
{
	unsigned b = bucket / 4u, sub = bucket % 4u;

	if (b < 2)
		return bucket;
	return (4ull + sub) << (b - 2);
}

static void hist_add(struct gvm_engine *e, uint64_t ns)
{
	__atomic_fetch_add(&e->hist[hist_bucket(ns)], 1, __ATOMIC_RELAXED);
}

static uint64_t hist_pct(const struct gvm_engine *e, double pct)
{
	uint64_t total = 0, seen = 0, want;

	for (unsigned i = 0; i < GVM_HIST_BUCKETS; i++)
		total += __atomic_load_n(&e->hist[i], __ATOMIC_RELAXED);
	if (!total)
		return 0;
	want = (uint64_t)((double)total * pct);
	for (unsigned i = 0; i < GVM_HIST_BUCKETS; i++) {
		seen += __atomic_load_n(&e->hist[i], __ATOMIC_RELAXED);
		if (seen > want)
			return hist_value(i);
	}
	return hist_value(GVM_HIST_BUCKETS - 1);
}

#define CTR_ADD(e, f, n) __atomic_fetch_add(&(e)->ctr.f, (n), __ATOMIC_RELAXED)

/* ------------------------------------------------------------- regions */

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


/* ------------------------------------------------------------- install */

static void uffd_wake(struct gvm_engine *e, uintptr_t addr, size_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };

	if (ioctl(e->uffd, UFFDIO_WAKE, &r) < 0 && errno != ENOENT)
		pr_perror("UFFDIO_WAKE %#lx", (unsigned long)addr);
}

/*
 * Install [dst, dst+len) from src (or zero pages when src is NULL). A page
 * that already exists stops the kernel's copy: resume after it. Returns 0,
 * or -errno when the range is gone (the owner unmapped it or is exiting).
 */
static int uffd_fill(struct gvm_engine *e, uintptr_t dst, const uint8_t *src, size_t len, int protect)
{
	unsigned again = 0;

	while (len) {
		int64_t done;
		int r, err;

		if (src) {
			struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len,
						 .mode = protect ? UFFDIO_COPY_MODE_WP : 0 };
			r = ioctl(e->uffd, UFFDIO_COPY, &c);
			done = c.copy;
		} else {
			struct uffdio_zeropage z = { .range = { .start = dst, .len = len } };
			r = ioctl(e->uffd, UFFDIO_ZEROPAGE, &z);
			done = z.zeropage;
		}
		if (r == 0)
			return 0;
		err = errno;
		if (done > 0) {
			dst += (size_t)done;
			if (src)
				src += done;
			len -= (size_t)done;
		}
		if (err == EEXIST) {
			/* Someone filled this page: wake its waiters and go on. */
			uffd_wake(e, dst, GVM_PAGE_SIZE);
			dst += GVM_PAGE_SIZE;
			if (src)
				src += GVM_PAGE_SIZE;
			len -= GVM_PAGE_SIZE;
			continue;
		}
		if (err == EAGAIN && ++again < 100000)
			continue;
		if (err == ENOENT || err == ESRCH)
			return -err;
		errno = err;
		pr_perror("%s at %#lx (+%zu)", src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE",
			  (unsigned long)dst, len);
		return -err;
	}
	return 0;
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

#define IR_WRITABLE 1 /* zero pages allocated (UFFDIO_COPY), not the shared zero page */
#define IR_DIRTY    2 /* being written right now: install unprotected, already dirty */

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
		for (j = i; j < n && !(pg_get(rg->pg, p + j) & PG_RESIDENT); j++)
			;
		/* With write-protect tracking every page is installed protected
		 * (UFFDIO_COPY_MODE_WP), zero pages too: a shared zero page could
		 * be written without a fault, and the write would go unseen. */
		const uint8_t *from = src ? src + (i << GVM_PAGE_SHIFT) :
				      (writable || e->wp) ? zero_window : NULL;
		int ok = 0;
		if (from == zero_window) {
			for (uint64_t k = i; k < j && ok == 0; k += GVM_STRIPE_PAGES)
				ok = uffd_fill(e, rg->base + ((p + k) << GVM_PAGE_SHIFT), zero_window,
					       GVM_MIN((uint64_t)GVM_STRIPE_PAGES, j - k) << GVM_PAGE_SHIFT,
					       protect);
		} else {
			ok = uffd_fill(e, rg->base + ((p + i) << GVM_PAGE_SHIFT), from,
				       (j - i) << GVM_PAGE_SHIFT, protect);
		}
		if (ok == 0) {
			if (!src)
				CTR_ADD(e, zero_pages, j - i);
			CTR_ADD(e, pages_fetched, j - i);
			for (uint64_t k = i; k < j; k++) {
				mark_refault(e, rg, p + k);
				pg_set(rg->pg, p + k, PG_RESIDENT | PG_REF | (dirty ? PG_DIRTY : 0));
				pg_clear(rg->pg, p + k, PG_INFLIGHT | PG_WANTED);
			}
			installed += j - i;
			uint64_t res = pg_add_installed(&e->pages, j - i);
			if (e->budget_pages && res > e->high_pages)
				gvm_evictor_kick(e->ev);
		} else {
			for (uint64_t k = i; k < j; k++)
				pg_clear(rg->pg, p + k, PG_INFLIGHT | PG_WANTED);
		}
		i = j;
	}
	return installed;
}

/* Index (in packed data) of page i of a page payload, or -1 for zero. */
static long packed_index(const uint8_t *bm, unsigned i)
{
	long k = 0;

	if (!gvm_bitmap_test(bm, i))
		return -1;
	for (unsigned b = 0; b < i; b++)
		k += gvm_bitmap_test(bm, b);
	return k;
}

/* Install a READ reply's pages: the faulting page first (its thread
 * resumes at once), then runs of equal kind. A window fetched for a
 * writing run (`writable`: a write fault, or mostly write faults lately)
 * goes in writable and dirty, data pages too: a guest that writes where it
 * faulted, e.g. a kernel clearing pages it reuses, would otherwise take a
 * write-protect fault (a round trip to this thread) on every page of the
 * window; the price is a write-back of any of them it then leaves alone. */
static void install_payload(struct gvm_engine *e, struct gvm_region *rg, uint64_t page0,
			    unsigned count, const uint8_t *payload, uint64_t fault_page,
			    uint64_t hold_page, int writable, int write_fault)
{
	const uint8_t *bm = payload, *data = payload + GVM_BITMAP_BYTES(count);
	int wr = writable ? IR_WRITABLE | IR_DIRTY : 0;
	unsigned i = 0;
	long k = 0;

	if (fault_page >= page0 && fault_page < page0 + count) {
		long fi = packed_index(bm, (unsigned)(fault_page - page0));
		install_run(e, rg, fault_page, 1, fi < 0 ? NULL : data + ((size_t)fi << GVM_PAGE_SHIFT),
			    wr | (write_fault ? IR_DIRTY : 0));
	}
	/* Hold the marker back only if nobody waits for it: a thread that
	 * faulted on it while in flight is woken by the install alone. */
	if (hold_page >= page0 && hold_page < page0 + count &&
	    !(pg_get(rg->pg, hold_page) & (PG_RESIDENT | PG_WANTED))) {
		long hi = packed_index(bm, (unsigned)(hold_page - page0));
		if (rg->held != UINT64_MAX && !(pg_get(rg->pg, rg->held) & PG_RESIDENT))
			install_run(e, rg, rg->held, 1, rg->held_zero ? NULL : rg->held_buf, wr);
		rg->held = hold_page;
		rg->held_zero = hi < 0;
		if (hi >= 0)
			memcpy(rg->held_buf, data + ((size_t)hi << GVM_PAGE_SHIFT), GVM_PAGE_SIZE);
		pg_set(rg->pg, hold_page, PG_RESIDENT); /* keep install_run off it */
	}
	while (i < count) {
		int nz = gvm_bitmap_test(bm, i);
		unsigned j = i;
		while (j < count && gvm_bitmap_test(bm, j) == nz)
			j++;
		install_run(e, rg, page0 + i, j - i, nz ? data + ((size_t)k << GVM_PAGE_SHIFT) : NULL, wr);
		if (nz)
			k += j - i;
		i = j;
	}
	if (hold_page >= page0 && hold_page < page0 + count && rg->held == hold_page)
		pg_clear(rg->pg, hold_page, PG_RESIDENT);
}

/* --------------------------------------------------------------- fetch */

static struct gvm_fetch *fetch_alloc(struct gvm_engine *e)
{
	struct gvm_fetch *f = e->free_fetch;

	if (f) {
		e->free_fetch = f->next;
		memset(f, 0, sizeof(*f));
	} else {
		f = calloc(1, sizeof(*f));
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

/* Poison (or report) the pages of a fetch that cannot be served. */
static void fetch_give_up(struct gvm_engine *e, struct gvm_fetch *f)
{
	struct gvm_region *rg = f->rg;
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&e->pool->pl, rg->id, f->page / GVM_STRIPE_PAGES,
					     e->pool->replicas, nodes);
	char who[256] = "";
	size_t off = 0;

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
	if (e->lost_policy == GVM_LOST_POISON && (e->features & UFFD_FEATURE_POISON)) {
		/* Said first: the accessor may die of the SIGBUS at once. */
		pr_err("those pages are poisoned: a guest access gets SIGBUS (memory error)");
		for (uint32_t i = 0; i < f->count; i++) {
			uint64_t p = f->page + i;
			if (pg_get(rg->pg, p) & PG_RESIDENT)
				continue;
			struct uffdio_poison po = { .range = { rg->base + (p << GVM_PAGE_SHIFT), GVM_PAGE_SIZE } };
			if (ioctl(e->uffd, UFFDIO_POISON, &po) < 0 && errno != EEXIST)
				pr_perror("UFFDIO_POISON");
			pg_set(rg->pg, p, PG_RESIDENT | PG_LOST);
			pg_clear(rg->pg, p, PG_INFLIGHT);
			CTR_ADD(e, lost_pages, 1);
		}
		fetch_free(e, f);
		return;
	}
	CTR_ADD(e, lost_pages, f->count);
	if (e->on_fatal) {
		char why[512];
		snprintf(why, sizeof(why), "guest memory lost: every replica (%s) unreachable for %d ms",
			 who, e->pool->deadline_ms);
		e->on_fatal(why, e->fatal_arg);
	}
	/* No poison and the fatal hook returned: keep trying; the log says why. */
	f->start_ns = gvm_now_ns();
	fetch_park(e, f, f->start_ns, 50ull * 1000000ull);
}

/* Send the fetch to the first usable replica from f->tries on. */
/* A node that failed (and may have missed writes) or came back after
 * failing (and may have lost pages) until the re-sync is done. */
static int untrusted(struct gvm_engine *e, uint32_t node)
{
	struct gvm_conn *c = e->tp.conns[node];

	return e->suspect[node] || (c && (c->failures || c->state == GVM_CONN_DOWN));
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
		if (!untrusted(e, all[i]))
			out[k++] = all[i];
	if (rg->stripe[stripe] & STRIPE_DEGRADED)
		return k;
	for (unsigned i = 0; i < nr; i++)
		if (untrusted(e, all[i]))
			out[k++] = all[i];
	return nr;
}

static void fetch_send(struct gvm_engine *e, struct gvm_fetch *f)
{
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = replicas_ordered(e, f->rg, f->page / GVM_STRIPE_PAGES, nodes);
	uint64_t now = gvm_now_ns();

	while (f->tries < nr) {
		struct gvm_hdr h = { .op = GVM_OP_READ, .region = f->rg->id, .page = f->page,
				     .count = f->count };
		uint32_t node = nodes[f->tries];
		if (gvm_transport_usable(&e->tp, node, now) &&
		    gvm_transport_send(&e->tp, node, &h, NULL, 0, f) == 0)
			return;
		f->tries++;
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
	int wflag = f->writable ? IR_WRITABLE : 0;
	uint64_t n = 0;

	if (f->fault_page != UINT64_MAX)
		n += install_run(e, rg, f->fault_page, 1, NULL, wflag | (f->write_fault ? IR_DIRTY : 0));
	n += install_run(e, rg, f->page, f->count, NULL, wflag);
	/* Not fetched: counted apart from what came over the network. */
	__atomic_fetch_sub(&e->ctr.pages_fetched, n, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&e->ctr.zero_pages, n, __ATOMIC_RELAXED);
	CTR_ADD(e, local_zero_pages, n);
	if (f->fault_ns)
		hist_add(e, gvm_now_ns() - f->fault_ns);
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
		gvm_evictor_kick(e->ev);
		fetch_park(e, f, now, 500000ull);
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
			uint64_t fault_page, uint64_t now, int hold, int writable, int write_fault)
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
		return;
	}
	for (uint32_t i = 0; i < count; i++)
		if (!(pg_get(rg->pg, page + i) & (PG_RESIDENT | PG_INFLIGHT)))
			pg_set(rg->pg, page + i, PG_INFLIGHT);
	f->rg = rg;
	f->page = page;
	f->count = count;
	f->fault_page = fault_page;
	f->fault_ns = fault_page == UINT64_MAX ? 0 : now;
	f->start_ns = now;
	f->hold = hold;
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
			    UINT64_MAX, now, x == hold_win, rg->write_bias > 8, 0);
	}
	rg->ra_next = GVM_MAX(rg->ra_next, to + 1);
}

static void defer_fault(struct gvm_engine *e, uintptr_t addr, int write)
{
	if (e->n_deferred == e->cap_deferred) {
		size_t ncap = e->cap_deferred ? e->cap_deferred * 2 : 64;
		uint64_t *d = realloc(e->deferred, ncap * sizeof(*d));
		if (!d) {
			pr_err("out of memory deferring a fault");
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
 * being dropped: the caller must not unprotect it. */
static int mark_written(struct gvm_region *rg, uint64_t p)
{
	uint8_t s = pg_get(rg->pg, p);

	for (;;) {
		if (s & PG_DROPPING)
			return 0;
		if (pg_cas(rg->pg, p, &s, (uint8_t)(s | PG_DIRTY | PG_REF)))
			return 1;
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

	if (!mark_written(rg, p)) {
		defer_fault(e, addr, 1);
		return;
	}
	if (p > 0 && (pg_get(rg->pg, p - 1) & (PG_RESIDENT | PG_DIRTY)) == (PG_RESIDENT | PG_DIRTY)) {
		uint64_t lim = GVM_MIN(p + e->prefetch, rg->npages);
		while (end < lim) {
			uint8_t s = pg_get(rg->pg, end);
			if (!(s & PG_RESIDENT) || (s & (PG_INFLIGHT | PG_LOST)) || end == rg->held ||
			    !mark_written(rg, end))
				break;
			end++;
		}
	}
	struct uffdio_writeprotect wp = { .range = { rg->base + (p << GVM_PAGE_SHIFT),
						     (end - p) << GVM_PAGE_SHIFT },
					  .mode = 0 };
	if (ioctl(e->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 && errno != ENOENT)
		pr_perror("UFFDIO_WRITEPROTECT (unprotect %#lx)", (unsigned long)wp.range.start);
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
		rg->held = UINT64_MAX;
		install_run(e, rg, p, 1, rg->held_zero ? NULL : rg->held_buf,
			    write ? IR_WRITABLE | IR_DIRTY : 0);
		hist_add(e, gvm_now_ns() - now);
		ra_extend(e, rg, w, now);
		rg->last_win = w;
		return;
	}
	fl = pg_get(rg->pg, p);
	if (fl & PG_INFLIGHT) {
		pg_set(rg->pg, p, PG_WANTED); /* the install wakes it; never hold it back */
		return;
	}
	if (fl & PG_RESIDENT) {
		/* Filled since the fault was queued (wake it), or discarded by
		 * the owner (zero is what a discarded page reads as). */
		if (fl & PG_LOST)
			return;
		/* uffd_fill wakes the waiter on EEXIST; zero fills a discard. */
		uffd_fill(e, addr & ~(uintptr_t)(GVM_PAGE_SIZE - 1), e->wp ? zero_window : NULL,
			  GVM_PAGE_SIZE, e->wp);
		return;
	}
	if (e->budget_pages && pg_resident(&e->pages) > e->high_pages &&
	    !(rg->last_win != UINT64_MAX && (w == rg->last_win + 1 || w == rg->last_win))) {
		/* Under memory pressure a window at a random place would evict as
		 * much as it brings: fetch only the page asked for. A sequential
		 * run keeps its window (its pages are about to be touched). */
		rg->last_win = w;
		fetch_start(e, rg, p, 1, p, now, 0, write, write);
		return;
	}
	fetch_start(e, rg, w * e->prefetch,
		    (uint32_t)GVM_MIN((uint64_t)e->prefetch, rg->npages - w * e->prefetch), p, now, 0,
		    write || rg->write_bias > 8, write);
	if (rg->last_win != UINT64_MAX && w > rg->last_win && w <= GVM_MAX(rg->ra_next, rg->last_win + 1))
		ra_extend(e, rg, w, now);
	else
		rg->ra_next = w + 1;
	rg->last_win = w;
}

static void drain_uffd(struct gvm_engine *e)
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

/* ---------------------------------------------------------- write-back */

static void mark_degraded(struct gvm_engine *e, struct gvm_region *rg, uint64_t stripe)
{
	if (!(rg->stripe[stripe] & STRIPE_DEGRADED)) {
		rg->stripe[stripe] |= STRIPE_DEGRADED;
		__atomic_fetch_add(&e->degraded, 1, __ATOMIC_RELAXED);
	}
}

/*
 * Write-back buffers hold up to one stripe and are reused: a fresh 128 KiB
 * allocation is an mmap whose every page faults on the copy, and munmap
 * flushes TLBs; that was a third of the evictor's time. WB_SPARES bounds
 * what stays allocated (8 MiB; the evictor keeps up to 64 stripes in flight).
 */
#define WB_SPARES 64u
#define WB_BYTES  (sizeof(struct gvm_wb) + GVM_BITMAP_BYTES(GVM_STRIPE_PAGES) + \
		   (size_t)GVM_STRIPE_PAGES * GVM_PAGE_SIZE)

static struct gvm_wb *wb_alloc(struct gvm_engine *e, uint32_t n)
{
	struct gvm_wb *w = NULL;

	if (n > GVM_STRIPE_PAGES) {
		w = malloc(sizeof(*w) + GVM_BITMAP_BYTES(n) + (size_t)n * GVM_PAGE_SIZE);
		if (w)
			w->pooled = 0;
		return w;
	}
	pthread_mutex_lock(&e->cmd_mu);
	if (e->wb_spare) {
		w = e->wb_spare;
		e->wb_spare = w->next;
		e->n_wb_spare--;
	}
	pthread_mutex_unlock(&e->cmd_mu);
	if (!w)
		w = malloc(WB_BYTES);
	if (w)
		w->pooled = 1;
	return w;
}

static void wb_release(struct gvm_engine *e, struct gvm_wb *w)
{
	if (w->pooled) {
		pthread_mutex_lock(&e->cmd_mu);
		if (e->n_wb_spare < WB_SPARES) {
			w->next = e->wb_spare;
			e->wb_spare = w;
			e->n_wb_spare++;
			w = NULL;
		}
		pthread_mutex_unlock(&e->cmd_mu);
	}
	free(w);
}

static void wb_done(struct gvm_engine *e, struct gvm_wb *w)
{
	struct gvm_waiter *wt = w->waiter;

	/* Some but not all replicas have it: copy it over when they are back. */
	if (w->acks && w->acks < w->nreplicas && w->rg)
		mark_degraded(e, w->rg, w->page / GVM_STRIPE_PAGES);

	if (w->acks == 0 && !w->err)
		w->err = -EHOSTUNREACH;
	if (w->err)
		CTR_ADD(e, errors, 1);
	else
		CTR_ADD(e, bytes_out, (uint64_t)w->nonzero << GVM_PAGE_SHIFT);
	pthread_mutex_lock(&wt->mu);
	if (w->err && !wt->err)
		wt->err = w->err;
	wt->pending--;
	pthread_cond_broadcast(&wt->cv);
	pthread_mutex_unlock(&wt->mu);
	wb_release(e, w);
}

static void wb_send(struct gvm_engine *e, struct gvm_wb *w)
{
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&e->pool->pl, w->region, w->page / GVM_STRIPE_PAGES,
					     e->pool->replicas, nodes);
	uint64_t now = gvm_now_ns();

	w->outstanding = 0;
	w->nreplicas = nr;
	if (w->rg) {
		uint64_t s = w->page / GVM_STRIPE_PAGES;
		w->rg->stripe[s] |= STRIPE_WRITTEN;
		if (w->rg->stripe[s] & STRIPE_RESYNC)
			w->rg->stripe[s] |= STRIPE_STALE; /* a copy in flight holds older data */
	}
	for (unsigned i = 0; i < nr; i++) {
		struct gvm_hdr h = { .op = GVM_OP_WRITE, .region = w->region, .page = w->page,
				     .count = w->count, .len = (uint32_t)w->len };
		if (!gvm_transport_usable(&e->tp, nodes[i], now))
			continue;
		/* Sent from w->payload itself: w lives until every replica has
		 * answered or failed (wb_done), and no reply comes earlier. */
		if (gvm_transport_send_ref(&e->tp, nodes[i], &h, w->payload, w->len, w) == 0)
			w->outstanding++;
	}
	if (w->outstanding == 0) {
		if (now - w->start_ns >= (uint64_t)e->pool->deadline_ms * 1000000ull) {
			pr_err("write-back of region %016" PRIx64 " pages %" PRIu64 "-%" PRIu64
			       ": no replica reachable", w->region, w->page, w->page + w->count - 1);
			w->err = -EHOSTUNREACH;
			wb_done(e, w);
			return;
		}
		w->retry_ns = now + 50ull * 1000000ull;
		w->next = e->parked_wb;
		e->parked_wb = w;
	}
}

static void run_commands(struct gvm_engine *e)
{
	struct gvm_wb *list;
	uint64_t v;

	if (read(e->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_perror("read(eventfd)");
	pthread_mutex_lock(&e->cmd_mu);
	list = e->cmd_head;
	e->cmd_head = e->cmd_tail = NULL;
	pthread_mutex_unlock(&e->cmd_mu);
	while (list) {
		struct gvm_wb *w = list;
		list = list->next;
		w->next = NULL;
		wb_send(e, w);
	}
	/* The evictor may have made room: fetches waiting for it go now. */
	for (struct gvm_fetch *f = e->parked; f; f = f->next)
		if (f->room)
			f->retry_ns = 0;
	/* Faults that waited for a drop: replay those whose page is dropped. */
	size_t keep = 0, n = e->n_deferred;
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

/* The evictor dropped pages (its ops->dropped). */
static void engine_poke(void *ctx)
{
	struct gvm_engine *e = ctx;
	uint64_t one = 1;

	if (write(e->evfd, &one, sizeof(one)) < 0)
		pr_perror("write(eventfd)");
}

/* -------------------------------------------------------------- re-sync */

static void rs_finish(struct gvm_engine *e, struct gvm_resync *j, int complete)
{
	uint8_t *sf = &j->rg->stripe[j->stripe];

	if (complete && !(*sf & STRIPE_STALE) && (*sf & STRIPE_DEGRADED)) {
		*sf &= (uint8_t)~STRIPE_DEGRADED;
		__atomic_fetch_sub(&e->degraded, 1, __ATOMIC_RELAXED);
		CTR_ADD(e, resynced_stripes, 1);
	}
	*sf &= (uint8_t)~(STRIPE_RESYNC | STRIPE_STALE);
	e->rs_inflight--;
	free(j);
}

/*
 * Start copies of degraded stripes, a bounded number at a time: READ the
 * whole stripe from a replica that never failed, WRITE the reply's payload
 * (the same bitmap + pages format) as is to the other replicas.
 */
static void rs_pump(struct gvm_engine *e, uint64_t now)
{
	unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE), scanned = 0;

	if (!__atomic_load_n(&e->degraded, __ATOMIC_RELAXED)) {
		if (!e->rs_inflight)
			memset(e->suspect, 0, e->pool->cfg.n_nodes); /* every copy is whole again */
		return;
	}
	while (e->rs_inflight < 16 && scanned++ < 8192 && nreg) {
		struct gvm_region *rg;
		uint32_t nodes[GVM_MAX_REPLICAS];
		unsigned nr, src = UINT32_MAX;
		uint64_t s;

		if (e->rs_region >= nreg) {
			e->rs_region = 0;
			e->rs_stripe = 0;
		}
		rg = e->regions[e->rs_region];
		if (e->rs_stripe >= rg->nstripes) {
			e->rs_region++;
			e->rs_stripe = 0;
			continue;
		}
		s = e->rs_stripe++;
		if ((rg->stripe[s] & (STRIPE_DEGRADED | STRIPE_RESYNC)) != STRIPE_DEGRADED)
			continue;
		nr = gvm_placement_replicas(&e->pool->pl, rg->id, s, e->pool->replicas, nodes);
		for (unsigned i = 0; i < nr && src == UINT32_MAX; i++)
			if (!untrusted(e, nodes[i]) && gvm_transport_usable(&e->tp, nodes[i], now))
				src = nodes[i];
		if (src == UINT32_MAX)
			continue; /* no trustworthy copy reachable now: later */
		struct gvm_resync *j = calloc(1, sizeof(*j));
		if (!j)
			return;
		j->kind = CTX_RESYNC;
		j->rg = rg;
		j->stripe = s;
		for (unsigned i = 0; i < nr; i++)
			if (nodes[i] != src && gvm_transport_usable(&e->tp, nodes[i], now))
				j->targets[j->n_targets++] = nodes[i];
		if (!j->n_targets) {
			free(j);
			continue;
		}
		uint64_t p0 = s * GVM_STRIPE_PAGES;
		struct gvm_hdr h = { .op = GVM_OP_READ, .region = rg->id, .page = p0,
				     .count = (uint32_t)GVM_MIN((uint64_t)GVM_STRIPE_PAGES, rg->npages - p0) };
		if (gvm_transport_send(&e->tp, src, &h, NULL, 0, j)) {
			free(j);
			continue;
		}
		rg->stripe[s] |= STRIPE_RESYNC;
		e->rs_inflight++;
	}
}

static void rs_on_reply(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req,
			const struct gvm_hdr *h, const uint8_t *payload)
{
	if (req->op == GVM_OP_READ) {
		struct iovec iov = { .iov_base = (void *)payload, .iov_len = h->len };
		if (h->status || (j->rg->stripe[j->stripe] & STRIPE_STALE)) {
			rs_finish(e, j, 0);
			return;
		}
		for (unsigned i = 0; i < j->n_targets; i++) {
			struct gvm_hdr w = { .op = GVM_OP_WRITE, .region = req->region, .page = req->page,
					     .count = req->count, .len = h->len };
			if (gvm_transport_send(&e->tp, j->targets[i], &w, &iov, 1, j) == 0)
				j->outstanding++;
		}
		if (!j->outstanding)
			rs_finish(e, j, 0);
		return;
	}
	if (!h->status)
		j->acks++;
	if (--j->outstanding == 0)
		rs_finish(e, j, j->acks == j->n_targets);
}

static void rs_on_fail(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req)
{
	if (req->op == GVM_OP_READ || --j->outstanding == 0)
		rs_finish(e, j, 0);
}

/* A node that failed is back: whatever this engine wrote to it may be gone
 * (a restart without a backing file). Read nothing from it that others
 * have, and copy every stripe it should hold from a live replica. */
static void on_up(void *owner, struct gvm_conn *c)
{
	struct gvm_engine *e = owner;
	unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE);
	uint64_t marked = 0;

	e->suspect[c->node] = 1;
	for (unsigned ri = 0; ri < nreg; ri++) {
		struct gvm_region *rg = e->regions[ri];
		for (uint64_t s = 0; s < rg->nstripes; s++) {
			uint32_t nodes[GVM_MAX_REPLICAS];
			unsigned nr;
			if (!(rg->stripe[s] & STRIPE_WRITTEN))
				continue;
			nr = gvm_placement_replicas(&e->pool->pl, rg->id, s, e->pool->replicas, nodes);
			for (unsigned i = 0; i < nr; i++) {
				if (nodes[i] == c->node) {
					mark_degraded(e, rg, s);
					marked++;
					break;
				}
			}
		}
	}
	if (marked)
		pr_info("node %s: re-syncing %llu stripes from live replicas",
			gvm_node_name(&e->pool->cfg, c->node), (unsigned long long)marked);
}

/* ------------------------------------------------------ transport glue */

static void on_reply(void *owner, struct gvm_conn *c, const struct gvm_req *req,
		     const struct gvm_hdr *h, const uint8_t *payload)
{
	struct gvm_engine *e = owner;

	if (*(uint8_t *)req->ctx == CTX_RESYNC) {
		rs_on_reply(e, req->ctx, req, h, payload);
		return;
	}
	if (req->op == GVM_OP_READ) {
		struct gvm_fetch *f = req->ctx;
		if (h->status) {
			pr_warn("node %s: READ failed: %s", gvm_node_name(&e->pool->cfg, c->node),
				strerror(-h->status));
			CTR_ADD(e, errors, 1);
			if (h->status == -EACCES) {
				/* Not ours to read (wrong region key): retrying cannot help. */
				fetch_give_up(e, f);
				return;
			}
			f->tries++;
			fetch_send(e, f);
			return;
		}
		c->pages_in += f->count;
		CTR_ADD(e, bytes_in, h->len);
		install_payload(e, f->rg, f->page, f->count, payload, f->fault_page,
				f->hold ? f->page : UINT64_MAX, f->writable, f->write_fault);
		if (f->fault_ns)
			hist_add(e, gvm_now_ns() - f->fault_ns);
		else
			CTR_ADD(e, readahead_pages, f->count);
		fetch_free(e, f);
	} else if (req->op == GVM_OP_WRITE) {
		struct gvm_wb *w = req->ctx;
		if (h->status) {
			pr_warn("node %s: WRITE failed: %s", gvm_node_name(&e->pool->cfg, c->node),
				strerror(-h->status));
			if (!w->err)
				w->err = h->status;
		} else {
			w->acks++;
		}
		if (--w->outstanding == 0)
			wb_done(e, w);
	}
}

static void on_fail(void *owner, struct gvm_conn *c, const struct gvm_req *req, int err)
{
	struct gvm_engine *e = owner;

	(void)c;
	(void)err;
	CTR_ADD(e, errors, 1);
	if (*(uint8_t *)req->ctx == CTX_RESYNC) {
		rs_on_fail(e, req->ctx, req);
		return;
	}
	if (req->op == GVM_OP_READ) {
		struct gvm_fetch *f = req->ctx;
		f->tries++;
		fetch_send(e, f);
	} else if (req->op == GVM_OP_WRITE) {
		/* A replica that failed is not live: done once the live ones ack. */
		struct gvm_wb *w = req->ctx;
		if (--w->outstanding == 0) {
			if (w->acks == 0) {
				w->next = e->parked_wb;
				w->retry_ns = gvm_now_ns() + 50ull * 1000000ull;
				e->parked_wb = w;
			} else {
				wb_done(e, w);
			}
		}
	}
}

static void retry_parked(struct gvm_engine *e, uint64_t now)
{
	struct gvm_fetch *f = e->parked, **pf = &e->parked;
	struct gvm_wb *w = e->parked_wb, **pw = &e->parked_wb;

	while ((f = *pf)) {
		if (now < f->retry_ns) {
			pf = &f->next;
			continue;
		}
		*pf = f->next;
		f->parked = 0;
		fetch_go(e, f, now);
	}
	while ((w = *pw)) {
		if (now < w->retry_ns) {
			pw = &w->next;
			continue;
		}
		*pw = w->next;
		wb_send(e, w);
	}
}

/* ---------------------------------------------------------------- loop */

static void *engine_thread(void *arg)
{
	struct gvm_engine *e = arg;
	struct epoll_event evs[MAX_EVENTS];
	uint64_t next_tick = 0;
	int timeout = 100;

	while (!__atomic_load_n(&e->quit, __ATOMIC_ACQUIRE)) {
		int n = epoll_wait(e->epfd, evs, MAX_EVENTS, timeout);
		uint64_t now;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			pr_perror("epoll_wait");
			break;
		}
		/* Faults first, and again after every other event: a guest
		 * thread is stalled on each, while installing a window or
		 * queueing write-backs can wait a few microseconds. */
		for (int i = 0; i < n; i++)
			if (evs[i].data.ptr == &uffd_tag)
				drain_uffd(e);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &uffd_tag)
				continue;
			if (p == &cmd_tag)
				run_commands(e);
			else
				gvm_transport_event(&e->tp, p, evs[i].events);
			drain_uffd(e);
		}
		gvm_transport_flush(&e->tp);
		now = gvm_now_ns();
		if (now >= next_tick || e->parked || e->parked_wb) {
			int ms = gvm_transport_tick(&e->tp, now, e->idle_ns);
			retry_parked(e, now);
			rs_pump(e, now);
			if (e->rs_inflight)
				ms = GVM_MIN(ms, 5);
			gvm_transport_flush(&e->tp);
			timeout = (e->parked || e->parked_wb) ? 1 : GVM_MIN(ms, 250);
			next_tick = now + (uint64_t)timeout * 1000000ull;
		}
	}
	return NULL;
}

/* ----------------------------------------------------------------- API */

static int engine_write_back(void *ctx, struct gvm_region *rg, uint64_t p, uint32_t n,
			     struct gvm_waiter *wt);

/* What the evictor may ask of the engine. */
static const struct gvm_evict_ops evict_ops = { .write_back = engine_write_back, .dropped = engine_poke };

int gvm_engine_open(struct gvm_engine **out, struct gvm_pool *pool, const struct gvm_engine_opts *o)
{
	struct gvm_engine *e = calloc(1, sizeof(*e));
	struct gvm_transport_ops ops = { .on_reply = on_reply, .on_fail = on_fail, .on_up = on_up };
	struct epoll_event ev = { .events = EPOLLIN };
	uint64_t wanted = UFFD_FEATURE_POISON;
	const char *off = getenv("GIANTVM_UFFD_DISABLE");
	int r;

	if (!e)
		return -ENOMEM;
	e->uffd = e->epfd = e->evfd = -1;
	e->pool = pool;
	e->prefetch = o && o->prefetch ? o->prefetch : GVM_STRIPE_PAGES;
	if (e->prefetch > GVM_STRIPE_PAGES || (e->prefetch & (e->prefetch - 1))) {
		pr_err("prefetch %u: must be a power of two from 1 to %u", e->prefetch, GVM_STRIPE_PAGES);
		free(e);
		return -EINVAL;
	}
	e->readahead = !o || !o->readahead ? 8 : (o->readahead == -1u ? 0 : o->readahead);
	e->lost_policy = o ? o->lost_policy : GVM_LOST_POISON;
	e->on_fatal = o ? o->on_fatal : NULL;
	e->fatal_arg = o ? o->fatal_arg : NULL;
	e->idle_ns = 60ull * 1000000000ull;
	pthread_mutex_init(&e->cmd_mu, NULL);
	if (o && o->local_mem) {
		e->budget_pages = o->local_mem >> GVM_PAGE_SHIFT;
		if (e->budget_pages < 1024) {
			pr_err("local memory budget %llu bytes: at least 4 MiB", (unsigned long long)o->local_mem);
			r = -EINVAL;
			goto err_free;
		}
		/* Evict from 97% down to 90%: room for a burst of faults while
		 * the evictor writes back, without waiting on it. */
		e->high_pages = e->budget_pages - e->budget_pages / 32;
		e->low_pages = e->budget_pages - e->budget_pages / 10;
		e->wp = 1;
		wanted |= UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE;
	}

	if (off && strstr(off, "POISON"))
		wanted &= ~(uint64_t)UFFD_FEATURE_POISON;
	if (off && strstr(off, "MOVE"))
		wanted &= ~(uint64_t)UFFD_FEATURE_MOVE;
	r = gvm_uffd_open(wanted, &e->features, &e->avail);
	if (r < 0)
		goto err_free;
	e->uffd = r;
	if (e->wp && !(e->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		pr_err("a local memory budget needs userfaultfd write-protect (Linux 5.7+) to track "
		       "written pages; this kernel does not offer it");
		r = -EOPNOTSUPP;
		goto err_close;
	}
	gvm_uffd_features_str(e->features, e->features_str, sizeof(e->features_str));
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->epfd < 0) {
		r = -errno;
		pr_perror("epoll_create1");
		goto err_close;
	}
	e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (e->evfd < 0) {
		r = -errno;
		pr_perror("eventfd");
		goto err_close;
	}
	ev.data.ptr = &uffd_tag;
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->uffd, &ev) < 0) {
		r = -errno;
		pr_perror("epoll_ctl(uffd)");
		goto err_close;
	}
	ev.data.ptr = &cmd_tag;
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev) < 0) {
		r = -errno;
		pr_perror("epoll_ctl(eventfd)");
		goto err_close;
	}
	e->suspect = calloc(pool->cfg.n_nodes, 1);
	if (!e->suspect) {
		r = -ENOMEM;
		goto err_close;
	}
	r = gvm_transport_init(&e->tp, e->epfd, &pool->cfg, pool->token, pool->token_len,
			       pool->timeout_ms, &ops, e);
	if (r)
		goto err_close;
	long nofile = gvm_raise_nofile();
	if (nofile < 0)
		pr_warn("cannot raise the open-files limit: %s", strerror((int)-nofile));
	else if ((uint64_t)nofile < (uint64_t)pool->cfg.n_nodes + 256)
		/* Connections open on first use and close after 60 s idle, so a
		 * VM touching every node at once is what runs out. */
		pr_warn("the pool has %u nodes but the open-files limit is %ld (hard limit): a VM "
			"touching every node at once will fail; raise it (ulimit -Hn, LimitNOFILE=)",
			pool->cfg.n_nodes, nofile);
	r = pthread_create(&e->thread, NULL, engine_thread, e);
	if (r) {
		r = -r;
		pr_err("pthread_create: %s", strerror(-r));
		goto err_tp;
	}
	/* A name for top -H and perf; a failure only loses the name. */
	int nr = pthread_setname_np(e->thread, "gvm-engine");
	if (nr)
		pr_debug("pthread_setname_np: %s", strerror(nr));
	e->running = 1;
	if (e->budget_pages) {
		struct gvm_evict_params ep = {
			.uffd = e->uffd, .use_move = !!(e->features & UFFD_FEATURE_MOVE),
			.budget_pages = e->budget_pages, .high_pages = e->high_pages, .low_pages = e->low_pages,
			.regions = e->regions, .n_regions = &e->n_regions, .count = &e->pages,
			.ops = &evict_ops, .ctx = e,
		};
		r = gvm_evictor_start(&e->ev, &ep);
		if (r) {
			gvm_engine_close(e);
			return r;
		}
		pr_info("local memory budget %llu MiB: evicting written pages with write-protect "
			"tracking, dropping with %s", (unsigned long long)(e->budget_pages >> 8),
			gvm_evictor_uses_move(e->ev) ? "UFFDIO_MOVE" : "MADV_DONTNEED");
	}
	pr_debug("userfaultfd features: %s", e->features_str);
	*out = e;
	return 0;

err_tp:
	gvm_transport_fini(&e->tp);
err_close:
	if (e->evfd >= 0)
		close(e->evfd);
	if (e->epfd >= 0)
		close(e->epfd);
	close(e->uffd);
	free(e->suspect);
err_free:
	pthread_mutex_destroy(&e->cmd_mu);
	free(e);
	return r;
}

const char *gvm_engine_features(const struct gvm_engine *e)
{
	return e->features_str;
}

int gvm_engine_attach(struct gvm_engine *e, uint64_t region, const uint8_t key[GVM_REGION_KEY_SIZE],
		      void *addr, size_t len)
{
	return gvm_engine_attach_flags(e, region, key, addr, len, 0);
}

int gvm_engine_attach_flags(struct gvm_engine *e, uint64_t region,
			    const uint8_t key[GVM_REGION_KEY_SIZE], void *addr, size_t len,
			    unsigned flags)
{
	struct uffdio_register reg = { .range = { (uintptr_t)addr, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING |
					       (e->wp ? UFFDIO_REGISTER_MODE_WP : 0) };
	struct gvm_region *rg;
	unsigned char *vec;
	int r;

	if (((uintptr_t)addr | len) & (GVM_PAGE_SIZE - 1) || !len)
		return -EINVAL;
	if (e->n_regions >= GVM_MAX_REGIONS)
		return -ENOSPC;
	rg = calloc(1, sizeof(*rg));
	if (!rg)
		return -ENOMEM;
	rg->id = region;
	rg->base = (uintptr_t)addr;
	rg->len = len;
	rg->npages = len >> GVM_PAGE_SHIFT;
	rg->last_win = UINT64_MAX;
	rg->held = UINT64_MAX;
	rg->fresh = !!(flags & GVM_ATTACH_FRESH);
	rg->pg = calloc(rg->npages, 1);
	rg->nstripes = (rg->npages + GVM_STRIPE_PAGES - 1) / GVM_STRIPE_PAGES;
	rg->stripe = calloc(rg->nstripes, 1);
	vec = malloc(rg->npages);
	if (e->budget_pages) {
		rg->estamp = calloc(rg->npages, sizeof(*rg->estamp));
		rg->hot = calloc(rg->npages, 1);
	}
	if (!rg->pg || !rg->stripe || !vec || (e->budget_pages && (!rg->estamp || !rg->hot))) {
		r = -ENOMEM;
		goto err_free;
	}
	/* Pages present before registration (QEMU may have loaded ROMs into
	 * RAM) never fault; count them as resident. */
	if (mincore(addr, len, vec) < 0) {
		r = -errno;
		pr_perror("mincore");
		goto err_free;
	}
	uint64_t present = 0;
	for (uint64_t i = 0; i < rg->npages; i++) {
		if (vec[i] & 1) {
			/* Unknown to the pool and not protected: dirty. */
			rg->pg[i] = PG_RESIDENT | PG_DIRTY;
			present++;
		}
	}
	if (ioctl(e->uffd, UFFDIO_REGISTER, &reg) < 0) {
		r = -errno;
		pr_perror("UFFDIO_REGISTER %p+%zu", addr, len);
		goto err_free;
	}
	if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) || !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE)) ||
	    (e->wp && !(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT)))) {
		pr_err("UFFDIO_REGISTER %p: COPY/ZEROPAGE not offered (not anonymous memory?)", addr);
		r = -EOPNOTSUPP;
		goto err_unreg;
	}
	/* The key must be visible before the first fault of the region. */
	r = gvm_transport_add_key(&e->tp, region, key);
	if (r)
		goto err_unreg;
	free(vec);
	__atomic_fetch_add(&e->pages.installed, present, __ATOMIC_RELAXED);
	e->regions[e->n_regions] = rg;
	__atomic_store_n(&e->n_regions, e->n_regions + 1, __ATOMIC_RELEASE);
	return 0;

err_unreg:
	if (ioctl(e->uffd, UFFDIO_UNREGISTER, &reg.range) < 0)
		pr_perror("UFFDIO_UNREGISTER");
err_free:
	free(vec);
	free(rg->estamp);
	free(rg->hot);
	free(rg->pg);
	free(rg->stripe);
	free(rg);
	return r;
}

static void post_wb(struct gvm_engine *e, struct gvm_wb *w)
{
	uint64_t one = 1;

	pthread_mutex_lock(&e->cmd_mu);
	if (e->cmd_tail)
		e->cmd_tail->next = w;
	else
		e->cmd_head = w;
	e->cmd_tail = w;
	pthread_mutex_unlock(&e->cmd_mu);
	if (write(e->evfd, &one, sizeof(one)) < 0)
		pr_perror("write(eventfd)");
}

/*
 * Build a WRITE for pages [p, p+n) (all resident, within one stripe),
 * reading guest memory on this (non-engine) thread, and hand it over.
 */
static int wb_submit(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint32_t n,
		     struct gvm_waiter *wt)
{
	size_t bm = GVM_BITMAP_BYTES(n);
	struct gvm_wb *w = wb_alloc(e, n);
	uint8_t *data, pooled;
	uint32_t nz = 0;

	if (!w)
		return -ENOMEM;
	pooled = w->pooled;
	memset(w, 0, sizeof(*w));
	w->pooled = pooled;
	w->payload = (uint8_t *)(w + 1);
	memset(w->payload, 0, bm);
	data = w->payload + bm;
	for (uint32_t i = 0; i < n; i++) {
		const void *src = (const void *)(rg->base + ((p + i) << GVM_PAGE_SHIFT));
		/* Copy first, then test the copy: the guest may be writing. */
		memcpy(data + (size_t)nz * GVM_PAGE_SIZE, src, GVM_PAGE_SIZE);
		if (!gvm_page_is_zero(data + (size_t)nz * GVM_PAGE_SIZE)) {
			gvm_bitmap_set(w->payload, i);
			nz++;
		}
	}
	w->kind = CTX_WB;
	w->rg = rg;
	w->region = rg->id;
	w->page = p;
	w->count = n;
	w->nonzero = nz;
	w->len = bm + (size_t)nz * GVM_PAGE_SIZE;
	w->waiter = wt;
	w->start_ns = gvm_now_ns();
	pthread_mutex_lock(&wt->mu);
	wt->pending++;
	pthread_mutex_unlock(&wt->mu);
	post_wb(e, w);
	return 0;
}

/* The evictor's ops->write_back. */
static int engine_write_back(void *ctx, struct gvm_region *rg, uint64_t p, uint32_t n,
			     struct gvm_waiter *wt)
{
	return wb_submit(ctx, rg, p, n, wt);
}

static int waiter_wait(struct gvm_waiter *wt, uint64_t below)
{
	pthread_mutex_lock(&wt->mu);
	while (wt->pending > below)
		pthread_cond_wait(&wt->cv, &wt->mu);
	pthread_mutex_unlock(&wt->mu);
	return wt->err;
}

int gvm_engine_flush(struct gvm_engine *e)
{
	struct gvm_waiter wt = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE);
	int r = 0;

	for (unsigned ri = 0; ri < nreg && !r; ri++) {
		struct gvm_region *rg = e->regions[ri];
		uint64_t p = 0;
		while (p < rg->npages && !r) {
			uint64_t end = GVM_MIN((p / GVM_STRIPE_PAGES + 1) * GVM_STRIPE_PAGES, rg->npages);
			uint64_t s;
			if (!(pg_get(rg->pg, p) & PG_RESIDENT) || (pg_get(rg->pg, p) & PG_LOST)) {
				p++;
				continue;
			}
			for (s = p; s < end && (pg_get(rg->pg, s) & PG_RESIDENT) && !(pg_get(rg->pg, s) & PG_LOST); s++)
				;
			r = wb_submit(e, rg, p, (uint32_t)(s - p), &wt);
			p = s;
			/* Bound the memory queued: 256 stripes (32 MiB) in flight. */
			if (!r)
				r = waiter_wait(&wt, 256);
		}
	}
	int w = waiter_wait(&wt, 0);
	pthread_mutex_destroy(&wt.mu);
	pthread_cond_destroy(&wt.cv);
	if (r || w)
		return r ? r : w;
	/* A replica that failed and came back during the flush lacks what it
	 * missed until the re-sync copies it: another process reading it then
	 * would see old pages. Wait for the copies, up to the fault deadline
	 * (a replica still down then is skipped by readers anyway). */
	uint64_t end = gvm_now_ns() + (uint64_t)e->pool->deadline_ms * 1000000ull;
	while (__atomic_load_n(&e->degraded, __ATOMIC_RELAXED) && gvm_now_ns() < end)
		usleep(2000);
	if (__atomic_load_n(&e->degraded, __ATOMIC_RELAXED))
		pr_warn("flush: %llu stripes still have fewer copies than replicas (nodes down)",
			(unsigned long long)__atomic_load_n(&e->degraded, __ATOMIC_RELAXED));
	return 0;
}

int gvm_engine_stats(struct gvm_engine *e, struct gvm_stats *out)
{
	struct gvm_evict_counters ev;

	gvm_evictor_counters(e->ev, &ev);
	*out = (struct gvm_stats){
		.faults = __atomic_load_n(&e->ctr.faults, __ATOMIC_RELAXED),
		.pages_fetched = __atomic_load_n(&e->ctr.pages_fetched, __ATOMIC_RELAXED),
		.zero_pages = __atomic_load_n(&e->ctr.zero_pages, __ATOMIC_RELAXED),
		.readahead_pages = __atomic_load_n(&e->ctr.readahead_pages, __ATOMIC_RELAXED),
		.bytes_in = __atomic_load_n(&e->ctr.bytes_in, __ATOMIC_RELAXED),
		.bytes_out = __atomic_load_n(&e->ctr.bytes_out, __ATOMIC_RELAXED),
		.errors = __atomic_load_n(&e->ctr.errors, __ATOMIC_RELAXED),
		.lost_pages = __atomic_load_n(&e->ctr.lost_pages, __ATOMIC_RELAXED),
		.evictions = __atomic_load_n(&e->pages.dropped, __ATOMIC_RELAXED),
		.writebacks = ev.writebacks,
		.clean_drops = ev.clean_drops,
		.wp_faults = __atomic_load_n(&e->ctr.wp_faults, __ATOMIC_RELAXED),
		.resident_pages = pg_resident(&e->pages),
		.budget_pages = e->budget_pages,
		.fault_p50_ns = hist_pct(e, 0.50),
		.fault_p99_ns = hist_pct(e, 0.99),
		.under_replicated = __atomic_load_n(&e->degraded, __ATOMIC_RELAXED),
		.resynced_stripes = __atomic_load_n(&e->ctr.resynced_stripes, __ATOMIC_RELAXED),
		.local_zero_pages = __atomic_load_n(&e->ctr.local_zero_pages, __ATOMIC_RELAXED),
		.nodes = e->pool->cfg.n_nodes,
		.nodes_connected = __atomic_load_n(&e->tp.n_open, __ATOMIC_RELAXED),
	};
	/* Racy reads of the engine thread's connection states: display only. */
	for (uint32_t i = 0; i < e->tp.n_nodes; i++) {
		struct gvm_conn *c = __atomic_load_n(&e->tp.conns[i], __ATOMIC_ACQUIRE);
		if (c && __atomic_load_n(&c->state, __ATOMIC_RELAXED) == GVM_CONN_DOWN)
			out->nodes_down++;
	}
	return 0;
}

int gvm_engine_nodes_json(struct gvm_engine *e, char *buf, size_t len)
{
	size_t off = 0;
	int n = snprintf(buf, len, "[");

	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	off = (size_t)n;
	/* Racy reads of counters owned by the engine thread: fine for display. */
	for (uint32_t i = 0; i < e->tp.n_nodes; i++) {
		struct gvm_conn *c = __atomic_load_n(&e->tp.conns[i], __ATOMIC_ACQUIRE);
		if (!c)
			continue;
		n = snprintf(buf + off, len - off,
			     "%s{\"node\":\"%s\",\"state\":\"%s\",\"requests\":%" PRIu64
			     ",\"pages_in\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
			     ",\"errors\":%" PRIu64 ",\"rtt_us\":%.1f}",
			     off > 1 ? "," : "", gvm_node_name(&e->pool->cfg, i),
			     c->state == GVM_CONN_READY ? "up" : c->state == GVM_CONN_DOWN ? "down" :
			     c->state == GVM_CONN_IDLE ? "idle" : "connecting",
			     c->reqs, c->pages_in, c->bytes_in, c->bytes_out, c->errors,
			     (double)c->rtt_ewma_ns / 1000.0);
		if (n < 0 || (size_t)n >= len - off)
			return -ENOSPC;
		off += (size_t)n;
	}
	if (off + 2 > len)
		return -ENOSPC;
	buf[off++] = ']';
	buf[off] = 0;
	return (int)off;
}

void gvm_engine_close(struct gvm_engine *e)
{
	uint64_t one = 1;

	if (!e)
		return;
	gvm_evictor_stop(e->ev);
	if (e->running) {
		__atomic_store_n(&e->quit, 1, __ATOMIC_RELEASE);
		if (write(e->evfd, &one, sizeof(one)) < 0)
			pr_perror("write(eventfd)");
		pthread_join(e->thread, NULL);
	}
	for (unsigned i = 0; i < e->n_regions; i++) {
		struct gvm_region *rg = e->regions[i];
		struct uffdio_range r = { rg->base, rg->len };
		/* The range may be unmapped already (owner exiting): fine. */
		if (ioctl(e->uffd, UFFDIO_UNREGISTER, &r) < 0 && errno != ENOMEM && errno != EINVAL)
			pr_perror("UFFDIO_UNREGISTER");
		free(rg->estamp);
		free(rg->hot);
		free(rg->pg);
		free(rg->stripe);
		free(rg);
	}
	while (e->free_fetch) {
		struct gvm_fetch *f = e->free_fetch;
		e->free_fetch = f->next;
		free(f);
	}
	while (e->parked) {
		struct gvm_fetch *f = e->parked;
		e->parked = f->next;
		free(f);
	}
	gvm_transport_fini(&e->tp);
	close(e->evfd);
	close(e->epfd);
	close(e->uffd);
	while (e->wb_spare) {
		struct gvm_wb *w = e->wb_spare;
		e->wb_spare = w->next;
		free(w);
	}
	pthread_mutex_destroy(&e->cmd_mu);
	free(e->deferred);
	free(e->suspect);
	free(e);
}
