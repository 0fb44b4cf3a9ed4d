/*
 * Placement: which memory node(s) hold a stripe of a region.
 *
 * Maglev hashing over the node names (docs/PROTOCOL.md gives the function
 * exactly, so any client computes the same mapping): a lookup table of M
 * entries (M the smallest prime >= max(10 * N, 1021)) filled from per-node
 * permutations; stripe s of region r lives at table[(mix(r) + s) mod M] and
 * its replicas at the next distinct nodes in the table. Lookup is O(1);
 * every node owns M/N table entries (+-1); adding a node moves about 1/N.
 */
#ifndef GVM_PLACEMENT_H
#define GVM_PLACEMENT_H

#include <stdint.h>

#include "config.h"

#define GVM_STRIPE_PAGES 32u          /* pages per stripe: the unit of placement */
#define GVM_MAX_REPLICAS 8u

struct gvm_placement {
	uint32_t n_nodes;
	uint32_t size;       /* M */
	uint32_t *table;     /* M entries, node indexes into the config */
};

/* 0 or -errno (-EINVAL for an empty config, -ENOMEM). */
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
