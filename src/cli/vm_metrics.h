/*
 * The engines of the VMs on this host as Prometheus metrics: `giantvm stat
 * --prometheus` and the exporter `giantvm stat --metrics` (docs/METRICS.md).
 */
#ifndef GVM_CLI_VM_METRICS_H
#define GVM_CLI_VM_METRICS_H

#include "giantvm.h"

struct vm_stat {
	char name[128];
	char *json;            /* the STAT reply (malloc'd), or NULL: the VM did not answer */
};

/*
 * Every family once, each with one sample per VM (label vm="NAME"), from the
 * VMs' STAT replies; a VM whose reply is missing or unreadable shows only
 * giantvm_vm_up 0. Returns 0, or the writer's error.
 */
int vm_metrics_render(struct gvm_prom *p, const struct vm_stat *vms, unsigned n);

/*
 * The running VMs of the runtime directory (all, or the one named), each
 * with its STAT reply (timeout_ms for each). *out is malloc'd (free with
 * vm_stats_free). Returns how many, or -errno.
 */
int vm_stats_collect(const char *only, int timeout_ms, struct vm_stat **out);
void vm_stats_free(struct vm_stat *v, unsigned n);

#endif
