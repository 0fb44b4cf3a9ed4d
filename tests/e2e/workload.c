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
 *   workload --rand uniform|zipf [--mib N] [--ops K] [--seed S] [--expect HEX]
 *                  [--lose-write J]
 *       Random read-modify-write of 8-byte words over N MiB (default 64 MiB,
 *       1000000 ops): a sequential fill, K timed ops, then a pass that checks
 *       every word (see "random" below).  --lose-write J (self-test of the
 *       FAIL path) drops op J's write.  Prints one line:
 *         GIANTVM-RESULT mode=rand dist=D mib=N ops=K seed=S checksum=<16 hex>
 *           verify=ok|FAIL [reason=..] fill_ms=.. ops_ms=.. verify_ms=..
 *           ops_per_s=<K / ops time> elapsed_ms=..
 *       Exit status 0 when verify=ok, 1 on FAIL, 2 on usage error.
 *   workload --expect-rand uniform|zipf MIB OPS SEED
 *       The checksum --rand ends with, computed on the host (replays the ops
 *       into MIB*256 KiB of counters).
 *   workload --redis SOCKET [--dist uniform|zipf] [--keys K] [--value D]
 *                   [--ops Q] [--depth P] [--seed S]
 *       A Redis client that checks every answer (see "redis" below).
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

/* ------------------------------------------------------------------ random
 * Random read-modify-write (workload --rand DIST ...).
 *
 * Word i of the N MiB working set starts as the sequential workload's
 * pattern (fill_page), so the data is incompressible.  Op j (0..ops-1)
 * picks a word index from a seeded stream and adds RMW_INC to it.  After
 * the ops, word i = pattern(i) + c_i * RMW_INC (mod 2^64), where c_i is the
 * number of ops that hit it, so each word is checked on its own:
 * c_i = (w_i - pattern(i)) * RMW_INC^-1 mod 2^64 must be <= ops, and the
 * c_i must add up to ops (a lost write or a stale page lowers the sum).
 * The checksum is the sequential workload's (sum of per-page digests of the
 * final contents); `workload --expect-rand DIST MIB OPS SEED` computes it on
 * the host by replaying the ops into per-word counters, and --expect HEX
 * makes the guest compare it too.
 *
 * DIST: uniform (every word alike) or zipf (Zipf s = 0.99 over the words'
 * ranks, each rank scattered to a word by a hash, as YCSB's scrambled
 * zipfian: the hot words are spread over the pages).  The sampler is
 * rejection-inversion (Hormann & Derflinger 1996, as in Apache Commons RNG)
 * with log/exp written here from + - * / only, so the host and the guest
 * (TCG, other CPU features, libm ifuncs) draw the same indices.
 */
#define RMW_INC GOLDEN
#define ZIPF_S 0.99

struct rng { uint64_t s; };
static inline uint64_t rng_next(struct rng *r)
{
    r->s += GOLDEN;
    return fmix64(r->s);
}
static inline double rng_unit(struct rng *r) /* [0,1) */
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* log and exp from the four basic operations only (deterministic) */
static double d_log(double x)
{
    union { double d; uint64_t u; } v = { .d = x };
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL; /* m in [1,2) */
    double m = v.d;
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e++;
    }
    double z = (m - 1.0) / (m + 1.0), z2 = z * z, t = z, s = 0.0;
    for (int k = 1; k <= 27; k += 2) {
        s += t / k;
        t *= z2;
    }
    return 2.0 * s + e * 0.6931471805599453;
}
static double d_exp(double x)
{
    if (x < -700.0)
        return 0.0;
    double nd = x / 0.6931471805599453;
    int64_t n = (int64_t)(nd < 0 ? nd - 0.5 : nd + 0.5);
    double r = x - (double)n * 0.6931471805599453, t = 1.0, s = 1.0;
    for (int k = 1; k <= 18; k++) {
        t = t * r / k;
        s += t;
    }
    union { double d; uint64_t u; } v = { .u = (uint64_t)(n + 1023) << 52 };
    return s * v.d;
}
static double zh1(double x) /* log1p(x)/x */
{
    return (x > 1e-8 || x < -1e-8) ? d_log(1.0 + x) / x : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}
