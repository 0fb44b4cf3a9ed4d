/*
 * The poller: keeps one CPU awake while faults come in bursts.
 *
 * DESIGN
 * A remote fault is four hand-offs between threads: the faulting thread to
 * the engine (the userfaultfd message), the engine to the memory node, the
 * node's reply back to the engine, the install back to the faulting thread.
 * Each wakes a sleeping thread, and when the CPU it is woken on has nothing
 * else to run, that CPU has halted: waking it is an IPI to an idle CPU. On
 * bare metal that is a few microseconds (more from a deep C-state); where
 * the host is itself a virtual machine (most clouds) it is a VM exit and
 * entry as well. Measured on such a host (docs/BENCHMARKS.md), a busy loop
 * in another process made random-access guests *faster* (uniform random
 * read-modify-write 41-43k -> 42-60k ops/s), because no CPU ever halted.
 *
 * This thread is that busy loop, made harmless: it runs at SCHED_IDLE, the
 * lowest class there is, so any other thread that wants its CPU preempts it
 * at once (a CPU running only SCHED_IDLE work counts as idle when the
 * kernel places a woken thread), and it runs only for poll_ns after the
 * last fault; then it sleeps on a futex until the next burst.
 * It reads no file descriptor and does no work: the engine still blocks in
 * epoll and does everything else as before. If the thread cannot be made
 * SCHED_IDLE, there is no poller (spinning at normal priority would take
 * CPU from the guest on a busy host).
 *
 * The cost is CPU time that would otherwise be idle, during fault bursts
 * only; `giantvm stat` reports it (poll_ms). $GIANTVM_POLL_US sets poll_ns
 * (engine.c), 0 turns the poller off. Where the process has a CPU quota
 * (cgroup cpu.max, e.g. libvirt's emulator_quota), spinning would spend the
 * quota the guest needs, so there is no poller unless GIANTVM_POLL_US asks.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "poller.h"
#include "util.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

struct gvm_poller {
	uint64_t poll_ns;
	uint64_t until;         /* stay awake while now < until (atomic) */
	uint32_t seq;           /* futex word: bumped by every kick that finds the thread asleep, and by stop */
	int sleeping;           /* the thread is about to wait, or waits, on seq (atomic) */
	int quit;               /* atomic */
	uint64_t cpu_ns;        /* CPU time spent awake (atomic) */
	pthread_t thread;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Waiting is a futex, not a mutex and condition variable: kick() runs on the
 * engine thread, and the engine must never block on a lock this thread holds,
 * since at SCHED_IDLE it can be preempted holding it for a long time (a
 * review found that window). The protocol, all sequentially consistent:
 * here, take seq, say "sleeping", look at `until`, then wait while seq is
 * unchanged; kick() stores `until`, bumps seq if it sees "sleeping", and
 * wakes. Either this thread sees the new `until`, or kick() sees "sleeping"
 * and its bump makes the wait return at once (or wakes it).
 */
