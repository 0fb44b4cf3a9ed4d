/* Small helpers shared by every part: sizes, time, hashing, fds. */
#ifndef GVM_UTIL_H
#define GVM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define GVM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define GVM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GVM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* "512M", "16G", "4096", "1.5G" (K/M/G/T, powers of 1024, optional "iB"/"B").
 * Returns 0 or -EINVAL. */
int gvm_parse_size(const char *s, uint64_t *out);
/* Decimal unsigned integer in [min, max]; 0 or -EINVAL / -ERANGE. */
int gvm_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* "1.5 GiB"-style text into buf. */
const char *gvm_fmt_size(uint64_t bytes, char *buf, size_t len);

static inline uint64_t gvm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64 finaliser: the mixing step of every hash in docs/PROTOCOL.md. */
static inline uint64_t gvm_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}
/* FNV-1a 64 of the bytes, then gvm_mix64(h ^ seed). */
uint64_t gvm_hash_bytes(const void *p, size_t n, uint64_t seed);

/* Split "HOST:PORT", "[V6]:PORT", "[V6]" or "HOST" (port defport). IPv6
 * needs brackets. 0, or -EINVAL for an empty host, a bad port or bad
 * brackets. */
int gvm_split_hostport(const char *spec, char *host, size_t hostlen, uint16_t *port,
		       uint16_t defport);

/* Fill buf from the kernel's CSPRNG (getrandom). 0 or -errno. */
int gvm_random(void *buf, size_t n);
/* Raise RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit. */
long gvm_raise_nofile(void);

#endif