static double zh2(double x) /* expm1(x)/x */
{
    return (x > 1e-8 || x < -1e-8) ? (d_exp(x) - 1.0) / x : 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x));
}
static double zH(double x) /* integral of h */
{
    double lx = d_log(x);
    return zh2((1.0 - ZIPF_S) * lx) * lx;
}
static double zh(double x) { return d_exp(-ZIPF_S * d_log(x)); }
static double zHinv(double x)
{
    double t = x * (1.0 - ZIPF_S);
    if (t < -1.0)
        t = -1.0;
    return d_exp(zh1(t) * x);
}
struct zipf { double n, hx1, hn, s; };
static void zipf_init(struct zipf *z, uint64_t n)
{
    z->n = (double)n;
    z->hx1 = zH(1.5) - 1.0;
    z->hn = zH(z->n + 0.5);
    z->s = 2.0 - zHinv(zH(2.5) - zh(2.0));
}
static uint64_t zipf_rank(const struct zipf *z, struct rng *r) /* 1..n */
{
    for (;;) {
        double u = z->hn + rng_unit(r) * (z->hx1 - z->hn);
        double x = zHinv(u);
        double kd = x + 0.5;
        uint64_t k = kd < 1.0 ? 1 : (uint64_t)kd;
        if (k < 1)
            k = 1;
        else if ((double)k > z->n)
            k = (uint64_t)z->n;
        if ((double)k - x <= z->s || u >= zH((double)k + 0.5) - zh((double)k))
            return k;
    }
}

enum { DIST_UNIFORM, DIST_ZIPF };
struct picker { int dist; uint64_t n, scramble; struct rng r; struct zipf z; };
static void picker_init(struct picker *p, int dist, uint64_t n, uint64_t seed, uint64_t salt)
{
    p->dist = dist;
    p->n = n;
    p->r.s = fmix64(seed ^ salt);
    p->scramble = fmix64(seed ^ 0x2545f4914f6cdd1dULL ^ salt);
    if (dist == DIST_ZIPF)
        zipf_init(&p->z, n);
}
static inline uint64_t pick(struct picker *p)
{
    if (p->dist == DIST_UNIFORM)
        return (uint64_t)(((unsigned __int128)rng_next(&p->r) * p->n) >> 64);
    return fmix64(zipf_rank(&p->z, &p->r) ^ p->scramble) % p->n;
}
#define RAND_SALT 0x6a09e667f3bcc908ULL

static int parse_dist(const char *s)
{
    if (!strcmp(s, "uniform"))
        return DIST_UNIFORM;
    if (!strcmp(s, "zipf"))
        return DIST_ZIPF;
    return -1;
}
static const char *dist_name(int d) { return d == DIST_ZIPF ? "zipf" : "uniform"; }

static uint64_t rmw_inverse(void)
{
    uint64_t inv = RMW_INC; /* Newton: correct to 2^(3*2^k) bits */
    for (int i = 0; i < 6; i++)
        inv *= 2 - RMW_INC * inv;
    return inv;
}

/* Host side: replay the ops into per-word counters and digest the final
 * contents.  Needs mib * 256 KiB of counters (uint32). */
static int expect_rand(int dist, uint64_t mib, uint64_t ops, uint64_t seed, uint64_t *out)
{
    uint64_t words = mib * (1024 * 1024 / 8), pages = words / WORDS, sum = 0;
    uint32_t *cnt = calloc(words, sizeof(*cnt));
    if (!cnt)
        return -1;
    struct picker pk;
    picker_init(&pk, dist, words, seed, RAND_SALT);
    for (uint64_t j = 0; j < ops; j++)
        cnt[pick(&pk)]++;
    uint64_t buf[WORDS];
    for (uint64_t p = 0; p < pages; p++) {
        fill_page(buf, seed, p);
        for (unsigned i = 0; i < WORDS; i++)
            buf[i] += (uint64_t)cnt[p * WORDS + i] * RMW_INC;
        sum += page_digest(buf, p);
    }
    free(cnt);
    *out = sum;
    return 0;
}

