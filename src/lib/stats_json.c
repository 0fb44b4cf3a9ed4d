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
		     ",\"rmw_installs\":%" PRIu64 ",\"room_waits\":%" PRIu64
		     ",\"sealed\":%s,\"pages_rejected\":%" PRIu64 ",\"seal_version_bytes\":%" PRIu64
		     ",\"per_node\":",
		     vm, uptime_s, gvm_engine_features(e), s.faults, s.wp_faults, s.pages_fetched, s.zero_pages,
		     s.local_zero_pages,
		     s.readahead_pages, s.bytes_in, s.bytes_out, s.resident_pages, s.budget_pages,
		     s.evictions, s.writebacks, s.clean_drops, s.errors, s.lost_pages,
		     (double)s.fault_p50_ns / 1000.0, (double)s.fault_p99_ns / 1000.0, s.nodes,
		     s.nodes_connected, s.nodes_down, s.under_replicated, s.resynced_stripes,
		     s.prefetch_hits, s.prefetch_misses,
		     s.prefetch_hits + s.prefetch_misses ?
			     (double)s.prefetch_hits / (double)(s.prefetch_hits + s.prefetch_misses) : 0.0,
		     s.window_pages, s.rmw_installs, s.room_waits, s.sealed ? "true" : "false",
		     s.pages_rejected, s.seal_bytes);
	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	m = gvm_engine_nodes_json(e, buf + n, len - (size_t)n);
	if (m < 0 || (size_t)(n + m + 2) > len)
		return -ENOSPC;
	buf[n + m] = '}';
	buf[n + m + 1] = 0;
	return n + m + 1;
}
