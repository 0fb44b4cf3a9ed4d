/*
 * Write-back: WRITEs of guest pages to every replica of their stripe.
 *
 * DESIGN
 * Guest memory is read only off the engine thread (engine.c, "Rule"): the
 * evictor (through its ops->write_back) and the API thread in
 * gvm_engine_flush() copy pages into a write-back buffer with
 * gvm_wb_submit(), queue it under cmd_mu and wake the engine's eventfd;
 * the engine thread sends it to every usable replica and, when all have
 * answered or failed, completes it on the submitter's gvm_waiter. A write
 * that only some replicas took marks the stripe degraded (resync.c); one
 * that none took is parked and retried until the fault deadline.
 *
 * Send window: a READ sent on a connection is answered after everything
 * queued ahead of it on that connection, and an eviction burst queues
 * megabytes of WRITEs (the evictor keeps up to 4 batches of 512 pages in
 * flight, to every replica). Measured on `giantvm bench --local-mem`, a
 * fault's READ then waited behind them for up to 191 ms. So at most
 * WB_WINDOW bytes of write-backs are on the wire at once, all nodes
 * together; the rest wait here, in order, and a READ is never behind more
 * than the window.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_int.h"
#include "log.h"

/*
 * Write-back buffers hold up to one stripe and are reused: a fresh 128 KiB
 * allocation is an mmap whose every page faults on the copy, and munmap
 * flushes TLBs; that was a third of the evictor's time. WB_SPARES bounds
 * what stays allocated (8 MiB; the evictor keeps up to 64 stripes in flight).
 */
#define WB_SPARES 64u
#define WB_WINDOW (1024u * 1024u)
/* Room for the pages' tags too (sealed). */
#define WB_BYTES  (sizeof(struct gvm_wb) + GVM_BITMAP_BYTES(GVM_STRIPE_PAGES) + \
		   (size_t)GVM_STRIPE_PAGES * (GVM_PAGE_SIZE + GVM_TAG_SIZE + sizeof(uint32_t)))

static struct gvm_wb *wb_alloc(struct gvm_engine *e, uint32_t n)
{
	struct gvm_wb *w = NULL;