static int run_rand(int dist, uint64_t mib, uint64_t ops, uint64_t seed, int have_expect,
                    uint64_t expect, uint64_t lose)
{
    uint64_t t0 = now_ms();
    size_t len = (size_t)mib << 20;
    uint64_t words = len / 8, pages = len / PAGE;
    uint64_t *w = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (w == MAP_FAILED) {
        fprintf(stderr, "workload: mmap %" PRIu64 " MiB: %s\n", mib, strerror(errno));
        return 2;
    }
    for (uint64_t p = 0; p < pages; p++)
        fill_page(w + p * WORDS, seed, p);
    uint64_t t1 = now_ms();
    struct picker pk;
    picker_init(&pk, dist, words, seed, RAND_SALT);
    for (uint64_t j = 0; j < ops; j++) {
        volatile uint64_t *x = &w[pick(&pk)];
        uint64_t v = *x + RMW_INC;
        if (j != lose) /* --lose-write: self-test of the FAIL path */
            *x = v;
    }
    uint64_t t2 = now_ms();
    uint64_t inv = rmw_inverse(), total = 0, sum = 0, buf[WORDS];
    int64_t bad = -1;
    for (uint64_t p = 0; p < pages; p++) {
        const uint64_t *pw = w + p * WORDS;
        fill_page(buf, seed, p);
        for (unsigned i = 0; i < WORDS; i++) {
            uint64_t c = (pw[i] - buf[i]) * inv;
            if (c > ops && bad < 0)
                bad = (int64_t)(p * WORDS + i);
            total += c;
        }
        sum += page_digest(pw, p);
    }
    uint64_t t3 = now_ms();
    const char *why = NULL;
    if (bad >= 0)
        why = "bad_word";
    else if (total != ops)
        why = "count_sum";
    else if (have_expect && sum != expect)
        why = "checksum";
    double ops_s = t2 > t1 ? (double)ops * 1000.0 / (double)(t2 - t1) : 0.0;
    printf("GIANTVM-RESULT mode=rand dist=%s mib=%" PRIu64 " ops=%" PRIu64 " seed=%" PRIu64
           " checksum=%016" PRIx64 " verify=%s", dist_name(dist), mib, ops, seed, sum,
           why ? "FAIL" : "ok");
    if (why) {
        printf(" reason=%s", why);
        if (bad >= 0)
            printf(" word=%" PRId64, bad);
        printf(" count_sum=%" PRIu64, total);
    }
    printf(" fill_ms=%" PRIu64 " ops_ms=%" PRIu64 " verify_ms=%" PRIu64 " ops_per_s=%.0f"
           " elapsed_ms=%" PRIu64 "\n", t1 - t0, t2 - t1, t3 - t2, ops_s, t3 - t0);
    fflush(stdout);
    munmap(w, len);
    return why ? 1 : 0;
}

