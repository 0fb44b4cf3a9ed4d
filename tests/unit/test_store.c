/* Unit tests of the memory server's page store (src/memserver/store.c). */
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "log.h"
#include "giantvm_memserver.h"
#include "proto.h"
#include "siphash.h"
#include "store.h"
#include "test.h"
#include "util.h"

#define PG GVM_PAGE_SIZE

static const uint8_t key_a[GVM_KEY_SIZE] = "key-a-0123456789abcdef012345678";
static const uint8_t key_b[GVM_KEY_SIZE] = "key-b-0123456789abcdef012345678";

static uint64_t rng_state = 0x1234567;
static uint64_t rnd(void)
{
	rng_state += 0x9e3779b97f4a7c15ull;
	return gvm_mix64(rng_state);
}

/* Fill count pages; page i is zero when zero_every && i % zero_every == 0. */
static uint8_t *make_pages(unsigned count, unsigned zero_every, unsigned *nonzero)
{
	uint8_t *p = calloc(count, PG);
	unsigned nz = 0;

	for (unsigned i = 0; p && i < count; i++) {
		if (zero_every && i % zero_every == 0)
			continue;
		for (unsigned j = 0; j < PG; j += 8) {
			uint64_t v = rnd();
			memcpy(p + (size_t)i * PG + j, &v, 8);
		}
		nz++;
	}
	if (nonzero)
		*nonzero = nz;
	return p;
}

/* Encode a WRITE payload the way a client does. Caller frees. */
static uint8_t *encode(const uint8_t *pages, unsigned count, size_t *len)
{
	uint8_t *out = calloc(1, gvm_pages_len(count, count));
	uint8_t *d = out + GVM_BITMAP_BYTES(count);

	for (unsigned i = 0; out && i < count; i++) {
		if (gvm_page_is_zero(pages + (size_t)i * PG))
			continue;
		gvm_bitmap_set(out, i);
		memcpy(d, pages + (size_t)i * PG, PG);
		d += PG;
	}
	*len = (size_t)(d - out);
	return out;
}

static int putk(struct gvm_store *st, uint64_t region, const uint8_t *key, uint64_t page,
		unsigned count, const uint8_t *pages)
{
	size_t len;
	uint8_t *pl = encode(pages, count, &len);
	int r = pl ? gvm_store_write(st, region, key, page, count, pl, len) : -ENOMEM;

	free(pl);
	return r;
}

static int put(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count, const uint8_t *pages)
{
	return putk(st, region, key_a, page, count, pages);
}

/* Read back region (id, key) and compare with expected pages. 0 if equal. */
static int get_cmpk(struct gvm_store *st, uint64_t region, const uint8_t *key, uint64_t page,
		    unsigned count, const uint8_t *expect)
{
	uint8_t *buf = malloc(gvm_pages_len(count, count));
	const uint8_t *d;
	ssize_t n;
	int bad = 0;

	if (!buf)
		return -1;
	n = gvm_store_read(st, region, key, page, count, buf);
	if (n < 0) {
		free(buf);
		return -2;
	}
	d = buf + GVM_BITMAP_BYTES(count);
	for (unsigned i = 0; i < count && !bad; i++) {
		const uint8_t *e = expect + (size_t)i * PG;
		if (gvm_bitmap_test(buf, i)) {
			bad = gvm_page_is_zero(e) || memcmp(d, e, PG) != 0;
			d += PG;
		} else {
			bad = !gvm_page_is_zero(e);
		}
	}
	if (!bad && (size_t)n != (size_t)(d - buf))
		bad = 1;
	free(buf);
	return bad;
}

static int get_cmp(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count,
		   const uint8_t *expect)
{
	return get_cmpk(st, region, key_a, page, count, expect);
}

static uint64_t regions(struct gvm_store *st)
{
	struct gvm_store_stats s;
	gvm_store_get_stats(st, &s);
	return s.regions;
}

static uint64_t stored(struct gvm_store *st)
{
	struct gvm_store_stats s;
	gvm_store_get_stats(st, &s);
	return s.pages_stored;
}

static struct gvm_store *ram_store(uint64_t cap_pages)
{
	struct gvm_store_opts o = { .capacity_pages = cap_pages };
	struct gvm_store *st;
	char err[256];

	return gvm_store_open(&st, &o, err, sizeof(err)) == 0 ? st : NULL;
}

static char tmpdir[64];

