#include "stats_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

int gvm_stats_json(struct gvm_engine *e, const char *vm, double uptime_s, char *buf, size_t len)
{
	struct gvm_stats s;
	int n, m;

	gvm_engine_stats(e, &s);
	n = snprintf(buf, len,
		     "{\"vm\":\"%s\",\"uptime_s\":%.1f,\"features\":\"%s\",\"faults\":%" PRIu64
		     ",\"wp_faults\":%" PRIu64
		     ",\"pages_fetched\":%" PRIu64 ",\"zero_pages\":%" PRIu64 ",\"local_zero_pages\":%" PRIu64
		     ",\"readahead_pages\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
		     ",\"resident_pages\":%" PRIu64 ",\"budget_pages\":%" PRIu64
		     ",\"evictions\":%" PRIu64 ",\"writebacks\":%" PRIu64 ",\"clean_drops\":%" PRIu64
		     ",\"errors\":%" PRIu64 ",\"lost_pages\":%" PRIu64
		     ",\"fault_p50_us\":%.1f,\"fault_p99_us\":%.1f,\"nodes\":%u,\"nodes_connected\":%u"
		     ",\"nodes_down\":%u,\"under_replicated_stripes\":%" PRIu64
		     ",\"resynced_stripes\":%" PRIu64 ",\"prefetch_hits\":%" PRIu64
		     ",\"prefetch_misses\":%" PRIu64 ",\"prefetch_hit_rate\":%.3f,\"window_pages\":%u"
		     ",\"rmw_installs\":%" PRIu64 ",\"room_waits\":%" PRIu64 ",\"missing_faults\":%" PRIu64
		     ",\"sealed\":%s,\"pages_rejected\":%" PRIu64 ",\"seal_version_bytes\":%" PRIu64
		     ",\"poll_ms\":%.1f,\"discarded_pages\":%" PRIu64 ",\"fault_latency_sum_ns\":%" PRIu64 ",\"fault_latency_le_ns\":[",
		     vm, uptime_s, gvm_engine_features(e), s.faults, s.wp_faults, s.pages_fetched, s.zero_pages,
		     s.local_zero_pages,
		     s.readahead_pages, s.bytes_in, s.bytes_out, s.resident_pages, s.budget_pages,
		     s.evictions, s.writebacks, s.clean_drops, s.errors, s.lost_pages,
		     (double)s.fault_p50_ns / 1000.0, (double)s.fault_p99_ns / 1000.0, s.nodes,
		     s.nodes_connected, s.nodes_down, s.under_replicated, s.resynced_stripes,
		     s.prefetch_hits, s.prefetch_misses,
		     s.prefetch_hits + s.prefetch_misses ?
			     (double)s.prefetch_hits / (double)(s.prefetch_hits + s.prefetch_misses) : 0.0,
		     s.window_pages, s.rmw_installs, s.room_waits, s.missing_faults, s.sealed ? "true" : "false",
		     s.pages_rejected, s.seal_bytes, (double)s.poll_ns / 1e6, s.discarded_pages, s.fault_lat_sum_ns);
	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	/* The fixed latency buckets: bounds, then counts (one more: above the last bound). */
	for (unsigned i = 0; i <= 2 * GVM_LAT_BUCKETS + 1; i++) {
		int k;
		if (i < GVM_LAT_BUCKETS)
			k = snprintf(buf + n, len - (size_t)n, "%s%" PRIu64, i ? "," : "", gvm_lat_bound_ns(i));
		else if (i == GVM_LAT_BUCKETS)
			k = snprintf(buf + n, len - (size_t)n, "],\"fault_latency_counts\":[");
		else
			k = snprintf(buf + n, len - (size_t)n, "%s%" PRIu64, i > GVM_LAT_BUCKETS + 1 ? "," : "",
				     s.fault_lat_counts[i - GVM_LAT_BUCKETS - 1]);
		if (k < 0 || (size_t)k >= len - (size_t)n)
			return -ENOSPC;
		n += k;
	}
	m = snprintf(buf + n, len - (size_t)n, "],\"per_node\":");
	if (m < 0 || (size_t)m >= len - (size_t)n)
		return -ENOSPC;
	n += m;
	m = gvm_engine_nodes_json(e, buf + n, len - (size_t)n);
	if (m < 0 || (size_t)(n + m + 2) > len)
		return -ENOSPC;
	buf[n + m] = '}';
	buf[n + m + 1] = 0;
	return n + m + 1;
}
