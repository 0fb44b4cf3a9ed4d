/*
 * Wire codec against docs/PROTOCOL.md: byte-exact layout, round trips for
 * every op in both directions, and every malformed header and payload the
 * document rules out.
 */
#include "proto.h"
#include "util.h"
#include "test.h"

#define R(op) ((uint16_t)((op) | GVM_OP_REPLY))
#define MAX_PAGE_INDEX (1ull << 52)
#define MAX_LIST (1u << 20)

static uint8_t wire[GVM_HDR_SIZE];

static struct gvm_hdr mk(uint16_t op, uint32_t count, uint32_t len)
{
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = op,
		.id = 0x0102030405060708ull, .region = 0x1112131415161718ull, .page = 100,
		.count = count, .status = 0, .len = len, .flags = 0,
	};
	return h;
}

/* Encode, decode with the given direction's rules; returns decode's result. */
static int roundtrip(const struct gvm_hdr *h, int from_server, struct gvm_hdr *out, const char **why)
{
	*why = NULL;
	memset(out, 0xa5, sizeof(*out));
	gvm_hdr_encode(h, wire);
	return gvm_hdr_decode(wire, from_server, out, why);
}

static int same_hdr(const struct gvm_hdr *a, const struct gvm_hdr *b)
{
	return a->magic == b->magic && a->version == b->version && a->op == b->op && a->id == b->id &&
	       a->region == b->region && a->page == b->page && a->count == b->count &&
	       a->status == b->status && a->len == b->len && a->flags == b->flags;
}

/* A header that must decode cleanly and come back identical. */
static int expect_ok(const struct gvm_hdr *h, int from_server, int line)
{
	struct gvm_hdr out;
	const char *why;
	int r = roundtrip(h, from_server, &out, &why);

	if (r != 0 || !same_hdr(h, &out)) {
		fprintf(stderr, "  line %d: op %#x count %u len %u status %d: r=%d (%s)\n", line,
			h->op, h->count, h->len, h->status, r, why ? why : "-");
		return 1;
	}
	return 0;
}

/* A header that must be refused with `code` and a reason. */
static int expect_bad(const struct gvm_hdr *h, int from_server, int code, int line)
{
	struct gvm_hdr out;
	const char *why;
	int r = roundtrip(h, from_server, &out, &why);

	if (r != code || !why || !*why) {
		fprintf(stderr, "  line %d: op %#x count %u len %u status %d page %llu: r=%d want %d (%s)\n",
			line, h->op, h->count, h->len, h->status, (unsigned long long)h->page, r, code,
			why ? why : "no reason");
		return 1;
	}
	return 0;
}
#define OK(h, dir) do { struct gvm_hdr h_ = (h); if (expect_ok(&h_, dir, __LINE__)) return 1; } while (0)
#define BAD(h, dir, code) do { struct gvm_hdr h_ = (h); if (expect_bad(&h_, dir, code, __LINE__)) return 1; } while (0)
#define REQ 0
#define REP 1

static struct gvm_hdr with_status(struct gvm_hdr h, int32_t s) { h.status = s; return h; }
static struct gvm_hdr with_page(struct gvm_hdr h, uint64_t p) { h.page = p; return h; }
static struct gvm_hdr with_tags(struct gvm_hdr h) { h.flags = GVM_HF_TAGS; return h; }

static int test_constants(void)
{
	CHECK_EQ(GVM_HDR_SIZE, 48);
	CHECK_EQ(GVM_BITMAP_BYTES(1), 8);
	CHECK_EQ(GVM_BITMAP_BYTES(64), 8);
	CHECK_EQ(GVM_BITMAP_BYTES(65), 16);
	CHECK_EQ(GVM_BITMAP_BYTES(1024), 128);
	CHECK_EQ(GVM_MAX_PAYLOAD, 128 + 1024 * (4096 + 16)); /* PROTOCOL.md: len <= 128 + 1024*(4096+16) */
	CHECK_EQ(gvm_pages_len(64, 3), 8 + 3 * 4096);
	CHECK_EQ(GVM_GREETING_SIZE, 40);
	CHECK_EQ(GVM_HELLO_SIZE, 104);
	CHECK_EQ(GVM_PROOF_SIZE, 64);
	CHECK_EQ(GVM_TAG_SIZE, 16);
	CHECK_EQ(GVM_OPEN_SIZE, 32);
	CHECK_EQ(GVM_STAT_SIZE, 64);
	/* Op numbers are never reused: pin them. */
	CHECK_EQ(GVM_OP_GREETING, 1); CHECK_EQ(GVM_OP_HELLO, 2); CHECK_EQ(GVM_OP_OPEN, 3);
	CHECK_EQ(GVM_OP_READ, 4); CHECK_EQ(GVM_OP_WRITE, 5); CHECK_EQ(GVM_OP_STAT, 6);
	CHECK_EQ(GVM_OP_FREE, 7); CHECK_EQ(GVM_OP_LIST, 8); CHECK_EQ(GVM_OP_PING, 9);
	CHECK_EQ(GVM_OP_REPLY, 0x8000);
	return 0;
}