static const char *tmp_path(const char *name)
{
	static char path[128];

	if (!tmpdir[0]) {
		snprintf(tmpdir, sizeof(tmpdir), "/tmp/gvm-test-store-XXXXXX");
		if (!mkdtemp(tmpdir))
			return NULL;
	}
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

static int test_ram_roundtrip(void)
{
	struct gvm_store *st = ram_store(0);
	unsigned nz;
	uint8_t *pages = make_pages(200, 7, &nz);
	struct gvm_store_stats s;

	CHECK(st && pages);
	CHECK_EQ(put(st, 5, 37, 200, pages), 0);
	CHECK_EQ(get_cmp(st, 5, 37, 200, pages), 0);
	gvm_store_get_stats(st, &s);
	CHECK_EQ(s.pages_stored, nz);
	CHECK_EQ(s.regions, 1);
	CHECK_EQ(s.chunks, 4); /* pages 37..236 touch chunks 0..3 */
	/* Another region with the same page numbers is separate. */
	uint8_t *zero = calloc(200, PG);
	CHECK(zero);
	CHECK_EQ(get_cmp(st, 6, 37, 200, zero), 0);
	/* Region never bound reads as zero too. */
	CHECK_EQ(get_cmp(st, 99, 37, 200, zero), 0);
	/* A full 1024-page write at an unaligned offset (17 chunks). */
	uint8_t *big = make_pages(1024, 0, NULL);
	CHECK(big);
	CHECK_EQ(put(st, 6, 1000, 1024, big), 0);
	CHECK_EQ(get_cmp(st, 6, 1000, 1024, big), 0);
	CHECK_EQ(stored(st), nz + 1024);
	free(big);
	free(zero);
	free(pages);
	gvm_store_close(st);
	return 0;
}

static int test_zero_pages_removed(void)
{
	struct gvm_store *st = ram_store(0);
	uint8_t *pages = make_pages(3, 0, NULL);
	uint8_t pl[8 + PG];
	struct gvm_store_stats s;

	CHECK(st && pages);
	CHECK_EQ(put(st, 1, 63, 3, pages), 0); /* straddles chunks 0 and 1 */
	CHECK_EQ(stored(st), 3);
	/* Clear bit = zero page: forgets page 64 only. */
	memset(pages + PG, 0, PG);
	CHECK_EQ(put(st, 1, 63, 3, pages), 0);
	CHECK_EQ(stored(st), 2);
	CHECK_EQ(get_cmp(st, 1, 63, 3, pages), 0);
	/* A set bit carrying an all-zero page is a zero page as well. */
	memset(pl, 0, sizeof(pl));
	gvm_bitmap_set(pl, 0);
	CHECK_EQ(gvm_store_write(st, 1, key_a, 63, 1, pl, sizeof(pl)), 0);
	CHECK_EQ(stored(st), 1);
	gvm_store_get_stats(st, &s);
	CHECK_EQ(s.chunks, 1); /* chunk 0 is empty and gone */
	memset(pages, 0, 3 * PG);
	CHECK_EQ(put(st, 1, 63, 3, pages), 0);
	gvm_store_get_stats(st, &s);
	CHECK_EQ(s.pages_stored, 0);
	CHECK_EQ(s.chunks, 0);
	CHECK_EQ(get_cmp(st, 1, 63, 3, pages), 0);
	free(pages);
	gvm_store_close(st);
	return 0;
}

static int test_capacity(void)
{
	struct gvm_store *st = ram_store(100);
	uint8_t *a = make_pages(80, 0, NULL), *b = make_pages(30, 0, NULL), *c = make_pages(40, 0, NULL);
	uint8_t bm[GVM_BITMAP_BYTES(1024)];

	CHECK(st && a && b && c);
	CHECK_EQ(put(st, 1, 0, 80, a), 0);
	CHECK_EQ(put(st, 1, 1000, 30, b), -ENOSPC);
	CHECK_EQ(stored(st), 80);
	CHECK_EQ(gvm_store_list(st, 1, key_a, 1000, 30, bm), 0);
	for (unsigned i = 0; i < 30; i++)
		CHECK(!gvm_bitmap_test(bm, i));
	/* Partly overlapping: 20 new pages after 60 overwritten ones still fit. */
	CHECK_EQ(put(st, 1, 60, 40, c), 0);
	CHECK_EQ(stored(st), 100);
	CHECK_EQ(get_cmp(st, 1, 60, 40, c), 0);
	/* Full: overwriting in place is fine, one new page is not. */
	CHECK_EQ(put(st, 1, 0, 40, c), 0);
	CHECK_EQ(put(st, 1, 100, 1, b), -ENOSPC);
	/* Zeroing 30 pages and adding 30 in one WRITE keeps usage flat. */
	uint8_t *mix = calloc(60, PG);
	CHECK(mix);
	memcpy(mix + 30 * (size_t)PG, b, 30 * (size_t)PG);
	CHECK_EQ(put(st, 1, 70, 60, mix), 0);
	CHECK_EQ(stored(st), 100);
	CHECK_EQ(get_cmp(st, 1, 70, 60, mix), 0);
	free(mix);
	free(a);
	free(b);
	free(c);
	gvm_store_close(st);
	return 0;
}

/* A region is (id, key): one id under two keys is two regions, neither of
 * which can see, block, probe or free the other; and a region exists only
 * while it holds pages. */
static int test_keys(void)
{
	struct gvm_store *st = ram_store(0);
	struct gvm_store_opts o = { .max_regions = 4 };
	uint8_t *p = make_pages(2, 0, NULL), *zero = calloc(1, PG);
	char err[256];

	CHECK(st && p && zero);
	CHECK_EQ(put(st, 1, 0, 1, p), 0);
	CHECK_EQ(get_cmpk(st, 1, key_b, 0, 1, zero), 0);
	CHECK_EQ(gvm_store_region_pages(st, 1, key_b), 0);
	CHECK_EQ(gvm_store_region_pages(st, 1, key_a), 1);
	CHECK_EQ(gvm_store_free(st, 1, key_b), 0);         /* another key frees nothing */
	CHECK_EQ(get_cmp(st, 1, 0, 1, p), 0);
	CHECK_EQ(putk(st, 1, key_b, 0, 1, p + PG), 0);
	CHECK_EQ(get_cmp(st, 1, 0, 1, p), 0);
	CHECK_EQ(get_cmpk(st, 1, key_b, 0, 1, p + PG), 0);
	CHECK_EQ(regions(st), 2);
	/* Zeroing the last page ends the region; writing zeros creates none. */
	CHECK_EQ(putk(st, 1, key_b, 0, 1, zero), 0);
	CHECK_EQ(putk(st, 2, key_b, 0, 1, zero), 0);
	CHECK_EQ(regions(st), 1);
	CHECK_EQ(put(st, 0, 0, 1, p), 0);                  /* region 0 is an ordinary id */
	CHECK_EQ(putk(st, UINT64_MAX, key_b, 5, 1, p), 0);
	for (uint64_t r = 100; r < 200; r++)               /* table growth keeps the others */
		CHECK_EQ(putk(st, r, (r & 1) ? key_a : key_b, r, 1, p), 0);
	CHECK_EQ(regions(st), 103);
	for (uint64_t r = 100; r < 200; r++) {
		CHECK_EQ(get_cmpk(st, r, (r & 1) ? key_a : key_b, r, 1, p), 0);
		CHECK_EQ(get_cmpk(st, r, (r & 1) ? key_b : key_a, r, 1, zero), 0);
	}
	CHECK_EQ(get_cmp(st, 1, 0, 1, p), 0);
	for (uint64_t r = 100; r < 200; r++)
		CHECK_EQ(gvm_store_free(st, r, (r & 1) ? key_a : key_b), 0);
	CHECK_EQ(regions(st), 3);
	gvm_store_close(st);

	/* The region limit refuses a new region, and nothing else. */
	CHECK_EQ(gvm_store_open(&st, &o, err, sizeof(err)), 0);
	for (uint64_t r = 0; r < 4; r++)
		CHECK_EQ(put(st, r, 0, 1, p), 0);
	CHECK_EQ(put(st, 4, 0, 1, p), -ENOSPC);
	CHECK_EQ(putk(st, 0, key_b, 0, 1, p), -ENOSPC);
	CHECK_EQ(put(st, 3, 1, 1, p), 0);                  /* an existing region grows */
	CHECK_EQ(stored(st), 5);
	CHECK_EQ(gvm_store_free(st, 2, key_a), 0);
	CHECK_EQ(put(st, 4, 0, 1, p), 0);
	CHECK_EQ(regions(st), 4);
	gvm_store_close(st);
	free(p);
	free(zero);
	return 0;
}

/* Quotas per owner: regions created and pages in them, whoever writes later. */
static int test_owner_quotas(void)
{
	struct gvm_store_opts o = { .max_owner_regions = 3, .max_owner_pages = 5 };
	uint8_t *p = make_pages(4, 0, NULL);
	struct gvm_store *st;
	char err[256];

	CHECK(p);
	CHECK_EQ(gvm_store_open(&st, &o, err, sizeof(err)), 0);
	gvm_store_set_owner(st, 7);
	for (uint64_t r = 1; r <= 3; r++)
		CHECK_EQ(put(st, r, 0, 1, p), 0);
	CHECK_EQ(put(st, 4, 0, 1, p), -ENOSPC);           /* a fourth region */
	CHECK_EQ(put(st, 1, 1, 2, p), 0);                 /* 5 pages */
	CHECK_EQ(put(st, 2, 1, 1, p), -ENOSPC);           /* a sixth page */
	gvm_store_set_owner(st, 8);                       /* another owner writing owner 7's region */
	CHECK_EQ(put(st, 2, 1, 1, p), -ENOSPC);
	CHECK_EQ(put(st, 4, 0, 4, p), 0);                 /* its own region, its own quota */
	gvm_store_set_owner(st, 0);                       /* nobody: no quota */
	CHECK_EQ(put(st, 5, 0, 4, p), 0);
	CHECK_EQ(put(st, 6, 0, 4, p), 0);
	gvm_store_set_owner(st, 7);
	CHECK_EQ(gvm_store_free(st, 3, key_a), 0);        /* gives a region and a page back */
	CHECK_EQ(put(st, 9, 0, 1, p), 0);
	CHECK_EQ(put(st, 10, 0, 1, p), -ENOSPC);
	CHECK_EQ(regions(st), 6);
	gvm_store_close(st);
	free(p);
	return 0;
}

static int test_free(void)
{
	struct gvm_store *st = ram_store(0);
	uint8_t *p = make_pages(300, 5, NULL);
	uint8_t *zero = calloc(300, PG);

	CHECK(st && p && zero);
	CHECK_EQ(put(st, 1, 0, 300, p), 0);
	CHECK_EQ(put(st, 2, 0, 300, p), 0);
	for (uint64_t pg = 10000; pg < 20000; pg += 640) /* scatter many chunks */
		CHECK_EQ(put(st, 1, pg, 3, p + PG), 0);
	uint64_t before2 = stored(st);
	CHECK_EQ(gvm_store_free(st, 1, key_a), 0);
	CHECK_EQ(get_cmp(st, 1, 0, 300, zero), 0);
	CHECK_EQ(get_cmp(st, 2, 0, 300, p), 0);
	CHECK_EQ(stored(st), 240);
	CHECK(before2 > 240);
	CHECK_EQ(gvm_store_free(st, 1, key_a), 0);      /* freeing twice is harmless */
	CHECK_EQ(gvm_store_free(st, 12345, key_a), 0);  /* unknown region too */
	CHECK_EQ(regions(st), 1);                /* the region is gone with its pages */
	CHECK_EQ(put(st, 1, 0, 300, p), 0);
	CHECK_EQ(get_cmp(st, 1, 0, 300, p), 0);
	free(p);
	free(zero);
	gvm_store_close(st);
	return 0;
}

/* --prealloc: blocks are kept populated and reused without being cleared;
 * what a freed or zeroed page held must never be read back, by its own
 * region or by another one that gets the block. */
static int prealloc_reuse(void)
{
	struct gvm_store_opts o = { .capacity_pages = 1024, .prealloc = 1 };
	struct gvm_store *st = NULL;
	uint8_t *p = make_pages(64, 0, NULL), *q, *zero = calloc(64, PG);
	char err[256];

	CHECK(p && zero);
	q = malloc(64 * PG);
	CHECK(q);
	memcpy(q, p, 64 * PG);
	CHECK_EQ(gvm_store_open(&st, &o, err, sizeof(err)), 0);
	/* One full chunk, then every other page of it written as zero. */
	CHECK_EQ(put(st, 1, 0, 64, p), 0);
	for (unsigned i = 0; i < 64; i += 2)
		memset(q + (size_t)i * PG, 0, PG);
	CHECK_EQ(put(st, 1, 0, 64, q), 0);
	CHECK_EQ(get_cmp(st, 1, 0, 64, q), 0);
	CHECK_EQ(stored(st), 32);
	/* Region 1 freed: region 2 gets the same block and writes 1 page. */
	CHECK_EQ(gvm_store_free(st, 1, key_a), 0);
	CHECK_EQ(get_cmp(st, 1, 0, 64, zero), 0);
	memset(q, 0, 64 * PG);
	memcpy(q + 5 * PG, p + 9 * PG, PG);
	CHECK_EQ(put(st, 2, 0, 64, q), 0);
	CHECK_EQ(get_cmp(st, 2, 0, 64, q), 0); /* 63 zero pages, not region 1's data */
	CHECK_EQ(stored(st), 1);
	gvm_store_close(st);
	/* The capacity is still enforced. */
	CHECK_EQ(gvm_store_open(&st, &o, err, sizeof(err)), 0);
	for (uint64_t c = 0; c < 16; c++)
		CHECK_EQ(put(st, 1, c * 64, 64, p), 0);
	CHECK_EQ(put(st, 1, 16 * 64, 1, p), -ENOSPC);
	gvm_store_close(st);
	free(p);
	free(q);
	free(zero);
	return 0;
}

/* Both ways of populating: MADV_POPULATE_WRITE (5.14+) and touching. */
static int test_prealloc_reuse(void)
{
	int r;

	unsetenv("GIANTVM_NO_POPULATE");
	if ((r = prealloc_reuse()))
		return r;
	setenv("GIANTVM_NO_POPULATE", "1", 1);
	r = prealloc_reuse();
	unsetenv("GIANTVM_NO_POPULATE");
	return r;
}

static int test_list(void)
{
	struct gvm_store *st = ram_store(0);
	uint8_t page[PG];
	static uint8_t bm[GVM_BITMAP_BYTES(1u << 20)];
	uint64_t marks[] = { 0, 1, 63, 64, 65, 127, 128, 1000, 4095, 70000, (1u << 20) - 1 };

	CHECK(st);
	memset(page, 0xab, sizeof(page));
	for (unsigned i = 0; i < GVM_ARRAY_SIZE(marks); i++) {
		size_t len;
		uint8_t *pl = encode(page, 1, &len);
		CHECK(pl);
		CHECK_EQ(gvm_store_write(st, 9, key_a, marks[i], 1, pl, len), 0);
		free(pl);
	}
	CHECK_EQ(gvm_store_list(st, 9, key_a, 0, 1u << 20, bm), 0);
	unsigned set = 0;
	for (uint32_t i = 0; i < (1u << 20); i++)
		set += (unsigned)gvm_bitmap_test(bm, i);
	CHECK_EQ(set, GVM_ARRAY_SIZE(marks));
	for (unsigned i = 0; i < GVM_ARRAY_SIZE(marks); i++)
		CHECK(gvm_bitmap_test(bm, (unsigned)marks[i]));
	/* Unaligned window 60..139: bits for 63, 64, 65, 127, 128. */
	CHECK_EQ(gvm_store_list(st, 9, key_a, 60, 80, bm), 0);
	for (unsigned i = 0; i < 80; i++) {
		unsigned p = 60 + i;
		int want = p == 63 || p == 64 || p == 65 || p == 127 || p == 128;
		CHECK_EQ(gvm_bitmap_test(bm, i), want);
	}
	for (unsigned i = 80; i < 128; i++) /* nothing past count */
		CHECK(!gvm_bitmap_test(bm, i));
	CHECK_EQ(gvm_store_list(st, 9, key_a, 0, (1u << 20) + 1, bm), -EINVAL);
	CHECK_EQ(gvm_store_list(st, 9, key_a, 0, 0, bm), -EINVAL);
	CHECK_EQ(gvm_store_list(st, 9, key_a, (1ull << 52) - 1, 2, bm), -EINVAL);
	gvm_store_close(st);
	return 0;
}

static int test_invalid_writes(void)
{
	struct gvm_store *st = ram_store(0);
	uint8_t pl[8 + 2 * PG];

	CHECK(st);
	memset(pl, 0x11, sizeof(pl));
	memset(pl, 0, 8);
	gvm_bitmap_set(pl, 0);
	gvm_bitmap_set(pl, 5); /* beyond count 3 */
	CHECK_EQ(gvm_store_write(st, 1, key_a, 0, 3, pl, sizeof(pl)), -EINVAL);
	pl[0] = 1;             /* one page announced, two sent */
	CHECK_EQ(gvm_store_write(st, 1, key_a, 0, 3, pl, sizeof(pl)), -EINVAL);
	CHECK_EQ(gvm_store_write(st, 1, key_a, 0, 0, pl, 8), -EINVAL);
	CHECK_EQ(gvm_store_write(st, 1, key_a, 0, GVM_MAX_PAGES + 1, pl, sizeof(pl)), -EINVAL);
	CHECK_EQ(gvm_store_write(st, 1, key_a, (1ull << 52) - 1, 2, pl, 8 + PG), -EINVAL);
	CHECK_EQ(stored(st), 0);
	/* The last valid page works. */
	CHECK_EQ(gvm_store_write(st, 1, key_a, (1ull << 52) - 1, 1, pl, 8 + PG), 0);
	CHECK_EQ(stored(st), 1);
	gvm_store_close(st);
	return 0;
}

/* Random churn against a reference model: exercises growth and deletion. */
static int test_index_churn(void)
{
	enum { N = 6000 };
	struct gvm_store *st = ram_store(0);
	static uint64_t reg[N], idx[N];
	static uint8_t live[N];
	uint8_t page[PG], pl[8 + PG], bm[8];
	struct gvm_store_stats s;

	CHECK(st);
	memset(page, 0x5a, sizeof(page));
	memset(pl, 0, 8);
	gvm_bitmap_set(pl, 0);
	memcpy(pl + 8, page, PG);
	for (unsigned i = 0; i < N; i++) {
		reg[i] = rnd() % 8;
		idx[i] = (uint64_t)i * 64 + rnd() % 64; /* distinct chunks */
		CHECK_EQ(gvm_store_write(st, reg[i], key_a, idx[i], 1, pl, sizeof(pl)), 0);
		live[i] = 1;
	}
	for (unsigned round = 0; round < 3; round++) {
		for (unsigned i = 0; i < N; i++) {
			if (rnd() % 2 == 0)
				continue;
			memset(bm, 0, 8);
			if (live[i])
				CHECK_EQ(gvm_store_write(st, reg[i], key_a, idx[i], 1, bm, 8), 0);
			else
				CHECK_EQ(gvm_store_write(st, reg[i], key_a, idx[i], 1, pl, sizeof(pl)), 0);
			live[i] = !live[i];
		}
		unsigned n_live = 0;
		for (unsigned i = 0; i < N; i++) {
			CHECK_EQ(gvm_store_list(st, reg[i], key_a, idx[i], 1, bm), 0);
			CHECK_EQ(bm[0] & 1, live[i]);
			n_live += live[i];
		}
		gvm_store_get_stats(st, &s);
		CHECK_EQ(s.pages_stored, n_live);
		CHECK_EQ(s.chunks, n_live);
	}
	CHECK_EQ(gvm_store_free(st, 3, key_a), 0);
	for (unsigned i = 0; i < N; i++) {
		CHECK_EQ(gvm_store_list(st, reg[i], key_a, idx[i], 1, bm), 0);
		CHECK_EQ(bm[0] & 1, reg[i] == 3 ? 0 : live[i]);
	}
	gvm_store_close(st);
	return 0;
}

static int open_backing(struct gvm_store **st, const char *path, int fsync_mode, char *err, size_t errlen)
{
	struct gvm_store_opts o = { .backing = path, .fsync_mode = fsync_mode };
	return gvm_store_open(st, &o, err, errlen);
}

static int test_backing_roundtrip(void)
{
	const char *path = tmp_path("roundtrip.store");
	struct gvm_store *st;
	struct gvm_store_stats s;
	char err[512];
	unsigned nz;
	uint8_t *p = make_pages(300, 4, &nz), *q = make_pages(64, 0, NULL);
	uint8_t *zero = calloc(300, PG);

	CHECK(path && p && q && zero);
	unlink(path);
	for (int mode = GVM_FSYNC_NONE; mode <= GVM_FSYNC_ALWAYS; mode++) {
		CHECK_EQ(open_backing(&st, path, mode, err, sizeof(err)), 0);
		if (mode == GVM_FSYNC_NONE) {
			CHECK_EQ(put(st, 7, 10, 300, p), 0);
			CHECK_EQ(put(st, 8, 1ull << 40, 64, q), 0);
			CHECK_EQ(get_cmp(st, 7, 10, 300, p), 0);
		} else {
			/* Reopened: everything is back; now change things with fsync on. */
			CHECK_EQ(get_cmp(st, 7, 10, 300, p), 0);
			CHECK_EQ(get_cmp(st, 8, 1ull << 40, 64, q), 0);
			CHECK_EQ(gvm_store_free(st, 8, key_a), 0);
			CHECK_EQ(put(st, 7, 10, 100, zero), 0);
			memset(p, 0, 100 * (size_t)PG);
		}
		gvm_store_close(st);
	}
	CHECK_EQ(open_backing(&st, path, GVM_FSYNC_NONE, err, sizeof(err)), 0);
	CHECK_EQ(get_cmp(st, 7, 10, 300, p), 0);
	CHECK_EQ(get_cmp(st, 8, 1ull << 40, 64, zero), 0);
	gvm_store_get_stats(st, &s);
	CHECK_EQ(s.regions, 1); /* 8 was freed, 9 never held a page */
	unsigned want = 0;
	for (unsigned i = 0; i < 300; i++)
		want += !gvm_page_is_zero(p + (size_t)i * PG);
	CHECK_EQ(s.pages_stored, want);
	CHECK_EQ(get_cmpk(st, 7, key_b, 10, 300, zero), 0); /* the key is part of the name */
	/* Freed slots are reused: region 8's chunk slot goes to region 9. */
	CHECK_EQ(put(st, 9, 0, 64, q), 0);
	gvm_store_close(st);
	CHECK_EQ(open_backing(&st, path, GVM_FSYNC_NONE, err, sizeof(err)), 0);
	CHECK_EQ(get_cmp(st, 9, 0, 64, q), 0);
	CHECK_EQ(get_cmp(st, 8, 1ull << 40, 64, zero), 0);
	CHECK_EQ(get_cmp(st, 7, 10, 300, p), 0);
	gvm_store_close(st);
	unlink(path);
	free(p);
	free(q);
	free(zero);
	return 0;
}

static int test_backing_locked(void)
{
	const char *p = tmp_path("locked.store");
	char path[128], err[512];
	struct gvm_store *a, *b;

	CHECK(p);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	CHECK_EQ(open_backing(&a, path, 0, err, sizeof(err)), 0);
	CHECK_EQ(open_backing(&b, path, 0, err, sizeof(err)), -EBUSY);
	CHECK(strstr(err, path) != NULL);
	gvm_store_close(a);
	CHECK_EQ(open_backing(&b, path, 0, err, sizeof(err)), 0);
	gvm_store_close(b);
	unlink(path);
	return 0;
}

static int patch_file(const char *path, uint64_t off, const void *bytes, size_t n)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0)
		return -1;
	ssize_t w = pwrite(fd, bytes, n, (off_t)off);
	close(fd);
	return w == (ssize_t)n ? 0 : -1;
}

