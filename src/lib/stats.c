/*
 * Engine statistics: the counters of the engine thread and of the evictor,
 * and the fault latency histogram, read for gvm_stats and the per-node JSON.
 * Every read is a relaxed atomic load of a counter another thread writes:
 * fine for display, not a consistent snapshot.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "engine_int.h"

/* The smallest latency a bucket holds (gvm_hist_bucket's inverse). */
static uint64_t hist_value(unsigned bucket)
{
	unsigned b = bucket / 4u, sub = bucket % 4u;

	if (b < 2)
		return bucket;
	return (4ull + sub) << (b - 2);
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

/*
 * Faults on missing pages: every fault that is not a write-protect one. The
 * engine counts a write-protect fault in `faults` just before `wp_faults`,
 * so a read between the two sees one too many missing faults; reported
 * counts never go back (a counter that drops looks like a restart to
 * Prometheus): an overcount is held until the true count passes it.
 */
static uint64_t missing_faults(struct gvm_engine *e, uint64_t faults, uint64_t wp)
{
	uint64_t now = faults >= wp ? faults - wp : 0;
	uint64_t shown = __atomic_load_n(&e->missing_shown, __ATOMIC_RELAXED);

	while (now > shown)
		if (__atomic_compare_exchange_n(&e->missing_shown, &shown, now, 0, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			return now;
	return shown;
}

int gvm_engine_stats(struct gvm_engine *e, struct gvm_stats *out)
{
	struct gvm_evict_counters evc;

	gvm_evictor_counters(e->ev, &evc);
	/* Before pages_fetched, which is counted first (fault.c install_run). */
	uint64_t zero_pages = __atomic_load_n(&e->ctr.zero_pages, __ATOMIC_ACQUIRE);
	*out = (struct gvm_stats){
		.faults = __atomic_load_n(&e->ctr.faults, __ATOMIC_RELAXED),
		.pages_fetched = __atomic_load_n(&e->ctr.pages_fetched, __ATOMIC_RELAXED),
		/* A fill that failed is taken back from both: never more zero
		 * pages than pages, whatever the reader saw in between. */
		.zero_pages = GVM_MIN(zero_pages, __atomic_load_n(&e->ctr.pages_fetched, __ATOMIC_RELAXED)),
		.readahead_pages = __atomic_load_n(&e->ctr.readahead_pages, __ATOMIC_RELAXED),
		.bytes_in = __atomic_load_n(&e->ctr.bytes_in, __ATOMIC_RELAXED),
		.bytes_out = __atomic_load_n(&e->ctr.bytes_out, __ATOMIC_RELAXED),
		.errors = __atomic_load_n(&e->ctr.errors, __ATOMIC_RELAXED),
		.lost_pages = __atomic_load_n(&e->ctr.lost_pages, __ATOMIC_RELAXED),
		.evictions = __atomic_load_n(&e->pages.dropped, __ATOMIC_RELAXED), /* every drop is one */
		.writebacks = evc.writebacks,
		.clean_drops = evc.clean_drops,
		.wp_faults = __atomic_load_n(&e->ctr.wp_faults, __ATOMIC_RELAXED),
		.prefetch_hits = __atomic_load_n(&e->ctr.probe_hits, __ATOMIC_RELAXED),
		.prefetch_misses = __atomic_load_n(&e->ctr.probe_misses, __ATOMIC_RELAXED),
		.window_pages = (uint32_t)__atomic_load_n(&e->ctr.window, __ATOMIC_RELAXED),
		.rmw_installs = __atomic_load_n(&e->ctr.rmw_installs, __ATOMIC_RELAXED),
		.room_waits = __atomic_load_n(&e->ctr.room_waits, __ATOMIC_RELAXED),
		.poll_ns = gvm_poller_cpu_ns(e->poller),
		.discarded_pages = __atomic_load_n(&e->ctr.discarded_pages, __ATOMIC_RELAXED),
		.pages_rejected = __atomic_load_n(&e->ctr.pages_rejected, __ATOMIC_RELAXED),
		.sealed = e->seal,
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
	for (unsigned i = 0; i <= GVM_LAT_BUCKETS; i++)
		out->fault_lat_counts[i] = __atomic_load_n(&e->lat[i], __ATOMIC_RELAXED);
	out->fault_lat_sum_ns = __atomic_load_n(&e->lat_sum_ns, __ATOMIC_RELAXED);
	out->missing_faults = missing_faults(e, out->faults, out->wp_faults);
	if (e->seal) {
		unsigned nreg = __atomic_load_n(&e->n_regions, __ATOMIC_ACQUIRE);
		for (unsigned i = 0; i < nreg; i++)
			out->seal_bytes += e->regions[i]->npages * 2 * sizeof(*e->regions[i]->ver);
	}
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
			     ",\"errors\":%" PRIu64 ",\"pages_rejected\":%" PRIu64 ",\"rtt_us\":%.1f}",
			     off > 1 ? "," : "", gvm_node_name(&e->pool->cfg, i),
			     c->state == GVM_CONN_READY ? "up" : c->state == GVM_CONN_DOWN ? "down" :
			     c->state == GVM_CONN_IDLE ? "idle" : "connecting",
			     c->reqs, c->pages_in, c->bytes_in, c->bytes_out, c->errors, c->pages_rejected,
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