static int test_header_layout(void)
{
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = 1, .op = R(GVM_OP_READ),
		.id = 0x8877665544332211ull, .region = 0xf0e0d0c0b0a09080ull,
		.page = 0x000a0b0c0d0e0f10ull, .count = 0x00000400u, .status = -5,
		.len = 0x01020304u, .flags = 0xdeadbeefu,
	};
	static const uint8_t want[GVM_HDR_SIZE] = {
		'G', 'V', 'M', '1',                             /*  0 magic */
		0x01, 0x00,                                     /*  4 version */
		0x04, 0x80,                                     /*  6 op | reply */
		0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /*  8 id */
		0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0, /* 16 region */
		0x10, 0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 0x00, /* 24 page */
		0x00, 0x04, 0x00, 0x00,                         /* 32 count */
		0xfb, 0xff, 0xff, 0xff,                         /* 36 status -5 */
		0x04, 0x03, 0x02, 0x01,                         /* 40 len */
		0xef, 0xbe, 0xad, 0xde,                         /* 44 flags */
	};
	struct gvm_hdr out;
	const char *why;

	memset(wire, 0xcc, sizeof(wire));
	gvm_hdr_encode(&h, wire);
	for (unsigned i = 0; i < GVM_HDR_SIZE; i++) {
		if (wire[i] != want[i]) {
			fprintf(stderr, "  byte %u: %#x want %#x\n", i, wire[i], want[i]);
			CHECK(0);
		}
	}
	/* Decoding fills every field even when validation fails (flags set). */
	CHECK_EQ(gvm_hdr_decode(wire, 1, &out, &why), -EPROTO);
	CHECK(same_hdr(&h, &out));
	return 0;
}

static int test_roundtrip_requests(void)
{
	for (uint32_t c = 1; c <= GVM_MAX_PAGES; c = c * 2 + 1)
		OK(mk(GVM_OP_READ, c, 0), REQ);
	OK(mk(GVM_OP_READ, GVM_MAX_PAGES, 0), REQ);
	OK(mk(GVM_OP_HELLO, 0, GVM_HELLO_SIZE), REQ);
	OK(mk(GVM_OP_OPEN, 0, GVM_OPEN_SIZE), REQ);
	OK(mk(GVM_OP_STAT, 0, 0), REQ);
	OK(mk(GVM_OP_FREE, 0, 0), REQ);
	OK(mk(GVM_OP_PING, 0, 0), REQ);
	OK(mk(GVM_OP_LIST, 1, 0), REQ);
	OK(mk(GVM_OP_LIST, MAX_LIST, 0), REQ);
	/* WRITE: bitmap + k pages for every k in 0..count. */
	for (uint32_t k = 0; k <= 70; k++)
		OK(mk(GVM_OP_WRITE, 70, (uint32_t)gvm_pages_len(70, k)), REQ);
	OK(mk(GVM_OP_WRITE, GVM_MAX_PAGES, (uint32_t)gvm_pages_len(GVM_MAX_PAGES, GVM_MAX_PAGES)), REQ);
	/* Tagged (sealed pages): a 16-byte tag per page after the pages. */
	OK(with_tags(mk(GVM_OP_WRITE, GVM_MAX_PAGES, (uint32_t)GVM_MAX_PAYLOAD)), REQ);
	OK(with_tags(mk(GVM_OP_WRITE, 70, (uint32_t)(gvm_pages_len(70, 3) + 3 * 16))), REQ);
	BAD(with_tags(mk(GVM_OP_WRITE, 70, (uint32_t)gvm_pages_len(70, 3))), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, (uint32_t)(gvm_pages_len(70, 3) + 3 * 16)), REQ, -EPROTO);
	OK(with_tags(mk(GVM_OP_READ, 8, 0)), REQ);
	BAD(with_tags(mk(GVM_OP_LIST, 8, 0)), REQ, -EPROTO);
	BAD(with_tags(mk(GVM_OP_PING, 0, 0)), REQ, -EPROTO);
	OK(mk(GVM_OP_WRITE, 1, 8), REQ);
	/* Extremes of the id/region fields and the last legal page range. */
	{
		struct gvm_hdr h = mk(GVM_OP_READ, 1, 0);
		h.id = UINT64_MAX;
		h.region = UINT64_MAX;
		h.page = MAX_PAGE_INDEX - 1;
		OK(h, REQ);
		h.count = 1024;
		h.page = MAX_PAGE_INDEX - 1024;
		OK(h, REQ);
		h.op = GVM_OP_LIST;
		h.count = MAX_LIST;
		h.page = MAX_PAGE_INDEX - MAX_LIST;
		OK(h, REQ);
	}
	return 0;
}

