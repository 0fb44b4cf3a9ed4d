#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

int gvm_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (*end)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

/*
 * Digits, an optional fraction, an optional unit: "4096", "512M", "1.5G",
 * "2GiB". Not strtod(), which also takes "nan" (no size at all: it became
 * "no budget" or "unlimited"), "inf", hex and exponents: a size is written
 * out in decimal or it is a mistake. Integer arithmetic throughout, so no
 * size near 2^64 is rounded into range.
 */
int gvm_parse_size(const char *s, uint64_t *out)
{
	const char *p = s, *frac = NULL;
	uint64_t whole = 0, mult = 1, v;
	unsigned __int128 f = 0, scale = 1;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (whole > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -ERANGE;
		whole = whole * 10 + (uint64_t)(*p - '0');
	}
	if (*p == '.') {
		frac = ++p;
		while (*p >= '0' && *p <= '9')
			p++;
		if (p == frac)
			return -EINVAL; /* "1." */
	}
	switch (*p) {
	case 'k': case 'K': mult = 1ull << 10; p++; break;
	case 'm': case 'M': mult = 1ull << 20; p++; break;
	case 'g': case 'G': mult = 1ull << 30; p++; break;
	case 't': case 'T': mult = 1ull << 40; p++; break;
	default: break;
	}
	if (mult > 1 && *p == 'i')
		p++;
	if (*p == 'B' || *p == 'b')
		p++;
	if (*p)
		return -EINVAL;
	if (__builtin_mul_overflow(whole, mult, &v))
		return -ERANGE;
	/* The fraction of the unit, rounded down to a byte: 19 digits are
	 * plenty (beyond them a unit of 2^40 moves by less than a byte). */
	for (int i = 0; frac && frac[i] >= '0' && frac[i] <= '9' && i < 19; i++) {
		f = f * 10 + (unsigned)(frac[i] - '0');
		scale *= 10;
	}
	if (__builtin_add_overflow(v, (uint64_t)(f * mult / scale), &v))
		return -ERANGE;
	*out = v;
	return 0;
}

const char *gvm_fmt_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u < GVM_ARRAY_SIZE(units) - 1) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

uint64_t gvm_hash_bytes(const void *p, size_t n, uint64_t seed)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return gvm_mix64(h ^ seed);
}

int gvm_random(void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

long gvm_raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			return -errno;
	}
	return (long)rl.rlim_cur;
}

int gvm_split_hostport(const char *spec, char *host, size_t hostlen, uint16_t *port,
		       uint16_t defport)
{
	const char *h = spec, *p = NULL;
	uint64_t v = defport;
	size_t n;

	if (spec[0] == '[') {
		const char *end = strchr(spec, ']');
		if (!end)
			return -EINVAL;
		h = spec + 1;
		n = (size_t)(end - h);
		if (end[1] == ':')
			p = end + 2;
		else if (end[1])
			return -EINVAL;
	} else {
		const char *colon = strchr(spec, ':');
		if (colon && strchr(colon + 1, ':'))
			return -EINVAL;
		n = colon ? (size_t)(colon - spec) : strlen(spec);
		if (colon)
			p = colon + 1;
	}
	if (n == 0 || n >= hostlen)
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = 0;
	if (p && gvm_parse_u64(p, 0, 65535, &v) < 0)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

uint64_t gvm_time_ns(void)
{
	return gvm_now_ns();
}

int gvm_madvise(uintptr_t addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

long gvm_process_madvise(int pidfd, const struct iovec *iov, size_t n, int advice)
{
#ifdef SYS_process_madvise
	long r = syscall(SYS_process_madvise, pidfd, iov, n, advice, 0u);
	return r < 0 ? -errno : r;
#else
	(void)pidfd, (void)iov, (void)n, (void)advice;
	return -ENOSYS;
#endif
}

int gvm_self_madvise_fd(void)
{
#if defined(SYS_pidfd_open) && defined(SYS_process_madvise)
	long pagesz = sysconf(_SC_PAGESIZE);
	int fd = (int)syscall(SYS_pidfd_open, getpid(), 0u);
	void *probe;
	long r;

	if (fd < 0)
		return -errno;
	/* Before 6.13 a process may only give itself the advice another
	 * process could (MADV_COLD, PAGEOUT, WILLNEED, COLLAPSE): EINVAL. */
	probe = mmap(NULL, (size_t)pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (probe == MAP_FAILED) {
		r = -errno;
		close(fd);
		return (int)r;
	}
	struct iovec iov = { probe, (size_t)pagesz };
	r = gvm_process_madvise(fd, &iov, 1, MADV_DONTNEED);
	if (munmap(probe, (size_t)pagesz) < 0 && r >= 0)
		r = -errno;
	if (r != pagesz) {
		close(fd);
		return r == -EINVAL || r >= 0 ? -EOPNOTSUPP : (int)r; /* EPERM, ENOSYS: a filter said no */
	}
	return fd;
#else
	return -ENOSYS;
#endif
}