/* ------------------------------------------------------------------ redis
 * A checking Redis client (workload --redis SOCKET ...), run in the guest
 * against redis-server on a Unix socket.
 *
 * Load: SET key:<i> to value(i, version 0) for i < keys, pipelined.
 * Ops:  ops requests on keys drawn uniform or zipf (as --rand), 90% GET and
 *       10% SET of the next version; each GET's reply must equal the value
 *       of the key's current version (the client keeps one byte of version
 *       per key).  --depth requests are in flight at a time.
 * Final: DBSIZE must equal keys, then GET every key once and compare.
 * Value (D bytes, printable) = xorshift stream seeded by (seed, key,
 * version).  Prints one line:
 *   GIANTVM-RESULT mode=redis dist=.. keys=K value=D ops=Q seed=S checked=C
 *     mismatches=M verify=ok|FAIL load_ms=.. ops_ms=.. final_ms=.. ops_per_s=..
 *     elapsed_ms=..
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct rconn { int fd; char *buf; size_t len, pos, cap; char *out; size_t olen, ocap; };

static void rc_put(struct rconn *c, const void *p, size_t n)
{
    if (c->olen + n > c->ocap) {
        c->ocap = (c->olen + n) * 2;
        c->out = realloc(c->out, c->ocap);
        if (!c->out) {
            perror("workload: realloc");
            exit(2);
        }
    }
    memcpy(c->out + c->olen, p, n);
    c->olen += n;
}
static void rc_flush(struct rconn *c)
{
    size_t off = 0;
    while (off < c->olen) {
        ssize_t n = write(c->fd, c->out + off, c->olen - off);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            perror("workload: redis write");
            exit(2);
        }
        off += (size_t)n;
    }
    c->olen = 0;
}
/* make at least n unread bytes available in c->buf[c->pos..] */
static void rc_need(struct rconn *c, size_t n)
{
    if (c->len - c->pos >= n)
        return;
    if (c->pos) {
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    if (n > c->cap) {
        c->cap = n * 2;
        c->buf = realloc(c->buf, c->cap);
        if (!c->buf) {
            perror("workload: realloc");
            exit(2);
        }
    }
    while (c->len < n) {
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            fprintf(stderr, "workload: redis connection closed\n");
            exit(2);
        }
        c->len += (size_t)r;
    }
}
/* read one reply line ("+OK", ":5", "$12"), without CRLF, into line */
static void rc_line(struct rconn *c, char *line, size_t max)
{
    size_t i = 0;
    for (;;) {
        rc_need(c, 1);
        char ch = c->buf[c->pos++];
        if (ch == '\n')
            break;
        if (ch != '\r' && i + 1 < max)
            line[i++] = ch;
    }
    line[i] = 0;
}

static void put_bulk(struct rconn *c, const char *s, size_t n)
{
    char h[32];
    int k = snprintf(h, sizeof(h), "$%zu\r\n", n);
    rc_put(c, h, (size_t)k);
    rc_put(c, s, n);
    rc_put(c, "\r\n", 2);
}
static void redis_value(char *v, size_t n, uint64_t seed, uint64_t key, unsigned ver)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    uint64_t s = fmix64(seed ^ (key * GOLDEN) ^ ((uint64_t)ver << 56)) | 1u;
    for (size_t i = 0; i < n; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t t = s;
        for (size_t j = i; j < n && j < i + 8; j++, t >>= 6)
            v[j] = al[t & 63];
    }
}
static void send_set(struct rconn *c, uint64_t key, const char *v, size_t n)
{
    char k[32];
    int kn = snprintf(k, sizeof(k), "key:%" PRIu64, key);
    rc_put(c, "*3\r\n$3\r\nSET\r\n", 13);
    put_bulk(c, k, (size_t)kn);
    put_bulk(c, v, n);
}
static void send_get(struct rconn *c, uint64_t key)
{
    char k[32];
    int kn = snprintf(k, sizeof(k), "key:%" PRIu64, key);
    rc_put(c, "*2\r\n$3\r\nGET\r\n", 13);
    put_bulk(c, k, (size_t)kn);
}
/* reply to SET: 1 if +OK */
static int recv_ok(struct rconn *c)
{
    char line[256];
    rc_line(c, line, sizeof(line));
    return strcmp(line, "+OK") == 0;
}
/* reply to GET: 1 if it equals want[0..n) */
static int recv_value(struct rconn *c, const char *want, size_t n)
{
    char line[256];
    rc_line(c, line, sizeof(line));
    if (line[0] != '$')
        return 0;
    long len = strtol(line + 1, NULL, 10);
    if (len < 0)
        return 0;
    rc_need(c, (size_t)len + 2);
    int ok = (size_t)len == n && memcmp(c->buf + c->pos, want, n) == 0;
    c->pos += (size_t)len + 2;
    return ok;
}

