/*
 * Seed corpus generator for the harnesses in tests/fuzz/:
 *   gen_corpus DIR    writes DIR/fuzz_proto_server/, DIR/fuzz_proto_client/,
 *                     DIR/fuzz_config/ and DIR/fuzz_qemu_text/
 * Frames are built with the library's own encoder (gvm_hdr_encode & co), so
 * the seeds are valid frames of every op, plus a few deliberately broken ones.
 * tests/fuzz/run.sh runs it on every build; its output is also checked in
 * under tests/fuzz/corpus/.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 4096;
		b->p = realloc(b->p, b->cap);
		if (!b->p) {
			perror("realloc");
			exit(1);
		}
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static const char *root;

static void save(const char *harness, const char *name, const void *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, harness);
	if (mkdir(path, 0755) < 0 && errno != EEXIST) {
		perror(path);
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/%s/%s", root, harness, name);
	f = fopen(path, "wb");
	if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) {
		perror(path);
		exit(1);
	}
}

static void save_buf(const char *harness, const char *name, struct buf *b)
{
	save(harness, name, b->p, b->len);
	free(b->p);
	*b = (struct buf){ 0 };
}

static void save_str(const char *harness, const char *name, const char *s)
{
	save(harness, name, s, strlen(s));
}

/* ------------------------------------------------------------ frames */

static uint64_t next_id;
static uint32_t next_flags; /* header flags of the next frames (GVM_HF_TAGS) */

static void frame(struct buf *b, uint16_t op, uint64_t region, uint64_t page, uint32_t count,
		  int32_t status, const void *payload, uint32_t len)
{
	struct gvm_hdr h = { .magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = op,
			     .id = next_id++, .region = region, .page = page, .count = count,
			     .status = status, .len = len, .flags = next_flags };
	uint8_t raw[GVM_HDR_SIZE];

	gvm_hdr_encode(&h, raw);
	put(b, raw, sizeof(raw));
	if (len)
		put(b, payload, len);
}

/* The first frame's id: fuzz_proto_server takes the store capacity from its low 6 bits. */
static void start(uint64_t first_id)
{
	next_id = first_id;
}

static void hello(struct buf *b, uint32_t version)
{
	struct gvm_hello h = { .version = version };
	uint8_t p[GVM_HELLO_SIZE];

	gvm_hello_encode(&h, p);
	frame(b, GVM_OP_HELLO, 0, 0, 0, 0, p, sizeof(p));
}

static void open_region(struct buf *b, uint64_t region, uint8_t keybyte)
{
	uint8_t key[GVM_KEY_SIZE];

	memset(key, keybyte, sizeof(key));
	frame(b, GVM_OP_OPEN, region, 0, 0, 0, key, sizeof(key));
}

/*
 * A page payload for `count` pages: page i is non-zero when bit i of `mask`
 * is set (filled with fill+i); `zero_set` marks pages sent with a set bit but
 * all-zero content (a zero page the store must treat as clear).
 */
static struct buf pages_payload(unsigned count, uint64_t mask, uint64_t zero_set, uint8_t fill)
{
	struct buf b = { 0 };
	uint8_t bm[GVM_BITMAP_BYTES(GVM_MAX_PAGES)] = { 0 };
	uint8_t pg[GVM_PAGE_SIZE];

	for (unsigned i = 0; i < count && i < 64; i++)
		if ((mask | zero_set) >> i & 1)
			gvm_bitmap_set(bm, i);
	put(&b, bm, GVM_BITMAP_BYTES(count));
	for (unsigned i = 0; i < count && i < 64; i++) {
		if (!((mask | zero_set) >> i & 1))
			continue;
		memset(pg, 0, sizeof(pg));
		if (mask >> i & 1) {
			pg[0] = (uint8_t)(fill + i);
			pg[GVM_PAGE_SIZE - 1] = (uint8_t)(0x80 | i);
			pg[i * 61 % GVM_PAGE_SIZE] = 0x5a;
		}
		put(&b, pg, sizeof(pg));
	}
	return b;
}

