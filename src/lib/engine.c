/*
 * Fault engine: serves userfaultfd faults of attached regions from the pool.
 * This file: the event loop, open/close, attach, and the transport's
 * callbacks; the work is in fault.c, writeback.c, resync.c and stats.c
 * (engine_int.h), eviction in evict.c.
 *
 * DESIGN
 * One event thread owns the userfaultfd, every node connection (transport.c)
 * and all fetch state; it blocks in epoll_wait on the uffd, an eventfd
 * (commands and quit) and the node sockets, so it never spins and needs no
 * lock on the fault path. Concurrency comes from pipelining, not threads:
 * a fault sends READ for its window and the thread goes back to epoll, so
 * any number of faults (vCPUs, readahead, several regions) are in flight at
 * once over one connection per node. (What keeps a CPU awake through fault
 * bursts is the poller, poller.c: a SCHED_IDLE thread that touches nothing.)
 *
 * Rule: the event thread never reads or writes guest memory. Guest memory
 * that it believes resident may have been discarded by the owner (e.g. QEMU
 * balloon), and touching it would fault into our own uffd and deadlock.
 * Page contents are read by API threads (flush) and the evictor, which the
 * event thread serves like any other faulting thread.
 *
 * Per page the engine keeps one byte of flags (pagestate.h), written by the
 * event thread and the evictor with atomics:
 *   RESIDENT  installed (or present at attach): a fault on it means the
 *             owner discarded it, and it is refilled with zeros as discard
 *             semantics require;
 *   INFLIGHT  a READ covering it is outstanding: a fault on it waits for the
 *             install, which wakes every waiter on the range.
 *
 * The evictor is started here with an interface (struct gvm_evict_ops):
 * it asks for write-backs and says when it dropped pages; this file starts,
 * stops it, and fault.c kicks it. Nothing in evict.c calls the engine.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "engine_int.h"
#include "log.h"
#include "uffd.h"

#define MAX_EVENTS 64

static char uffd_tag, cmd_tag, open_tag; /* epoll data.ptr sentinels */

/* ------------------------------------------------------ transport glue */

static void on_reply(void *owner, struct gvm_conn *c, const struct gvm_req *req,
		     const struct gvm_hdr *h, const uint8_t *payload)
{
	struct gvm_engine *e = owner;

	if (*(uint8_t *)req->ctx == CTX_RESYNC)
		gvm_resync_on_reply(e, req->ctx, req, h, payload);
	else if (req->op == GVM_OP_READ)
		gvm_fault_on_reply(e, c, req->ctx, h, payload);
	else if (req->op == GVM_OP_WRITE)
		gvm_wb_on_reply(e, c, req->ctx, h);
}

static void on_fail(void *owner, struct gvm_conn *c, const struct gvm_req *req, int err)
{
	struct gvm_engine *e = owner;

	(void)c;
	(void)err;
	CTR_ADD(e, errors, 1);
	if (*(uint8_t *)req->ctx == CTX_RESYNC)
		gvm_resync_on_fail(e, req->ctx, req);
	else if (req->op == GVM_OP_READ)
		gvm_fault_on_fail(e, req->ctx);
	else if (req->op == GVM_OP_WRITE)
		gvm_wb_on_fail(e, req->ctx);
}

/* ------------------------------------------------------------ commands */

struct gvm_discard {
	uintptr_t start, end;
	struct gvm_discard *next;
};

/* The eventfd: write-backs queued, discards, or pages dropped by the
 * evictor. A barrier is answered with what was asked before it: its number
 * is read before the queues are taken. */