static int test_roundtrip_replies(void)
{
	static const uint16_t ops[] = { GVM_OP_HELLO, GVM_OP_OPEN, GVM_OP_READ, GVM_OP_WRITE,
					GVM_OP_STAT, GVM_OP_FREE, GVM_OP_LIST, GVM_OP_PING };

	OK(mk(GVM_OP_GREETING, 0, GVM_GREETING_SIZE), REP);
	OK(mk(R(GVM_OP_HELLO), 0, 0), REP);
	OK(mk(R(GVM_OP_HELLO), 0, GVM_PROOF_SIZE), REP); /* the server's key and proof */
	OK(mk(R(GVM_OP_OPEN), 0, 0), REP);
	OK(mk(R(GVM_OP_WRITE), 64, 0), REP);
	OK(mk(R(GVM_OP_FREE), 0, 0), REP);
	OK(mk(R(GVM_OP_PING), 0, 0), REP);
	OK(mk(R(GVM_OP_STAT), 0, GVM_STAT_SIZE), REP);
	for (uint32_t k = 0; k <= 64; k += 8)
		OK(mk(R(GVM_OP_READ), 64, (uint32_t)gvm_pages_len(64, k)), REP);
	OK(mk(R(GVM_OP_READ), GVM_MAX_PAGES, (uint32_t)gvm_pages_len(GVM_MAX_PAGES, GVM_MAX_PAGES)), REP);
	OK(with_tags(mk(R(GVM_OP_READ), GVM_MAX_PAGES, (uint32_t)GVM_MAX_PAYLOAD)), REP);
	BAD(with_tags(mk(R(GVM_OP_WRITE), 1, 0)), REP, -EPROTO);
	OK(mk(R(GVM_OP_LIST), 1, 8), REP);
	OK(mk(R(GVM_OP_LIST), 65, 16), REP);
	OK(mk(R(GVM_OP_LIST), MAX_LIST, MAX_LIST / 8), REP);
	/* Error replies: any op, no payload, status in [-4095, -1]. */
	for (size_t i = 0; i < GVM_ARRAY_SIZE(ops); i++) {
		OK(with_status(mk(R(ops[i]), 0, 0), -EACCES), REP);
		OK(with_status(mk(R(ops[i]), 1, 0), -4095), REP);
		OK(with_status(mk(R(ops[i]), 1, 0), -1), REP);
	}
	return 0;
}