struct pend { uint64_t key; unsigned ver; int is_set; };

static int run_redis(const char *sock, int dist, uint64_t keys, uint64_t vsize, uint64_t ops,
                     uint64_t seed, uint64_t depth)
{
    uint64_t t0 = now_ms();
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    struct rconn c = { .fd = -1 };
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
    c.fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (c.fd < 0 || connect(c.fd, (struct sockaddr *)&a, sizeof(a))) {
        fprintf(stderr, "workload: connect %s: %s\n", sock, strerror(errno));
        return 2;
    }
    unsigned char *ver = calloc(keys, 1);
    char *v = malloc(vsize + 8);
    struct pend *pd = calloc(depth, sizeof(*pd));
    if (!ver || !v || !pd)
        return 2;
    uint64_t checked = 0, bad = 0, sets = 0;
    /* load */
    for (uint64_t i = 0; i < keys; i += depth) {
        uint64_t n = keys - i < depth ? keys - i : depth;
        for (uint64_t j = 0; j < n; j++) {
            redis_value(v, vsize, seed, i + j, 0);
            send_set(&c, i + j, v, vsize);
        }
        rc_flush(&c);
        for (uint64_t j = 0; j < n; j++)
            bad += !recv_ok(&c);
    }
    uint64_t t1 = now_ms();
    /* random ops */
    struct picker pk;
    picker_init(&pk, dist, keys, seed, 0x3c6ef372fe94f82bULL);
    struct rng mix = { fmix64(seed ^ 0xa54ff53a5f1d36f1ULL) };
    for (uint64_t i = 0; i < ops; i += depth) {
        uint64_t n = ops - i < depth ? ops - i : depth;
        for (uint64_t j = 0; j < n; j++) {
            uint64_t k = pick(&pk);
            int is_set = rng_next(&mix) % 10 == 0;
            /* a key twice in one batch: its GET must see the batch's SET */
            if (is_set) {
                ver[k]++;
                redis_value(v, vsize, seed, k, ver[k]);
                send_set(&c, k, v, vsize);
                sets++;
            } else {
                send_get(&c, k);
            }
            pd[j] = (struct pend){ .key = k, .ver = ver[k], .is_set = is_set };
        }
        rc_flush(&c);
        for (uint64_t j = 0; j < n; j++) {
            if (pd[j].is_set) {
                bad += !recv_ok(&c);
            } else {
                redis_value(v, vsize, seed, pd[j].key, pd[j].ver);
                bad += !recv_value(&c, v, vsize);
                checked++;
            }
        }
    }
    uint64_t t2 = now_ms();
    /* final pass */
    char line[256];
    rc_put(&c, "*1\r\n$6\r\nDBSIZE\r\n", 16);
    rc_flush(&c);
    rc_line(&c, line, sizeof(line));
    uint64_t dbsize = line[0] == ':' ? strtoull(line + 1, NULL, 10) : 0;
    if (dbsize != keys)
        bad++;
    for (uint64_t i = 0; i < keys; i += depth) {
        uint64_t n = keys - i < depth ? keys - i : depth;
        for (uint64_t j = 0; j < n; j++)
            send_get(&c, i + j);
        rc_flush(&c);
        for (uint64_t j = 0; j < n; j++) {
            redis_value(v, vsize, seed, i + j, ver[i + j]);
            bad += !recv_value(&c, v, vsize);
            checked++;
        }
    }
    uint64_t t3 = now_ms();
    double ops_s = t2 > t1 ? (double)ops * 1000.0 / (double)(t2 - t1) : 0.0;
    printf("GIANTVM-RESULT mode=redis dist=%s keys=%" PRIu64 " value=%" PRIu64 " ops=%" PRIu64
           " sets=%" PRIu64 " seed=%" PRIu64 " dbsize=%" PRIu64 " checked=%" PRIu64
           " mismatches=%" PRIu64 " verify=%s load_ms=%" PRIu64 " ops_ms=%" PRIu64
           " final_ms=%" PRIu64 " ops_per_s=%.0f elapsed_ms=%" PRIu64 "\n",
           dist_name(dist), keys, vsize, ops, sets, seed, dbsize, checked, bad,
           bad ? "FAIL" : "ok", t1 - t0, t2 - t1, t3 - t2, ops_s, t3 - t0);
    fflush(stdout);
    close(c.fd);
    return bad ? 1 : 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: workload [--mib N] [--seed S] [--threads T] [--passes P]\n"
            "       workload --expect MIB SEED\n"
            "       workload --rand uniform|zipf [--mib N] [--ops K] [--seed S] [--expect HEX]\n"
            "                [--lose-write J]\n"
            "       workload --expect-rand uniform|zipf MIB OPS SEED\n"
            "       workload --redis SOCKET [--dist uniform|zipf] [--keys K] [--value D]\n"
            "                [--ops Q] [--depth P] [--seed S]\n");
    return 2;
}