static void write_pages(struct buf *b, uint64_t region, uint64_t page, unsigned count,
			uint64_t mask, uint64_t zero_set, uint8_t fill)
{
	struct buf p = pages_payload(count, mask, zero_set, fill);

	frame(b, GVM_OP_WRITE, region, page, count, 0, p.p, (uint32_t)p.len);
	free(p.p);
}

/* The same with a 16-byte tag after the pages for each page sent (sealed pages). */
static void write_pages_tagged(struct buf *b, uint64_t region, uint64_t page, unsigned count,
			       uint64_t mask, uint64_t zero_set, uint8_t fill)
{
	struct buf p = pages_payload(count, mask, zero_set, fill);
	uint8_t tag[GVM_TAG_SIZE];

	for (unsigned i = 0; i < count && i < 64; i++) {
		if (!((mask | zero_set) >> i & 1))
			continue;
		memset(tag, (int)(0xa0 + i), sizeof(tag));
		put(&p, tag, sizeof(tag));
	}
	next_flags = GVM_HF_TAGS;
	frame(b, GVM_OP_WRITE, region, page, count, 0, p.p, (uint32_t)p.len);
	next_flags = 0;
	free(p.p);
}

static void simple(struct buf *b, uint16_t op, uint64_t region, uint64_t page, uint32_t count)
{
	frame(b, op, region, page, count, 0, NULL, 0);
}