static int test_bad_framing(void)
{
	struct gvm_hdr h = mk(GVM_OP_PING, 0, 0), out;
	const char *why;

	/* Magic: any byte off. */
	for (int b = 0; b < 4; b++) {
		for (int dir = 0; dir < 2; dir++) {
			gvm_hdr_encode(&h, wire);
			wire[b] ^= 0x20; /* "gVM1" etc. */
			CHECK_EQ(gvm_hdr_decode(wire, dir, &out, &why), -EPROTO);
			CHECK(why && strstr(why, "magic"));
		}
	}
	h.magic = 0x47564d31; /* "1MVG": big-endian writer */
	BAD(h, REQ, -EPROTO);
	h = mk(GVM_OP_PING, 0, 0);
	h.version = 0;
	BAD(h, REQ, -EPROTO);
	h.version = GVM_PROTO_VERSION - 1; /* the protocol before sealed pages */
	BAD(h, REQ, -EPROTO);
	BAD(h, REP, -EPROTO);
	h.version = GVM_PROTO_VERSION + 1;
	BAD(h, REQ, -EPROTO);
	BAD(h, REP, -EPROTO);
	h.version = (uint16_t)(GVM_PROTO_VERSION << 8); /* byte-swapped */
	BAD(h, REQ, -EPROTO);
	h = mk(GVM_OP_PING, 0, 0);
	for (int bit = 0; bit < 32; bit++) {
		h.flags = 1u << bit;
		BAD(h, REQ, -EPROTO);
		h.op = R(GVM_OP_PING);
		BAD(h, REP, -EPROTO);
		h.op = GVM_OP_PING;
	}
	/* len beyond the largest frame, checked before anything op-specific. */
	BAD(mk(GVM_OP_WRITE, GVM_MAX_PAGES, (uint32_t)GVM_MAX_PAYLOAD + 1), REQ, -EMSGSIZE);
	BAD(mk(GVM_OP_PING, 0, UINT32_MAX), REQ, -EMSGSIZE);
	BAD(mk(R(GVM_OP_READ), GVM_MAX_PAGES, (uint32_t)GVM_MAX_PAYLOAD + 4096), REP, -EMSGSIZE);
	BAD(mk(GVM_OP_GREETING, 0, 1u << 31), REP, -EMSGSIZE);
	return 0;
}

static int test_bad_ops(void)
{
	static const uint16_t bad_req[] = { 0, GVM_OP_GREETING, 10, 11, 0x7fff, 0xffff,
					    R(GVM_OP_READ), R(GVM_OP_PING), R(0) };
	static const uint16_t bad_rep[] = { 0x8000, R(GVM_OP_GREETING), R(10), 0xffff,
					    GVM_OP_READ, GVM_OP_HELLO, GVM_OP_PING, 0, 10 };

	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad_req); i++)
		BAD(mk(bad_req[i], 1, 0), REQ, -EPROTO);
	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad_rep); i++)
		BAD(mk(bad_rep[i], 1, 0), REP, -EPROTO);
	return 0;
}

/* Separate case: found failing against proto.c as written (see report). */
static int test_bad_reply_op_with_error_status(void)
{
	/* "unknown reply op" must hold whatever the status: an error reply to an
	 * op that does not exist is as malformed as a success reply to it. */
	BAD(with_status(mk(R(10), 0, 0), -EIO), REP, -EPROTO);
	BAD(with_status(mk(0x8000, 0, 0), -EIO), REP, -EPROTO);
	BAD(with_status(mk(0xffff, 0, 0), -1), REP, -EPROTO);
	BAD(with_status(mk(R(GVM_OP_GREETING), 0, 0), -EIO), REP, -EPROTO);
	return 0;
}

static int test_bad_status(void)
{
	static const int32_t req_bad[] = { 1, -1, -EACCES, INT32_MIN, INT32_MAX };
	static const int32_t rep_bad[] = { 1, 4095, INT32_MAX, -4096, -100000, INT32_MIN };

	for (size_t i = 0; i < GVM_ARRAY_SIZE(req_bad); i++) {
		BAD(with_status(mk(GVM_OP_READ, 1, 0), req_bad[i]), REQ, -EPROTO);
		BAD(with_status(mk(GVM_OP_PING, 0, 0), req_bad[i]), REQ, -EPROTO);
	}
	for (size_t i = 0; i < GVM_ARRAY_SIZE(rep_bad); i++) {
		BAD(with_status(mk(R(GVM_OP_PING), 0, 0), rep_bad[i]), REP, -EPROTO);
		BAD(with_status(mk(R(GVM_OP_READ), 1, 0), rep_bad[i]), REP, -EPROTO);
	}
	/* A reply with a non-zero status has no payload. */
	BAD(with_status(mk(R(GVM_OP_READ), 1, 8), -EIO), REP, -EPROTO);
	BAD(with_status(mk(R(GVM_OP_STAT), 0, GVM_STAT_SIZE), -EIO), REP, -EPROTO);
	BAD(with_status(mk(R(GVM_OP_HELLO), 0, 1), -EACCES), REP, -EPROTO);
	return 0;
}

