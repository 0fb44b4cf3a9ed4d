/*
 * libFuzzer harness: the input is what a (possibly hostile) memory server
 * sends a client, a stream of server->client frames.
 *
 * Each header goes through gvm_hdr_decode(from_server = 1), is compared with a
 * reference validator written from docs/PROTOCOL.md and re-encoded to the same
 * bytes. Accepted frames are handled the way src/lib/client.c and
 * src/lib/transport.c + engine.c do:
 *   - GREETING and STAT payloads decode and re-encode to the same bytes;
 *   - a READ reply payload goes through gvm_pages_check(); when accepted, it
 *     is unpacked like the engine does (page i is the k-th packed page, k the
 *     number of set bits before i), and every page it points at must lie
 *     inside the payload;
 *   - a LIST reply bitmap goes through gvm_bitmap_weight();
 *   - an error reply never carries a payload.
 * The whole input is also fed to gvm_bitmap_weight()/gvm_pages_check() as a
 * raw bitmap and compared with a bit-by-bit reference.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "proto.h"

static void check_read_reply(const struct gvm_hdr *h, const uint8_t *p)
{
	const char *why = NULL;
	int tagged = !!(h->flags & GVM_HF_TAGS);
	int w = gvm_pages_check_tagged(p, h->len, h->count, tagged, &why);
	long ref = fz_bitmap_weight(p, h->count);
	const uint8_t *data = p + GVM_BITMAP_BYTES(h->count);
	const uint8_t *end = p + h->len - (w > 0 && tagged ? (size_t)w * GVM_TAG_SIZE : 0);
	long k = 0;

	CHECK((w >= 0) == (ref >= 0 && h->len == gvm_pages_len(h->count, (unsigned)ref) +
						   (tagged ? (size_t)ref * GVM_TAG_SIZE : 0)));
	if (w < 0) {
		CHECK(why && *why);
		return; /* the client drops the connection */
	}
	CHECK(w == ref);
	/* Unpack the way client.c does (sequentially) and engine.c does (by index;
	 * quadratic, so only for the first pages and the last). */
	for (unsigned i = 0; i < h->count; i++) {
		long pi = (i < 64 || i + 1 == h->count) ? gvm_packed_index(p, i) : -2;
		if (!gvm_bitmap_test(p, i)) {
			CHECK(pi == -1 || pi == -2);
			continue;
		}
		CHECK(pi == k || pi == -2);
		CHECK(data + (size_t)(k + 1) * GVM_PAGE_SIZE <= end);
		(void)gvm_page_is_zero(data + (size_t)k * GVM_PAGE_SIZE);
		k++;
	}
	CHECK(k == w);
	CHECK(data + (size_t)k * GVM_PAGE_SIZE == end);
}

static void check_frame(const struct gvm_hdr *h, const uint8_t *p)
{
	unsigned op = h->op & ~GVM_OP_REPLY;

	if (h->op == GVM_OP_GREETING) {
		struct gvm_greeting g;
		uint8_t again[GVM_GREETING_SIZE];

		CHECK(h->len == GVM_GREETING_SIZE);
		gvm_greeting_decode(p, &g);
		gvm_greeting_encode(&g, again);
		CHECK(memcmp(again, p, GVM_GREETING_SIZE) == 0);
		CHECK(g.version == fz_le32(p) && g.flags == fz_le32(p + 4));
		return;
	}
	CHECK(h->op & GVM_OP_REPLY);
	CHECK(op >= GVM_OP_HELLO && op <= GVM_OP_PING);
	CHECK(h->status <= 0 && h->status >= -4095);
	if (h->status) {
		CHECK(h->len == 0);
		return;
	}
	switch (op) {
	case GVM_OP_READ:
		check_read_reply(h, p);
		break;
	case GVM_OP_LIST: {
		int w = gvm_bitmap_weight(p, h->count);
		long ref = fz_bitmap_weight(p, h->count);

		CHECK(h->len == GVM_BITMAP_BYTES(h->count));
		CHECK(ref < 0 ? w == -EPROTO : w == ref);
		break;
	}
	case GVM_OP_STAT: {
		struct gvm_stat s;
		uint8_t again[GVM_STAT_SIZE];

		CHECK(h->len == GVM_STAT_SIZE);
		gvm_stat_decode(p, &s);
		gvm_stat_encode(&s, again);
		CHECK(memcmp(again, p, GVM_STAT_SIZE) == 0);
		CHECK(s.pages_stored == fz_le64(p) && s.bytes_in == fz_le64(p + 56));
		break;
	}
	case GVM_OP_HELLO:
		/* The server's ephemeral key and proof; a client holding a token
		 * checks it (gvm_session_confirm), here: the size only. */
		CHECK(h->len == 0 || h->len == GVM_PROOF_SIZE);
		break;
	default:
		CHECK(h->len == 0);
	}
}

/* The whole input as a raw bitmap: [u16 count seed][bitmap bytes...]. */
static void check_raw_bitmap(const uint8_t *data, size_t size)
{
	size_t avail, bytes;
	unsigned count;
	uint8_t *bm;
	const char *why = NULL;
	long ref;
	int w;

	if (size < 2)
		return;
	avail = size - 2;
	if (avail > GVM_BITMAP_BYTES(GVM_MAX_PAGES) + 64 * GVM_PAGE_SIZE)
		avail = GVM_BITMAP_BYTES(GVM_MAX_PAGES) + 64 * GVM_PAGE_SIZE;
	count = (unsigned)fz_le16(data) % (GVM_MAX_PAGES + 1);
	bytes = GVM_BITMAP_BYTES(count);
	if (bytes > avail)
		return;
	bm = fz_dup(data + 2, avail);
	w = gvm_bitmap_weight(bm, count);
	ref = fz_bitmap_weight(bm, count);
	CHECK(ref < 0 ? w == -EPROTO : w == ref);
	w = gvm_pages_check(bm, avail, count, &why);
	CHECK((w >= 0) == (ref >= 0 && avail == gvm_pages_len(count, (unsigned)ref)));
	CHECK(w < 0 || w == ref);
	free(bm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;

	check_raw_bitmap(data, size);

	while (size - off >= GVM_HDR_SIZE) {
		uint8_t raw[GVM_HDR_SIZE];
		struct gvm_hdr h;
		uint8_t *p;
		int r;

		memcpy(raw, data + off, GVM_HDR_SIZE);
		r = fz_check_hdr(raw, 1, &h);
		if (r)
			break; /* the client drops the connection */
		CHECK(h.len <= GVM_MAX_PAYLOAD);
		if (size - off - GVM_HDR_SIZE < h.len)
			break;
		p = fz_dup(data + off + GVM_HDR_SIZE, h.len);
		check_frame(&h, p);
		free(p);
		off += GVM_HDR_SIZE + h.len;
	}
	return 0;
}
