/*
 * libFuzzer harness: the input is what a client sends a memory server, a
 * stream of client->server frames (48-byte header + payload, docs/PROTOCOL.md).
 *
 * Each header goes through gvm_hdr_decode(from_server = 0) and is compared
 * with a reference validator written from the document, and re-encoded to the
 * same bytes. Frames are then handled the way src/memserver/server.c does
 * (HELLO first, OPEN names the region (id, key) for this connection and binds
 * nothing, READ/WRITE/LIST/FREE need an OPENed id and act on (id, that key),
 * a framing error ends the connection), against a real RAM page store
 * (store.h) and a shadow model of what the store must hold. Checked after
 * every frame:
 *   - WRITE returns 0 or -ENOSPC exactly when the model says so, and -ENOSPC
 *     changes nothing; a bad page payload is caught by gvm_pages_check;
 *   - READ returns a valid page payload with exactly the model's non-zero
 *     pages, byte for byte; LIST returns exactly the model's page set;
 *   - the same id under another key is another region: it reads as empty and
 *     FREE of one leaves the other; FREE forgets every page of its region;
 *   - the stored-page count equals the model and never exceeds the capacity;
 *     the store holds exactly the regions that have pages in the model.
 *
 * The store's capacity comes from the low 6 bits of the first frame's id
 * (0 = unlimited), so small capacities are reachable with small inputs.
 * Every payload handed to the library is an exact-size heap copy and every
 * output buffer ends exactly where the API contract says it may, so ASan
 * reports any access past either.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "log.h"
#include "proto.h"
#include "store.h"

struct shadow_page {
	uint64_t region, page;
	const uint8_t *key;  /* GVM_KEY_SIZE bytes inside the fuzzer input */
	const uint8_t *data; /* 4096 bytes inside the fuzzer input */
	const uint8_t *tag;  /* its 16-byte tag inside the input, NULL: written without (zero) */
};

/* An id OPENed on this connection and the key it names (the last OPEN's). */
struct shadow_open {
	uint64_t region;
	const uint8_t *key;  /* inside the fuzzer input */
};

struct model {
	struct gvm_store *st;
	uint64_t capacity;
	struct shadow_page *pages;
	size_t n_pages, cap_pages;
	struct shadow_open *open;
	size_t n_open, cap_open;
	int authed;
};

/* Output buffers sized for the largest request; results are placed at the end. */
static uint8_t *read_buf;   /* gvm_pages_len(GVM_MAX_PAGES, GVM_MAX_PAGES) */
static size_t read_buf_len;
static uint8_t *list_buf;   /* GVM_BITMAP_BYTES(2^20) */
static size_t list_buf_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gvm_log_set_level(GVM_LOG_ERROR);
	read_buf_len = gvm_pages_len(GVM_MAX_PAGES, GVM_MAX_PAGES);
	read_buf = malloc(read_buf_len);
	list_buf_len = GVM_BITMAP_BYTES(1u << 20);
	list_buf = malloc(list_buf_len);
	if (!read_buf || !list_buf)
		abort();
	return 0;
}

static void *grow(void *p, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return p;
	*cap = *cap ? *cap * 2 : 16;
	p = realloc(p, *cap * elem);
	if (!p)
		abort();
	return p;
}

static int same_region(const struct shadow_page *p, uint64_t region, const uint8_t *key)
{
	return p->region == region && memcmp(p->key, key, GVM_KEY_SIZE) == 0;
}

static struct shadow_page *shadow_find(struct model *m, uint64_t region, const uint8_t *key,
				       uint64_t page)
{
	for (size_t i = 0; i < m->n_pages; i++)
		if (m->pages[i].page == page && same_region(&m->pages[i], region, key))
			return &m->pages[i];
	return NULL;
}

static int in_range(const struct shadow_page *p, uint64_t region, const uint8_t *key, uint64_t page,
		    uint64_t count)
{
	return same_region(p, region, key) && p->page >= page && p->page - page < count;
}