static int test_bad_count_and_range(void)
{
	static const uint16_t rw[] = { GVM_OP_READ, GVM_OP_WRITE, GVM_OP_LIST };

	for (size_t i = 0; i < GVM_ARRAY_SIZE(rw); i++) {
		uint32_t len = rw[i] == GVM_OP_WRITE ? 8 : 0;
		BAD(mk(rw[i], 0, 0), REQ, -EINVAL);
		/* page + count <= 2^52 */
		OK(with_page(mk(rw[i], 1, len), MAX_PAGE_INDEX - 1), REQ);
		BAD(with_page(mk(rw[i], 2, rw[i] == GVM_OP_WRITE ? 8 : 0), MAX_PAGE_INDEX - 1), REQ, -EINVAL);
		BAD(with_page(mk(rw[i], 1, len), MAX_PAGE_INDEX), REQ, -EINVAL);
		BAD(with_page(mk(rw[i], 1, len), UINT64_MAX), REQ, -EINVAL);      /* would wrap */
		BAD(with_page(mk(rw[i], 64, len), UINT64_MAX - 10), REQ, -EINVAL);
	}
	BAD(mk(GVM_OP_READ, GVM_MAX_PAGES + 1, 0), REQ, -EMSGSIZE);
	BAD(mk(GVM_OP_READ, UINT32_MAX, 0), REQ, -EMSGSIZE);
	BAD(mk(GVM_OP_WRITE, GVM_MAX_PAGES + 1, (uint32_t)GVM_BITMAP_BYTES(GVM_MAX_PAGES + 1)), REQ, -EMSGSIZE);
	/* LIST: up to 2^20 pages. */
	OK(mk(GVM_OP_LIST, GVM_MAX_PAGES + 1, 0), REQ);
	BAD(mk(GVM_OP_LIST, MAX_LIST + 1, 0), REQ, -EMSGSIZE);
	BAD(mk(R(GVM_OP_LIST), MAX_LIST + 1, (uint32_t)GVM_BITMAP_BYTES(MAX_LIST + 1)), REP, -EMSGSIZE);
	/* Replies carry the same limits. */
	BAD(mk(R(GVM_OP_READ), 0, 0), REP, -EINVAL);
	BAD(mk(R(GVM_OP_LIST), 0, 0), REP, -EINVAL);
	BAD(mk(R(GVM_OP_READ), GVM_MAX_PAGES + 1, (uint32_t)GVM_BITMAP_BYTES(GVM_MAX_PAGES + 1)), REP, -EMSGSIZE);
	BAD(with_page(mk(R(GVM_OP_READ), 2, 8), MAX_PAGE_INDEX - 1), REP, -EINVAL);
	return 0;
}

