/*
 * Placement, exactly as docs/PROTOCOL.md "Placement" specifies. The table is
 * a pure function of the node list in config line order; every client must
 * use the same pool file. Nothing here looks at node names.
 *
 * Construction replays the history "start with node 0, append nodes
 * 1..N-1 one at a time". Each node keeps its slots on a LIFO stack, linked
 * through next[] (one uint32 per slot, head[] per node), so taking a slot or
 * doubling the table is O(1) per slot: O(M log N + N) in all, about 1 ms for
 * 10,000 nodes. Only the table survives the build.
 */
#include "placement.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define NONE UINT32_MAX
#define PERM_MUL 0x9E3779B1u /* odd, so j -> j * PERM_MUL mod 2^b is a bijection */

/* Smallest power of two >= max(10 * n, GVM_PLACEMENT_MIN_SIZE); n <= 2^31 / 10. */
static uint32_t table_size(uint32_t n)
{
	uint32_t m = GVM_PLACEMENT_MIN_SIZE;

	while ((uint64_t)10 * n > m)
		m <<= 1;
	return m;
}

struct build {
	uint32_t *table; /* slot -> node */
	uint32_t *next;  /* slot -> the slot below it on its owner's stack, or NONE */
	uint32_t *head;  /* node -> top of its stack */
	uint32_t *cnt;   /* node -> slots owned */
	uint32_t *hist;  /* count -> how many of the donors own that many */
};

static inline void push(struct build *b, uint32_t node, uint32_t slot)
{
	b->next[slot] = b->head[node];
	b->head[node] = slot;
}

int gvm_placement_init(struct gvm_placement *p, const struct gvm_config *cfg)
{
	uint32_t n = cfg->n_nodes, mf, m = GVM_PLACEMENT_MIN_SIZE, top, cur = 0;
	struct build b = { 0 };
	int r = 0;

	memset(p, 0, sizeof(*p));
	if (n == 0)
		return -EINVAL;
	/* M <= 2^31 keeps slot + M and every count in 32 bits. */
	if ((uint64_t)10 * n > (1ull << 31))
		return -E2BIG;
	mf = table_size(n);

	b.table = malloc((size_t)mf * sizeof(*b.table));
	b.next = malloc((size_t)mf * sizeof(*b.next));
	b.head = malloc((size_t)n * sizeof(*b.head));
	b.cnt = malloc((size_t)n * sizeof(*b.cnt));
	/* A count never exceeds the table size, so this bounds the histogram. */
	b.hist = calloc((size_t)mf + 1, sizeof(*b.hist));
	if (!b.table || !b.next || !b.head || !b.cnt || !b.hist) {
		r = -ENOMEM;
		goto cleanup;
	}

	/* Node 0 owns all M0 slots, pushed in the order x = j * PERM_MUL mod M0. */
	b.head[0] = NONE;
	for (uint32_t j = 0; j < m; j++) {
		uint32_t x = (j * PERM_MUL) & (m - 1);
		b.table[x] = 0;
		push(&b, 0, x);
	}
	b.cnt[0] = m;
	b.hist[m] = 1;
	top = m; /* the largest count among nodes 0..k-1 */

	for (uint32_t k = 1; k < n; k++) {
		uint32_t q;

		/*
		 * Double while M < 10 * (k + 1): slot x + M copies slot x (so
		 * (mix + s) mod 2M, reduced mod M, still finds the same node:
		 * nothing moves), and goes on its owner's stack in increasing x.
		 */
		while ((uint64_t)10 * (k + 1) > m) {
			for (uint32_t x = 0; x < m; x++) {
				uint32_t o = b.table[x];
				b.table[x + m] = o;
				push(&b, o, x + m);
			}
			for (uint32_t i = 0; i < k; i++) {
				b.hist[b.cnt[i]]--;
				b.cnt[i] *= 2;
				b.hist[b.cnt[i]]++;
			}
			top *= 2;
			m *= 2;
		}

		/*
		 * Node k takes q = floor(M/(k+1)) slots, one at a time, each from
		 * the first node at or after the cursor (cyclically over 0..k-1)
		 * that owns the current maximum count: it gives the slot on top
		 * of its stack, and the cursor moves just past it. Donors never
		 * drop below floor(M/(k+1)) (their total stays above k times it),
		 * so every node ends with floor or ceil of M/(k+1).
		 */
		q = m / (k + 1);
		b.head[k] = NONE;
		for (uint32_t t = 0; t < q; t++) {
			uint32_t d, s;

			while (b.cnt[cur] != top)
				cur = cur + 1 == k ? 0 : cur + 1;
			d = cur;
			s = b.head[d];
			b.head[d] = b.next[s];
			b.hist[top]--;
			b.hist[top - 1]++;
			b.cnt[d]--;
			if (b.hist[top] == 0)
				top--; /* d itself now holds top - 1 */
			b.table[s] = k;
			push(&b, k, s);
			cur = cur + 1 == k ? 0 : cur + 1;
		}
		b.cnt[k] = q; /* q <= every donor's count, so top stays */
		b.hist[q]++;
	}

	p->n_nodes = n;
	p->size = m;
	p->table = b.table;
	b.table = NULL;
cleanup:
	free(b.table);
	free(b.next);
	free(b.head);
	free(b.cnt);
	free(b.hist);
	return r;
}

void gvm_placement_fini(struct gvm_placement *p)
{
	free(p->table);
	memset(p, 0, sizeof(*p));
}

/* (mix64(region) + stripe) mod 2^64, then mod M: M divides 2^64. */
static uint32_t slot_of(const struct gvm_placement *p, uint64_t region, uint64_t stripe)
{
	return (uint32_t)((gvm_mix64(region) + stripe) & (p->size - 1));
}

uint32_t gvm_placement_node(const struct gvm_placement *p, uint64_t region, uint64_t stripe)
{
	return p->table[slot_of(p, region, stripe)];
}

unsigned gvm_placement_replicas(const struct gvm_placement *p, uint64_t region, uint64_t stripe,
				unsigned r, uint32_t *out)
{
	uint32_t slot = slot_of(p, region, stripe), mask = p->size - 1;
	unsigned got = 0;

	if (r > p->n_nodes)
		r = p->n_nodes;
	/*
	 * Every node owns at least floor(M/N) >= 10 slots, so one lap of the
	 * table meets all N nodes; the bound only guards a corrupted table.
	 * Replica counts are small (GVM_MAX_REPLICAS), so a linear distinctness
	 * check beats any set.
	 */
	for (uint32_t step = 0; got < r && step < p->size; step++) {
		uint32_t node = p->table[slot];
		unsigned k;

		for (k = 0; k < got && out[k] != node; k++)
			;
		if (k == got)
			out[got++] = node;
		slot = (slot + 1) & mask;
	}
	return got;
}