static size_t shadow_count_range(struct model *m, uint64_t region, const uint8_t *key, uint64_t page,
				 uint64_t count)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n_pages; i++)
		n += in_range(&m->pages[i], region, key, page, count);
	return n;
}

static void shadow_drop_range(struct model *m, uint64_t region, const uint8_t *key, uint64_t page,
			      uint64_t count)
{
	for (size_t i = 0; i < m->n_pages;) {
		if (in_range(&m->pages[i], region, key, page, count))
			m->pages[i] = m->pages[--m->n_pages];
		else
			i++;
	}
}

/* Distinct (id, key) among the model's pages: the regions the store must hold. */
static size_t shadow_regions(struct model *m)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n_pages; i++) {
		size_t j = 0;
		while (j < i && !same_region(&m->pages[j], m->pages[i].region, m->pages[i].key))
			j++;
		n += j == i;
	}
	return n;
}

/* The key an OPENed id names on this connection, or NULL (the server: -EACCES). */
static const uint8_t *open_key(struct model *m, uint64_t region)
{
	for (size_t i = 0; i < m->n_open; i++)
		if (m->open[i].region == region)
			return m->open[i].key;
	return NULL;
}

static void check_stats(struct model *m)
{
	struct gvm_store_stats ss;

	gvm_store_get_stats(m->st, &ss);
	CHECK(ss.pages_stored == m->n_pages);
	CHECK(ss.capacity_pages == m->capacity);
	CHECK(!m->capacity || ss.pages_stored <= m->capacity);
	CHECK(ss.regions == shadow_regions(m));
}

/* A READ of [page, page+count) must return exactly the model's pages. */
static void check_read(struct model *m, uint64_t region, const uint8_t *key, uint64_t page,
		       unsigned count)
{
	size_t room = gvm_pages_len(count, count);
	uint8_t *out = read_buf + read_buf_len - room;
	static uint8_t tags[GVM_MAX_PAGES * GVM_TAG_SIZE];
	const uint8_t *tg = tags;
	const char *why = NULL;
	/* Tags come back with the pages they were written with (zero if none). */
	ssize_t n = gvm_store_read_tagged(m->st, region, key, page, count, out, tags);
	size_t expect = shadow_count_range(m, region, key, page, count);
	const uint8_t *data;
	int w;

	CHECK(n >= 0);
	CHECK((size_t)n == gvm_pages_len(count, (unsigned)expect));
	w = gvm_pages_check(out, (size_t)n, count, &why);
	CHECK(w >= 0 && (size_t)w == expect);
	CHECK(fz_bitmap_weight(out, count) == w);
	data = out + GVM_BITMAP_BYTES(count);
	for (unsigned i = 0; i < count; i++) {
		struct shadow_page *sp = expect ? shadow_find(m, region, key, page + i) : NULL;
		CHECK(fz_bit(out, i) == (sp != NULL));
		if (!sp)
			continue;
		CHECK(!gvm_page_is_zero(data));
		CHECK(memcmp(data, sp->data, GVM_PAGE_SIZE) == 0);
		if (sp->tag)
			CHECK(memcmp(tg, sp->tag, GVM_TAG_SIZE) == 0);
		else
			for (unsigned b = 0; b < GVM_TAG_SIZE; b++)
				CHECK(tg[b] == 0);
		tg += GVM_TAG_SIZE;
		data += GVM_PAGE_SIZE;
	}
	CHECK(data == out + n);
}

static void check_list(struct model *m, uint64_t region, const uint8_t *key, uint64_t page,
		       uint32_t count)
{
	size_t room = GVM_BITMAP_BYTES(count);
	uint8_t *bm = list_buf + list_buf_len - room;
	int r = gvm_store_list(m->st, region, key, page, count, bm);
	size_t expect = shadow_count_range(m, region, key, page, count);

	CHECK(r == 0);
	CHECK(gvm_bitmap_weight(bm, count) == (int)expect);
	/* Same weight and every model page present: the sets are equal. */
	for (size_t i = 0; i < m->n_pages; i++)
		if (in_range(&m->pages[i], region, key, page, count))
			CHECK(fz_bit(bm, m->pages[i].page - page));
}