static int test_bad_payload_sizes(void)
{
	const uint32_t bm70 = (uint32_t)GVM_BITMAP_BYTES(70); /* 16 */

	/* WRITE: len must be bitmap + whole pages, at most count of them. */
	BAD(mk(GVM_OP_WRITE, 70, 0), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, bm70 - 1), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, bm70 + 1), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, bm70 + 4095), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, bm70 + 4097), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 70, bm70 + 71 * 4096), REQ, -EPROTO);   /* more pages than count */
	BAD(mk(GVM_OP_WRITE, 1, 8 + 2 * 4096), REQ, -EPROTO);
	BAD(mk(GVM_OP_WRITE, 1, 4096), REQ, -EPROTO);                /* bitmap missing */
	/* READ reply: same rules. */
	BAD(mk(R(GVM_OP_READ), 70, bm70 - 8), REP, -EPROTO);
	BAD(mk(R(GVM_OP_READ), 70, bm70 + 100), REP, -EPROTO);
	BAD(mk(R(GVM_OP_READ), 1, 8 + 2 * 4096), REP, -EPROTO);
	/* Fixed-size payloads. */
	for (int d = -1; d <= 1; d += 2) {
		BAD(mk(GVM_OP_HELLO, 0, GVM_HELLO_SIZE + d), REQ, -EPROTO);
		BAD(mk(GVM_OP_OPEN, 0, GVM_OPEN_SIZE + d), REQ, -EPROTO);
		BAD(mk(GVM_OP_GREETING, 0, GVM_GREETING_SIZE + d), REP, -EPROTO);
		BAD(mk(R(GVM_OP_STAT), 0, GVM_STAT_SIZE + d), REP, -EPROTO);
		BAD(mk(R(GVM_OP_LIST), 70, bm70 + d), REP, -EPROTO);
	}
	BAD(mk(GVM_OP_HELLO, 0, 0), REQ, -EPROTO);
	BAD(mk(GVM_OP_OPEN, 0, 0), REQ, -EPROTO);
	BAD(mk(GVM_OP_GREETING, 0, 0), REP, -EPROTO);
	BAD(mk(R(GVM_OP_STAT), 0, 0), REP, -EPROTO);
	BAD(mk(R(GVM_OP_LIST), 70, 0), REP, -EPROTO);
	/* No payload allowed. */
	BAD(mk(GVM_OP_READ, 1, 8), REQ, -EPROTO);
	BAD(mk(GVM_OP_LIST, 1, 8), REQ, -EPROTO);
	BAD(mk(GVM_OP_STAT, 0, 64), REQ, -EPROTO);
	BAD(mk(GVM_OP_FREE, 0, 1), REQ, -EPROTO);
	BAD(mk(GVM_OP_PING, 0, 1), REQ, -EPROTO);
	BAD(mk(R(GVM_OP_HELLO), 0, 1), REP, -EPROTO);
	BAD(mk(R(GVM_OP_OPEN), 0, 32), REP, -EPROTO);
	BAD(mk(R(GVM_OP_WRITE), 1, 8), REP, -EPROTO);
	BAD(mk(R(GVM_OP_FREE), 0, 1), REP, -EPROTO);
	BAD(mk(R(GVM_OP_PING), 0, 1), REP, -EPROTO);
	return 0;
}

static int test_pages_check(void)
{
	uint8_t *buf = calloc(1, GVM_MAX_PAYLOAD + 16);
	const char *why;

	CHECK(buf);
	/* 70 pages: bitmap 16 bytes; set pages 0, 9, 69. */
	gvm_bitmap_set(buf, 0);
	gvm_bitmap_set(buf, 9);
	gvm_bitmap_set(buf, 69);
	CHECK_EQ(buf[0], 0x01);
	CHECK_EQ(buf[1], 0x02);
	CHECK_EQ(buf[8], 0x20);
	CHECK(gvm_bitmap_test(buf, 9) && !gvm_bitmap_test(buf, 8));
	CHECK_EQ(gvm_bitmap_weight(buf, 70), 3);
	CHECK_EQ(gvm_pages_check(buf, 16 + 3 * 4096, 70, &why), 3);
	why = NULL;
	CHECK_EQ(gvm_pages_check(buf, 16 + 2 * 4096, 70, &why), -EPROTO);
	CHECK(why);
	CHECK_EQ(gvm_pages_check(buf, 16 + 4 * 4096, 70, &why), -EPROTO);
	CHECK_EQ(gvm_pages_check(buf, 15, 70, &why), -EPROTO);
	CHECK_EQ(gvm_pages_check(buf, 16 + 3 * 4096 + 1, 70, &why), -EPROTO);

	/* Bits at or beyond count must be clear: every position 70..127. */
	for (unsigned b = 70; b < 128; b++) {
		gvm_bitmap_set(buf, b);
		CHECK_EQ(gvm_bitmap_weight(buf, 70), -EPROTO);
		why = NULL;
		CHECK_EQ(gvm_pages_check(buf, 16 + 4 * 4096, 70, &why), -EPROTO);
		CHECK(why);
		buf[b >> 3] &= (uint8_t)~(1u << (b & 7));
	}
	CHECK_EQ(gvm_bitmap_weight(buf, 70), 3);
	/* count a multiple of 8 and of 64: the whole last byte/word is valid. */
	memset(buf, 0, 16);
	buf[7] = 0x80;
	CHECK_EQ(gvm_bitmap_weight(buf, 64), 1);
	CHECK_EQ(gvm_bitmap_weight(buf, 63), -EPROTO);
	CHECK_EQ(gvm_bitmap_weight(buf, 57), -EPROTO);
	buf[7] = 0;
	buf[0] = 0xff;
	CHECK_EQ(gvm_bitmap_weight(buf, 8), 8);
	CHECK_EQ(gvm_bitmap_weight(buf, 7), -EPROTO);
	CHECK_EQ(gvm_bitmap_weight(buf, 1), -EPROTO);
	buf[0] = 0x01;
	CHECK_EQ(gvm_bitmap_weight(buf, 1), 1);
	/* Zero pages: bitmap only. */
	memset(buf, 0, 16);
	CHECK_EQ(gvm_pages_check(buf, 8, 1, &why), 0);
	CHECK_EQ(gvm_pages_check(buf, 8, 64, &why), 0);
	/* A full WRITE: 1024 non-zero pages. */
	memset(buf, 0xff, 128);
	CHECK_EQ(gvm_bitmap_weight(buf, 1024), 1024);
	CHECK_EQ(gvm_pages_check(buf, gvm_pages_len(1024, 1024), 1024, &why), 1024);
	CHECK_EQ(gvm_pages_check(buf, gvm_pages_len(1024, 1024) - 4096, 1024, &why), -EPROTO);
	CHECK_EQ(gvm_pages_check(buf, GVM_MAX_PAYLOAD, 1024, &why), -EPROTO);
	CHECK_EQ(gvm_pages_check_tagged(buf, GVM_MAX_PAYLOAD, 1024, 1, &why), 1024);
	CHECK_EQ(gvm_pages_check_tagged(buf, GVM_MAX_PAYLOAD - 16, 1024, 1, &why), -EPROTO);
	CHECK_EQ(gvm_bitmap_weight(buf, 1023), -EPROTO);
	free(buf);
	return 0;
}