static void gen_server(void)
{
	const char *H = "fuzz_proto_server";
	struct buf b = { 0 };

	/* One valid frame of every request op, alone (after HELLO where needed). */
	start(0); hello(&b, 1); save_buf(H, "hello", &b);
	start(0); hello(&b, 2); save_buf(H, "hello_bad_version", &b);
	start(0); hello(&b, 1); simple(&b, GVM_OP_PING, 0, 0, 0); save_buf(H, "ping", &b);
	start(0); hello(&b, 1); simple(&b, GVM_OP_STAT, 0, 0, 0); save_buf(H, "stat", &b);
	start(0); hello(&b, 1); open_region(&b, 1, 0xaa); save_buf(H, "open", &b);
	start(0); hello(&b, 1); simple(&b, GVM_OP_READ, 1, 0, 1); save_buf(H, "read_unopened", &b);
	start(0); hello(&b, 1); simple(&b, GVM_OP_FREE, 1, 0, 0); save_buf(H, "free_unopened", &b);
	start(0); hello(&b, 1); simple(&b, GVM_OP_LIST, 1, 0, 64); save_buf(H, "list_unopened", &b);
	start(0); hello(&b, 1); write_pages(&b, 9, 0, 2, 1, 0, 1); save_buf(H, "write_unbound", &b);

	/* Sealed pages: a tagged WRITE, a tagged READ back, a WRITE whose tags are short. */
	start(0);
	hello(&b, 1);
	open_region(&b, 1, 0xaa);
	write_pages_tagged(&b, 1, 0, 3, 0x5, 0x2, 0x10);
	next_flags = GVM_HF_TAGS;
	simple(&b, GVM_OP_READ, 1, 0, 3);
	next_flags = 0;
	write_pages(&b, 1, 1, 1, 0x1, 0, 0x30);
	simple(&b, GVM_OP_READ, 1, 0, 3);
	save_buf(H, "write_read_tagged", &b);
	start(0); hello(&b, 1); open_region(&b, 1, 0xaa);
	{
		struct buf p = pages_payload(2, 0x3, 0, 0x40);
		next_flags = GVM_HF_TAGS;
		frame(&b, GVM_OP_WRITE, 1, 0, 2, 0, p.p, (uint32_t)p.len + 0); /* no tags: a framing error */
		next_flags = 0;
		free(p.p);
	}
	save_buf(H, "write_tags_missing", &b);

	/* The full life of a region, unlimited capacity. */
	start(0);
	hello(&b, 1);
	open_region(&b, 1, 0xaa);
	write_pages(&b, 1, 0, 3, 0x5, 0, 0x10);
	simple(&b, GVM_OP_READ, 1, 0, 3);
	simple(&b, GVM_OP_LIST, 1, 0, 128);
	simple(&b, GVM_OP_STAT, 0, 0, 0);
	write_pages(&b, 1, 1, 2, 0x0, 0x1, 0);   /* page 1: set bit, zero page; page 2 cleared */
	simple(&b, GVM_OP_READ, 1, 0, 4);
	simple(&b, GVM_OP_FREE, 1, 0, 0);
	simple(&b, GVM_OP_READ, 1, 0, 3);
	simple(&b, GVM_OP_PING, 0, 0, 0);
	save_buf(H, "lifecycle", &b);

	/* Capacity 3 pages: a write of 4 fails with -ENOSPC, smaller ones fit. */
	start(3);
	hello(&b, 1);
	open_region(&b, 7, 0x01);
	write_pages(&b, 7, 10, 4, 0xf, 0, 0x20);
	write_pages(&b, 7, 10, 4, 0x7, 0, 0x30);
	write_pages(&b, 7, 20, 1, 0x1, 0, 0x40);
	write_pages(&b, 7, 10, 1, 0x0, 0, 0);    /* frees one */
	write_pages(&b, 7, 20, 1, 0x1, 0, 0x41);
	simple(&b, GVM_OP_LIST, 7, 0, 64);
	simple(&b, GVM_OP_READ, 7, 8, 16);
	save_buf(H, "capacity", &b);

	/* Writes across a 64-page chunk boundary and at the top of the page space. */
	start(0);
	hello(&b, 1);
	open_region(&b, 2, 0x02);
	write_pages(&b, 2, 62, 4, 0xb, 0, 0x50);
	write_pages(&b, 2, 127, 3, 0x5, 0, 0x60);
	write_pages(&b, 2, (1ull << 52) - 2, 2, 0x3, 0, 0x70);
	simple(&b, GVM_OP_READ, 2, 60, 72);
	simple(&b, GVM_OP_LIST, 2, 0, 1u << 20);
	simple(&b, GVM_OP_READ, 2, (1ull << 52) - 1024, 1024);
	write_pages(&b, 2, 0, 1024, 0, 0, 0);    /* a full-size clear */
	simple(&b, GVM_OP_READ, 2, 0, 1024);
	save_buf(H, "chunks", &b);

	/* Keys: the same region with another key is refused; many regions grow the table. */
	start(0);
	hello(&b, 1);
	open_region(&b, 5, 0x11);
	open_region(&b, 5, 0x12);
	open_region(&b, 5, 0x11);
	for (uint64_t r = 100; r < 112; r++)
		open_region(&b, r, (uint8_t)r);
	write_pages(&b, 105, 3, 1, 1, 0, 0x33);
	simple(&b, GVM_OP_FREE, 104, 0, 0);
	simple(&b, GVM_OP_READ, 105, 3, 1);
	simple(&b, GVM_OP_STAT, 0, 0, 0);
	hello(&b, 1);                              /* second HELLO: -EALREADY */
	save_buf(H, "keys", &b);

	/* Many chunks in one region: the chunk table grows and entries are deleted. */
	start(0);
	hello(&b, 1);
	open_region(&b, 3, 0x03);
	for (uint64_t c = 0; c < 20; c++)
		write_pages(&b, 3, c * 64 + (c % 5), 1, 1, 0, (uint8_t)c);
	/* 1024 pages over 17 chunks: the reservation doubles the 64-entry table. */
	write_pages(&b, 3, 20 * 64 + 7, 1024, 0x3, 0, 0x90);
	for (uint64_t c = 0; c < 20; c += 2)
		write_pages(&b, 3, c * 64 + (c % 5), 1, 0, 0, 0);
	simple(&b, GVM_OP_READ, 3, 20 * 64, 1024);
	simple(&b, GVM_OP_LIST, 3, 0, 20 * 64);
	simple(&b, GVM_OP_FREE, 3, 0, 0);
	save_buf(H, "many_chunks", &b);

	/* Broken streams: the server must stop at the bad frame. */
	start(0); simple(&b, GVM_OP_READ, 1, 0, 1); save_buf(H, "before_hello", &b);
	start(0); hello(&b, 1); frame(&b, GVM_OP_READ, 1, 0, 0, 0, NULL, 0); save_buf(H, "read_count0", &b);
	start(0); hello(&b, 1); frame(&b, GVM_OP_READ, 1, 0, 1025, 0, NULL, 0); save_buf(H, "read_count1025", &b);
	start(0); hello(&b, 1); frame(&b, GVM_OP_PING, 0, 0, 0, -5, NULL, 0); save_buf(H, "request_status", &b);
	start(0); hello(&b, 1); frame(&b, 42, 0, 0, 0, 0, NULL, 0); save_buf(H, "unknown_op", &b);
	start(0); hello(&b, 1); frame(&b, GVM_OP_GREETING, 0, 0, 0, 0, NULL, 0); save_buf(H, "greeting_as_request", &b);
	{
		/* WRITE whose bitmap claims more pages than it carries. */
		struct buf p = pages_payload(4, 0x3, 0, 0x77);
		start(0);
		hello(&b, 1);
		open_region(&b, 1, 0xaa);
		p.p[0] |= 0x4;
		frame(&b, GVM_OP_WRITE, 1, 0, 4, 0, p.p, (uint32_t)p.len);
		free(p.p);
		save_buf(H, "write_bad_bitmap", &b);
	}
	{
		/* A bit beyond count. */
		struct buf p = pages_payload(3, 0x1, 0, 0x78);
		start(0);
		hello(&b, 1);
		open_region(&b, 1, 0xaa);
		p.p[0] |= 0x80;
		frame(&b, GVM_OP_WRITE, 1, 0, 3, 0, p.p, (uint32_t)p.len);
		free(p.p);
		save_buf(H, "write_bit_beyond_count", &b);
	}
	{
		uint8_t raw[GVM_HDR_SIZE];
		struct gvm_hdr h = { .magic = 0x314d5646u, .version = 1, .op = GVM_OP_PING };
		gvm_hdr_encode(&h, raw);
		save(H, "bad_magic", raw, sizeof(raw));
	}
	start(0); hello(&b, 1); b.len -= 7; save_buf(H, "truncated", &b);
}

