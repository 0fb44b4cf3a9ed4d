/*
 * Wire protocol codec: pure functions, bytes in, structs out. No I/O, no
 * allocation, no global state, so it can be unit-tested and fuzzed alone.
 * docs/PROTOCOL.md is the normative description; keep the two in step.
 *
 * Every frame is a fixed 48-byte header (all fields little-endian) followed
 * by `len` payload bytes. Op numbers are never reused.
 */
#ifndef GVM_PROTO_H
#define GVM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "giantvm.h"  /* GVM_PAGE_SIZE */

#define GVM_PROTO_MAGIC   0x314d5647u /* "GVM1" read as little-endian u32 */
#define GVM_PROTO_VERSION 2u
#define GVM_HDR_SIZE      48u
#define GVM_PAGE_SHIFT    12u
/* Largest page count in one READ/WRITE: bounds every buffer on both sides. */
#define GVM_MAX_PAGES     1024u
#define GVM_BITMAP_BYTES(n) ((((size_t)(n) + 63u) / 64u) * 8u)
/* Largest payload any frame may carry (a full WRITE, with tags). */
#define GVM_MAX_PAYLOAD   (GVM_BITMAP_BYTES(GVM_MAX_PAGES) + (size_t)GVM_MAX_PAGES * (GVM_PAGE_SIZE + 16u))
#define GVM_KEY_SIZE      32u  /* region key, bytes */
#define GVM_NONCE_SIZE    32u
#define GVM_MAC_SIZE      32u  /* HMAC-SHA256 */
#define GVM_PUB_SIZE      32u  /* X25519 public key */
#define GVM_TAG_SIZE      16u  /* frame tag (GMAC), sealed-page tag (AES-GCM) */

/* Ops. A reply carries the request's op with GVM_OP_REPLY set. */
enum gvm_op {
	GVM_OP_GREETING = 1,  /* server -> client on accept: nonce, auth flag */
	GVM_OP_HELLO    = 2,  /* client -> server: version, MAC over nonce */
	GVM_OP_OPEN     = 3,  /* bind a region (with its key) to this connection */
	GVM_OP_READ     = 4,  /* region, page, count -> bitmap + non-zero pages */
	GVM_OP_WRITE    = 5,  /* region, page, count, bitmap + non-zero pages */
	GVM_OP_STAT     = 6,  /* server statistics */
	GVM_OP_FREE     = 7,  /* drop every page of a region */
	GVM_OP_LIST     = 8,  /* region, page, count -> bitmap of stored pages */
	GVM_OP_PING     = 9,  /* liveness, no payload */
};
#define GVM_OP_REPLY 0x8000u

struct gvm_hdr {
	uint32_t magic;   /* GVM_PROTO_MAGIC */
	uint16_t version; /* GVM_PROTO_VERSION */
	uint16_t op;      /* enum gvm_op, | GVM_OP_REPLY in replies */
	uint64_t id;      /* request id, echoed by the reply (pipelining) */
	uint64_t region;  /* region id (READ/WRITE/OPEN/FREE/LIST) */
	uint64_t page;    /* first page index within the region */
	uint32_t count;   /* pages (READ/WRITE/LIST) */
	int32_t  status;  /* replies: 0 or -errno; requests: 0 */
	uint32_t len;     /* payload bytes that follow the header */
	uint32_t flags;   /* GVM_HF_TAGS on READ, its reply and WRITE; else 0 */
};
/* Header flag: the page payload carries a 16-byte tag per non-zero page,
 * after the pages (sealed pages: the AES-GCM tags; the store keeps them). */
#define GVM_HF_TAGS 1u

/* Payloads with a fixed layout. */
struct gvm_greeting {               /* 40 bytes */
	uint32_t version;               /* highest version the server speaks */
	uint32_t flags;                 /* GVM_GREET_* */
	uint8_t  nonce[GVM_NONCE_SIZE];
};
#define GVM_GREET_AUTH  1u  /* HELLO must carry a MAC */
#define GVM_GREET_KEYED 2u  /* the server holds a token: a MAC'd HELLO starts a session */
#define GVM_GREETING_SIZE 40u

struct gvm_hello {                  /* 104 bytes */
	uint32_t version;
	uint32_t flags;                 /* GVM_HELLO_MAC: nonce, pub and mac are set */
	uint8_t  nonce[GVM_NONCE_SIZE]; /* the client's */
	uint8_t  pub[GVM_PUB_SIZE];     /* the client's ephemeral X25519 key */
	uint8_t  mac[GVM_MAC_SIZE];     /* HMAC-SHA256(token, "giantvm hello" || transcript) */
};
#define GVM_HELLO_MAC 1u
#define GVM_HELLO_SIZE 104u
/* HELLO reply payload when a session starts: the server's ephemeral X25519
 * key, then its proof. */
