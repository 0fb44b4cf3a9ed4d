/*
 * The poller: keeps one CPU awake while faults come in bursts (poller.c).
 */
#ifndef GVM_POLLER_H
#define GVM_POLLER_H

#include <stddef.h>
#include <stdint.h>

#define GVM_POLL_US_DEFAULT 500u

struct gvm_poller;

/*
 * Start a poller that stays awake for poll_ns after each kick. Returns 0
 * with *out set, or a negative errno (nothing started, *out NULL): the
 * thread could not be created or made SCHED_IDLE (a poller at normal
 * priority would take CPU from the guest, so there is none then).
 */
int gvm_poller_start(struct gvm_poller **out, uint64_t poll_ns);
/*
 * Start one as configured, or none (*out NULL): $GIANTVM_POLL_US (default
 * GVM_POLL_US_DEFAULT, 0 = none); by default none where a CPU quota applies
 * (gvm_cpu_quota on /proc/self/cgroup), which is said in the log.
 */
void gvm_poller_configured(struct gvm_poller **out);
/* A fault arrived at `now` (ns): stay awake until now + poll_ns. Any thread; NULL is a no-op. */
void gvm_poller_kick(struct gvm_poller *p, uint64_t now);
/* CPU time spent awake, ns (statistics). */
uint64_t gvm_poller_cpu_ns(const struct gvm_poller *p);
/*
 * 1 if a CPU quota applies to a process whose /proc/self/cgroup reads
 * `self`, with cgroups mounted at `root` (/sys/fs/cgroup): cgroup v2 cpu.max
 * or v1 cpu.cfs_quota_us on its cgroup or an ancestor; the file is put in
 * where. 0 if none is found.
 */
int gvm_cpu_quota(const char *self, const char *root, char *where, size_t len);
/* Stop and free (NULL is a no-op). */
void gvm_poller_stop(struct gvm_poller *p);

#endif