static int test_page_is_zero(void)
{
	uint64_t *page = aligned_alloc(4096, 4096);
	uint8_t *b = (uint8_t *)page;

	CHECK(page);
	memset(page, 0, 4096);
	CHECK_EQ(gvm_page_is_zero(page), 1);
	/* One non-zero byte anywhere, every bit value position. */
	for (unsigned i = 0; i < 4096; i++) {
		b[i] = (uint8_t)(1u << (i & 7));
		if (gvm_page_is_zero(page) != 0) {
			fprintf(stderr, "  byte %u missed\n", i);
			CHECK(0);
		}
		b[i] = 0;
	}
	CHECK_EQ(gvm_page_is_zero(page), 1);
	free(page);
	return 0;
}

static int test_greeting_hello_stat(void)
{
	struct gvm_greeting g = { .version = 0x01020304, .flags = GVM_GREET_AUTH }, g2;
	struct gvm_hello h = { .version = 1, .flags = GVM_HELLO_MAC }, h2;
	struct gvm_stat s = { 1, 2, 3, 4, 5, 6, UINT64_MAX, 0x0102030405060708ull }, s2;
	uint8_t buf[128];

	for (int i = 0; i < 32; i++) {
		g.nonce[i] = (uint8_t)(0xa0 + i);
		h.nonce[i] = (uint8_t)(0x30 + i);
		h.pub[i] = (uint8_t)(0x50 + i);
		h.mac[i] = (uint8_t)(0x10 + i);
	}
	memset(buf, 0xcc, sizeof(buf));
	gvm_greeting_encode(&g, buf);
	CHECK(!memcmp(buf, "\x04\x03\x02\x01\x01\x00\x00\x00", 8));
	CHECK(!memcmp(buf + 8, g.nonce, 32));
	CHECK_EQ(buf[40], 0xcc); /* writes exactly 40 bytes */
	memset(&g2, 0, sizeof(g2));
	gvm_greeting_decode(buf, &g2);
	CHECK_EQ(g2.version, g.version);
	CHECK_EQ(g2.flags, GVM_GREET_AUTH);
	CHECK(!memcmp(g2.nonce, g.nonce, 32));

	memset(buf, 0xcc, sizeof(buf));
	gvm_hello_encode(&h, buf);
	CHECK(!memcmp(buf, "\x01\x00\x00\x00\x01\x00\x00\x00", 8));
	CHECK(!memcmp(buf + 8, h.nonce, 32));
	CHECK(!memcmp(buf + 40, h.pub, 32));
	CHECK(!memcmp(buf + 72, h.mac, 32));
	CHECK_EQ(buf[104], 0xcc);
	memset(&h2, 0, sizeof(h2));
	gvm_hello_decode(buf, &h2);
	CHECK_EQ(h2.version, 1);
	CHECK_EQ(h2.flags, GVM_HELLO_MAC);
	CHECK(!memcmp(h2.nonce, h.nonce, 32));
	CHECK(!memcmp(h2.pub, h.pub, 32));
	CHECK(!memcmp(h2.mac, h.mac, 32));

	gvm_stat_encode(&s, buf);
	/* Eight little-endian u64s in PROTOCOL.md order. */
	for (int i = 0; i < 6; i++) {
		CHECK_EQ(buf[8 * i], i + 1);
		for (int k = 1; k < 8; k++)
			CHECK_EQ(buf[8 * i + k], 0);
	}
	for (int k = 0; k < 8; k++) {
		CHECK_EQ(buf[48 + k], 0xff);
		CHECK_EQ(buf[56 + k], 8 - k);
	}
	memset(&s2, 0, sizeof(s2));
	gvm_stat_decode(buf, &s2);
	CHECK(!memcmp(&s, &s2, sizeof(s)));
	return 0;
}