/* A slot header as the store writes it (format 1 or 2). */
static void slot_hdr(uint8_t h[GVM_STORE_SLOT_HDR_SIZE], uint64_t magic, uint64_t region,
		     uint64_t index, uint64_t bitmap, const uint8_t *key, uint64_t off)
{
	memset(h, 0, GVM_STORE_SLOT_HDR_SIZE);
	for (int i = 0; i < 8; i++) {
		h[i] = (uint8_t)(magic >> (8 * i));
		h[8 + i] = (uint8_t)(region >> (8 * i));
		h[16 + i] = (uint8_t)(index >> (8 * i));
		h[24 + i] = (uint8_t)(bitmap >> (8 * i));
	}
	if (key)
		memcpy(h + 32, key, GVM_KEY_SIZE);
	uint64_t sum = gvm_hash_bytes(h, 64, off);
	for (int i = 0; i < 8; i++)
		h[64 + i] = (uint8_t)(sum >> (8 * i));
}

static uint64_t slot_at(uint64_t n)
{
	return GVM_STORE_HDR_BYTES + n * GVM_STORE_SLOT_BYTES;
}

/* The region id slot n's header names on disk, 0 for a free slot, -1 on error. */
static int64_t slot_region(const char *path, uint64_t n)
{
	uint8_t h[GVM_STORE_SLOT_HDR_SIZE];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got = fd < 0 ? -1 : pread(fd, h, sizeof(h), (off_t)slot_at(n));
	uint64_t magic = 0, region = 0;

	if (fd >= 0)
		close(fd);
	if (got != (ssize_t)sizeof(h))
		return -1;
	for (int i = 7; i >= 0; i--) {
		magic = (magic << 8) | h[i];
		region = (region << 8) | h[8 + i];
	}
	return magic == GVM_STORE_CHUNK_MAGIC ? (int64_t)region : magic ? -1 : 0;
}

