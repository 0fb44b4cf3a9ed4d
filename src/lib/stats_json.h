/* Engine statistics as one JSON object (for `giantvm stat --json`). */
#ifndef GVM_STATS_JSON_H
#define GVM_STATS_JSON_H

#include <stddef.h>

#include "giantvm.h"

/* Returns the length written, or -ENOSPC. */
int gvm_stats_json(struct gvm_engine *e, const char *vm, double uptime_s, char *buf, size_t len);

#endif
