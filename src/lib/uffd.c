#define LOG_PREFIX "uffd: "
#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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
