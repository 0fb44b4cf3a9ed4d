/*
 * Helpers shared by the libFuzzer harnesses in tests/fuzz/. Header-only so
 * each harness is one translation unit plus the library sources it needs.
 *
 * CHECK() is for invariants of giantvm's code: a violation prints what
 * failed and traps, which libFuzzer reports as a crash with a reproducer.
 */
#ifndef GVM_FUZZ_COMMON_H
#define GVM_FUZZ_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "fuzz invariant violated: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
		__builtin_trap(); \
	} \
} while (0)

/* Little-endian reads written independently of src/lib/proto.c. */
static inline uint16_t fz_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t fz_le32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t fz_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* An exact-size heap copy, so ASan sees any read past the end. */
static inline uint8_t *fz_dup(const uint8_t *p, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);
	if (!c)
		abort();
	if (n)
		memcpy(c, p, n);
	return c;
}

/* Bitmap helpers by the letter of docs/PROTOCOL.md: bit i = byte i/8, bit i%8. */
static inline int fz_bit(const uint8_t *bm, uint64_t i)
{
	return (bm[i / 8] >> (i % 8)) & 1;
}
static inline size_t fz_bitmap_bytes(uint64_t count)
{
	return (size_t)((count + 63) / 64) * 8;
}
/* Popcount of the first `count` bits, or -1 if a bit at or beyond count (within
 * the bitmap's bytes) is set. */
static inline long fz_bitmap_weight(const uint8_t *bm, uint64_t count)
{
	size_t bytes = fz_bitmap_bytes(count);
	long w = 0;

	for (uint64_t i = 0; i < (uint64_t)bytes * 8; i++) {
		if (!fz_bit(bm, i))
			continue;
		if (i >= count)
			return -1;
		w++;
	}
	return w;
}

/*
 * Reference header validation written from docs/PROTOCOL.md, compared with
 * gvm_hdr_decode() on every frame. Two points the document leaves implicit
 * follow the code, and are called out here: a READ/WRITE/LIST count of 0 is
 * invalid, and the count/page limits apply only to the ops that use them
 * (READ, WRITE, LIST and their replies).
 */
#define FZ_MAGIC        0x314d5647u
#define FZ_MAX_PAYLOAD  (128u + 1024u * (4096u + 16u)) /* a full WRITE with its tags */
#define FZ_PAGE_LIMIT   (1ull << 52)

static inline int fz_range_ok(uint64_t page, uint32_t count, uint32_t max)
{
	if (count == 0 || count > max)
		return 0;
	return page < FZ_PAGE_LIMIT && page + count <= FZ_PAGE_LIMIT;
}

/* tagged: a 16-byte tag follows the pages for each of them (sealed pages). */
static inline int fz_pages_len_ok(uint32_t len, uint32_t count, int tagged)
{
	size_t bm = fz_bitmap_bytes(count), per = tagged ? 4096 + 16 : 4096;
	return len >= bm && (len - bm) % per == 0 && (len - bm) / per <= count;
}

static inline int fz_ref_hdr_ok(const uint8_t *b, int from_server)
{
	uint32_t magic = fz_le32(b), count = fz_le32(b + 32), len = fz_le32(b + 40);
	uint32_t flags = fz_le32(b + 44);
	uint16_t version = fz_le16(b + 4), op = fz_le16(b + 6);
	uint64_t page = fz_le64(b + 24);
	int32_t status = (int32_t)fz_le32(b + 36);

	/* Flag bit 0 (tags) only on READ, its reply and WRITE. */
	if (magic != FZ_MAGIC || version != 2 || (flags & ~1u) || len > FZ_MAX_PAYLOAD)
		return 0;
	if (flags && (op & 0x7fff) != 4 && op != 5)
		return 0;
	if (!from_server) {
		if (status != 0)
			return 0;
		switch (op) {
		case 2: return len == 104;                                  /* HELLO */
		case 3: return len == 32;                                   /* OPEN */
		case 4: return len == 0 && fz_range_ok(page, count, 1024);  /* READ */
		case 5: return fz_range_ok(page, count, 1024) && fz_pages_len_ok(len, count, (int)flags);
		case 8: return len == 0 && fz_range_ok(page, count, 1u << 20); /* LIST */
		case 6: case 7: case 9: return len == 0;                    /* STAT FREE PING */
		default: return 0;
		}
	}
	if (op == 1)                                                        /* GREETING */
		return status == 0 && len == 40;
	if (!(op & 0x8000) || status > 0 || status < -4095)
		return 0;
	op &= 0x7fff;
	if (op < 2 || op > 9)
		return 0;
	if (status != 0)
		return len == 0;
	switch (op) {
	case 4: return fz_range_ok(page, count, 1024) && fz_pages_len_ok(len, count, (int)flags);
	case 8: return fz_range_ok(page, count, 1u << 20) && len == fz_bitmap_bytes(count);
	case 6: return len == 64;
	case 2: return len == 0 || len == 64;                               /* HELLO: key + proof */
	default: return len == 0;
	}
}

/*
 * The checks both protocol harnesses make on one 48-byte header: the
 * library's decoder agrees with the reference above, fails only with the
 * documented errors and a reason, and re-encodes what it decoded to the
 * same bytes. Returns the decoder's result (h filled when 0).
 */
#include "proto.h"
static inline int fz_check_hdr(const uint8_t raw[GVM_HDR_SIZE], int from_server, struct gvm_hdr *h)
{
	uint8_t *hb = fz_dup(raw, GVM_HDR_SIZE), again[GVM_HDR_SIZE];
	const char *why = NULL;
	int r = gvm_hdr_decode(hb, from_server, h, &why), ref = fz_ref_hdr_ok(raw, from_server);

	free(hb);
	if ((r == 0) != ref)
		fprintf(stderr, "gvm_hdr_decode(%s) = %d (%s), reference says %s\n",
			from_server ? "reply" : "request", r, why ? why : "-", ref ? "valid" : "invalid");
	CHECK((r == 0) == ref);
	CHECK(r == 0 || r == -EPROTO || r == -EMSGSIZE || r == -EINVAL);
	CHECK(r == 0 || (why && *why));
	gvm_hdr_encode(h, again);
	CHECK(memcmp(raw, again, GVM_HDR_SIZE) == 0);
	CHECK(gvm_op_name(h->op) != NULL);
	return r;
}

#endif