/*
 * With --fsync never, a slot a FREE gave up is not given to another region
 * before an fdatasync has made its zeroed header durable: else a power loss
 * could leave the freed region's header over the new region's pages, for
 * the old key's holder to read. Freed slots are reused after one
 * fdatasync per batch, so the file stays small; with --fsync always at once
 * (every FREE is synced before its ack).
 */
static int test_backing_slot_reuse(void)
{
	const char *p = tmp_path("reuse.store");
	uint8_t *q = make_pages(64, 0, NULL);
	char path[128], err[512];
	struct gvm_store *st;
	struct stat sb;

	CHECK(p && q);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	CHECK_EQ(open_backing(&st, path, GVM_FSYNC_NONE, err, sizeof(err)), 0);
	CHECK_EQ(put(st, 1, 0, 64, q), 0);
	CHECK_EQ(slot_region(path, 0), 1);
	CHECK_EQ(gvm_store_free(st, 1, key_a), 0);
	CHECK_EQ(put(st, 2, 0, 64, q), 0);
	CHECK_EQ(slot_region(path, 0), 0);  /* region 1's slot, freed but not synced: left alone */
	CHECK_EQ(slot_region(path, 1), 2);
	for (uint64_t r = 3; r < 300; r++) {
		CHECK_EQ(put(st, r, 0, 64, q), 0);
		CHECK_EQ(gvm_store_free(st, r, key_a), 0);
	}
	CHECK_EQ(stat(path, &sb), 0);
	fprintf(stderr, "  297 regions created and freed: the file spans %" PRIu64 " slots\n",
		((uint64_t)sb.st_size - GVM_STORE_HDR_BYTES) / GVM_STORE_SLOT_BYTES + 1);
	CHECK((uint64_t)sb.st_size <= slot_at(70));
	CHECK_EQ(get_cmp(st, 2, 0, 64, q), 0);
	gvm_store_close(st);

	CHECK_EQ(open_backing(&st, path, GVM_FSYNC_ALWAYS, err, sizeof(err)), 0);
	CHECK_EQ(get_cmp(st, 2, 0, 64, q), 0);
	CHECK_EQ(gvm_store_free(st, 2, key_a), 0);
	CHECK_EQ(put(st, 400, 0, 64, q), 0);
	CHECK_EQ(put(st, 401, 0, 64, q), 0);
	/* Region 2's slot (1) went to the next region at once. */
	CHECK(slot_region(path, 1) == 400 || slot_region(path, 1) == 401);
	gvm_store_close(st);
	unlink(path);
	free(q);
	return 0;
}