static int test_op_names(void)
{
	CHECK(!strcmp(gvm_op_name(GVM_OP_GREETING), "GREETING"));
	CHECK(!strcmp(gvm_op_name(GVM_OP_READ), "READ"));
	CHECK(!strcmp(gvm_op_name(R(GVM_OP_WRITE)), "WRITE"));
	CHECK(!strcmp(gvm_op_name(GVM_OP_PING), "PING"));
	CHECK(!strcmp(gvm_op_name(0), "UNKNOWN"));
	CHECK(!strcmp(gvm_op_name(10), "UNKNOWN"));
	CHECK(!strcmp(gvm_op_name(0xffff), "UNKNOWN"));
	CHECK(!strcmp(gvm_op_name(0xffffffffu), "UNKNOWN"));
	return 0;
}

/* Random headers never crash decode and always come with a reason when refused. */
static int test_random_headers(void)
{
	uint64_t x = 12345;
	struct gvm_hdr h;
	const char *why;
	unsigned ok = 0;

	for (int i = 0; i < 200000; i++) {
		for (unsigned k = 0; k < GVM_HDR_SIZE; k += 8) {
			x = gvm_mix64(x);
			memcpy(wire + k, &x, 8);
		}
		/* Keep the framing valid half the time so the op checks get exercised. */
		if (i & 1) {
			static const uint8_t magic_ver[6] = { 'G', 'V', 'M', '1', GVM_PROTO_VERSION, 0 };
			memcpy(wire, magic_ver, 6);
			memset(wire + 44, 0, 4);
			wire[6] = (uint8_t)(x % 11);
			wire[7] = (x >> 8) & 1 ? 0x80 : 0;
			if (x & 0x10000) memset(wire + 32, 0, 3);  /* small count */
			if (x & 0x20000) memset(wire + 36, 0, 8);  /* status 0, len 0 */
			if (x & 0x40000) memset(wire + 24, 0, 8);  /* page 0 */
		}
		why = NULL;
		int r = gvm_hdr_decode(wire, (int)(x >> 20) & 1, &h, &why);
		if (r == 0) {
			ok++;
			CHECK(h.len <= GVM_MAX_PAYLOAD);
			CHECK(h.flags == 0);
		} else {
			CHECK(r == -EPROTO || r == -EMSGSIZE || r == -EINVAL);
			CHECK(why && *why);
		}
	}
	printf("info: %u of 200000 random headers accepted\n", ok);
	CHECK(ok > 0);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "constants", test_constants },
	{ "header_layout", test_header_layout },
	{ "roundtrip_requests", test_roundtrip_requests },
	{ "roundtrip_replies", test_roundtrip_replies },
	{ "bad_framing", test_bad_framing },
	{ "bad_ops", test_bad_ops },
	{ "bad_reply_op_with_error_status", test_bad_reply_op_with_error_status },
	{ "bad_status", test_bad_status },
	{ "bad_count_and_range", test_bad_count_and_range },
	{ "bad_payload_sizes", test_bad_payload_sizes },
	{ "pages_check", test_pages_check },
	{ "page_is_zero", test_page_is_zero },
	{ "greeting_hello_stat", test_greeting_hello_stat },
	{ "op_names", test_op_names },
	{ "random_headers", test_random_headers },
};
GVM_TEST_MAIN(tests)
