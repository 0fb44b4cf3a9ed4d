/*
 * giantvm e2e guest workload: a deterministic, verifiable memory workload.
 *
 * Built as a static binary (gcc -static -O2) and run as the guest's only job
 * by tests/e2e/guest.sh's /init; the same binary runs on the host to compute
 * the expected checksum.
 *
 *   workload [--mib N] [--seed S] [--threads T] [--passes P]
 *       mmap N MiB of anonymous memory; each pass writes every 4 KiB page
 *       with a pattern derived from (seed, page index), then reads every page
 *       back and verifies it word by word.  Prints exactly one line:
 *         GIANTVM-RESULT mib=N seed=S checksum=<16 hex> verify=ok elapsed_ms=E
 *       or, on the first wrong byte (later passes stop early):
 *         GIANTVM-RESULT mib=N seed=S checksum=<16 hex> verify=FAIL
 *             bad_offset=<byte offset> pass=<p> elapsed_ms=E   (one line)
 *       Exit status 0 when verify=ok, 1 on FAIL, 2 on usage/allocation error.
 *       The checksum is computed from the bytes actually read back in the
 *       last pass, so corrupted memory also changes the checksum.
 *       --inject-fault OFF (self-test of the FAIL path) flips byte OFF after
 *       pass 1 has written it, before it is read back.
 *
 *   workload --expect MIB SEED
 *       Prints the expected checksum (16 hex digits + newline) computing the
 *       pattern one page at a time in a 4 KiB buffer (no large allocation).
 *
 * Pattern: page p (global, 4096 bytes = 512 words) is filled with xorshift64
 * seeded with splitmix64(seed ^ p * GOLDEN) | 1, so every word is non-zero
 * and the data is incompressible; generation costs 3 shifts + 3 xors per
 * 8 bytes (cheap under TCG).
 *
 * Checksum: per page d = FNV-1a-style fold over its 512 words
 * (d = (d ^ w) * 0x100000001b3, d0 = 0xcbf29ce484222325), then
 * checksum = sum over pages of splitmix-finalizer(d ^ p) mod 2^64.
 * The sum is order independent, so the result does not depend on --threads
 * or --passes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define GOLDEN 0x9e3779b97f4a7c15ULL

static uint64_t fmix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t page_state(uint64_t seed, uint64_t page)
{
    return fmix64(seed ^ (page * GOLDEN + GOLDEN)) | 1u;
}

static inline void fill_page(uint64_t *w, uint64_t seed, uint64_t page)
{
    uint64_t s = page_state(seed, page);
    for (unsigned i = 0; i < WORDS; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w[i] = s;
    }
}

/* Verify page p and return its digest; on mismatch set *bad to the index of
 * the first wrong word (else leaves it untouched) and stop. */
static inline uint64_t check_page(const volatile uint64_t *w, uint64_t seed,
                                  uint64_t page, int64_t *bad)
{
    uint64_t s = page_state(seed, page);
    uint64_t d = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < WORDS; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t v = w[i];
        if (v != s && *bad < 0)
            *bad = i;
        d = (d ^ v) * 0x100000001b3ULL;
    }
    return fmix64(d ^ page);
}

static uint64_t page_digest(const uint64_t *w, uint64_t page)
{
    uint64_t d = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < WORDS; i++)
        d = (d ^ w[i]) * 0x100000001b3ULL;
    return fmix64(d ^ page);
}

static uint64_t expect_checksum(uint64_t mib, uint64_t seed)
{
    uint64_t buf[WORDS];
    uint64_t pages = mib * (1024 * 1024 / PAGE), sum = 0;
    for (uint64_t p = 0; p < pages; p++) {
        fill_page(buf, seed, p);
        sum += page_digest(buf, p);
    }
    return sum;
}