/*
 * The fdatasync that lets freed slots be reused runs in the event loop and
 * writes back all the file's dirty pages, stalling every client: it waits
 * for an eighth of the file's slots (at least 64) to be freed. With 1024
 * slots in use, 100 freed are left alone (a new chunk takes a fresh slot);
 * with 128 the next new chunk syncs and reuses one. (It synced once 64 were
 * freed, whatever the file's size.)
 */
static int test_backing_sync_rare(void)
{
	enum { N = 1024 };
	const char *p = tmp_path("sync-rare.store");
	uint8_t *q = make_pages(1, 0, NULL);
	char path[128], err[512];
	struct gvm_store *st;
	struct stat sb;
	unsigned reused = 0;

	CHECK(p && q);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	CHECK_EQ(open_backing(&st, path, GVM_FSYNC_NONE, err, sizeof(err)), 0);
	for (uint64_t r = 1; r <= N; r++)
		CHECK_EQ(put(st, r, 0, 1, q), 0);
	for (uint64_t r = 1; r <= 100; r++)
		CHECK_EQ(gvm_store_free(st, r, key_a), 0);
	CHECK_EQ(put(st, 2000, 0, 1, q), 0);
	CHECK_EQ(slot_region(path, N), 2000);  /* a fresh slot */
	for (uint64_t r = 101; r <= 128; r++)
		CHECK_EQ(gvm_store_free(st, r, key_a), 0);
	CHECK_EQ(put(st, 2001, 0, 1, q), 0);
	for (uint64_t n = 0; n < 128; n++)
		reused += slot_region(path, n) == 2001;
	CHECK_EQ(reused, 1);
	CHECK_EQ(stat(path, &sb), 0);
	CHECK((uint64_t)sb.st_size <= slot_at(N + 1));
	CHECK_EQ(get_cmp(st, 2000, 0, 1, q), 0);
	CHECK_EQ(get_cmp(st, 2001, 0, 1, q), 0);
	gvm_store_close(st);
	unlink(path);
	free(q);
	return 0;
}