/* ------------------------------------------------------------ replies */

static void gen_client(void)
{
	const char *H = "fuzz_proto_client";
	struct buf b = { 0 }, all = { 0 };
	struct gvm_greeting g = { .version = 1 };
	struct gvm_stat st = { 12, 1024, 2, 3, 40, 50, 1 << 20, 1 << 21 };
	uint8_t gp[GVM_GREETING_SIZE], sp[GVM_STAT_SIZE], lb[GVM_BITMAP_BYTES(128)] = { 0x81, 0, 0, 0, 0, 0, 0, 0x40, 1 };
	struct buf rp = pages_payload(3, 0x5, 0, 0x10);

	for (unsigned i = 0; i < GVM_NONCE_SIZE; i++)
		g.nonce[i] = (uint8_t)(i * 7 + 1);
	gvm_greeting_encode(&g, gp);
	gvm_stat_encode(&st, sp);

	start(0); frame(&b, GVM_OP_GREETING, 0, 0, 0, 0, gp, sizeof(gp)); save_buf(H, "greeting", &b);
	g.flags = GVM_GREET_AUTH;
	gvm_greeting_encode(&g, gp);
	start(0); frame(&b, GVM_OP_GREETING, 0, 0, 0, 0, gp, sizeof(gp)); save_buf(H, "greeting_auth", &b);

	start(1); frame(&b, GVM_OP_HELLO | GVM_OP_REPLY, 0, 0, 0, 0, NULL, 0); save_buf(H, "hello_reply", &b);
	start(1); frame(&b, GVM_OP_HELLO | GVM_OP_REPLY, 0, 0, 0, -EACCES, NULL, 0); save_buf(H, "hello_eacces", &b);
	{
		uint8_t proof[GVM_PROOF_SIZE];
		memset(proof, 0x42, sizeof(proof));
		start(1); frame(&b, GVM_OP_HELLO | GVM_OP_REPLY, 0, 0, 0, 0, proof, sizeof(proof));
		save_buf(H, "hello_reply_proof", &b);
		g.flags = GVM_GREET_AUTH | GVM_GREET_KEYED;
		gvm_greeting_encode(&g, gp);
		start(0); frame(&b, GVM_OP_GREETING, 0, 0, 0, 0, gp, sizeof(gp)); save_buf(H, "greeting_keyed", &b);
		g.flags = GVM_GREET_AUTH;
		gvm_greeting_encode(&g, gp);
		/* A tagged READ reply: 2 pages, then their tags. */
		struct buf tp = pages_payload(3, 0x5, 0, 0x10);
		uint8_t tag[GVM_TAG_SIZE];
		memset(tag, 0x77, sizeof(tag));
		put(&tp, tag, sizeof(tag));
		put(&tp, tag, sizeof(tag));
		next_flags = GVM_HF_TAGS;
		start(3); frame(&b, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 3, 0, tp.p, (uint32_t)tp.len);
		next_flags = 0;
		save_buf(H, "read_reply_tagged", &b);
		free(tp.p);
	}
	start(2); frame(&b, GVM_OP_OPEN | GVM_OP_REPLY, 1, 0, 0, 0, NULL, 0); save_buf(H, "open_reply", &b);
	start(3); frame(&b, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 3, 0, rp.p, (uint32_t)rp.len); save_buf(H, "read_reply", &b);
	start(3); frame(&b, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 1024, 0, (uint8_t[128]){ 0 }, 128); save_buf(H, "read_reply_zero", &b);
	start(3); frame(&b, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 3, -ENOMEM, NULL, 0); save_buf(H, "read_enomem", &b);
	start(4); frame(&b, GVM_OP_WRITE | GVM_OP_REPLY, 1, 0, 3, 0, NULL, 0); save_buf(H, "write_reply", &b);
	start(4); frame(&b, GVM_OP_WRITE | GVM_OP_REPLY, 1, 0, 3, -ENOSPC, NULL, 0); save_buf(H, "write_enospc", &b);
	start(5); frame(&b, GVM_OP_STAT | GVM_OP_REPLY, 0, 0, 0, 0, sp, sizeof(sp)); save_buf(H, "stat_reply", &b);
	start(6); frame(&b, GVM_OP_FREE | GVM_OP_REPLY, 1, 0, 0, 0, NULL, 0); save_buf(H, "free_reply", &b);
	start(7); frame(&b, GVM_OP_LIST | GVM_OP_REPLY, 1, 0, 128, 0, lb, sizeof(lb)); save_buf(H, "list_reply", &b);
	start(7); frame(&b, GVM_OP_LIST | GVM_OP_REPLY, 1, 0, 70, 0, lb, GVM_BITMAP_BYTES(70)); save_buf(H, "list_reply_70", &b);
	start(8); frame(&b, GVM_OP_PING | GVM_OP_REPLY, 0, 0, 0, 0, NULL, 0); save_buf(H, "ping_reply", &b);
	start(8); frame(&b, GVM_OP_PING | GVM_OP_REPLY, 0, 0, 0, -4095, NULL, 0); save_buf(H, "ping_status_min", &b);
	start(8); frame(&b, GVM_OP_PING | GVM_OP_REPLY, 0, 0, 0, -4096, NULL, 0); save_buf(H, "bad_status", &b);
	start(8); frame(&b, GVM_OP_PING, 0, 0, 0, 0, NULL, 0); save_buf(H, "bad_request_op", &b);
	start(8); frame(&b, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 3, -5, rp.p, 16); save_buf(H, "bad_error_payload", &b);

	/* A whole session: greeting, then a reply of every op. */
	start(0);
	g.flags = 0;
	gvm_greeting_encode(&g, gp);
	frame(&all, GVM_OP_GREETING, 0, 0, 0, 0, gp, sizeof(gp));
	frame(&all, GVM_OP_HELLO | GVM_OP_REPLY, 0, 0, 0, 0, NULL, 0);
	frame(&all, GVM_OP_OPEN | GVM_OP_REPLY, 1, 0, 0, 0, NULL, 0);
	frame(&all, GVM_OP_WRITE | GVM_OP_REPLY, 1, 0, 3, 0, NULL, 0);
	frame(&all, GVM_OP_READ | GVM_OP_REPLY, 1, 0, 3, 0, rp.p, (uint32_t)rp.len);
	frame(&all, GVM_OP_LIST | GVM_OP_REPLY, 1, 0, 128, 0, lb, sizeof(lb));
	frame(&all, GVM_OP_STAT | GVM_OP_REPLY, 0, 0, 0, 0, sp, sizeof(sp));
	frame(&all, GVM_OP_FREE | GVM_OP_REPLY, 1, 0, 0, 0, NULL, 0);
	frame(&all, GVM_OP_OPEN | GVM_OP_REPLY, 2, 0, 0, -EACCES, NULL, 0);
	frame(&all, GVM_OP_PING | GVM_OP_REPLY, 0, 0, 0, 0, NULL, 0);
	save_buf(H, "session", &all);
	free(rp.p);
}