struct job {
    uint64_t *base;     /* start of the whole region */
    uint64_t first, n;  /* page range */
    uint64_t seed;
    int passes;
    int64_t inject;     /* byte offset to corrupt after pass 1's writes, -1 none */
    uint64_t sum;       /* digest sum of the last pass */
    int64_t bad_off;    /* first bad byte offset in region, -1 if none */
    int bad_pass;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    j->bad_off = -1;
    for (int pass = 1; pass <= j->passes; pass++) {
        for (uint64_t p = j->first; p < j->first + j->n; p++)
            fill_page(j->base + p * WORDS, j->seed, p);
        if (pass == 1 && j->inject >= 0 &&
            (uint64_t)j->inject >= j->first * PAGE &&
            (uint64_t)j->inject < (j->first + j->n) * PAGE)
            ((unsigned char *)j->base)[j->inject] ^= 0x5a;
        uint64_t sum = 0;
        for (uint64_t p = j->first; p < j->first + j->n; p++) {
            int64_t bad = -1;
            uint64_t *w = j->base + p * WORDS;
            sum += check_page(w, j->seed, p, &bad);
            if (bad >= 0 && j->bad_off < 0) {
                /* locate the first wrong byte within the wrong word */
                uint64_t tmp[WORDS];
                fill_page(tmp, j->seed, p);
                const unsigned char *a = (const unsigned char *)&w[bad];
                const unsigned char *b = (const unsigned char *)&tmp[bad];
                unsigned k = 0;
                while (k < 7 && a[k] == b[k])
                    k++;
                j->bad_off = (int64_t)(p * PAGE + (uint64_t)bad * 8 + k);
                j->bad_pass = pass;
            }
        }
        j->sum = sum;
        if (j->bad_off >= 0)
            break;
    }
    return NULL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: workload [--mib N] [--seed S] [--threads T] [--passes P]\n"
            "       workload --expect MIB SEED\n");
    return 2;
}

int main(int argc, char **argv)
{
    uint64_t mib = 64, seed = 1, threads = 1, passes = 1;
    uint64_t inject = UINT64_MAX;

    if (argc >= 2 && strcmp(argv[1], "--expect") == 0) {
        if (argc != 4 || parse_u64(argv[2], &mib) || parse_u64(argv[3], &seed))
            return usage();
        printf("%016" PRIx64 "\n", expect_checksum(mib, seed));
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        uint64_t *dst = NULL;
        if (!strcmp(argv[i], "--mib")) dst = &mib;
        else if (!strcmp(argv[i], "--seed")) dst = &seed;
        else if (!strcmp(argv[i], "--threads")) dst = &threads;
        else if (!strcmp(argv[i], "--passes")) dst = &passes;
        else if (!strcmp(argv[i], "--inject-fault")) dst = &inject;
        if (!dst || i + 1 >= argc || parse_u64(argv[++i], dst))
            return usage();
    }
    if (mib == 0 || mib > (1u << 24) || threads == 0 || threads > 256 ||
        passes == 0 || passes > 1000)
        return usage();

    uint64_t t0 = now_ms();
    size_t len = (size_t)mib << 20;
    uint64_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        fprintf(stderr, "workload: mmap %" PRIu64 " MiB: %s\n", mib,
                strerror(errno));
        return 2;
    }
    uint64_t pages = len / PAGE;
    struct job jobs[256];
    pthread_t tids[256];
    for (uint64_t t = 0; t < threads; t++) {
        uint64_t lo = pages * t / threads, hi = pages * (t + 1) / threads;
        jobs[t] = (struct job){ .base = base, .first = lo, .n = hi - lo,
                                .seed = seed, .passes = (int)passes,
                                .inject = inject < len ? (int64_t)inject : -1 };
    }
    if (threads == 1) {
        run_job(&jobs[0]);
    } else {
        for (uint64_t t = 0; t < threads; t++)
            if (pthread_create(&tids[t], NULL, run_job, &jobs[t])) {
                fprintf(stderr, "workload: pthread_create failed\n");
                return 2;
            }
        for (uint64_t t = 0; t < threads; t++)
            pthread_join(tids[t], NULL);
    }
    uint64_t sum = 0;
    int64_t bad = -1;
    int bad_pass = 0;
    for (uint64_t t = 0; t < threads; t++) {
        sum += jobs[t].sum;
        if (jobs[t].bad_off >= 0 && (bad < 0 || jobs[t].bad_off < bad)) {
            bad = jobs[t].bad_off;
            bad_pass = jobs[t].bad_pass;
        }
    }
    uint64_t ms = now_ms() - t0;
    if (bad < 0)
        printf("GIANTVM-RESULT mib=%" PRIu64 " seed=%" PRIu64
               " checksum=%016" PRIx64 " verify=ok elapsed_ms=%" PRIu64 "\n",
               mib, seed, sum, ms);
    else
        printf("GIANTVM-RESULT mib=%" PRIu64 " seed=%" PRIu64
               " checksum=%016" PRIx64 " verify=FAIL bad_offset=%" PRId64
               " pass=%d elapsed_ms=%" PRIu64 "\n",
               mib, seed, sum, bad, bad_pass, ms);
    fflush(stdout);
    munmap(base, len);
    return bad < 0 ? 0 : 1;
}