/*
 * After a failed fdatasync the cleared headers of the freed slots waiting
 * for it are written again before the next sync: Linux reports a
 * write-back error once, may drop the pages it could not write, and the
 * next sync succeeds without them, so a slot could be reused with its old
 * header (the freed region's key) never cleared on disk. Emulated: the
 * first sync fails (test_fail_syncs), and the freed slots' old headers are
 * put back in the file, as the disk would still hold them; after the next
 * sync none is left. (They were, and the slots were given out.)
 */
static int test_backing_sync_error(void)
{
	enum { N = 64 };
	const char *p = tmp_path("sync-error.store");
	struct gvm_store_opts o = { .fsync_mode = GVM_FSYNC_NONE, .test_fail_syncs = 1 };
	static uint8_t old[N][GVM_STORE_SLOT_HDR_SIZE];
	uint8_t *q = make_pages(1, 0, NULL);
	char path[128], err[512];
	struct gvm_store *st;
	unsigned stale = 0, reused = 0;
	int fd;

	CHECK(p && q);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	o.backing = path;
	CHECK_EQ(gvm_store_open(&st, &o, err, sizeof(err)), 0);
	for (uint64_t r = 1; r <= N; r++)
		CHECK_EQ(put(st, r, 0, 1, q), 0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	for (uint64_t n = 0; n < N; n++)
		CHECK_EQ(pread(fd, old[n], sizeof(old[n]), (off_t)slot_at(n)), (ssize_t)sizeof(old[n]));
	close(fd);
	for (uint64_t r = 1; r <= N; r++)
		CHECK_EQ(gvm_store_free(st, r, key_a), 0);
	CHECK_EQ(put(st, 100, 0, 1, q), 0);  /* the sync fails: a fresh slot */
	CHECK_EQ(slot_region(path, N), 100);
	for (uint64_t n = 0; n < N; n++)
		CHECK_EQ(patch_file(path, slot_at(n), old[n], sizeof(old[n])), 0);
	CHECK_EQ(slot_region(path, 0), 1);
	CHECK_EQ(put(st, 101, 0, 1, q), 0);  /* the next one succeeds: a freed slot is reused */
	for (uint64_t n = 0; n < N; n++) {
		int64_t r = slot_region(path, n);
		reused += r == 101;
		stale += r != 0 && r != 101;
	}
	fprintf(stderr, "  after a failed sync: %u of %u freed slots' old headers left, %u reused\n",
		stale, N, reused);
	CHECK_EQ(stale, 0);
	CHECK_EQ(reused, 1);
	CHECK_EQ(get_cmp(st, 100, 0, 1, q), 0);
	CHECK_EQ(get_cmp(st, 101, 0, 1, q), 0);
	gvm_store_close(st);
	unlink(path);
	free(q);
	return 0;
}

static int test_backing_corrupt(void)
{
	const char *p = tmp_path("corrupt.store");
	char path[128], err[512], want[64];
	struct gvm_store *st;
	uint8_t *pages = make_pages(2, 0, NULL);
	uint8_t junk = 0x77, zhdr[GVM_STORE_SLOT_HDR_SIZE] = { 0 }, h[GVM_STORE_SLOT_HDR_SIZE];

	CHECK(p && pages);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0);
	CHECK_EQ(put(st, 1, 0, 2, pages), 0);          /* slot 0: chunk 0 */
	gvm_store_close(st);

	uint64_t slot0 = slot_at(0);
	/* A flipped bit in the chunk's region field breaks its checksum. */
	CHECK_EQ(patch_file(path, slot0 + 9, &junk, 1), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "offset %llu", (unsigned long long)slot0);
	CHECK(strstr(err, path) != NULL);
	CHECK(strstr(err, want) != NULL);
	CHECK(strstr(err, "checksum") != NULL);
	/* So does one in the key. */
	CHECK_EQ(patch_file(path, slot0 + 9, &(uint8_t){ 0 }, 1), 0);
	CHECK_EQ(patch_file(path, slot0 + 40, &junk, 1), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "checksum") != NULL);
	CHECK_EQ(patch_file(path, slot0 + 40, &key_a[8], 1), 0);

	/* Garbage magic in slot 1 (past the end of the data so far). */
	uint64_t slot1 = slot_at(1);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0); /* repaired */
	CHECK_EQ(get_cmp(st, 1, 0, 2, pages), 0);
	gvm_store_close(st);
	uint8_t garbage[GVM_STORE_SLOT_HDR_SIZE];
	memset(garbage, 0x01, sizeof(garbage));
	memcpy(garbage, "GARBAGE!", 8);
	CHECK_EQ(patch_file(path, slot1, garbage, sizeof(garbage)), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "offset %llu", (unsigned long long)slot1);
	CHECK(strstr(err, want) != NULL);
	CHECK(strstr(err, "magic") != NULL);
	/* Format 2 has no key records: one is corruption. */
	slot_hdr(h, GVM_STORE_KEY_MAGIC, 1, 0, 0, key_a, slot1);
	CHECK_EQ(patch_file(path, slot1, h, sizeof(h)), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "magic") != NULL);
	/* Two headers for one chunk of one region. */
	slot_hdr(h, GVM_STORE_CHUNK_MAGIC, 1, 0, 1, key_a, slot1);
	CHECK_EQ(patch_file(path, slot1, h, sizeof(h)), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "already stored") != NULL);
	/* ... but the same chunk of (1, key_b) is another region's. */
	slot_hdr(h, GVM_STORE_CHUNK_MAGIC, 1, 0, 1, key_b, slot1);
	CHECK_EQ(patch_file(path, slot1, h, sizeof(h)), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0);
	CHECK_EQ(regions(st), 2);
	gvm_store_close(st);
	CHECK_EQ(patch_file(path, slot1, zhdr, sizeof(zhdr)), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0);
	gvm_store_close(st);

	/* Not a store at all. */
	CHECK_EQ(patch_file(path, 0, "NOTASTORE", 9), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "not a giantvm backing file") != NULL);
	CHECK(strstr(err, "offset 0") != NULL);

	/* A tiny file. */
	CHECK_EQ(truncate(path, 5), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, path) != NULL);
	unlink(path);

	/* The file ends inside a slot header. */
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0);
	CHECK_EQ(put(st, 1, 0, 2, pages), 0);
	gvm_store_close(st);
	CHECK_EQ(truncate(path, GVM_STORE_HDR_BYTES + 20), 0);
	CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "truncated") != NULL);
	unlink(path);
	free(pages);
	return 0;
}

