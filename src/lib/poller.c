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
 * last fault; then it sleeps on a condition variable until the next burst.
 * It reads no file descriptor and does no work: the engine still blocks in
 * epoll and does everything else as before. If the thread cannot be made
 * SCHED_IDLE, there is no poller (spinning at normal priority would take
 * CPU from the guest on a busy host).
 *
 * The cost is CPU time that would otherwise be idle, during fault bursts
 * only; `giantvm stat` reports it (poll_ms). $GIANTVM_POLL_US sets poll_ns
 * (engine.c), 0 turns the poller off.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

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
	int sleeping;           /* the thread is in (or about to enter) cond_wait (atomic) */
	uint64_t busy_ns;       /* time spent awake (atomic) */
	int quit, started, err; /* under mu */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* the thread waits for a kick, start() for the thread */
};

static void *poller_main(void *arg)
{
	struct gvm_poller *p = arg;
	struct sched_param sp = { .sched_priority = 0 };
	int err = sched_setscheduler(0, SCHED_IDLE, &sp) < 0 ? -errno : 0;

	pthread_mutex_lock(&p->mu);
	p->started = 1;
	p->err = err;
	pthread_cond_broadcast(&p->cv);
	for (;;) {
		/* Say "sleeping" before looking at `until`, and kick() stores
		 * `until` before looking at "sleeping" (both sequentially
		 * consistent): one of the two sees the other, so a kick is
		 * never lost between the look and the wait. */
		__atomic_store_n(&p->sleeping, 1, __ATOMIC_SEQ_CST);
		if (p->quit || p->err)
			break;
		if (gvm_now_ns() >= __atomic_load_n(&p->until, __ATOMIC_SEQ_CST)) {
			pthread_cond_wait(&p->cv, &p->mu);
			continue;
		}
		__atomic_store_n(&p->sleeping, 0, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&p->mu);
		uint64_t t0 = gvm_now_ns(), now = t0;
		while (now < __atomic_load_n(&p->until, __ATOMIC_RELAXED) &&
		       !__atomic_load_n(&p->quit, __ATOMIC_RELAXED)) {
			cpu_relax();
			now = gvm_now_ns();
		}
		__atomic_fetch_add(&p->busy_ns, now - t0, __ATOMIC_RELAXED);
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int gvm_poller_start(struct gvm_poller **out, uint64_t poll_ns)
{
	struct gvm_poller *p = calloc(1, sizeof(*p));
	int r;

	*out = NULL;
	if (!p)
		return -ENOMEM;
	p->poll_ns = poll_ns;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	r = pthread_create(&p->thread, NULL, poller_main, p);
	if (r) {
		pr_warn("no poller: pthread_create: %s", strerror(r));
		free(p);
		return -r;
	}
	r = pthread_setname_np(p->thread, "gvm-poll"); /* for top -H; a failure only loses the name */
	if (r)
		pr_debug("pthread_setname_np: %s", strerror(r));
	pthread_mutex_lock(&p->mu);
	while (!p->started)
		pthread_cond_wait(&p->cv, &p->mu);
	r = p->err;
	pthread_mutex_unlock(&p->mu);
	if (r) {
		pr_warn("no poller: cannot make it SCHED_IDLE: %s", strerror(-r));
		pthread_join(p->thread, NULL);
		free(p);
		return r;
	}
	*out = p;
	return 0;
}

void gvm_poller_kick(struct gvm_poller *p, uint64_t now)
{
	if (!p)
		return;
	__atomic_store_n(&p->until, now + p->poll_ns, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST)) {
		pthread_mutex_lock(&p->mu);
		pthread_cond_signal(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
}

uint64_t gvm_poller_busy_ns(const struct gvm_poller *p)
{
	return p ? __atomic_load_n(&p->busy_ns, __ATOMIC_RELAXED) : 0;
}

void gvm_poller_stop(struct gvm_poller *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	__atomic_store_n(&p->quit, 1, __ATOMIC_RELAXED);
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->thread, NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
