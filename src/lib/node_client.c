/*
 * The public face of the blocking client (client.c): one connection to one
 * node of a pool, named by its index. For tools and `giantvm bench`.
 */
#include <errno.h>
#include <stdlib.h>

#include "client.h"
#include "giantvm.h"
#include "pool_int.h"

struct gvm_node_client {
	struct gvm_client c;
};

int gvm_node_client_open(struct gvm_node_client **out, const struct gvm_pool *pool, unsigned node,
			 int timeout_ms)
{
	struct gvm_node_client *nc;
	int r;

	*out = NULL;
	if (node >= pool->cfg.n_nodes)
		return -EINVAL;
	nc = calloc(1, sizeof(*nc));
	if (!nc)
		return -ENOMEM;
	r = gvm_client_connect(&nc->c, gvm_node_name(&pool->cfg, node), pool->token, pool->token_len,
			       timeout_ms);
	if (r) {
		free(nc);
		return r;
	}
	*out = nc;
	return 0;
}

void gvm_node_client_close(struct gvm_node_client *nc)
{
	if (!nc)
		return;
	gvm_client_close(&nc->c);
	free(nc);
}

int gvm_node_client_bind(struct gvm_node_client *nc, uint64_t region, const uint8_t key[GVM_REGION_KEY_SIZE])
{
	return gvm_client_open(&nc->c, region, key);
}

int gvm_node_client_read(struct gvm_node_client *nc, uint64_t region, uint64_t page, unsigned count, void *buf)
{
	return gvm_client_read(&nc->c, region, page, count, buf);
}

int gvm_node_client_write(struct gvm_node_client *nc, uint64_t region, uint64_t page, unsigned count,
			  const void *buf)
{
	return gvm_client_write(&nc->c, region, page, count, buf);
}

int gvm_node_client_free(struct gvm_node_client *nc, uint64_t region)
{
	return gvm_client_free(&nc->c, region);
}

int gvm_node_client_seal(struct gvm_node_client *nc, uint64_t region,
			 const uint8_t key[GVM_REGION_KEY_SIZE], uint32_t version)
{
	return gvm_client_seal(&nc->c, region, key, version);
}