/* A format 1 file (keys in records of their own) is read and upgraded in place. */
static int test_backing_v1_upgrade(void)
{
	const char *p = tmp_path("v1.store");
	char path[128], err[512];
	uint8_t fh[32], h[GVM_STORE_SLOT_HDR_SIZE], *pages = make_pages(3, 0, NULL);
	struct gvm_store *st;

	CHECK(p && pages);
	snprintf(path, sizeof(path), "%s", p);
	unlink(path);
	memset(fh, 0, sizeof(fh));
	memcpy(fh, "GVMSTORE", 8);
	fh[8] = 1;                       /* version 1 */
	fh[13] = 0x10;                   /* page size 4096 */
	fh[16] = 64;                     /* pages per chunk */
	fh[21] = 0x10;                   /* slot header bytes 4096 */
	uint64_t sum = gvm_hash_bytes(fh, 24, 0);
	for (int i = 0; i < 8; i++)
		fh[24 + i] = (uint8_t)(sum >> (8 * i));
	int cfd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	CHECK(cfd >= 0);
	close(cfd);
	CHECK_EQ(patch_file(path, 0, fh, sizeof(fh)), 0);
	slot_hdr(h, GVM_STORE_KEY_MAGIC, 7, 0, 0, key_b, slot_at(0));       /* region 7's key */
	CHECK_EQ(patch_file(path, slot_at(0), h, sizeof(h)), 0);
	slot_hdr(h, GVM_STORE_CHUNK_MAGIC, 7, 2, 0x5, NULL, slot_at(1));   /* pages 128, 130 */
	CHECK_EQ(patch_file(path, slot_at(1), h, sizeof(h)), 0);
	CHECK_EQ(patch_file(path, slot_at(1) + GVM_STORE_HDR_BYTES, pages, PG), 0);
	CHECK_EQ(patch_file(path, slot_at(1) + GVM_STORE_HDR_BYTES + 2 * PG, pages + 2 * PG, PG), 0);
	memset(pages + PG, 0, PG);
	for (int round = 0; round < 2; round++) {
		CHECK_EQ(open_backing(&st, path, 0, err, sizeof(err)), 0);
		CHECK_EQ(get_cmpk(st, 7, key_b, 128, 3, pages), 0);
		CHECK_EQ(regions(st), 1);
		CHECK_EQ(stored(st), 2);
		gvm_store_close(st);
		/* Upgraded: version 2, the key record slot is free. */
		int fd = open(path, O_RDONLY);
		CHECK(fd >= 0);
		CHECK_EQ(pread(fd, fh, sizeof(fh), 0), (ssize_t)sizeof(fh));
		CHECK_EQ(pread(fd, h, sizeof(h), (off_t)slot_at(0)), (ssize_t)sizeof(h));
		close(fd);
		CHECK_EQ(fh[8], GVM_STORE_VERSION);
		for (unsigned i = 0; i < sizeof(h); i++)
			CHECK_EQ(h[i], 0);
	}
	unlink(path);
	free(pages);
	return 0;
}

/* SipHash-2-4 with 8 bytes out from OpenSSL, as a reference. 0 or -1. */
static int ref_siphash(const uint8_t key[16], const uint8_t *msg, size_t len, uint64_t *out)
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
	EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
	size_t size = 8, outl = 0;
	OSSL_PARAM params[] = { OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size), OSSL_PARAM_construct_end() };
	uint8_t h[8];
	int r = -1;

	if (ctx && EVP_MAC_init(ctx, key, 16, params) && EVP_MAC_update(ctx, msg, len) &&
	    EVP_MAC_final(ctx, h, &outl, sizeof(h)) && outl == 8) {
		*out = 0;
		for (int i = 7; i >= 0; i--)
			*out = (*out << 8) | h[i];
		r = 0;
	}
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	return r;
}

/*
 * The tables' keyed hash is SipHash-2-4: the paper's vectors (key 00..0f,
 * message 00..0e, and the empty message), then 2,000 random keys and
 * messages of 0 to 80 bytes against OpenSSL's SipHash.
 */
static int test_siphash(void)
{
	struct gvm_sipkey k;
	uint8_t key[16], msg[80];
	uint64_t want;

	for (unsigned i = 0; i < 16; i++)
		key[i] = (uint8_t)i;
	for (unsigned i = 0; i < sizeof(msg); i++)
		msg[i] = (uint8_t)i;
	gvm_sipkey_set(&k, key);
	CHECK_EQ(gvm_siphash24(&k, msg, 15), (long long)0xa129ca6149be45e5ull);
	CHECK_EQ(gvm_siphash24(&k, msg, 0), (long long)0x726fdb47dd0e0e31ull);
	if (ref_siphash(key, msg, 15, &want) < 0)
		SKIP("OpenSSL has no SIPHASH MAC to compare with");
	CHECK_EQ(want, (long long)0xa129ca6149be45e5ull);
	for (unsigned n = 0; n < 2000; n++) {
		size_t len = n % (sizeof(msg) + 1);
		for (unsigned i = 0; i < 16; i += 8) {
			uint64_t v = rnd();
			memcpy(key + i, &v, 8);
		}
		for (unsigned i = 0; i < sizeof(msg); i += 8) {
			uint64_t v = rnd();
			memcpy(msg + i, &v, 8);
		}
		gvm_sipkey_set(&k, key);
		CHECK_EQ(ref_siphash(key, msg, len, &want), 0);
		CHECK_EQ(gvm_siphash24(&k, msg, len), (long long)want);
	}
	return 0;
}

/*
 * Short vectors d of the lattice {d : sum d_i P^(32-i) = 0 mod 2^64}, P the
 * FNV-1a 64 prime (reduced with LLL, entries within +-3). A 32-byte key
 * whose byte i moves the FNV state by d_i (state ^ byte = state + d_i)
 * hashes like the zero key: the region hash was once FNV-1a of the key
 * mixed with the seed, so such keys shared a table slot whatever the seed.
 */
