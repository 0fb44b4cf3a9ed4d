/*
 * Wire protocol codec. Pure: no I/O, no allocation. See docs/PROTOCOL.md.
 */
#include "proto.h"

#include <errno.h>
#include <string.h>

#define GVM_MAX_LIST_PAGES (1u << 20)
#define GVM_MAX_PAGE_INDEX (1ull << 52) /* region byte offsets stay in 64 bits */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32); }

void gvm_hdr_encode(const struct gvm_hdr *h, uint8_t out[GVM_HDR_SIZE])
{
	put32(out + 0, h->magic);
	put16(out + 4, h->version);
	put16(out + 6, h->op);
	put64(out + 8, h->id);
	put64(out + 16, h->region);
	put64(out + 24, h->page);
	put32(out + 32, h->count);
	put32(out + 36, (uint32_t)h->status);
	put32(out + 40, h->len);
	put32(out + 44, h->flags);
}

#define BAD(code, msg) do { *why = (msg); return (code); } while (0)

static int check_pages_len(const struct gvm_hdr *h, const char **why)
{
	size_t bm = GVM_BITMAP_BYTES(h->count);
	size_t per = GVM_PAGE_SIZE + ((h->flags & GVM_HF_TAGS) ? GVM_TAG_SIZE : 0);

	if (h->len < bm)
		BAD(-EPROTO, "page payload shorter than its bitmap");
	if ((h->len - bm) % per)
		BAD(-EPROTO, "page payload is not bitmap + whole pages (and their tags)");
	if ((h->len - bm) / per > h->count)
		BAD(-EPROTO, "page payload holds more pages than count");
	return 0;
}

static int check_range(const struct gvm_hdr *h, uint32_t max_count, const char **why)
{
	if (h->count == 0)
		BAD(-EINVAL, "count is zero");
	if (h->count > max_count)
		BAD(-EMSGSIZE, "count exceeds the per-request maximum");
	if (h->page >= GVM_MAX_PAGE_INDEX || h->page + h->count > GVM_MAX_PAGE_INDEX)
		BAD(-EINVAL, "page range beyond the largest region");
	return 0;
}

static int check_request(const struct gvm_hdr *h, const char **why)
{
	if (h->status != 0)
		BAD(-EPROTO, "status set in a request");
	switch (h->op) {
	case GVM_OP_HELLO:
		if (h->len != GVM_HELLO_SIZE) BAD(-EPROTO, "HELLO payload size");
		return 0;
	case GVM_OP_OPEN:
		if (h->len != GVM_OPEN_SIZE) BAD(-EPROTO, "OPEN payload size");
		return 0;
	case GVM_OP_READ:
		if (h->len != 0) BAD(-EPROTO, "READ carries a payload");
		return check_range(h, GVM_MAX_PAGES, why);
	case GVM_OP_WRITE: {
		int r = check_range(h, GVM_MAX_PAGES, why);
		return r ? r : check_pages_len(h, why);
	}
	case GVM_OP_LIST:
		if (h->len != 0) BAD(-EPROTO, "LIST carries a payload");
		return check_range(h, GVM_MAX_LIST_PAGES, why);
	case GVM_OP_STAT:
	case GVM_OP_FREE:
	case GVM_OP_PING:
		if (h->len != 0) BAD(-EPROTO, "unexpected payload");
		return 0;
	default:
		BAD(-EPROTO, "unknown request op");
	}
}

static int check_reply(const struct gvm_hdr *h, const char **why)
{
	unsigned op = h->op & ~GVM_OP_REPLY;

	if (h->op == GVM_OP_GREETING) {
		if (h->status != 0) BAD(-EPROTO, "status set in GREETING");
		if (h->len != GVM_GREETING_SIZE) BAD(-EPROTO, "GREETING payload size");
		return 0;
	}
	if (!(h->op & GVM_OP_REPLY))
		BAD(-EPROTO, "server sent a request op");
	if (h->status > 0 || h->status < -4095)
		BAD(-EPROTO, "reply status out of range");
	if (op < GVM_OP_HELLO || op > GVM_OP_PING)
		BAD(-EPROTO, "unknown reply op");
	if (h->status != 0) {
		if (h->len != 0) BAD(-EPROTO, "error reply carries a payload");
		return 0;
	}
	switch (op) {
	case GVM_OP_READ: {
		int r = check_range(h, GVM_MAX_PAGES, why);
		return r ? r : check_pages_len(h, why);
	}
	case GVM_OP_LIST: {
		int r = check_range(h, GVM_MAX_LIST_PAGES, why);
		if (r) return r;
		if (h->len != GVM_BITMAP_BYTES(h->count)) BAD(-EPROTO, "LIST reply size");
		return 0;
	}
	case GVM_OP_STAT:
		if (h->len != GVM_STAT_SIZE) BAD(-EPROTO, "STAT reply size");
		return 0;
	case GVM_OP_HELLO:
		if (h->len != 0 && h->len != GVM_PROOF_SIZE) BAD(-EPROTO, "HELLO reply size");
		return 0;
	case GVM_OP_OPEN:
	case GVM_OP_WRITE:
	case GVM_OP_FREE:
	case GVM_OP_PING:
		if (h->len != 0) BAD(-EPROTO, "unexpected payload in reply");
		return 0;
	default:
		BAD(-EPROTO, "unknown reply op");
	}
}

int gvm_hdr_decode(const uint8_t in[GVM_HDR_SIZE], int from_server,
		   struct gvm_hdr *h, const char **why)
{
	h->magic = get32(in + 0);
	h->version = get16(in + 4);
	h->op = get16(in + 6);
	h->id = get64(in + 8);
	h->region = get64(in + 16);
	h->page = get64(in + 24);
	h->count = get32(in + 32);
	h->status = (int32_t)get32(in + 36);
	h->len = get32(in + 40);
	h->flags = get32(in + 44);

