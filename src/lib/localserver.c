/*
 * The local ceiling (include/giantvm.h, gvm_local_server_*): a plain
 * userfaultfd handler serving a range from a buffer in the same layout, a
 * window per fault, installed by the engine's own primitive (gvm_uffd_fill).
 * What a fault costs with nothing to fetch; `giantvm bench` quotes it.
 *
 * DESIGN: one thread polls the userfaultfd and an eventfd whose only job is
 * "quit"; stop = eventfd write + join. The thread never touches the range
 * itself (it would fault into its own userfaultfd).
 */
#define LOG_PREFIX "local: "
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "giantvm.h"
#include "log.h"
#include "uffd.h"
#include "util.h"

struct gvm_local_server {
	int uffd;              /* registered on [base, base + npages pages) */
	int quitfd;            /* eventfd: written once by stop */
	uintptr_t base;
	uint64_t npages;
	unsigned window;       /* pages installed per fault (aligned windows) */
	const uint8_t *src;    /* npages of content */
	uint64_t faults;       /* written by the thread, read after join */
	int err;               /* first install error (-errno), read after join */
	pthread_t thread;
};

static void *local_thread(void *arg)
{
	struct gvm_local_server *s = arg;
	struct pollfd pfd[2] = { { .fd = s->uffd, .events = POLLIN }, { .fd = s->quitfd, .events = POLLIN } };
	struct uffd_msg msg;

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			s->err = -errno;
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		ssize_t n = read(s->uffd, &msg, sizeof(msg));
		if (n != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue; /* EAGAIN: another wakeup took it */
		uint64_t p = (msg.arg.pagefault.address - s->base) / GVM_PAGE_SIZE;
		uint64_t w0 = p / s->window * s->window;
		uint64_t len = GVM_MIN((uint64_t)s->window, s->npages - w0) * GVM_PAGE_SIZE;
		int r = gvm_uffd_fill(s->uffd, s->base + w0 * GVM_PAGE_SIZE, s->src + w0 * GVM_PAGE_SIZE,
				      len, 0);
		s->faults++;
		if (r < 0 && !s->err)
			s->err = r;
	}
}

int gvm_local_server_start(struct gvm_local_server **out, void *addr, size_t len, const void *src,
			   unsigned window)
{
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	struct gvm_local_server *s;
	int r;

	*out = NULL;
	if (!window || ((uintptr_t)addr | len) % GVM_PAGE_SIZE || !len)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->base = (uintptr_t)addr;
	s->npages = len / GVM_PAGE_SIZE;
	s->window = window;
	s->src = src;
	s->uffd = gvm_uffd_open(0, NULL, NULL);
	if (s->uffd < 0) {
		r = s->uffd;
		goto err_free;
	}
	s->quitfd = eventfd(0, EFD_CLOEXEC);
	if (s->quitfd < 0) {
		r = -errno;
		goto err_uffd;
	}
	reg.range.start = s->base;
	reg.range.len = len;
	if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) < 0) {
		r = -errno;
		goto err_quit;
	}
	r = -pthread_create(&s->thread, NULL, local_thread, s);
	if (r)
		goto err_quit;
	*out = s;
	return 0;

err_quit:
	close(s->quitfd);
err_uffd:
	close(s->uffd);
err_free:
	free(s);
	return r;
}

int64_t gvm_local_server_stop(struct gvm_local_server *s)
{
	uint64_t one = 1;
	int64_t r;

	if (!s)
		return -EINVAL;
	if (write(s->quitfd, &one, sizeof(one)) != sizeof(one))
		pr_perror("eventfd write"); /* cannot happen on a fresh eventfd */
	pthread_join(s->thread, NULL);
	r = s->err ? s->err : (int64_t)s->faults;
	close(s->quitfd);
	close(s->uffd); /* unregisters the range */
	free(s);
	return r;
}