static void *poller_main(void *arg)
{
	struct gvm_poller *p = arg;

	while (!__atomic_load_n(&p->quit, __ATOMIC_SEQ_CST)) {
		uint32_t s = __atomic_load_n(&p->seq, __ATOMIC_SEQ_CST);
		__atomic_store_n(&p->sleeping, 1, __ATOMIC_SEQ_CST);
		if (gvm_now_ns() >= __atomic_load_n(&p->until, __ATOMIC_SEQ_CST) &&
		    !__atomic_load_n(&p->quit, __ATOMIC_SEQ_CST)) {
			if (syscall(SYS_futex, &p->seq, FUTEX_WAIT_PRIVATE, s, NULL, NULL, 0) < 0 &&
			    errno != EAGAIN && errno != EINTR) {
				pr_perror("futex(FUTEX_WAIT)");
				break;
			}
			continue;
		}
		__atomic_store_n(&p->sleeping, 0, __ATOMIC_SEQ_CST);
		uint64_t c0 = thread_cpu_ns();
		while (gvm_now_ns() < __atomic_load_n(&p->until, __ATOMIC_RELAXED) &&
		       !__atomic_load_n(&p->quit, __ATOMIC_RELAXED))
			cpu_relax();
		/* CPU time, not wall time: preempted, it costs nothing. */
		__atomic_fetch_add(&p->cpu_ns, thread_cpu_ns() - c0, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void poller_wake(struct gvm_poller *p)
{
	__atomic_fetch_add(&p->seq, 1, __ATOMIC_SEQ_CST);
	if (syscall(SYS_futex, &p->seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0) < 0)
		pr_perror("futex(FUTEX_WAKE)");
}

int gvm_poller_start(struct gvm_poller **out, uint64_t poll_ns)
{
	struct gvm_poller *p = calloc(1, sizeof(*p));
	int r;

	*out = NULL;
	if (!p)
		return -ENOMEM;
	p->poll_ns = poll_ns;
	/* It starts asleep (until = 0), so it never spins before SCHED_IDLE. */
	r = pthread_create(&p->thread, NULL, poller_main, p);
	if (r) {
		pr_warn("no poller: pthread_create: %s", strerror(r));
		free(p);
		return -r;
	}
	r = pthread_setname_np(p->thread, "gvm-poll"); /* for top -H; a failure only loses the name */
	if (r)
		pr_debug("pthread_setname_np: %s", strerror(r));
	struct sched_param sp = { .sched_priority = 0 };
	r = pthread_setschedparam(p->thread, SCHED_IDLE, &sp);
	if (r) {
		pr_warn("no poller: cannot make it SCHED_IDLE: %s", strerror(r));
		gvm_poller_stop(p);
		return -r;
	}
	*out = p;
	return 0;
}

void gvm_poller_kick(struct gvm_poller *p, uint64_t now)
{
	if (!p)
		return;
	__atomic_store_n(&p->until, now + p->poll_ns, __ATOMIC_SEQ_CST);
	/* Only the kick that finds it asleep pays for the wake (once a burst). */
	if (__atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST) &&
	    __atomic_exchange_n(&p->sleeping, 0, __ATOMIC_SEQ_CST))
		poller_wake(p);
}

uint64_t gvm_poller_cpu_ns(const struct gvm_poller *p)
{
	return p ? __atomic_load_n(&p->cpu_ns, __ATOMIC_RELAXED) : 0;
}

void gvm_poller_stop(struct gvm_poller *p)
{
	if (!p)
		return;
	__atomic_store_n(&p->quit, 1, __ATOMIC_SEQ_CST);
	poller_wake(p);
	pthread_join(p->thread, NULL);
	free(p);
}

/* 1 if the file holds a CPU quota: cgroup v2 cpu.max "QUOTA PERIOD" (not
 * "max ..."), v1 cpu.cfs_quota_us (not -1). 0 if not, or unreadable. */
static int quota_file(const char *path, int v2)
{
	char buf[64] = "";
	FILE *f = fopen(path, "re");

	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	if (!buf[0])
		return 0;
	return v2 ? strncmp(buf, "max", 3) != 0 : strtol(buf, NULL, 10) > 0;
}

int gvm_cpu_quota(const char *self, const char *root, char *where, size_t len)
{
	const char *line = self;

	while (line && *line) {
		const char *nl = strchr(line, '\n'), *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		char ctl[128], path[1024], base[1280], file[1536];
		int v2;

		if (!c1 || !c2 || c2 >= line + ll || (size_t)(c2 - c1 - 1) >= sizeof(ctl) ||
		    (size_t)(line + ll - c2 - 1) >= sizeof(path))
			goto next;
		memcpy(ctl, c1 + 1, (size_t)(c2 - c1 - 1));
		ctl[c2 - c1 - 1] = 0;
		memcpy(path, c2 + 1, (size_t)(line + ll - c2 - 1));
		path[line + ll - c2 - 1] = 0;
		v2 = ctl[0] == 0;
		if (v2) {
			/* unified at the root, or beside v1 under unified/ */
			snprintf(file, sizeof(file), "%s/cgroup.controllers", root);
			if (access(file, F_OK) == 0)
				snprintf(base, sizeof(base), "%s", root);
			else
				snprintf(base, sizeof(base), "%s/unified", root);
		} else {
			int cpu = 0;
			for (char *t = ctl, *sv = NULL; (t = strtok_r(t, ",", &sv)); t = NULL)
				cpu |= strcmp(t, "cpu") == 0;
			if (!cpu)
				goto next;
			/* the mount point is named after the controllers (cpu,cpuacct) */
			memcpy(ctl, c1 + 1, (size_t)(c2 - c1 - 1));
			ctl[c2 - c1 - 1] = 0;
			snprintf(base, sizeof(base), "%s/%s", root, ctl);
		}
		/* The cgroup and each ancestor: a parent's quota limits it too. */
		for (;;) {
			snprintf(file, sizeof(file), "%s%s/%s", base, strcmp(path, "/") ? path : "",
				 v2 ? "cpu.max" : "cpu.cfs_quota_us");
			if (quota_file(file, v2)) {
				snprintf(where, len, "%s", file);
				return 1;
			}
			char *slash = strrchr(path, '/');
			if (!slash || strcmp(path, "/") == 0)
				break;
			if (slash == path)
				path[1] = 0; /* then the root itself */
			else
				*slash = 0;
		}
next:
		line = nl ? nl + 1 : NULL;
	}
	return 0;
}

/* A time in microseconds from the environment (0..10000), or def. */
static unsigned long env_us(const char *name, unsigned long def)
{
	const char *v = getenv(name);
	char *end = NULL;
	unsigned long us;

	if (!v)
		return def;
	errno = 0;
	us = strtoul(v, &end, 10);
	if (!*v || *end || errno || us > 10000) {
		pr_warn("%s=%s: not a number of microseconds from 0 to 10000; using %lu", name, v, def);
		return def;
	}
	return us;
}

void gvm_poller_configured(struct gvm_poller **out)
{
	unsigned long us = env_us("GIANTVM_POLL_US", GVM_POLL_US_DEFAULT);

	*out = NULL;
	if (us && !getenv("GIANTVM_POLL_US")) {
		/* Under a CPU quota, spinning spends what the guest needs. */
		char self[4096] = "", where[1600];
		int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : read(fd, self, sizeof(self) - 1);
		if (fd >= 0)
			close(fd);
		self[n > 0 ? n : 0] = 0;
		if (gvm_cpu_quota(self, "/sys/fs/cgroup", where, sizeof(where))) {
			pr_info("no poller: a CPU quota applies (%s); GIANTVM_POLL_US=%u turns it on", where,
				GVM_POLL_US_DEFAULT);
			us = 0;
		}
	}
	if (us)
		gvm_poller_start(out, (uint64_t)us * 1000u); /* a failure is said; runs without */
}