/*
 * WRITE with a validated payload. `orig` is the payload inside the fuzzer
 * input (stable for the whole run), `copy` the exact-size copy given to the
 * store. Returns nothing: every outcome is checked here.
 */
static void do_write(struct model *m, const struct gvm_hdr *h, const uint8_t *key,
		     const uint8_t *orig, const uint8_t *copy, int weight)
{
	unsigned count = h->count;
	const uint8_t *d = orig + GVM_BITMAP_BYTES(count);
	size_t old = shadow_count_range(m, h->region, key, h->page, count), fresh = 0;
	int tagged = !!(h->flags & GVM_HF_TAGS);
	const uint8_t *t = orig + GVM_BITMAP_BYTES(count) + (size_t)weight * GVM_PAGE_SIZE;
	int64_t delta;
	int expect, r;

	for (unsigned i = 0; i < count; i++) {
		if (!fz_bit(orig, i))
			continue;
		fresh += !gvm_page_is_zero(d);
		d += GVM_PAGE_SIZE;
	}
	CHECK(d + (tagged ? (size_t)weight * GVM_TAG_SIZE : 0) == orig + h->len);
	CHECK((long)weight == fz_bitmap_weight(orig, count));
	delta = (int64_t)fresh - (int64_t)old;
	if (delta > 0 && m->capacity && m->n_pages + (uint64_t)delta > m->capacity)
		expect = -ENOSPC;
	else
		expect = 0;

	r = gvm_store_write_tagged(m->st, h->region, key, h->page, count, copy, h->len, tagged);
	if (r != expect)
		fprintf(stderr, "WRITE region %llu page %llu count %u: got %d, model says %d\n",
			(unsigned long long)h->region, (unsigned long long)h->page, count, r, expect);
	CHECK(r == expect);
	if (r)
		return;
	shadow_drop_range(m, h->region, key, h->page, count);
	d = orig + GVM_BITMAP_BYTES(count);
	for (unsigned i = 0; i < count; i++) {
		if (!fz_bit(orig, i))
			continue;
		if (!gvm_page_is_zero(d)) {
			m->pages = grow(m->pages, &m->cap_pages, m->n_pages, sizeof(*m->pages));
			m->pages[m->n_pages++] = (struct shadow_page){ h->region, h->page + i, key, d,
								       tagged ? t : NULL };
		}
		d += GVM_PAGE_SIZE;
		t += GVM_TAG_SIZE;
	}
}