int main(int argc, char **argv)
{
    uint64_t mib = 64, seed = 1, threads = 1, passes = 1;
    uint64_t inject = UINT64_MAX;

    if (argc >= 2 && strcmp(argv[1], "--expect-rand") == 0) {
        uint64_t ops, sum;
        int d = argc == 6 ? parse_dist(argv[2]) : -1;
        if (d < 0 || parse_u64(argv[3], &mib) || parse_u64(argv[4], &ops) ||
            parse_u64(argv[5], &seed) || mib == 0 || mib > (1u << 20) || ops >= (1ULL << 32))
            return usage();
        if (expect_rand(d, mib, ops, seed, &sum)) {
            fprintf(stderr, "workload: cannot allocate counters for %" PRIu64 " MiB\n", mib);
            return 2;
        }
        printf("%016" PRIx64 "\n", sum);
        return 0;
    }
    if (argc >= 3 && (!strcmp(argv[1], "--rand") || !strcmp(argv[1], "--redis"))) {
        int redis = !strcmp(argv[1], "--redis"), d = redis ? DIST_UNIFORM : parse_dist(argv[2]);
        uint64_t ops = redis ? 100000 : 1000000, expect = 0, keys = 100000, vsize = 1000;
        uint64_t depth = 16, lose = UINT64_MAX;
        int have_expect = 0;
        if (d < 0)
            return usage();
        for (int i = 3; i < argc; i++) {
            uint64_t *dst = NULL;
            if (!strcmp(argv[i], "--mib") && !redis) dst = &mib;
            else if (!strcmp(argv[i], "--seed")) dst = &seed;
            else if (!strcmp(argv[i], "--ops")) dst = &ops;
            else if (!strcmp(argv[i], "--expect") && !redis) dst = &expect, have_expect = 1;
            else if (!strcmp(argv[i], "--lose-write") && !redis) dst = &lose;
            else if (!strcmp(argv[i], "--keys") && redis) dst = &keys;
            else if (!strcmp(argv[i], "--value") && redis) dst = &vsize;
            else if (!strcmp(argv[i], "--depth") && redis) dst = &depth;
            else if (!strcmp(argv[i], "--dist") && redis && i + 1 < argc) {
                if ((d = parse_dist(argv[++i])) < 0)
                    return usage();
                continue;
            }
            if (!dst || i + 1 >= argc)
                return usage();
            if (dst == &expect) {
                char *end;
                errno = 0;
                expect = strtoull(argv[++i], &end, 16);
                if (errno || *end)
                    return usage();
            } else if (parse_u64(argv[++i], dst)) {
                return usage();
            }
        }
        if (redis)
            return keys && vsize && vsize <= (1u << 20) && depth && depth <= 4096
                       ? run_redis(argv[2], d, keys, vsize, ops, seed, depth) : usage();
        return mib && mib <= (1u << 20) && ops < (1ULL << 32)
                   ? run_rand(d, mib, ops, seed, have_expect, expect, lose) : usage();
    }
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
