/* Small helpers shared by every part: time, hashing, host:port. Those the
 * tools use too (sizes, randomness, gvm_mix64) are public: include/giantvm.h. */
#ifndef GVM_UTIL_H
#define GVM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "giantvm.h"

#define GVM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define GVM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GVM_MAX(a, b) ((a) > (b) ? (a) : (b))


static inline uint64_t gvm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* FNV-1a 64 of the bytes, then gvm_mix64(h ^ seed). */
uint64_t gvm_hash_bytes(const void *p, size_t n, uint64_t seed);

/* Split "HOST:PORT", "[V6]:PORT", "[V6]" or "HOST" (port defport). IPv6
 * needs brackets. 0, or -EINVAL for an empty host, a bad port or bad
 * brackets. */
int gvm_split_hostport(const char *spec, char *host, size_t hostlen, uint16_t *port,
		       uint16_t defport);

/* madvise(2) as the system call, never through the preload library's
 * madvise (which tells the engine the owner discards guest memory): for the
 * engine's own drops. */
int gvm_madvise(uintptr_t addr, size_t len, int advice);
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24 /* Linux 5.18; glibc headers before 2.36 lack it */
#endif

struct iovec;
/* A pidfd of this process on which process_madvise(MADV_DONTNEED) works
 * (Linux 6.13+, which lets a process give itself any advice; recent
 * kernels flush the TLB once for the whole vector), or -errno (-EOPNOTSUPP: the kernel
 * refuses that advice). The caller closes it. */
int gvm_self_madvise_fd(void);
/* process_madvise(2) on such a pidfd: bytes advised (fewer than asked when
 * a range failed part way), or -errno when the first range failed. */
long gvm_process_madvise(int pidfd, const struct iovec *iov, size_t n, int advice);


#endif