static void run_commands(struct gvm_engine *e)
{
	struct gvm_discard *d;
	uint64_t v, req;

	if (read(e->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_perror("read(eventfd)");
	pthread_mutex_lock(&e->cmd_mu);
	req = e->barrier_req;
	d = e->discards;
	e->discards = NULL;
	pthread_mutex_unlock(&e->cmd_mu);
	while (d) {
		struct gvm_discard *next = d->next;
		gvm_fault_discard(e, d->start, d->end);
		free(d);
		d = next;
	}
	gvm_wb_run_queue(e);
	gvm_fault_resume(e);
	pthread_mutex_lock(&e->cmd_mu);
	if (e->barrier_done < req) {
		e->barrier_done = req;
		pthread_cond_broadcast(&e->barrier_cv);
	}
	pthread_mutex_unlock(&e->cmd_mu);
}

int gvm_engine_discard(struct gvm_engine *e, void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr, b = a + len;
	unsigned n = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE), i;
	struct gvm_discard *d;

	/* madvise refuses an unaligned start (and does nothing). */
	if (!len || (a & (GVM_PAGE_SIZE - 1)) || b < a)
		return 0;
	for (i = 0; i < n; i++)
		if (a < e->regions[i]->base + e->regions[i]->len && b > e->regions[i]->base)
			break;
	if (i == n)
		return 0;
	if (pthread_equal(pthread_self(), e->thread)) {
		gvm_fault_discard(e, a, b);
		return 0;
	}
	/* Freed by the engine thread once done (or by the close). */
	if (!(d = malloc(sizeof(*d))))
		return -ENOMEM;
	*d = (struct gvm_discard){ .start = a, .end = b };
	pthread_mutex_lock(&e->cmd_mu);
	d->next = e->discards;
	e->discards = d;
	pthread_mutex_unlock(&e->cmd_mu);
	gvm_engine_barrier(e);
	return 0;
}

void gvm_engine_barrier(struct gvm_engine *e)
{
	uint64_t one = 1, want;

	if (pthread_equal(pthread_self(), e->thread))
		return;
	pthread_mutex_lock(&e->cmd_mu);
	want = ++e->barrier_req;
	pthread_mutex_unlock(&e->cmd_mu);
	if (write(e->evfd, &one, sizeof(one)) < 0) {
		pr_perror("write(eventfd)");
		return;
	}
	pthread_mutex_lock(&e->cmd_mu);
	while (e->barrier_done < want && !__atomic_load_n(&e->quit, __ATOMIC_ACQUIRE)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&e->barrier_cv, &e->cmd_mu, &ts);
	}
	pthread_mutex_unlock(&e->cmd_mu);
}

/* The evictor's ops->dropped. */
static void engine_dropped(void *ctx)
{
	struct gvm_engine *e = ctx;
	uint64_t one = 1;

	if (write(e->evfd, &one, sizeof(one)) < 0)
		pr_perror("write(eventfd)");
}

/* The evictor's ops->write_back. */
static int engine_write_back(void *ctx, struct gvm_region *rg, uint64_t p, uint32_t n,
			     struct gvm_waiter *wt)
{
	return gvm_wb_submit(ctx, rg, p, n, wt);
}