/* ------------------------------------------------------------ text */

static void gen_config(void)
{
	const char *H = "fuzz_config";
	static const struct { const char *name, *text; } seeds[] = {
		{ "ipv4", "10.0.0.1\n10.0.0.2:9998\n10.0.0.3:1\n" },
		{ "mixed", "# giantvm pool\n\n  node-a.example.com:7000  # first\r\n[::1]:9999\n"
			   "[2001:db8::1]\n[::ffff:1.2.3.4]:65535\n\tNode-B.Example.COM\n192.168.1.20:9000\n" },
		{ "one", "localhost" },
		{ "seal_on", "seal = on\n10.0.0.1\n" },
		{ "seal_off", "# sealed pages\n10.0.0.1\n  seal=off  # loopback only\n" },
		{ "bad_seal_twice", "seal = on\nseal = off\n10.0.0.1\n" },
		{ "bad_seal_value", "seal = maybe\n10.0.0.1\n" },
		{ "bad_setting", "sealed = on\n10.0.0.1\n" },
		{ "crlf", "10.1.1.1:9999\r\n10.1.1.2:9999\r\n" },
		{ "leading_zero_port", "h1:09999\nh2:00001\n" },
		{ "ipv6_forms", "[0:0:0:0:0:0:0:1]:1\n[fe80::1%eth0]:2\n[::]:3\n" },
		{ "bad_dup", "10.0.0.1\n10.0.0.1:9999\n" },
		{ "bad_dup_case", "Host.example\nhost.EXAMPLE:9999\n" },
		{ "bad_ipv4", "256.1.1.1\n" },
		{ "bad_ipv4_short", "1.2.3\n" },
		{ "bad_ipv6_nobracket", "::1\n" },
		{ "bad_ipv6_open", "[::1\n" },
		{ "bad_ipv6_port", "[::1]9999\n" },
		{ "bad_port0", "host:0\n" },
		{ "bad_port_big", "host:65536\n" },
		{ "bad_port_sign", "host:+99\n" },
		{ "bad_space", "a b\n" },
		{ "bad_label_dash", "-bad.example\nbad-.example\n" },
		{ "bad_label_empty", "a..b\n" },
		{ "bad_label_long", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example\n" },
		{ "bad_char", "host_name\n" },
		{ "bad_close_bracket", "host]:1\n" },
		{ "bad_missing_host", ":9999\n" },
		{ "bad_empty", "" },
		{ "bad_only_comments", "# nothing\n   \n\t# here\n" },
	};

	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
		save_str(H, seeds[i].name, seeds[i].text);
	save(H, "bad_nul", "10.0.0.1\n10.0\0.0.2\n", 20);
	{
		/* A 253-character host name (the longest allowed) with a port. */
		char s[300];
		size_t o = 0;
		for (int l = 0; l < 4; l++) {
			memset(s + o, 'a' + l, 63);
			o += 63;
			s[o++] = '.';
		}
		o--; /* 4*63 + 3 dots = 255: trim to 253 */
		o -= 2;
		memcpy(s + o, ":65535\n", 7);
		save(H, "long_hostname", s, o + 7);
	}
}

static void gen_qemu_text(void)
{
	const char *H = "fuzz_qemu_text";

	/* `info ramblock` from QEMU 7.2 (pc machine, 512 MiB). */
	save_str(H, "ramblock_7_2",
		 "              Block Name    PSize              Offset               Used              Total\r\n"
		 "                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000\r\n"
		 "                vga.vram    4 KiB  0x0000000020080000 0x0000000001000000 0x0000000001000000\r\n"
		 "    /rom@etc/acpi/tables    4 KiB  0x0000000021100000 0x0000000000020000 0x0000000000200000\r\n"
		 "                 pc.bios    4 KiB  0x0000000020000000 0x0000000000040000 0x0000000000040000\r\n"
		 "  0000:00:03.0/e1000.rom    4 KiB  0x00000000210c0000 0x0000000000040000 0x0000000000040000\r\n"
		 "                  pc.rom    4 KiB  0x0000000020040000 0x0000000000020000 0x0000000000020000\r\n"
		 "   /rom@etc/table-loader    4 KiB  0x0000000021300000 0x0000000000001000 0x0000000000010000\r\n"
		 "      /rom@etc/acpi/rsdp    4 KiB  0x0000000021340000 0x0000000000001000 0x0000000000001000\r\n");
	/* The same as it arrives inside QMP's human-monitor-command reply. */
	save_str(H, "ramblock_qmp",
		 "{\"return\": \"              Block Name    PSize              Offset               Used              Total\\r\\n"
		 "                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000\\r\\n"
		 "                    mem0    2 MiB  0x0000000020000000 0x0000000040000000 0x0000000040000000\\r\\n\"}\r\n");
	/* With a host-address column (newer QEMU); the parser takes a 7th 0x field. */
	save_str(H, "ramblock_hva",
		 "              Block Name    PSize              Offset               Used              Total                HVA\r\n"
		 "                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000 0x00007f1234400000\r\n");
	save_str(H, "ramblock_no_header",
		 "                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000\r\n");

	/* query-memdev from QEMU 7.2. */
	save_str(H, "memdev_7_2",
		 "{\"return\": [{\"dump\": true, \"prealloc\": false, \"share\": false, \"host-nodes\": [], "
		 "\"size\": 536870912, \"merge\": true, \"policy\": \"default\", \"id\": \"pc.ram\"}]}\r\n");
	save_str(H, "memdev_numa",
		 "{\"return\": [{\"dump\": true, \"prealloc\": false, \"share\": true, \"host-nodes\": [0, 1], "
		 "\"size\": 1073741824, \"merge\": true, \"policy\": \"bind\", \"id\": \"mem0\"}, "
		 "{\"dump\": true, \"prealloc\": true, \"share\": false, \"host-nodes\": [], "
		 "\"size\": 1073741824, \"merge\": false, \"policy\": \"default\", \"id\": \"mem1\"}]}\r\n");
	save_str(H, "memdev_empty", "{\"return\": []}\r\n");
	save_str(H, "qmp_error",
		 "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command query-memdev has not been found\"}}\r\n");

	/* The engine's stats JSON (src/lib/stats_json.c). */
	save_str(H, "stats",
		 "{\"vm\":\"vm0\",\"uptime_s\":12.5,\"features\":\"uffd-wp\",\"faults\":1234,"
		 "\"pages_fetched\":5678,\"zero_pages\":90,\"readahead_pages\":4000,\"bytes_in\":23257088,"
		 "\"bytes_out\":0,\"resident_pages\":5768,\"budget_pages\":0,\"evictions\":0,"
		 "\"writebacks\":0,\"clean_drops\":0,\"errors\":0,\"lost_pages\":0,"
		 "\"fault_p50_us\":38.2,\"fault_p99_us\":410.0,\"nodes\":2,\"nodes_connected\":2,"
		 "\"per_node\":[{\"node\":\"10.0.0.1:9999\",\"faults\":600}]}");
	save_str(H, "stats_minimal", "{\"faults\": 0}");
	/* Out-of-range numbers (finding F1): skipped unless GVM_FUZZ_KNOWN_BUGS=1. */
	save_str(H, "stats_out_of_range", "{\"faults\":-1,\"bytes_in\":1e30,\"errors\":nan}");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	root = argv[1];
	if (mkdir(root, 0755) < 0 && errno != EEXIST) {
		perror(root);
		return 1;
	}
	gen_server();
	gen_client();
	gen_config();
	gen_qemu_text();
	return 0;
}
