/*
 * Opener: checks and decrypts sealed READ replies (seal.h) off the engine
 * thread.
 *
 * DESIGN
 * AES-GCM costs ~1.5 us a 4 KiB page here, about as much as receiving and
 * installing it: on the engine thread, a 32-page window held the next fault
 * ~50 us and capped sequential reads at the cipher's speed on one CPU. The
 * engine now opens the page a thread waits for itself, installs it, and
 * hands the rest of the window to this thread (a copy of the payload, ~9 us
 * per 128 KiB, against ~45 us to open it); it is free for the next fault
 * meanwhile, and the cipher runs beside the engine on another CPU.
 *
 * The opener touches no page state: the engine says which pages to open
 * (those not resident when the reply came), and they stay INFLIGHT (a fault
 * on one waits, as for any page in flight) until the engine gets the job
 * back through an eventfd in its epoll and installs the window
 * (gvm_fault_on_opened). Page versions are read with atomics, as the
 * engine's own check does. The only shared state is the two job lists,
 * under `mu`.
 *
 * Which windows: the rest of a window a thread faulted in, always (up to
 * the bound below); a readahead window only when this thread is idle, so
 * the two share a sequential stream (fault.c seal_verify).
 *
 * Back-pressure: at most OPEN_QUEUE_PAGES pages to open wait here; beyond
 * that the engine opens inline, as before, so a burst cannot grow memory
 * without bound and the engine never waits on this thread. The bound is in
 * pages to open, and each job copies its whole reply (up to ~132 KiB), so
 * queued jobs hold at most ~128 replies (~17 MiB); finished jobs wait for
 * the engine, at most one per fetch in flight.
 *
 * Only the fetch's own pages are opened and installed (gvm_fetch.own): the
 * job is installed after later replies and acks were handled, so a page
 * another fetch installed, or that was resident when the READ left (and
 * may have been written back and dropped since), must not be put back from
 * this older copy. $GIANTVM_OPENER_DELAY_US (tests) holds each job back
 * that long to make such interleavings likely.
 */
#define LOG_PREFIX "engine: "
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine_int.h"
#include "log.h"

#define OPEN_QUEUE_PAGES 512u
#define OPEN_SPARE_JOBS  16u

struct gvm_opener {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int efd;                       /* done jobs waiting: the engine's epoll */
	int quit;
	struct gvm_open_job *todo, **todo_tail;
	struct gvm_open_job *done, **done_tail;
	struct gvm_open_job *spare;    /* engine thread only */
	unsigned n_spare;
	unsigned queued_pages;         /* pages in todo and in work */
	/* the thread's own cipher context, for the last region it opened */
	struct gvm_sealer s;
	const struct gvm_region *s_rg;
	unsigned delay_us;             /* $GIANTVM_OPENER_DELAY_US: tests widen the window with it */
};

static void job_free(struct gvm_open_job *j)
{
	if (j) {
		free(j->buf);
		free(j);
	}
}

static void *opener_thread(void *arg)
{
	struct gvm_opener *o = arg;

	pthread_mutex_lock(&o->mu);
	for (;;) {
		while (!o->todo && !o->quit)
			pthread_cond_wait(&o->cv, &o->mu);
		if (o->quit)
			break;
		struct gvm_open_job *j = o->todo;
		o->todo = j->next;
		if (!o->todo)
			o->todo_tail = &o->todo;
		pthread_mutex_unlock(&o->mu);

		if (o->delay_us)
			usleep(o->delay_us);
		if (o->s_rg != j->rg) {
			gvm_sealer_fini(&o->s);
			o->s_rg = NULL;
			if (gvm_sealer_init(&o->s, j->rg->seal_key, j->rg->id) == 0)
				o->s_rg = j->rg;
		}
		if (o->s_rg)
			j->nbad = gvm_seal_open_window(&o->s, j->rg, j->page, j->count, j->buf, j->todo, j->bad);
		else {   /* no cipher context (out of memory): the engine opens it */
			j->nbad = 0;
			j->inline_open = 1;
		}

		uint64_t one = 1;
		pthread_mutex_lock(&o->mu);
		j->next = NULL;
		*o->done_tail = j;
		o->done_tail = &j->next;
		__atomic_fetch_sub(&o->queued_pages, j->npages, __ATOMIC_RELAXED);
		if (write(o->efd, &one, sizeof(one)) < 0)
			pr_perror("write(opener eventfd)");
	}
	pthread_mutex_unlock(&o->mu);
	gvm_sealer_fini(&o->s);
	return NULL;
}

