/* The pool's insides: pool.c, node_client.c and the engine (through engine_int.h). */
#ifndef GVM_POOL_INT_H
#define GVM_POOL_INT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "placement.h"

struct gvm_pool {
	struct gvm_config cfg;
	struct gvm_placement pl;
	uint8_t *token;        /* NULL: no authentication */
	size_t token_len;
	unsigned replicas;     /* R: copies of each stripe */
	int timeout_ms;        /* per request, before failing over */
	int deadline_ms;       /* a fault unresolved this long is given up */
};

#endif