	if (n > GVM_STRIPE_PAGES) {
		w = malloc(sizeof(*w) + GVM_BITMAP_BYTES(n) +
			   (size_t)n * (GVM_PAGE_SIZE + GVM_TAG_SIZE + sizeof(uint32_t)));
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
		gvm_resync_mark_degraded(e, w->rg, w->page / GVM_STRIPE_PAGES);

	/* What the replicas now hold: verification accepts it from here on. */
	if (w->tagged && w->acks && w->rg) {
		for (uint32_t i = 0; i < w->count; i++) {
			uint32_t *d = &w->rg->ver_done[w->page + i];
			uint32_t o = __atomic_load_n(d, __ATOMIC_RELAXED);
			if (gvm_seal_order(w->vers[i]) > gvm_seal_order(o))
				__atomic_store_n(d, w->vers[i], __ATOMIC_RELAXED);
		}
	}
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
	/* Only when the waiter can go on: the evictor waits for a whole batch
	 * (up to 512 single-page write-backs with random victims), and each
	 * wake-up of a sleeping thread is an IPI and a halt exit here. */
	if (wt->pending <= wt->wake_at)
		pthread_cond_broadcast(&wt->cv);
	pthread_mutex_unlock(&wt->mu);
	wb_release(e, w);
}

/* Park a write-back no replica took, at the end of the list: retries go
 * oldest first, so two write-backs of one page (a flush's, then the
 * evictor's newer one) reach a node that comes back in the order they
 * were made, and it keeps the newer. */
static void park_wb(struct gvm_engine *e, struct gvm_wb *w)
{
	w->next = NULL;
	if (e->parked_wb)
		e->parked_wb_last->next = w;
	else
		e->parked_wb = w;
	e->parked_wb_last = w;
}

/* A parked write-back that shares a page with w (from ahead of it: the
 * parked list is oldest first), which must reach the nodes before w. */
static int parked_overlap(const struct gvm_engine *e, const struct gvm_wb *w)
{
	for (const struct gvm_wb *o = e->parked_wb; o; o = o->next)
		if (o->region == w->region && o->page < w->page + w->count && w->page < o->page + o->count)
			return 1;
	return 0;
}

static void wb_send(struct gvm_engine *e, struct gvm_wb *w)
{
	uint32_t nodes[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&e->pool->pl, w->region, w->page / GVM_STRIPE_PAGES,
					     e->pool->replicas, nodes);
	uint64_t now = gvm_now_ns();

	/* Behind an older write-back of the same pages that no replica took
	 * yet: wait with it (parked, in order), or a node that came back
	 * before that one's retry would take this one first and then the
	 * older one over it. */
	if (e->parked_wb && parked_overlap(e, w)) {
		w->retry_ns = now;
		park_wb(e, w);
		return;
	}
	w->outstanding = 0;
	w->err = 0; /* a retry: an error reply to an earlier try is history */
	w->nreplicas = nr;
	if (w->rg) {
		uint64_t s = w->page / GVM_STRIPE_PAGES;
		w->rg->stripe[s] |= STRIPE_WRITTEN;
		if (w->rg->stripe[s] & STRIPE_RESYNC)
			w->rg->stripe[s] |= STRIPE_STALE; /* a copy in flight holds older data */
	}
	for (unsigned i = 0; i < nr; i++) {
		struct gvm_hdr h = { .op = GVM_OP_WRITE, .region = w->region, .page = w->page,
				     .count = w->count, .len = (uint32_t)w->len,
				     .flags = w->tagged ? GVM_HF_TAGS : 0 };
		if (!gvm_transport_usable(&e->tp, nodes[i], now))
			continue;
		/* Sent from w->payload itself: w lives until every replica has
		 * answered or failed (wb_done), and no reply comes earlier. */
		if (gvm_transport_send_ref(&e->tp, nodes[i], &h, w->payload, w->len, w) == 0) {
			w->outstanding++;
			e->wb_inflight += w->len;
		}
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
		park_wb(e, w);
	}
}

/* Send queued write-backs while the window has room (always one, so a
 * write-back larger than the window still goes). */
static void wb_pump(struct gvm_engine *e)
{
	while (e->wbq_head && (e->wb_inflight < WB_WINDOW || !e->wb_inflight)) {
		struct gvm_wb *w = e->wbq_head;
		e->wbq_head = w->next;
		if (!e->wbq_head)
			e->wbq_tail = NULL;
		w->next = NULL;
		wb_send(e, w);
	}
}

/* Take the write-backs other threads queued, and send what the window allows. */
void gvm_wb_run_queue(struct gvm_engine *e)
{
	struct gvm_wb *list, *tail;

	pthread_mutex_lock(&e->cmd_mu);
	list = e->cmd_head;
	tail = e->cmd_tail;
	e->cmd_head = e->cmd_tail = NULL;
	pthread_mutex_unlock(&e->cmd_mu);
	if (list) {
		if (e->wbq_tail)
			e->wbq_tail->next = list;
		else
			e->wbq_head = list;
		e->wbq_tail = tail;
	}
	wb_pump(e);
}

void gvm_wb_on_reply(struct gvm_engine *e, struct gvm_conn *c, struct gvm_wb *w, const struct gvm_hdr *h)
{
	if (h->status) {
		pr_warn("node %s: WRITE failed: %s", gvm_node_name(&e->pool->cfg, c->node),
			strerror(-h->status));
		if (!w->err)
			w->err = h->status;
	} else {
		w->acks++;
	}
	e->wb_inflight -= w->len;
	if (--w->outstanding == 0)
		wb_done(e, w);
	wb_pump(e);
}

/* A replica that failed is not live: done once the live ones ack. */
void gvm_wb_on_fail(struct gvm_engine *e, struct gvm_wb *w)
{
	e->wb_inflight -= w->len;
	if (--w->outstanding == 0) {
		if (w->acks == 0) {
			w->retry_ns = gvm_now_ns() + 50ull * 1000000ull;
			park_wb(e, w);
		} else {
			wb_done(e, w);
		}
	}
	wb_pump(e);
}

void gvm_wb_retry_parked(struct gvm_engine *e, uint64_t now)
{
	struct gvm_wb *w = e->parked_wb, *next;

	/* In order, each one parked again at the end if not due (or if still
	 * no replica takes it, or an older one of the same pages is still
	 * parked: wb_send): the order stays oldest first. */
	e->parked_wb = e->parked_wb_last = NULL;
	for (; w; w = next) {
		next = w->next;
		if (now < w->retry_ns)
			park_wb(e, w);
		else
			wb_send(e, w);
	}
}

static void post_wb(struct gvm_engine *e, struct gvm_wb *w)
{
	uint64_t one = 1;
	int was_empty;

	pthread_mutex_lock(&e->cmd_mu);
	was_empty = !e->cmd_head;
	if (e->cmd_tail)
		e->cmd_tail->next = w;
	else
		e->cmd_head = w;
	e->cmd_tail = w;
	pthread_mutex_unlock(&e->cmd_mu);
	/* The engine takes the whole queue after each eventfd read, so only
	 * the write-back that finds it empty needs to wake it (an evictor
	 * batch of random victims queues hundreds in a row). */
	if (was_empty && write(e->evfd, &one, sizeof(one)) < 0)
		pr_perror("write(eventfd)");
}

/*
 * Build a WRITE for pages [p, p+n) (all resident, within one stripe),
 * reading guest memory on this (non-engine) thread, and hand it over.
 */
/*
 * Seal a write-back's pages in place (on the submitting thread, so sealing
 * runs beside the engine thread, not on it) and put their tags after them.
 * Each non-zero page takes its next version; a zero page keeps its count,
 * marked zero (seal.h). Two submitters may race on a page (a flush during an
 * eviction): the version is taken with a CAS, so each seals under its own.
 */
static int wb_seal(struct gvm_region *rg, uint64_t p, uint32_t n, uint8_t *payload, uint32_t nz,
		   uint32_t *vers)
{
	uint8_t *data = payload + GVM_BITMAP_BYTES(n), *tags = data + (size_t)nz * GVM_PAGE_SIZE;
	struct gvm_sealer s;
	uint32_t k = 0;
	int r = gvm_sealer_init(&s, rg->seal_key, rg->id);

	for (uint32_t i = 0; i < n && r == 0; i++) {
		uint32_t *vp = &rg->ver[p + i];
		uint32_t v = __atomic_load_n(vp, __ATOMIC_RELAXED), nv;
		int set = gvm_bitmap_test(payload, i);
		do {
			if (!set)
				nv = v ? (v | GVM_SEAL_ZERO) : 0;
			else if ((v & ~GVM_SEAL_ZERO) >= GVM_SEAL_MAX_VER)
				nv = 0; /* a nonce would repeat: refuse */
			else
				nv = (v & ~GVM_SEAL_ZERO) + 1;
			if (set && !nv) {
				r = -EOVERFLOW;
				break;
			}
		} while (!__atomic_compare_exchange_n(vp, &v, nv, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
		vers[i] = nv;
		if (r || !set)
			continue;
		r = gvm_seal_page(&s, p + i, nv, data + (size_t)k * GVM_PAGE_SIZE, tags + (size_t)k * GVM_TAG_SIZE);
		k++;
	}
	gvm_sealer_fini(&s);
	if (r == -EOVERFLOW)
		pr_err("region %016" PRIx64 ": a page was written back %u times in this run: its next "
		       "nonce would repeat; refusing to write it", rg->id, GVM_SEAL_MAX_VER);
	return r;
}

int gvm_wb_submit(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint32_t n,
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
	w->len = bm + (size_t)nz * GVM_PAGE_SIZE;
	if (e->seal) {
		/* The versions go after the largest payload (bitmap, pages, tags).
		 * Versions are taken and the write-back queued under seal_mu, so
		 * write-backs of a page from two threads (a flush during an
		 * eviction) reach every node in version order: the last one a
		 * node keeps is the version the engine expects. */
		w->vers = (uint32_t *)(w->payload + bm + (size_t)n * (GVM_PAGE_SIZE + GVM_TAG_SIZE));
		pthread_mutex_lock(&e->seal_mu);
		int r = wb_seal(rg, p, n, w->payload, nz, w->vers);
		if (r < 0) {
			pthread_mutex_unlock(&e->seal_mu);
			wb_release(e, w);
			return r;
		}
		w->tagged = 1;
		w->len += (size_t)nz * GVM_TAG_SIZE;
	}
	w->kind = CTX_WB;
	w->rg = rg;
	w->region = rg->id;
	w->page = p;
	w->count = n;
	w->nonzero = nz;
	w->waiter = wt;
	w->start_ns = gvm_now_ns();
	pthread_mutex_lock(&wt->mu);
	wt->pending++;
	pthread_mutex_unlock(&wt->mu);
	post_wb(e, w);
	if (e->seal)
		pthread_mutex_unlock(&e->seal_mu);
	return 0;
}

static int waiter_wait(struct gvm_waiter *wt, uint64_t below)
{
	pthread_mutex_lock(&wt->mu);
	wt->wake_at = below;
	while (wt->pending > below)
		pthread_cond_wait(&wt->cv, &wt->mu);
	pthread_mutex_unlock(&wt->mu);
	return wt->err;
}

/* Resident and not lost. (Discarded pages that are not resident keep their
 * stale copy in the pool: this engine reads them as zero, fault.c.) */
static int flushable(struct gvm_region *rg, uint64_t p)
{
	uint8_t s = pg_get(rg->pg, p);

	return (s & PG_RESIDENT) && !(s & PG_LOST);
}

/*
 * Hold page p for a flush's copy the way the evictor holds its victims
 * (EVICTING), so the evictor cannot take it between the copy and its post:
 * it would post a newer copy first, and the nodes would keep the flush's
 * older one, which the page, dropped clean, would then read back. 1 if
 * held; 0 if not resident or the evictor has it.
 */
static int flush_hold(struct gvm_region *rg, uint64_t p)
{
	uint8_t s = pg_get(rg->pg, p);

	while ((s & PG_RESIDENT) && !(s & (PG_EVICTING | PG_DROPPING | PG_LOST)))
		if (pg_cas(rg->pg, p, &s, (uint8_t)(s | PG_EVICTING)))
			return 1;
	return 0;
}

/* Copy and post pages [p, s) of rg (held), then let them go. */
static int flush_run(struct gvm_engine *e, struct gvm_region *rg, uint64_t p, uint64_t s,
		     struct gvm_waiter *wt)
{
	int r = gvm_wb_submit(e, rg, p, (uint32_t)(s - p), wt);

	for (uint64_t k = p; k < s; k++)
		pg_clear(rg->pg, k, PG_EVICTING);
	/* Bound the memory queued: 256 stripes (32 MiB) in flight. */
	return r ? r : waiter_wait(wt, 256);
}

int gvm_engine_flush(struct gvm_engine *e)
{
	struct gvm_waiter wt = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE);
	struct held { struct gvm_region *rg; uint64_t p; } *busy = NULL;
	size_t nbusy = 0, capbusy = 0;
	int r = 0, late = 0;

	/* A page installed just before this call may be written already and
	 * not yet marked resident: let the engine finish marking it. */
	gvm_engine_barrier(e);
	for (unsigned ri = 0; ri < nreg && !r; ri++) {
		struct gvm_region *rg = e->regions[ri];
		uint64_t p = 0;
		while (p < rg->npages && !r) {
			uint64_t end = GVM_MIN((p / GVM_STRIPE_PAGES + 1) * GVM_STRIPE_PAGES, rg->npages);
			uint64_t s;
			if (!flushable(rg, p)) {
				p++;
				continue;
			}
			if (!flush_hold(rg, p)) {
				/* The evictor has it: its write-back may predate a
				 * write, so come back to it once the evictor is done. */
				if (nbusy == capbusy) {
					size_t nc = capbusy ? 2 * capbusy : 256;
					struct held *nb = realloc(busy, nc * sizeof(*nb));
					if (!nb) {
						r = -ENOMEM;
						break;
					}
					busy = nb;
					capbusy = nc;
				}
				busy[nbusy++] = (struct held){ rg, p++ };
				continue;
			}
			for (s = p + 1; s < end && flushable(rg, s) && flush_hold(rg, s); s++)
				;
			r = flush_run(e, rg, p, s, &wt);
			p = s;
		}
	}
	/* Pages the evictor held: once it has dropped them (written back
	 * first, if written) or kept them, flush what is still resident. */
	uint64_t until = gvm_now_ns() + (uint64_t)e->pool->deadline_ms * 1000000ull;
	for (size_t i = 0; i < nbusy && !r; i++) {
		struct gvm_region *rg = busy[i].rg;
		uint64_t p = busy[i].p;
		while ((pg_get(rg->pg, p) & (PG_EVICTING | PG_DROPPING)) && gvm_now_ns() < until)
			usleep(200);
		if (flushable(rg, p) && flush_hold(rg, p)) {
			r = flush_run(e, rg, p, p + 1, &wt);
		} else if (flushable(rg, p)) {
			/* Not flushed: said to the caller, not only in the log. */
			pr_warn("flush: page %" PRIu64 " of region %016" PRIx64 " still held after %d ms",
				p, rg->id, e->pool->deadline_ms);
			late = -ETIMEDOUT;
		}
	}
	free(busy);
	int w = waiter_wait(&wt, 0);
	pthread_mutex_destroy(&wt.mu);
	pthread_cond_destroy(&wt.cv);
	if (r || w || late)
		return r ? r : w ? w : late;
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

void gvm_wb_fini(struct gvm_engine *e)
{
	while (e->wb_spare) {
		struct gvm_wb *w = e->wb_spare;
		e->wb_spare = w->next;
		free(w);
	}
}
