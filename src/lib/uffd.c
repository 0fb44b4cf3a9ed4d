#define LOG_PREFIX "uffd: "
#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "giantvm.h"
#include "log.h"

static int uffd_raw_open(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int dev, e;

	if (fd >= 0)
		return fd;
	e = errno;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		pr_err("userfaultfd unavailable: syscall: %s; /dev/userfaultfd: %s", strerror(e),
		       strerror(errno));
		return -e;
	}
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	e = errno;
	close(dev);
	if (fd < 0) {
		pr_err("USERFAULTFD_IOC_NEW: %s", strerror(e));
		return -e;
	}
	return fd;
}

int64_t gvm_uffd_probe(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int fd = uffd_raw_open();
	int64_t r;

	if (fd < 0)
		return fd;
	r = ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : (int64_t)api.features;
	close(fd);
	return r;
}

int gvm_uffd_open(uint64_t wanted, uint64_t *got, uint64_t *avail)
{
	int64_t have = gvm_uffd_probe();
	struct uffdio_api api = { .api = UFFD_API };
	int fd;

	if (have < 0)
		return (int)have;
	/* UFFDIO_API can be called only once per fd, so ask for exactly what
	 * the probe says the kernel has. */
	api.features = wanted & (uint64_t)have;
	fd = uffd_raw_open();
	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		pr_err("UFFDIO_API(features 0x%llx): %s", (unsigned long long)(wanted & (uint64_t)have),
		       strerror(e));
		close(fd);
		return -e;
	}
	if (got)
		*got = wanted & (uint64_t)have;
	if (avail)
		*avail = (uint64_t)have;
	return fd;
}

const char *gvm_uffd_features_str(uint64_t f, char *buf, size_t len)
{
	static const struct { uint64_t bit; const char *name; } names[] = {
		{ UFFD_FEATURE_PAGEFAULT_FLAG_WP, "WP" },
		{ UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED" },
		{ UFFD_FEATURE_WP_ASYNC, "WP_ASYNC" },
		{ UFFD_FEATURE_MOVE, "MOVE" },
		{ UFFD_FEATURE_POISON, "POISON" },
		{ UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE" },
		{ UFFD_FEATURE_THREAD_ID, "THREAD_ID" },
	};
	size_t off = 0;

	buf[0] = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(f & names[i].bit))
			continue;
		int n = snprintf(buf + off, len - off, "%s%s", off ? " " : "", names[i].name);
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += (size_t)n;
	}
	if (!off)
		snprintf(buf, len, "MISSING-only");
	return buf;
}

int64_t gvm_uffd_features(char *buf, size_t len)
{
	int64_t f = gvm_uffd_probe();

	if (f < 0)
		snprintf(buf, len, "%s", strerror((int)-f));
	else
		gvm_uffd_features_str((uint64_t)f, buf, len);
	return f;
}

int gvm_uffd_fill(int uffd, uintptr_t dst, const void *src, size_t len, int flags)
{
	uint64_t dontwake = flags & GVM_FILL_DONTWAKE ? UFFDIO_COPY_MODE_DONTWAKE : 0;
	const uint8_t *s = src;
	unsigned again = 0;
	int existed = 0;

	while (len) {
		int64_t done;
		int r, err;

		if (s) {
			struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)s, .len = len,
						 .mode = (flags & GVM_FILL_WP ? UFFDIO_COPY_MODE_WP : 0) | dontwake };
			r = ioctl(uffd, UFFDIO_COPY, &c);
			done = c.copy;
		} else {
			/* UFFDIO_ZEROPAGE_MODE_DONTWAKE is the same bit. */
			struct uffdio_zeropage z = { .range = { .start = dst, .len = len }, .mode = dontwake };
			r = ioctl(uffd, UFFDIO_ZEROPAGE, &z);
			done = z.zeropage;
		}
		if (r == 0)
			return existed;
		err = errno;
		if (done > 0) {
			dst += (size_t)done;
			if (s)
				s += done;
			len -= (size_t)done;
		}
		if (err == EEXIST) {
			/* Someone filled this page: wake its waiters and go on. */
			struct uffdio_range w = { .start = dst, .len = GVM_PAGE_SIZE };
			existed = 1;
			if (ioctl(uffd, UFFDIO_WAKE, &w) < 0 && errno != ENOENT)
				pr_perror("UFFDIO_WAKE %#lx", (unsigned long)dst);
			dst += GVM_PAGE_SIZE;
			if (s)
				s += GVM_PAGE_SIZE;
			len -= GVM_PAGE_SIZE;
			continue;
		}
		if (err == EAGAIN && ++again < 100000)
			continue;
		if (err == ENOENT || err == ESRCH)
			return -err;
		errno = err;
		pr_perror("%s at %#lx (+%zu)", s ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", (unsigned long)dst, len);
		return -err;
	}
	return existed;
}