/* Handle one decoded frame; returns 0 to go on, -1 when the server would close. */
static int handle(struct model *m, const struct gvm_hdr *h, const uint8_t *orig)
{
	uint8_t *p = fz_dup(orig, h->len);
	const uint8_t *key = open_key(m, h->region);
	const char *why = NULL;
	int r, ret = 0;

	switch (h->op) {
	case GVM_OP_HELLO: {
		struct gvm_hello hello;
		uint8_t again[GVM_HELLO_SIZE];

		gvm_hello_decode(p, &hello);
		gvm_hello_encode(&hello, again);
		CHECK(memcmp(again, p, GVM_HELLO_SIZE) == 0);
		if (m->authed)
			break; /* -EALREADY, connection stays */
		if (hello.version != GVM_PROTO_VERSION) {
			ret = -1;
			break;
		}
		m->authed = 1; /* no token configured: any MAC is fine */
		break;
	}
	case GVM_OP_OPEN: {
		/* Binds nothing in the store: the server only remembers the key. */
		size_t i = 0;
		while (i < m->n_open && m->open[i].region != h->region)
			i++;
		if (i == m->n_open) {
			m->open = grow(m->open, &m->cap_open, m->n_open, sizeof(*m->open));
			m->n_open++;
		}
		m->open[i] = (struct shadow_open){ h->region, orig };
		break;
	}
	case GVM_OP_READ:
		/* The server answers -EACCES for an id this connection did not OPEN. */
		if (key)
			check_read(m, h->region, key, h->page, h->count);
		break;
	case GVM_OP_WRITE: {
		int tagged = !!(h->flags & GVM_HF_TAGS);
		int w = gvm_pages_check_tagged(p, h->len, h->count, tagged, &why);
		long ref = fz_bitmap_weight(orig, h->count);
		int ref_ok = ref >= 0 && h->len == gvm_pages_len(h->count, (unsigned)ref) +
						   (tagged ? (size_t)ref * GVM_TAG_SIZE : 0);

		CHECK((w >= 0) == ref_ok);
		if (w < 0) {
			CHECK(why && *why);
			ret = -1; /* framing error: the server closes */
			break;
		}
		if (key)  /* else -EACCES */
			do_write(m, h, key, orig, p, w);
		break;
	}
	case GVM_OP_STAT: {
		struct gvm_store_stats ss;
		struct gvm_stat s, s2;
		uint8_t enc[GVM_STAT_SIZE], enc2[GVM_STAT_SIZE];

		gvm_store_get_stats(m->st, &ss);
		s = (struct gvm_stat){ .pages_stored = ss.pages_stored, .capacity_pages = ss.capacity_pages,
				       .regions = ss.regions, .clients = 1, .reads = h->id,
				       .writes = h->region, .bytes_out = h->page, .bytes_in = ~h->id };
		gvm_stat_encode(&s, enc);
		gvm_stat_decode(enc, &s2);
		CHECK(memcmp(&s, &s2, sizeof(s)) == 0);
		gvm_stat_encode(&s2, enc2);
		CHECK(memcmp(enc, enc2, sizeof(enc)) == 0);
		break;
	}
	case GVM_OP_FREE:
		if (!key)
			break; /* -EACCES */
		r = gvm_store_free(m->st, h->region, key);
		CHECK(r == 0);
		shadow_drop_range(m, h->region, key, 0, UINT64_MAX);
		CHECK(gvm_store_region_pages(m->st, h->region, key) == 0);
		break;
	case GVM_OP_LIST:
		if (key)
			check_list(m, h->region, key, h->page, h->count);
		break;
	case GVM_OP_PING:
		break;
	default:
		CHECK(!"gvm_hdr_decode accepted an op the server does not handle");
	}
	free(p);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gvm_store_opts so = { 0 };
	struct model m = { 0 };
	char err[256];
	size_t off = 0;

	if (size >= GVM_HDR_SIZE)
		so.capacity_pages = fz_le64(data + 8) & 63;
	m.capacity = so.capacity_pages;
	CHECK(gvm_store_open(&m.st, &so, err, sizeof(err)) == 0);

	while (size - off >= GVM_HDR_SIZE) {
		uint8_t raw[GVM_HDR_SIZE];
		struct gvm_hdr h;
		int r;

		/* The header on its own, exact size: the decoder reads 48 bytes, no more
		 * (fz_check_hdr decodes a 48-byte copy). */
		memcpy(raw, data + off, GVM_HDR_SIZE);
		r = fz_check_hdr(raw, 0, &h);
		if (r)
			break; /* the server closes the connection */
		CHECK(h.len <= GVM_MAX_PAYLOAD);
		if (!m.authed && h.op != GVM_OP_HELLO)
			break; /* -EACCES, then the server closes */
		if (size - off - GVM_HDR_SIZE < h.len)
			break; /* the rest of the frame never arrives */
		if (handle(&m, &h, data + off + GVM_HDR_SIZE) < 0)
			break;
		check_stats(&m);
		off += GVM_HDR_SIZE + h.len;
	}

	/* Whatever happened, every page the model holds reads back intact. */
	for (size_t i = 0; i < m.n_pages; i++)
		check_read(&m, m.pages[i].region, m.pages[i].key, m.pages[i].page, 1);
	check_stats(&m);

	gvm_store_close(m.st);
	free(m.pages);
	free(m.open);
	return 0;
}
