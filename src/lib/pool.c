/*
 * The pool: memory nodes, placement, and connection policy. Immutable once
 * open, so the engine thread and API threads share it without locks.
 */
#define LOG_PREFIX "pool: "
#include <errno.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "giantvm.h"
#include "log.h"
#include "pool_int.h"
#include "transport.h"
#include "util.h"

int gvm_pool_open(struct gvm_pool **out, const struct gvm_pool_opts *o, char *err, size_t errlen)
{
	struct gvm_pool *p = calloc(1, sizeof(*p));
	int r;

	if (!p)
		return -ENOMEM;
	gvm_config_init(&p->cfg);
	if (o->config_path) {
		r = gvm_config_load(&p->cfg, o->config_path, err, errlen);
		if (r)
			goto err_free;
	} else {
		for (unsigned i = 0; i < o->n_nodes; i++) {
			r = gvm_config_add(&p->cfg, o->nodes[i], err, errlen);
			if (r)
				goto err_cfg;
		}
		if (!p->cfg.n_nodes) {
			snprintf(err, errlen, "pool has no memory nodes");
			r = -EINVAL;
			goto err_cfg;
		}
	}
	r = gvm_placement_init(&p->pl, &p->cfg);
	if (r) {
		snprintf(err, errlen, "placement: %s", strerror(-r));
		goto err_cfg;
	}
	p->replicas = o->replicas ? o->replicas : (p->cfg.n_nodes >= 2 ? 2 : 1);
	if (p->replicas > GVM_MAX_REPLICAS || p->replicas > p->cfg.n_nodes) {
		snprintf(err, errlen, "replicas %u: the pool has %u node%s (at most %u replicas)",
			 p->replicas, p->cfg.n_nodes, p->cfg.n_nodes == 1 ? "" : "s",
			 GVM_MIN(p->cfg.n_nodes, GVM_MAX_REPLICAS));
		r = -EINVAL;
		goto err_pl;
	}
	p->timeout_ms = o->request_timeout_ms > 0 ? o->request_timeout_ms : 2000;
	p->deadline_ms = o->fault_deadline_ms > 0 ? o->fault_deadline_ms : 10000;
	if (o->token) {
		p->token = malloc(o->token_len);
		if (!p->token) {
			r = -ENOMEM;
			goto err_pl;
		}
		memcpy(p->token, o->token, o->token_len);
		p->token_len = o->token_len;
	}
	*out = p;
	return 0;

err_pl:
	gvm_placement_fini(&p->pl);
err_cfg:
	gvm_config_fini(&p->cfg);
err_free:
	free(p);
	return r;
}

void gvm_pool_close(struct gvm_pool *p)
{
	if (!p)
		return;
	gvm_placement_fini(&p->pl);
	gvm_config_fini(&p->cfg);
	free(p->token);
	free(p);
}

unsigned gvm_pool_node_count(const struct gvm_pool *p) { return p->cfg.n_nodes; }
const char *gvm_pool_node_name(const struct gvm_pool *p, unsigned i) { return gvm_node_name(&p->cfg, i); }
unsigned gvm_pool_replicas(const struct gvm_pool *p) { return p->replicas; }

int gvm_pool_probe(const struct gvm_pool *p, int timeout_ms, char *err, size_t errlen)
{
	for (uint32_t i = 0; i < p->cfg.n_nodes; i++) {
		struct gvm_client c;
		int r = gvm_client_connect(&c, gvm_node_name(&p->cfg, i), p->token, p->token_len,
					   timeout_ms);
		if (r) {
			snprintf(err, errlen, "memory node %s (%s%s%u): %s", gvm_node_name(&p->cfg, i),
				 p->cfg.path ? p->cfg.path : "pool",
				 p->cfg.nodes[i].line ? ":" : "", p->cfg.nodes[i].line,
				 r == -EACCES ? "authentication failed (wrong or missing pool token)" :
				 strerror(-r));
			return -EHOSTUNREACH;
		}
		gvm_client_close(&c);
	}
	return 0;
}

uint64_t gvm_region_id(const char *vm_id, const char *block)
{
	uint64_t h = gvm_hash_bytes(vm_id, strlen(vm_id), 0x7265676e);

	return gvm_hash_bytes(block, strlen(block), h);
}

int gvm_region_key(const void *secret, size_t secret_len, uint64_t region,
		   uint8_t key[GVM_REGION_KEY_SIZE])
{
	uint8_t msg[18 + 8];
	unsigned int len = GVM_REGION_KEY_SIZE;

	memcpy(msg, "giantvm-region-key", 18);
	for (int i = 0; i < 8; i++)
		msg[18 + i] = (uint8_t)(region >> (8 * i));
	if (!HMAC(EVP_sha256(), secret, (int)secret_len, msg, sizeof(msg), key, &len))
		return -EIO;
	return 0;
}

unsigned gvm_pool_stripe_nodes(const struct gvm_pool *p, uint64_t region, uint64_t stripe,
			       unsigned nodes[GVM_MAX_REPLICAS])
{
	uint32_t n[GVM_MAX_REPLICAS];
	unsigned nr = gvm_placement_replicas(&p->pl, region, stripe, p->replicas, n);

	for (unsigned i = 0; i < nr; i++)
		nodes[i] = n[i];
	return nr;
}

uint64_t gvm_pool_client_bytes(const struct gvm_pool *p)
{
	/* The config's node records and strings, the placement table, and the
	 * transport's connection pointer per node; a connection itself exists
	 * only for nodes in use. */
	return sizeof(struct gvm_node) * (uint64_t)p->cfg.n_nodes + p->cfg.strings_len +
	       (uint64_t)p->pl.size * sizeof(p->pl.table[0]) +
	       sizeof(((struct gvm_transport *)0)->conns[0]) * (uint64_t)p->cfg.n_nodes;
}

int gvm_pool_free_regions(struct gvm_pool *p, const uint64_t *regions, unsigned n,
			  const void *secret, size_t secret_len, int timeout_ms)
{
	int answered = 0;

	/* A VM's stripes can be on any node; 4096 bounds the time a huge pool takes.
	 * OPEN binds nothing on a server (a region is named by (id, key) and
	 * exists only while it holds pages), so OPEN + FREE on a node that never
	 * held the region leaves nothing behind, and FREE on one that did ends it. */
	for (uint32_t node = 0; node < p->cfg.n_nodes && node < 4096; node++) {
		struct gvm_client c;
		if (gvm_client_connect(&c, gvm_node_name(&p->cfg, node), p->token, p->token_len, timeout_ms))
			continue;
		answered++;
		for (unsigned i = 0; i < n; i++) {
			uint8_t key[GVM_REGION_KEY_SIZE];
			if (gvm_region_key(secret, secret_len, regions[i], key) == 0 &&
			    gvm_client_open(&c, regions[i], key) == 0)
				gvm_client_free(&c, regions[i]);
		}
		gvm_client_close(&c);
	}
	return answered;
}