int gvm_opener_start(struct gvm_opener **out)
{
	struct gvm_opener *o = calloc(1, sizeof(*o));
	int r;

	*out = NULL;
	if (!o)
		return -ENOMEM;
	o->todo_tail = &o->todo;
	o->done_tail = &o->done;
	const char *d = getenv("GIANTVM_OPENER_DELAY_US");
	if (d && *d)
		o->delay_us = (unsigned)strtoul(d, NULL, 10);
	o->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (o->efd < 0) {
		r = -errno;
		pr_perror("eventfd");
		free(o);
		return r;
	}
	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cv, NULL);
	r = pthread_create(&o->thread, NULL, opener_thread, o);
	if (r) {
		pr_err("pthread_create(opener): %s", strerror(r));
		close(o->efd);
		pthread_mutex_destroy(&o->mu);
		pthread_cond_destroy(&o->cv);
		free(o);
		return -r;
	}
	r = pthread_setname_np(o->thread, "gvm-opener"); /* for top -H and perf */
	if (r)
		pr_debug("pthread_setname_np: %s", strerror(r));
	*out = o;
	return 0;
}

int gvm_opener_fd(const struct gvm_opener *o)
{
	return o->efd;
}

/* After the engine thread has ended: jobs still here are dropped (their
 * fetches are freed with the engine's). */
void gvm_opener_stop(struct gvm_opener *o)
{
	if (!o)
		return;
	pthread_mutex_lock(&o->mu);
	o->quit = 1;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
	pthread_join(o->thread, NULL);
	for (struct gvm_open_job *l[3] = { o->todo, o->done, o->spare }, **p = l; p < l + 3; p++)
		while (*p) {
			struct gvm_open_job *j = *p;
			*p = j->next;
			job_free(j);
		}
	close(o->efd);
	pthread_mutex_destroy(&o->mu);
	pthread_cond_destroy(&o->cv);
	free(o);
}

int gvm_opener_submit(struct gvm_opener *o, struct gvm_conn *c, struct gvm_fetch *f,
		      const uint8_t *payload, size_t len, const uint8_t *todo, unsigned npages,
		      int only_if_idle)
{
	struct gvm_open_job *j;

	unsigned queued = __atomic_load_n(&o->queued_pages, __ATOMIC_RELAXED);

	if ((only_if_idle && queued) || queued + npages > OPEN_QUEUE_PAGES)
		return -EAGAIN;
	j = o->spare;
	if (j) {
		o->spare = j->next;
		o->n_spare--;
	} else if (!(j = calloc(1, sizeof(*j)))) {
		return -ENOMEM;
	}
	if (j->cap < len) {
		uint8_t *b = realloc(j->buf, len);
		if (!b) {
			job_free(j);
			return -ENOMEM;
		}
		j->buf = b;
		j->cap = len;
	}
	memcpy(j->buf, payload, len);
	memcpy(j->todo, todo, GVM_BITMAP_BYTES(f->count));
	memset(j->bad, 0, sizeof(j->bad));
	j->c = c;
	j->f = f;
	j->rg = f->rg;
	j->page = f->page;
	j->count = f->count;
	j->npages = npages;
	j->nbad = 0;
	j->inline_open = 0;
	j->next = NULL;

	pthread_mutex_lock(&o->mu);
	__atomic_fetch_add(&o->queued_pages, npages, __ATOMIC_RELAXED);
	*o->todo_tail = j;
	o->todo_tail = &j->next;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
	return 0;
}

/* The eventfd: install what the opener has finished, in order. */
void gvm_opener_complete(struct gvm_engine *e)
{
	struct gvm_opener *o = e->opener;
	struct gvm_open_job *j;
	uint64_t v;

	if (read(o->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_perror("read(opener eventfd)");
	pthread_mutex_lock(&o->mu);
	j = o->done;
	o->done = NULL;
	o->done_tail = &o->done;
	pthread_mutex_unlock(&o->mu);
	while (j) {
		struct gvm_open_job *next = j->next;
		gvm_fault_on_opened(e, j);
		if (o->n_spare < OPEN_SPARE_JOBS) {
			j->next = o->spare;
			o->spare = j;
			o->n_spare++;
		} else {
			job_free(j);
		}
		j = next;
	}
}
