/*
 * Placement: which memory node(s) hold a stripe of a region.
 *
 * docs/PROTOCOL.md "Placement" gives the function exactly, so any client
 * computes the same mapping. A lookup table of M slots (M a power of two,
 * the smallest >= max(10 * N, 1024)) maps slot -> node index; stripe s of
 * region r lives at table[(mix64(r) + s) mod M] and its replicas at the next
 * distinct nodes walking up the table. The table is a pure function of the
 * nodes IN CONFIG LINE ORDER, built incrementally: node k takes
 * floor(M/(k+1)) slots from the others and nothing else moves, and doubling
 * M moves nothing. So appending a line to the pool file moves only the
 * stripes the new node takes (about 1/(N+1)), all of them to the new node;
 * every node owns floor(M/N) or ceil(M/N) slots. Lookup is O(1); the table
 * is the only state kept: 4 bytes per slot, i.e. 4 KiB in all up to 102
 * nodes and 40..80 bytes per node beyond (52.4 at 10,000 nodes).
 */
#ifndef GVM_PLACEMENT_H
#define GVM_PLACEMENT_H

#include <stdint.h>

#include "config.h"
#include "giantvm.h"

/* GVM_STRIPE_PAGES, GVM_MAX_REPLICAS: include/giantvm.h */
#define GVM_PLACEMENT_MIN_SIZE 1024u  /* M0: the table size for up to 102 nodes */

struct gvm_placement {
	uint32_t n_nodes;
	uint32_t size;       /* M, a power of two */
	uint32_t *table;     /* M entries, node indexes into the config */
};

/* 0 or -errno (-EINVAL for an empty config, -E2BIG past 2^31/10 nodes, -ENOMEM). */
int gvm_placement_init(struct gvm_placement *p, const struct gvm_config *cfg);
void gvm_placement_fini(struct gvm_placement *p);

/* Primary node of a stripe. */
uint32_t gvm_placement_node(const struct gvm_placement *p, uint64_t region, uint64_t stripe);
/*
 * The first min(r, n_nodes) distinct nodes of a stripe, primary first, into
 * out[]. Returns how many were written.
 */
unsigned gvm_placement_replicas(const struct gvm_placement *p, uint64_t region, uint64_t stripe,
				unsigned r, uint32_t *out);

#endif