	if (h->magic != GVM_PROTO_MAGIC)
		BAD(-EPROTO, "bad magic");
	if (h->version != GVM_PROTO_VERSION)
		BAD(-EPROTO, "unsupported protocol version");
	if (h->flags & ~GVM_HF_TAGS)
		BAD(-EPROTO, "reserved flags set");
	/* Tags ride on page payloads only: WRITE, READ and READ's reply. */
	if (h->flags && (h->op & ~GVM_OP_REPLY) != GVM_OP_READ && h->op != GVM_OP_WRITE)
		BAD(-EPROTO, "tag flag on an op without pages");
	if (h->len > GVM_MAX_PAYLOAD)
		BAD(-EMSGSIZE, "payload length exceeds the maximum");
	return from_server ? check_reply(h, why) : check_request(h, why);
}

int gvm_bitmap_weight(const uint8_t *bm, unsigned count)
{
	size_t bytes = GVM_BITMAP_BYTES(count);
	int w = 0;

	for (size_t i = 0; i < bytes; i++) {
		uint8_t b = bm[i];
		if (i * 8 + 8 > count) {
			unsigned valid = i * 8 >= count ? 0 : count - (unsigned)i * 8;
			if (b & (uint8_t)~((1u << valid) - 1u))
				return -EPROTO;
		}
		w += __builtin_popcount(b);
	}
	return w;
}

int gvm_pages_check(const uint8_t *payload, size_t len, unsigned count, const char **why)
{
	return gvm_pages_check_tagged(payload, len, count, 0, why);
}

int gvm_pages_check_tagged(const uint8_t *payload, size_t len, unsigned count, int tagged,
			   const char **why)
{
	size_t bm = GVM_BITMAP_BYTES(count);
	int w;

	if (len < bm)
		BAD(-EPROTO, "page payload shorter than its bitmap");
	w = gvm_bitmap_weight(payload, count);
	if (w < 0)
		BAD(-EPROTO, "bitmap has bits beyond count");
	if (len != gvm_pages_len(count, (unsigned)w) + (tagged ? (size_t)w * GVM_TAG_SIZE : 0))
		BAD(-EPROTO, "page payload length does not match its bitmap");
	return w;
}

int gvm_page_is_zero(const void *page)
{
	const unsigned char *b = page;

	/* memcpy into words: no alignment assumption, compiles to plain loads. */
	for (unsigned i = 0; i < GVM_PAGE_SIZE; i += 64) {
		uint64_t w[8];
		memcpy(w, b + i, sizeof(w));
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return 0;
	}
	return 1;
}

void gvm_greeting_encode(const struct gvm_greeting *g, uint8_t out[GVM_GREETING_SIZE])
{
	put32(out, g->version);
	put32(out + 4, g->flags);
	memcpy(out + 8, g->nonce, GVM_NONCE_SIZE);
}

void gvm_greeting_decode(const uint8_t in[GVM_GREETING_SIZE], struct gvm_greeting *g)
{
	g->version = get32(in);
	g->flags = get32(in + 4);
	memcpy(g->nonce, in + 8, GVM_NONCE_SIZE);
}

void gvm_hello_encode(const struct gvm_hello *g, uint8_t out[GVM_HELLO_SIZE])
{
	put32(out, g->version);
	put32(out + 4, g->flags);
	memcpy(out + 8, g->nonce, GVM_NONCE_SIZE);
	memcpy(out + 40, g->pub, GVM_PUB_SIZE);
	memcpy(out + 72, g->mac, GVM_MAC_SIZE);
}

void gvm_hello_decode(const uint8_t in[GVM_HELLO_SIZE], struct gvm_hello *g)
{
	g->version = get32(in);
	g->flags = get32(in + 4);
	memcpy(g->nonce, in + 8, GVM_NONCE_SIZE);
	memcpy(g->pub, in + 40, GVM_PUB_SIZE);
	memcpy(g->mac, in + 72, GVM_MAC_SIZE);
}

void gvm_stat_encode(const struct gvm_stat *s, uint8_t out[GVM_STAT_SIZE])
{
	const uint64_t v[8] = { s->pages_stored, s->capacity_pages, s->regions, s->clients,
				s->reads, s->writes, s->bytes_out, s->bytes_in };
	for (int i = 0; i < 8; i++)
		put64(out + 8 * i, v[i]);
}

void gvm_stat_decode(const uint8_t in[GVM_STAT_SIZE], struct gvm_stat *s)
{
	s->pages_stored = get64(in);
	s->capacity_pages = get64(in + 8);
	s->regions = get64(in + 16);
	s->clients = get64(in + 24);
	s->reads = get64(in + 32);
	s->writes = get64(in + 40);
	s->bytes_out = get64(in + 48);
	s->bytes_in = get64(in + 56);
}

const char *gvm_op_name(unsigned op)
{
	static const char *const names[] = {
		[GVM_OP_GREETING] = "GREETING", [GVM_OP_HELLO] = "HELLO", [GVM_OP_OPEN] = "OPEN",
		[GVM_OP_READ] = "READ", [GVM_OP_WRITE] = "WRITE", [GVM_OP_STAT] = "STAT",
		[GVM_OP_FREE] = "FREE", [GVM_OP_LIST] = "LIST", [GVM_OP_PING] = "PING",
	};
	op &= ~GVM_OP_REPLY;
	if (op < sizeof(names) / sizeof(names[0]) && names[op])
		return names[op];
	return "UNKNOWN";
}