static const int8_t fnv_kernel[10][32] = {
	{ -2, -1, 2, 0, -1, 1, -1, 1, 2, 2, 2, -1, -1, -1, -1, 0, -2, 1, 2, 0, 2, -1, 0, 1, -2, 2, 0, 0, 1, 1, 0, 0 },
	{ -2, 2, 1, 2, 0, 1, -2, 0, -1, -1, -1, 0, -1, -1, -1, -1, 0, -1, 0, 1, 2, -1, -1, -1, -1, -2, 2, 2, 0, -2, 0, 1 },
	{ 2, 1, 0, -1, 1, 0, 2, 0, 0, 1, 2, 2, 0, 1, 1, -2, -1, 0, 2, 0, -1, -1, 2, 0, 2, -1, 0, 1, -2, -2, 1, 0 },
	{ -1, 0, -2, 1, -1, -1, 0, -2, 0, -1, -2, 3, 2, 0, -1, 1, 0, -2, 0, -2, 1, -1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0 },
	{ -1, -1, 1, -1, -3, 1, -1, 1, 2, 1, 0, -2, 1, 1, 1, -1, 2, 2, 0, -1, 2, 1, 0, 1, -1, 2, 0, 0, 1, 0, 0, 0 },
	{ 1, 0, 2, -1, 1, 0, 2, 1, 1, -2, 2, 3, -1, -1, -1, -1, 1, 1, -1, 1, -1, -2, 3, -1, -2, 1, 0, -1, -1, 0, 0, 0 },
	{ -3, -1, 1, 2, -2, 2, -2, 1, -2, 0, 0, -2, 1, 0, -1, 1, -2, 2, 0, 1, 2, 3, -1, 2, -1, 1, 0, 2, 0, 0, 0, 0 },
	{ -1, 1, 0, -1, 0, 2, 1, -1, 1, 3, -1, -2, -1, 0, 2, -2, 2, 1, -2, 2, 0, 1, 1, 1, 2, 0, 2, -1, 1, -1, 0, 0 },
	{ 1, 0, 1, 0, -2, 0, -1, 0, 0, 0, -3, 1, 0, 1, 0, 2, 1, -1, -1, -2, 0, 1, -1, 0, 0, 1, -2, 0, 2, 1, 1, 0 },
	{ -1, -1, 0, 0, -2, -2, 1, 2, 1, 1, 1, -2, 0, 2, 1, 0, -3, -2, 2, -2, 1, -1, -1, -1, -1, 0, 0, 0, -1, 2, 1, -1 },
};

/* The key whose byte i moves the FNV-1a state by d[i]; -1 if one cannot. */
static int fnv_key(const int d[32], uint8_t key[GVM_KEY_SIZE])
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (unsigned i = 0; i < GVM_KEY_SIZE; i++) {
		int lo = (int)(h & 0xff), want = lo + d[i];
		if (want < 0 || want > 255)
			return -1;
		key[i] = (uint8_t)(lo ^ want);
		h = (h ^ key[i]) * 0x100000001b3ull;
	}
	return 0;
}

/* ms to create a one-page region under each key (same id), then list each. */
static double region_ms(const uint8_t (*keys)[GVM_KEY_SIZE], unsigned n)
{
	struct gvm_store *st = ram_store(0);
	uint8_t pl[8 + PG] = { 1 }, bm[GVM_BITMAP_BYTES(1)];
	uint64_t t0 = gvm_now_ns();

	if (!st)
		return -1;
	memset(pl + 8, 0x5a, PG);
	for (unsigned i = 0; i < n; i++)
		if (gvm_store_write(st, 7, keys[i], 0, 1, pl, sizeof(pl)) < 0)
			return -1;
	for (unsigned i = 0; i < n; i++)
		if (gvm_store_list(st, 7, keys[i], 0, 1, bm) < 0 || bm[0] != 1)
			return -1;
	double ms = (gvm_now_ns() - t0) / 1e6;
	if (regions(st) != n)
		ms = -1;
	gvm_store_close(st);
	return ms;
}

/*
 * 4,000 keys that collide in FNV-1a (a client chooses the verifier OPEN
 * sends, which names the region) cost the region table what random keys
 * do: its hash is keyed. (They once shared one probe run: 4,000 regions
 * took ~N^2/2 key comparisons to create.)
 */
static int test_region_hash_keyed(void)
{
	enum { N = 4000 };
	static uint8_t coll[N][GVM_KEY_SIZE], rand_keys[N][GVM_KEY_SIZE];
	uint8_t zero[GVM_KEY_SIZE] = { 0 };
	unsigned n = 0;

	for (unsigned combo = 0; combo < 59049 && n < N; combo++) {
		int d[32] = { 0 };
		for (unsigned j = 0, c = combo; j < 10; j++, c /= 3)
			for (int i = 0; i < 32; i++)
				d[i] += ((int)(c % 3) - 1) * fnv_kernel[j][i];
		if (fnv_key(d, coll[n]) < 0)
			continue;
		CHECK_EQ(gvm_hash_bytes(coll[n], GVM_KEY_SIZE, 0), gvm_hash_bytes(zero, GVM_KEY_SIZE, 0));
		n++;
	}
	CHECK_EQ(n, N);
	for (unsigned i = 0; i < N; i++)
		for (unsigned j = 0; j < GVM_KEY_SIZE; j += 8) {
			uint64_t v = rnd();
			memcpy(rand_keys[i] + j, &v, 8);
		}
	/* Best of three of each, and a wide margin (the collisions cost 35-50x
	 * before): a loaded machine slows single runs down by whole factors. */
	double t_rand = -1, t_coll = -1;
	for (int i = 0; i < 3; i++) {
		double r = region_ms(rand_keys, N), c = region_ms(coll, N);
		CHECK(r >= 0 && c >= 0);
		t_rand = t_rand < 0 ? r : GVM_MIN(t_rand, r);
		t_coll = t_coll < 0 ? c : GVM_MIN(t_coll, c);
	}
	fprintf(stderr, "  %u regions, best of 3: random keys %.1f ms, keys colliding in FNV-1a %.1f ms\n",
		N, t_rand, t_coll);
	CHECK(t_coll < 10 * t_rand + 10);
	return 0;
}

static int test_cleanup(void)
{
	if (tmpdir[0])
		CHECK_EQ(rmdir(tmpdir), 0);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "ram_roundtrip", test_ram_roundtrip },
	{ "zero_pages_removed", test_zero_pages_removed },
	{ "capacity", test_capacity },
	{ "keys", test_keys },
	{ "owner_quotas", test_owner_quotas },
	{ "free", test_free },
	{ "prealloc_reuse", test_prealloc_reuse },
	{ "list", test_list },
	{ "invalid_writes", test_invalid_writes },
	{ "index_churn", test_index_churn },
	{ "backing_roundtrip", test_backing_roundtrip },
	{ "backing_locked", test_backing_locked },
	{ "backing_slot_reuse", test_backing_slot_reuse },
	{ "backing_sync_rare", test_backing_sync_rare },
	{ "backing_sync_error", test_backing_sync_error },
	{ "backing_corrupt", test_backing_corrupt },
	{ "backing_v1_upgrade", test_backing_v1_upgrade },
	{ "siphash", test_siphash },
	{ "region_hash_keyed", test_region_hash_keyed },
	{ "cleanup", test_cleanup },
};

GVM_TEST_MAIN(tests)