/* All the evictor may ask of the engine. */
static const struct gvm_evict_ops evict_ops = { .write_back = engine_write_back, .dropped = engine_dropped };

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
				gvm_fault_drain(e);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &uffd_tag)
				continue;
			if (p == &cmd_tag)
				run_commands(e);
			else if (p == &open_tag)
				gvm_opener_complete(e);
			else
				gvm_transport_event(&e->tp, p, evs[i].events);
			gvm_fault_drain(e);
		}
		gvm_transport_flush(&e->tp);
		/* For the evictor's target (fault.c fetch_go). */
		__atomic_store_n(&e->pages.reserved, e->reserved, __ATOMIC_RELAXED);
		now = gvm_now_ns();
		if (now >= next_tick || e->parked || e->parked_wb) {
			int ms = gvm_transport_tick(&e->tp, now, e->idle_ns);
			gvm_fault_retry_parked(e, now);
			gvm_wb_retry_parked(e, now);
			gvm_resync_pump(e, now);
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

int gvm_engine_open(struct gvm_engine **out, struct gvm_pool *pool, const struct gvm_engine_opts *o)
{
	struct gvm_engine *e = calloc(1, sizeof(*e));
	struct gvm_transport_ops ops = { .on_reply = on_reply, .on_fail = on_fail, .on_up = gvm_resync_on_up };
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
	e->ctr.window = e->prefetch;
	/* The policy before adaptive windows, kept to measure against. */
	e->fixed_window = getenv("GIANTVM_FIXED_WINDOW") && *getenv("GIANTVM_FIXED_WINDOW") == '1';
	e->readahead = !o || !o->readahead ? 8 : (o->readahead == -1u ? 0 : o->readahead);
	e->lost_policy = o ? o->lost_policy : GVM_LOST_POISON;
	/* Sealed unless said otherwise, or unless every node is on this host. */
	e->seal = o && o->seal == GVM_SEAL_ON ? 1 : o && o->seal == GVM_SEAL_OFF ? 0 : gvm_pool_sealed(pool);
	if (e->seal)
		pr_info("pages sealed with %s", gvm_seal_cipher());
	else
		pr_debug("pages not sealed");
	if (!pool->token && !gvm_config_all_loopback(&pool->cfg))
		pr_warn("no pool token: connections to the memory nodes are not authenticated "
			"(anyone on the network can act as a node; docs/SECURITY.md)");
	e->on_fatal = o ? o->on_fatal : NULL;
	e->fatal_arg = o ? o->fatal_arg : NULL;
	e->idle_ns = 60ull * 1000000000ull;
	pthread_mutex_init(&e->cmd_mu, NULL);
	pthread_cond_init(&e->barrier_cv, NULL);
	pthread_mutex_init(&e->seal_mu, NULL);
	if (o && o->local_mem) {
		e->budget_pages = o->local_mem >> GVM_PAGE_SHIFT;
		if (e->budget_pages < 1024) {
			pr_err("local memory budget %llu bytes: at least 4 MiB", (unsigned long long)o->local_mem);
			r = -EINVAL;
			goto err_free;
		}
		/* Evict from 97% down to 95%: room for a burst of faults while
		 * the evictor writes back, without waiting on it. (Down to 90%
		 * held 2% fewer pages on average, so faulted 2% more, and had
		 * more write-back copies in flight: 4-10 MiB more peak RSS, with
		 * no fault waiting for room either way; docs/BENCHMARKS.md.) */
		e->high_pages = e->budget_pages - e->budget_pages / 32;
		e->low_pages = e->budget_pages - e->budget_pages / 20;
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
	/* Sealed: a thread to open replies beside this one (opener.c);
	 * $GIANTVM_OPEN_INLINE=1 keeps it all on the engine thread (to
	 * measure one against the other). */
	const char *oi = getenv("GIANTVM_OPEN_INLINE");
	if (e->seal && !(oi && *oi == '1')) {
		r = gvm_opener_start(&e->opener);
		if (r)
			goto err_close;
		ev.data.ptr = &open_tag;
		if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, gvm_opener_fd(e->opener), &ev) < 0) {
			r = -errno;
			pr_perror("epoll_ctl(opener eventfd)");
			goto err_close;
		}
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
	gvm_poller_configured(&e->poller); /* a CPU kept awake through fault bursts, or none */
	if (e->budget_pages) {
		struct gvm_evict_params ep = {
			.uffd = e->uffd, .use_move = !!(e->features & UFFD_FEATURE_MOVE),
			.use_batch = !(off && strstr(off, "PROCESS_MADVISE")),
			.use_locked = !(off && strstr(off, "DONTNEED_LOCKED")),
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
			gvm_evictor_drop_method(e->ev));
	}
	pr_debug("userfaultfd features: %s", e->features_str);
	*out = e;
	return 0;

err_tp:
	gvm_transport_fini(&e->tp);
err_close:
	gvm_opener_stop(e->opener);
	if (e->evfd >= 0)
		close(e->evfd);
	if (e->epfd >= 0)
		close(e->epfd);
	close(e->uffd);
	free(e->suspect);
err_free:
	pthread_mutex_destroy(&e->cmd_mu);
	pthread_cond_destroy(&e->barrier_cv);
	pthread_mutex_destroy(&e->seal_mu);
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

int gvm_pool_sealed(const struct gvm_pool *pool)
{
	return pool->cfg.seal == GVM_SEAL_ON ||
	       (pool->cfg.seal == GVM_SEAL_AUTO && !gvm_config_all_loopback(&pool->cfg));
}

static void region_seal_free(struct gvm_region *rg)
{
	if (rg->opener) {
		gvm_sealer_fini(rg->opener);
		free(rg->opener);
	}
	free(rg->ver);
	free(rg->ver_done);
	OPENSSL_cleanse(rg->seal_key, sizeof(rg->seal_key));
}

int gvm_engine_attach_flags(struct gvm_engine *e, uint64_t region,
			    const uint8_t key[GVM_REGION_KEY_SIZE], void *addr, size_t len,
			    unsigned flags)
{
	struct uffdio_register reg = { .range = { (uintptr_t)addr, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING |
					       (e->wp ? UFFDIO_REGISTER_MODE_WP : 0) };
	struct gvm_region *rg;
	unsigned char *vec = NULL;
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
	rg->last_p = UINT64_MAX;
	rg->held = UINT64_MAX;
	rg->win = e->prefetch;
	for (unsigned i = 0; i < GVM_PROBES; i++)
		rg->probe[i].page = UINT64_MAX;
	for (unsigned i = 0; i < GVM_READ_RING; i++)
		rg->read_ring[i] = UINT64_MAX;
	rg->fresh = !!(flags & GVM_ATTACH_FRESH);
	if (e->seal) {
		rg->ver = calloc(rg->npages, sizeof(*rg->ver));
		rg->ver_done = calloc(rg->npages, sizeof(*rg->ver_done));
		rg->opener = calloc(1, sizeof(*rg->opener));
		if (!rg->ver || !rg->ver_done || !rg->opener || gvm_seal_key(key, region, rg->seal_key) < 0 ||
		    gvm_sealer_init(rg->opener, rg->seal_key, region) < 0) {
			r = -ENOMEM;
			goto err_free;
		}
		if (flags & GVM_ATTACH_SEALED_V1)
			for (uint64_t i = 0; i < rg->npages; i++)
				rg->ver[i] = rg->ver_done[i] = 1;
	}
	rg->pg = calloc(rg->npages, 1);
	rg->nstripes = (rg->npages + GVM_STRIPE_PAGES - 1) / GVM_STRIPE_PAGES;
	rg->stripe = calloc(rg->nstripes, 1);
	rg->zeroed = calloc(GVM_BITMAP_BYTES(rg->npages), 1);
	vec = malloc(rg->npages);
	if (e->budget_pages) {
		rg->estamp = calloc(rg->npages, sizeof(*rg->estamp));
		rg->hot = calloc(rg->npages, 1);
	}
	if (!rg->pg || !rg->stripe || !rg->zeroed || !vec || (e->budget_pages && (!rg->estamp || !rg->hot))) {
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
	region_seal_free(rg);
	free(rg->estamp);
	free(rg->hot);
	free(rg->pg);
	free(rg->stripe);
	free(rg->zeroed);
	free(rg);
	return r;
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
	gvm_poller_stop(e->poller);
	while (e->discards) { /* asked for as the engine stopped */
		struct gvm_discard *d = e->discards;
		e->discards = d->next;
		free(d);
	}
	gvm_evictor_free(e->ev); /* only now: the engine thread kicked it until it ended */
	gvm_opener_stop(e->opener); /* its jobs' fetches are freed below */
	for (unsigned i = 0; i < e->n_regions; i++) {
		struct gvm_region *rg = e->regions[i];
		struct uffdio_range r = { rg->base, rg->len };
		/* The range may be unmapped already (owner exiting): fine. */
		if (ioctl(e->uffd, UFFDIO_UNREGISTER, &r) < 0 && errno != ENOMEM && errno != EINVAL)
			pr_perror("UFFDIO_UNREGISTER");
		region_seal_free(rg);
		free(rg->estamp);
		free(rg->hot);
		free(rg->pg);
		free(rg->stripe);
		free(rg->zeroed);
		free(rg);
	}
	gvm_fault_fini(e);
	gvm_transport_fini(&e->tp);
	gvm_resync_fini(e);
	close(e->evfd);
	close(e->epfd);
	close(e->uffd);
	gvm_wb_fini(e);
	pthread_mutex_destroy(&e->cmd_mu);
	pthread_cond_destroy(&e->barrier_cv);
	pthread_mutex_destroy(&e->seal_mu);
	free(e->suspect);
	free(e);
}