#define GVM_PROOF_SIZE (GVM_PUB_SIZE + GVM_MAC_SIZE)

/* OPEN payload: the region's verifier (never the key), padded with a
 * session-derived pad in an authenticated session (auth.h). */
#define GVM_OPEN_SIZE GVM_KEY_SIZE

struct gvm_stat {                   /* 64 bytes, STAT reply payload */
	uint64_t pages_stored;          /* non-zero pages held */
	uint64_t capacity_pages;        /* 0 = unlimited */
	uint64_t regions;
	uint64_t clients;               /* open connections */
	uint64_t reads;                 /* READ requests served */
	uint64_t writes;                /* WRITE requests served */
	uint64_t bytes_out;
	uint64_t bytes_in;
};
#define GVM_STAT_SIZE 64u

/* Encode a header into 48 bytes. */
void gvm_hdr_encode(const struct gvm_hdr *h, uint8_t out[GVM_HDR_SIZE]);

/*
 * Decode and validate a header. `from_server` selects which direction's
 * rules apply. Returns 0, or -EPROTO / -EMSGSIZE / -EINVAL with *why set to
 * a static string naming what was wrong. Checks everything that can be
 * checked without the payload: magic, version, op known for the direction,
 * reserved bits, count <= GVM_MAX_PAGES, len consistent with op and count,
 * page + count does not overflow.
 */
int gvm_hdr_decode(const uint8_t in[GVM_HDR_SIZE], int from_server,
		   struct gvm_hdr *h, const char **why);

/*
 * Page payloads (READ reply, WRITE request): a bitmap of GVM_BITMAP_BYTES(count)
 * bytes (bit i set = page i is non-zero and present in the data part), then
 * the non-zero pages packed in order. Little-endian u64 words, bit i of word
 * i/64.
 */
static inline int gvm_bitmap_test(const uint8_t *bm, unsigned i)
{
	return (bm[i >> 3] >> (i & 7)) & 1;
}
static inline void gvm_bitmap_set(uint8_t *bm, unsigned i)
{
	bm[i >> 3] |= (uint8_t)(1u << (i & 7));
}
static inline void gvm_bitmap_clear(uint8_t *bm, unsigned i)
{
	bm[i >> 3] &= (uint8_t)~(1u << (i & 7));
}
/* Index in the packed data of page i of a page payload, or -1 for a zero page. */
static inline long gvm_packed_index(const uint8_t *bm, unsigned i)
{
	long k = 0;

	if (!gvm_bitmap_test(bm, i))
		return -1;
	for (unsigned b = 0; b < i; b++)
		k += gvm_bitmap_test(bm, b);
	return k;
}
/* Number of set bits among the first `count`; -EPROTO if any bit >= count is set. */
int gvm_bitmap_weight(const uint8_t *bm, unsigned count);
/* Validate a page payload of `len` bytes for `count` pages. Returns the
 * number of non-zero pages or -EPROTO with *why set. */
int gvm_pages_check(const uint8_t *payload, size_t len, unsigned count, const char **why);
/* The same for a payload that may carry tags (after the pages, one per non-zero page). */
int gvm_pages_check_tagged(const uint8_t *payload, size_t len, unsigned count, int tagged,
			   const char **why);
/* Expected payload length for `count` pages of which `nonzero` are non-zero (no tags). */
static inline size_t gvm_pages_len(unsigned count, unsigned nonzero)
{
	return GVM_BITMAP_BYTES(count) + (size_t)nonzero * GVM_PAGE_SIZE;
}

/* 1 if the 4 KiB page is all zero. */
int gvm_page_is_zero(const void *page);

void gvm_greeting_encode(const struct gvm_greeting *g, uint8_t out[GVM_GREETING_SIZE]);
void gvm_greeting_decode(const uint8_t in[GVM_GREETING_SIZE], struct gvm_greeting *g);
void gvm_hello_encode(const struct gvm_hello *g, uint8_t out[GVM_HELLO_SIZE]);
void gvm_hello_decode(const uint8_t in[GVM_HELLO_SIZE], struct gvm_hello *g);
void gvm_stat_encode(const struct gvm_stat *s, uint8_t out[GVM_STAT_SIZE]);
void gvm_stat_decode(const uint8_t in[GVM_STAT_SIZE], struct gvm_stat *s);

const char *gvm_op_name(unsigned op);

#endif
