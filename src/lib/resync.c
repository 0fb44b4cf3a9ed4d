/*
 * Re-sync: bring every replica of a stripe back to what this engine wrote.
 *
 * DESIGN
 * Runs on the engine thread. A stripe is DEGRADED when some replica may
 * lack what this engine wrote to it: a write-back that some but not all
 * replicas acknowledged (writeback.c), or every stripe a node should hold
 * when that node comes back after failing (it may have restarted empty).
 * gvm_resync_pump() copies such stripes, a bounded number at a time, from
 * a replica that never failed to the others. A write-back of the stripe
 * while its copy is in flight marks it STALE: the copy carries older data
 * and must not count, and the stripe stays degraded for the next pass.
 */
#define LOG_PREFIX "engine: "
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "engine_int.h"
#include "log.h"

/* Some replica of the stripe may lack what this engine wrote to it. */
void gvm_resync_mark_degraded(struct gvm_engine *e, struct gvm_region *rg, uint64_t stripe)
{
	if (!(rg->stripe[stripe] & STRIPE_DEGRADED)) {
		rg->stripe[stripe] |= STRIPE_DEGRADED;
		__atomic_fetch_add(&e->degraded, 1, __ATOMIC_RELAXED);
	}
}

static void rs_finish(struct gvm_engine *e, struct gvm_resync *j, int complete)
{
	uint8_t *sf = &j->rg->stripe[j->stripe];

	if (complete && !(*sf & STRIPE_STALE) && (*sf & STRIPE_DEGRADED)) {
		*sf &= (uint8_t)~STRIPE_DEGRADED;
		__atomic_fetch_sub(&e->degraded, 1, __ATOMIC_RELAXED);
		CTR_ADD(e, resynced_stripes, 1);
	}
	*sf &= (uint8_t)~(STRIPE_RESYNC | STRIPE_STALE);
	*j->pprev = j->next;
	if (j->next)
		j->next->pprev = j->pprev;
	e->rs_inflight--;
	free(j);
}

/*
 * Start copies of degraded stripes, a bounded number at a time: READ the
 * whole stripe from a replica that never failed, WRITE the reply's payload
 * (the same bitmap + pages format) as is to the other replicas.
 */
void gvm_resync_pump(struct gvm_engine *e, uint64_t now)
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
			if (!gvm_node_untrusted(e, nodes[i]) && gvm_transport_usable(&e->tp, nodes[i], now))
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
				     .flags = e->seal ? GVM_HF_TAGS : 0,
				     .count = (uint32_t)GVM_MIN((uint64_t)GVM_STRIPE_PAGES, rg->npages - p0) };
		if (gvm_transport_send(&e->tp, src, &h, NULL, 0, j)) {
			free(j);
			continue;
		}
		rg->stripe[s] |= STRIPE_RESYNC;
		j->next = e->rs_jobs;
		j->pprev = &e->rs_jobs;
		if (j->next)
			j->next->pprev = &j->next;
		e->rs_jobs = j;
		e->rs_inflight++;
	}
}

void gvm_resync_on_reply(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req,
			 const struct gvm_hdr *h, const uint8_t *payload)
{
	if (req->op == GVM_OP_READ) {
		struct iovec iov = { .iov_base = (void *)payload, .iov_len = h->len };
		if (h->status || (j->rg->stripe[j->stripe] & STRIPE_STALE)) {
			rs_finish(e, j, 0);
			return;
		}
		for (unsigned i = 0; i < j->n_targets; i++) {
			/* Ciphertext and tags as they came: a copy needs no key. */
			struct gvm_hdr w = { .op = GVM_OP_WRITE, .region = req->region, .page = req->page,
					     .count = req->count, .len = h->len,
					     .flags = h->flags & GVM_HF_TAGS };
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

void gvm_resync_on_fail(struct gvm_engine *e, struct gvm_resync *j, const struct gvm_req *req)
{
	if (req->op == GVM_OP_READ || --j->outstanding == 0)
		rs_finish(e, j, 0);
}

/* A node that failed is back: whatever this engine wrote to it may be gone
 * (a restart without a backing file). Read nothing from it that others
 * have, and copy every stripe it should hold from a live replica. */
void gvm_resync_on_up(void *owner, struct gvm_conn *c)
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
					gvm_resync_mark_degraded(e, rg, s);
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

/* Copies still in flight when the engine closes: their requests die with
 * the transport, which does not call back. */
void gvm_resync_fini(struct gvm_engine *e)
{
	while (e->rs_jobs) {
		struct gvm_resync *j = e->rs_jobs;
		e->rs_jobs = j->next;
		free(j);
	}
}
