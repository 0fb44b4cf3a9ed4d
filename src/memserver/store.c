/*
 * Page store: regions named by (id, key), each with its own table of 64-page
 * chunks; page data in RAM (one 4 KiB frame per stored page) or in a backing
 * file. See store.h for the API and docs/MEMSERVER.md for the file format.
 */
#define LOG_PREFIX "memserver: "

#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "log.h"
#include "giantvm_memserver.h"
#include "siphash.h"
#include "util.h"

#define EMPTY_INDEX      UINT64_MAX
#define MAX_PAGE_INDEX   (1ull << 52)
#define MAX_CHUNK_INDEX  (MAX_PAGE_INDEX / GVM_CHUNK_PAGES)
/* A WRITE of GVM_MAX_PAGES unaligned pages touches at most this many chunks. */
#define MAX_WRITE_CHUNKS (GVM_MAX_PAGES / GVM_CHUNK_PAGES + 1)
/* RAM frames come from mappings of up to this many pages (64 MiB), so the
 * mapping count stays far below vm.max_map_count. */
#define ARENA_PAGES_MAX  16384u
#define MAX_FRAMES       (1ull << 32)   /* frame numbers are u32: 16 TiB */
#define FILE_HDR_SIZE    32u
#define MIN_CHUNK_TAB    8u
/* Freed slots waiting for an fdatasync (see slot_release()): once at least
 * this many, and an eighth of the file's slots, wait, the next new chunk
 * syncs and reuses them rather than growing the file. The sync writes back
 * all the file's dirty pages inside the event loop, stalling every client,
 * so it must be rare: the file spans at most that many slots more. */
#define SLOTS_UNSYNCED_MIN   64u
#define SLOTS_UNSYNCED_SHARE 8u

struct chunk {
	uint64_t index;   /* chunk index within the region; EMPTY_INDEX = unused entry */
	uint64_t bitmap;  /* bit i set = page index*64+i is stored */
	union {
		uint32_t *fr;   /* RAM: frame of each stored page, in page order (popcount entries) */
		uint64_t slot;  /* backing file slot */
	} u;
	uint8_t *tags;    /* RAM: the pages' 16-byte tags (64 of them), NULL = all zero */
};

/*
 * A region exists only while it holds pages: an empty region and one that
 * was never written are the same thing, so OPEN binds nothing and a region
 * table can never fill with bindings nobody uses. Two keys for one id are
 * two regions: no tenant can see, block or probe another's.
 */
/* Who created regions (the server passes the client's address): quotas of
 * regions and pages per owner. 0 = nobody in particular, no quotas. */
struct owner {
	uint64_t id;
	uint64_t regions;   /* regions it created that still exist; 0 = record freed */
	uint64_t pages;     /* pages those regions hold */
};

struct region {
	struct owner *owner;
	uint64_t id;
	uint64_t home;      /* hash of (id, key): rtab position and chunk hash seed */
	uint64_t pages;     /* stored pages */
	struct chunk *tab;  /* power-of-two sized, linear probing, load <= 1/2 */
	size_t tab_cap, tab_n;
	uint8_t key[GVM_KEY_SIZE];
};

struct gvm_store {
	/* Random, so clients cannot pick region/page numbers that collide in the tables. */
	uint64_t seed;
	struct gvm_sipkey hkey;  /* the region table's hash: clients choose ids and keys */
	uint64_t capacity_pages;
	uint64_t pages_stored;
	uint64_t max_regions;
	uint64_t chunks;     /* over all regions */

	struct region **rtab; /* power-of-two sized, linear probing, load <= 1/2 */
	size_t rtab_cap, rtab_n;
	struct owner **otab;  /* same, by owner id */
	size_t otab_cap, otab_n;
	uint64_t cur_owner;   /* gvm_store_set_owner() */
	uint64_t max_owner_regions, max_owner_pages;  /* 0 = no quota */

	/* RAM mode */
	uint8_t **arenas;
	size_t n_arenas, cap_arenas;
	uint32_t arena_pages; /* frames per arena */
	uint32_t *free_fr;    /* stack of free frames; room for every frame ever made */
	size_t n_free_fr, cap_free_fr;
	int prealloc;         /* arenas populated at open, huge pages, never discarded */
	uint32_t *batch;      /* FREE: frames gathered across chunks, sorted, released in runs */

	/* Backing mode (fd >= 0) */
	int fd;
	char *path;
	int fsync_mode;
	int punch_ok;
	uint64_t n_slots;    /* slots the file spans */
	uint64_t *free_slots;
	size_t n_free_slots, cap_free_slots;
	uint64_t *unsynced_slots;  /* freed since the last fdatasync: not reused before it */
	size_t n_unsynced_slots;   /* room: cap_free_slots */
	int sync_failed;           /* the last sync failed: their cleared headers are written again */
	unsigned test_fail_syncs;
};

static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t lowbits(unsigned n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

/* ---------------------------------------------------------------- chunk tables (per region) */

static size_t chunk_home(const struct region *rg, size_t cap, uint64_t index)
{
	return (size_t)gvm_mix64(rg->home ^ index) & (cap - 1);
}

static struct chunk *chunk_find(struct region *rg, uint64_t index)
{
	size_t mask = rg->tab_cap - 1, i = chunk_home(rg, rg->tab_cap, index);

	for (;;) {
		struct chunk *c = &rg->tab[i];
		if (c->index == EMPTY_INDEX)
			return NULL;
		if (c->index == index)
			return c;
		i = (i + 1) & mask;
	}
}

/* Caller has reserved room (chunk_reserve) and checked the index is absent. */
static struct chunk *chunk_insert(struct region *rg, uint64_t index)
{
	size_t mask = rg->tab_cap - 1, i = chunk_home(rg, rg->tab_cap, index);

	while (rg->tab[i].index != EMPTY_INDEX)
		i = (i + 1) & mask;
	rg->tab[i].index = index;
	rg->tab[i].bitmap = 0;
	rg->tab[i].u.fr = NULL;
	rg->tab[i].tags = NULL;
	rg->tab_n++;
	return &rg->tab[i];
}

static struct chunk *table_alloc(size_t cap)
{
	struct chunk *t = malloc(cap * sizeof(*t));

	if (!t)
		return NULL;
	for (size_t i = 0; i < cap; i++)
		t[i].index = EMPTY_INDEX;
	return t;
}

static int chunk_resize(struct region *rg, size_t want)
{
	struct chunk *old = rg->tab, *t = table_alloc(want);
	size_t old_cap = rg->tab_cap;

	if (!t)
		return -ENOMEM;
	rg->tab = t;
	rg->tab_cap = want;
	rg->tab_n = 0;
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].index == EMPTY_INDEX)
			continue;
		struct chunk *c = chunk_insert(rg, old[i].index);
		*c = old[i];
	}
	free(old);
	return 0;
}

/* Make room for `extra` more chunks so inserts cannot fail mid-operation. */
static int chunk_reserve(struct region *rg, size_t extra)
{
	size_t want = rg->tab_cap;

	while ((rg->tab_n + extra) * 2 > want)
		want *= 2;
	return want == rg->tab_cap ? 0 : chunk_resize(rg, want);
}

/* A region that shrank gives its table back, so FREE stays proportional
 * to what the region holds, not to what it once held. Failure is harmless. */
static void chunk_maybe_shrink(struct region *rg)
{
	size_t want = rg->tab_cap;

	while (want > MIN_CHUNK_TAB && rg->tab_n * 8 < want)
		want /= 2;
	if (want != rg->tab_cap)
		(void)chunk_resize(rg, want);
}

/* Backward-shift deletion: no tombstones, so probe chains stay short. */
static void chunk_delete(struct region *rg, struct chunk *c)
{
	size_t mask = rg->tab_cap - 1, i = (size_t)(c - rg->tab), j = i;

	free(c->tags);
	c->tags = NULL;
	for (;;) {
		j = (j + 1) & mask;
		if (rg->tab[j].index == EMPTY_INDEX)
			break;
		size_t k = chunk_home(rg, rg->tab_cap, rg->tab[j].index);
		/* Entry j may stay if its home lies cyclically in (i, j]. */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		rg->tab[i] = rg->tab[j];
		i = j;
	}
	rg->tab[i].index = EMPTY_INDEX;
	rg->tab_n--;
}

/* ---------------------------------------------------------------- owners */

static size_t owner_home(const struct gvm_store *st, uint64_t id, size_t cap)
{
	return (size_t)gvm_mix64(id ^ st->seed ^ 0x6f776e6572ull) & (cap - 1);
}

/* The owner's record, created if needed (with no regions yet). NULL: -ENOMEM. */
static struct owner *owner_get(struct gvm_store *st, uint64_t id)
{
	size_t mask = st->otab_cap - 1, i = owner_home(st, id, st->otab_cap);
	struct owner *o;

	for (; st->otab[i]; i = (i + 1) & mask)
		if (st->otab[i]->id == id)
			return st->otab[i];
	if ((st->otab_n + 1) * 2 > st->otab_cap) {
		size_t cap = st->otab_cap * 2;
		struct owner **t = calloc(cap, sizeof(*t));
		if (!t)
			return NULL;
		for (size_t j = 0; j < st->otab_cap; j++) {
			if (!st->otab[j])
				continue;
			size_t k = owner_home(st, st->otab[j]->id, cap);
			while (t[k])
				k = (k + 1) & (cap - 1);
			t[k] = st->otab[j];
		}
		free(st->otab);
		st->otab = t;
		st->otab_cap = cap;
		mask = cap - 1;
		for (i = owner_home(st, id, cap); st->otab[i]; i = (i + 1) & mask)
			;
	}
	if (!(o = calloc(1, sizeof(*o))))
		return NULL;
	o->id = id;
	st->otab[i] = o;
	st->otab_n++;
	return o;
}

/* Free the record of an owner with no regions left. */
static void owner_put(struct gvm_store *st, struct owner *o)
{
	size_t mask = st->otab_cap - 1, i, j;

	if (!o || o->regions)
		return;
	for (i = owner_home(st, o->id, st->otab_cap); st->otab[i] != o; i = (i + 1) & mask)
		;
	j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (!st->otab[j])
			break;
		size_t k = owner_home(st, st->otab[j]->id, st->otab_cap);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		st->otab[i] = st->otab[j];
		i = j;
	}
	st->otab[i] = NULL;
	st->otab_n--;
	free(o);
}

/* ---------------------------------------------------------------- region table */

/* Keyed (siphash.h): an unkeyed hash's collisions would collide whatever the seed. */
static uint64_t region_hash(const struct gvm_store *st, uint64_t id, const uint8_t key[GVM_KEY_SIZE])
{
	uint8_t in[8 + GVM_KEY_SIZE];

	put64(in, id);
	memcpy(in + 8, key, GVM_KEY_SIZE);
	return gvm_siphash24(&st->hkey, in, sizeof(in));
}

static struct region *region_find(struct gvm_store *st, uint64_t id, const uint8_t key[GVM_KEY_SIZE])
{
	uint64_t h = region_hash(st, id, key);
	size_t mask = st->rtab_cap - 1, i = (size_t)h & mask;

	for (;;) {
		struct region *r = st->rtab[i];
		if (!r)
			return NULL;
		/* The key is compared in constant time: a match must not be
		 * found faster the more bytes of a guess are right. */
		if (r->home == h && r->id == id && gvm_auth_equal(r->key, key, GVM_KEY_SIZE))
			return r;
		i = (i + 1) & mask;
	}
}

static int region_reserve(struct gvm_store *st)
{
	size_t cap = st->rtab_cap * 2;
	struct region **t;

	if ((st->rtab_n + 1) * 2 <= st->rtab_cap)
		return 0;
	t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < st->rtab_cap; i++) {
		struct region *r = st->rtab[i];
		if (!r)
			continue;
		size_t j = (size_t)r->home & (cap - 1);
		while (t[j])
			j = (j + 1) & (cap - 1);
		t[j] = r;
	}
	free(st->rtab);
	st->rtab = t;
	st->rtab_cap = cap;
	return 0;
}

/* A new, empty region not yet in the table (nor counted for its owner). */
static struct region *region_alloc(struct gvm_store *st, uint64_t id, const uint8_t key[GVM_KEY_SIZE],
				   struct owner *owner)
{
	struct region *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->tab = table_alloc(MIN_CHUNK_TAB);
	if (!r->tab) {
		free(r);
		return NULL;
	}
	r->tab_cap = MIN_CHUNK_TAB;
	r->owner = owner;
	r->id = id;
	r->home = region_hash(st, id, key);
	memcpy(r->key, key, GVM_KEY_SIZE);
	return r;
}

static void region_destroy(struct region *r)
{
	if (!r)
		return;
	OPENSSL_cleanse(r->key, GVM_KEY_SIZE);
	free(r->tab);
	free(r);
}

/* Caller has reserved room (region_reserve). */
static void region_insert(struct gvm_store *st, struct region *r)
{
	size_t mask = st->rtab_cap - 1, i = (size_t)r->home & mask;

	while (st->rtab[i])
		i = (i + 1) & mask;
	st->rtab[i] = r;
	st->rtab_n++;
	r->owner->regions++;
}

/* Take an empty region out of the table and free it (its chunks are gone). */
static void region_remove(struct gvm_store *st, struct region *r)
{
	size_t mask = st->rtab_cap - 1, i = (size_t)r->home & mask, j;

	while (st->rtab[i] != r)
		i = (i + 1) & mask;
	j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (!st->rtab[j])
			break;
		size_t k = (size_t)st->rtab[j]->home & mask;
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		st->rtab[i] = st->rtab[j];
		i = j;
	}
	st->rtab[i] = NULL;
	st->rtab_n--;
	r->owner->regions--;
	owner_put(st, r->owner);
	region_destroy(r);
}

/* ---------------------------------------------------------------- RAM frames */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

static uint8_t *frame_ptr(const struct gvm_store *st, uint32_t f)
{
	return st->arenas[f / st->arena_pages] + (size_t)(f % st->arena_pages) * GVM_PAGE_SIZE;
}

/*
 * Map one more arena and put its frames on the free list. Huge pages only
 * when the arena is populated up front (--prealloc): on demand, a 2 MiB huge
 * page under one stored 4 KiB page is what made sparse writes cost 64-512
 * times their size (and khugepaged may collapse a range back after frees),
 * so on-demand arenas are MADV_NOHUGEPAGE and a stored page costs 4 KiB.
 */
static int arena_add(struct gvm_store *st, uint64_t populate_pages)
{
	size_t bytes = (size_t)st->arena_pages * GVM_PAGE_SIZE;
	uint64_t first = (uint64_t)st->n_arenas * st->arena_pages;
	uint32_t *fb;
	uint8_t **ar;
	uint8_t *a;

	if (first + st->arena_pages > MAX_FRAMES)
		return -ENOMEM;
	if (st->n_arenas == st->cap_arenas) {
		size_t cap = st->cap_arenas ? st->cap_arenas * 2 : 16;
		ar = realloc(st->arenas, cap * sizeof(*ar));
		if (!ar)
			return -ENOMEM;
		st->arenas = ar;
		st->cap_arenas = cap;
	}
	/* Every frame ever made must fit on the free list, so freeing never fails. */
	fb = realloc(st->free_fr, (st->cap_free_fr + st->arena_pages) * sizeof(*fb));
	if (!fb)
		return -ENOMEM;
	st->free_fr = fb;
	st->cap_free_fr += st->arena_pages;
	a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (a == MAP_FAILED)
		return -ENOMEM;
	/* EINVAL = a kernel without THP: nothing to advise. */
	if (madvise(a, bytes, populate_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) < 0 && errno != EINVAL)
		pr_debug("madvise(HUGEPAGE): %s", strerror(errno));
	if (populate_pages) {
		size_t pop = (size_t)GVM_MIN(populate_pages, (uint64_t)st->arena_pages) * GVM_PAGE_SIZE;
		/* GIANTVM_NO_POPULATE=1 takes the pre-5.14 path (tests cover both). */
		if (getenv("GIANTVM_NO_POPULATE") || madvise(a, pop, MADV_POPULATE_WRITE) < 0) {
			if (!getenv("GIANTVM_NO_POPULATE") && errno != EINVAL) { /* EINVAL: before 5.14; touch */
				int e = errno;
				munmap(a, bytes);
				return -e;
			}
			for (size_t off = 0; off < pop; off += GVM_PAGE_SIZE)
				((volatile uint8_t *)a)[off] = 0;
		}
	}
	st->arenas[st->n_arenas++] = a;
	/* Pushed backwards so frames are handed out in address order. */
	for (uint32_t i = st->arena_pages; i-- > 0;)
		st->free_fr[st->n_free_fr++] = (uint32_t)(first + i);
	return 0;
}

/* Make sure n frames can be taken without failing. */
static int frames_reserve(struct gvm_store *st, size_t n)
{
	while (st->n_free_fr < n) {
		int r = arena_add(st, 0);
		if (r < 0)
			return r;
	}
	return 0;
}

static uint32_t frame_take(struct gvm_store *st)
{
	return st->free_fr[--st->n_free_fr];
}

/*
 * Give frames back. Their bytes are scrubbed either way: MADV_DONTNEED drops
 * them (and the RSS); preallocated memory is kept and zeroed instead, so a
 * freed tenant's data never lingers in the server's memory (or a core).
 * Neighbouring frames are discarded with one madvise.
 */
static void frames_release(struct gvm_store *st, const uint32_t *fr, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		while (j < n && fr[j] == fr[j - 1] + 1 && fr[j] % st->arena_pages)
			j++;
		uint8_t *p = frame_ptr(st, fr[i]);
		size_t len = (j - i) * GVM_PAGE_SIZE;
		if (st->prealloc)
			memset(p, 0, len);
		else if (madvise(p, len, MADV_DONTNEED) < 0)
			pr_debug("madvise(DONTNEED): %s", strerror(errno));
		/* Pushed backwards, so the run is handed out again in address
		 * order and its next release is one madvise as well. */
		for (size_t k = j; k-- > i;)
			st->free_fr[st->n_free_fr++] = fr[k];
		i = j;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

#define FREE_BATCH 8192u

/* Release the gathered frames in address order: neighbours from different
 * chunks (sparse data) go back with one madvise. */
static void batch_flush(struct gvm_store *st, size_t *n)
{
	qsort(st->batch, *n, sizeof(uint32_t), cmp_u32);
	frames_release(st, st->batch, *n);
	*n = 0;
}

/* Capacity of a chunk's frame array for n stored pages (0 = none). */
static size_t fr_cap(unsigned n)
{
	size_t c = 1;

	if (!n)
		return 0;
	while (c < n)
		c *= 2;
	return c;
}

/* ---------------------------------------------------------------- backing file I/O */

static uint64_t slot_off(uint64_t slot)
{
	return GVM_STORE_HDR_BYTES + slot * GVM_STORE_SLOT_BYTES;
}

static uint64_t slot_data_off(uint64_t slot, unsigned page)
{
	return slot_off(slot) + GVM_STORE_HDR_BYTES + (uint64_t)page * GVM_PAGE_SIZE;
}

/* The pages' tags live in the slot's header block, after the header. */
static uint64_t slot_tag_off(uint64_t slot, unsigned page)
{
	return slot_off(slot) + GVM_STORE_TAG_OFF + (uint64_t)page * GVM_TAG_SIZE;
}

static int pwrite_full(struct gvm_store *st, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(st->fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int r = -errno;
			pr_err("backing file %s: write of %zu bytes at offset %" PRIu64 ": %s",
			       st->path, len, off, strerror(-r));
			return r;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Returns bytes read (short only at end of file) or -errno. */
static ssize_t pread_upto(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int pread_full(struct gvm_store *st, void *buf, size_t len, uint64_t off)
{
	ssize_t n = pread_upto(st->fd, buf, len, off);

	if (n < 0) {
		pr_err("backing file %s: read at offset %" PRIu64 ": %s", st->path, off, strerror((int)-n));
		return (int)n;
	}
	if ((size_t)n != len) {
		pr_err("backing file %s: file ends at offset %" PRIu64 " inside stored data",
		       st->path, off + (uint64_t)n);
		return -EIO;
	}
	return 0;
}

/* A slot header that names nothing, written over slot's. */
static int slot_zero_hdr(struct gvm_store *st, uint64_t slot)
{
	uint8_t z[GVM_STORE_SLOT_HDR_SIZE] = { 0 };

	return pwrite_full(st, z, sizeof(z), slot_off(slot));
}

/*
 * fdatasync; the slots freed before it may then be reused. Linux reports a
 * write-back error once: the pages it could not write may be marked clean,
 * and the next sync succeed without them. So after a failed sync the
 * cleared headers of the slots waiting are written again first, and the
 * slots stay waiting until a sync after that rewrite succeeds.
 */
static int store_sync(struct gvm_store *st)
{
	int r = 0;

	for (size_t i = 0; st->sync_failed && i < st->n_unsynced_slots; i++)
		if ((r = slot_zero_hdr(st, st->unsynced_slots[i])) < 0)
			return r;  /* logged; still failed */
	if (st->test_fail_syncs) {
		st->test_fail_syncs--;
		r = -EIO;
	} else if (fdatasync(st->fd) < 0) {
		r = -errno;
	}
	if (r < 0) {
		pr_err("backing file %s: fdatasync: %s", st->path, strerror(-r));
		st->sync_failed = 1;
		return r;
	}
	st->sync_failed = 0;
	if (st->n_unsynced_slots)
		memcpy(st->free_slots + st->n_free_slots, st->unsynced_slots,
		       st->n_unsynced_slots * sizeof(*st->free_slots));
	st->n_free_slots += st->n_unsynced_slots;
	st->n_unsynced_slots = 0;
	return 0;
}

static void slot_hdr_encode(uint8_t out[GVM_STORE_SLOT_HDR_SIZE], uint64_t magic, uint64_t region,
			    uint64_t index, uint64_t bitmap, const uint8_t *key, uint64_t off)
{
	put64(out, magic);
	put64(out + 8, region);
	put64(out + 16, index);
	put64(out + 24, bitmap);
	if (key)
		memcpy(out + 32, key, GVM_KEY_SIZE);
	else
		memset(out + 32, 0, GVM_KEY_SIZE);
	/* Seeded with the offset so a header copied to the wrong slot is caught. */
	put64(out + 64, gvm_hash_bytes(out, 64, off));
}

static int slot_write_chunk_hdr(struct gvm_store *st, uint64_t slot, const struct region *rg,
				uint64_t index, uint64_t bitmap)
{
	uint8_t h[GVM_STORE_SLOT_HDR_SIZE];

	/* Format 2: a chunk header names its region by (id, key). */
	slot_hdr_encode(h, GVM_STORE_CHUNK_MAGIC, rg->id, index, bitmap, rg->key, slot_off(slot));
	return pwrite_full(st, h, sizeof(h), slot_off(slot));
}

static void punch(struct gvm_store *st, uint64_t off, uint64_t len)
{
	if (!st->punch_ok)
		return;
	/* Frees the disk blocks of forgotten pages; they are invisible either way. */
	if (fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) {
		if (errno == EOPNOTSUPP || errno == ENOSYS) {
			pr_info("backing file %s: cannot punch holes; freed pages keep their disk space",
				st->path);
			st->punch_ok = 0;
		} else {
			pr_warn("backing file %s: punching a hole at offset %" PRIu64 ": %s", st->path,
				off, strerror(errno));
		}
	}
}

static void punch_pages(struct gvm_store *st, uint64_t slot, uint64_t bits)
{
	while (bits) {
		unsigned start = (unsigned)__builtin_ctzll(bits);
		unsigned end = start;
		while (end < 64 && (bits >> end & 1))
			end++;
		punch(st, slot_data_off(slot, start), (uint64_t)(end - start) * GVM_PAGE_SIZE);
		bits &= ~(lowbits(end) & ~lowbits(start));
	}
}

/* Slot numbers handed out by slot_alloc() always fit on the free list and
 * on the unsynced list (both have room for every slot of the file). */
static int slot_alloc(struct gvm_store *st, uint64_t *slot)
{
	/* A failed sync leaves the slots waiting: the file grows instead. */
	if (!st->n_free_slots &&
	    st->n_unsynced_slots >= GVM_MAX((uint64_t)SLOTS_UNSYNCED_MIN, st->n_slots / SLOTS_UNSYNCED_SHARE))
		(void)store_sync(st);
	if (st->n_free_slots) {
		*slot = st->free_slots[--st->n_free_slots];
		return 0;
	}
	if (st->n_slots + 1 > st->cap_free_slots) {
		size_t cap = st->cap_free_slots ? st->cap_free_slots * 2 : 64;
		uint64_t *f = realloc(st->free_slots, cap * sizeof(*f));
		if (!f)
			return -ENOMEM;
		st->free_slots = f;
		f = realloc(st->unsynced_slots, cap * sizeof(*f));
		if (!f)
			return -ENOMEM;  /* free_slots grew, which is harmless */
		st->unsynced_slots = f;
		st->cap_free_slots = cap;
	}
	*slot = st->n_slots++;
	return 0;
}

/*
 * A slot whose header was cleared (or that a failed WRITE filled but never
 * named) is reused only after the next fdatasync: with --fsync never, the
 * kernel may write the next owner's pages to disk before the cleared header,
 * and a power loss would then leave the old header (the freed region's key)
 * over another region's pages.
 */
static void slot_release(struct gvm_store *st, uint64_t slot)
{
	st->unsynced_slots[st->n_unsynced_slots++] = slot;
}

/* Make a slot free on disk: zero header first, so a crash never shows stale data. */
static int slot_clear(struct gvm_store *st, uint64_t slot)
{
	int r = slot_zero_hdr(st, slot);

	if (r < 0)
		return r;
	punch(st, slot_data_off(slot, 0), GVM_CHUNK_BYTES);
	return 0;
}

/* ---------------------------------------------------------------- open / scan */

/* `code` is evaluated before the message is formatted, so -errno survives. */
#define ERR(code, ...) do { int e__ = (code); snprintf(err, errlen, __VA_ARGS__); return e__; } while (0)

static void file_hdr_encode(uint8_t out[FILE_HDR_SIZE], uint32_t version)
{
	put64(out, GVM_STORE_FILE_MAGIC);
	put32(out + 8, version);
	put32(out + 12, GVM_PAGE_SIZE);
	put32(out + 16, GVM_CHUNK_PAGES);
	put32(out + 20, GVM_STORE_HDR_BYTES);
	put64(out + 24, gvm_hash_bytes(out, 24, 0));
}

/* Returns the format version (1 or 2) or -errno. */
static int check_file_hdr(struct gvm_store *st, uint64_t size, char *err, size_t errlen)
{
	uint8_t h[FILE_HDR_SIZE];
	ssize_t n;

	if (size < FILE_HDR_SIZE)
		ERR(-EINVAL, "%s: offset 0: truncated file header (%" PRIu64 " bytes); "
		    "not a giantvm backing file", st->path, size);
	n = pread_upto(st->fd, h, sizeof(h), 0);
	if (n < 0)
		ERR((int)n, "%s: reading the file header: %s", st->path, strerror((int)-n));
	if ((size_t)n != sizeof(h))
		ERR(-EIO, "%s: offset 0: short read of the file header", st->path);
	if (get64(h) != GVM_STORE_FILE_MAGIC)
		ERR(-EINVAL, "%s: offset 0: bad magic; not a giantvm backing file", st->path);
	if (get64(h + 24) != gvm_hash_bytes(h, 24, 0))
		ERR(-EINVAL, "%s: offset 0: file header checksum mismatch", st->path);
	if (get32(h + 8) != GVM_STORE_VERSION && get32(h + 8) != 1)
		ERR(-EINVAL, "%s: offset 0: unsupported format version %u", st->path, get32(h + 8));
	if (get32(h + 12) != GVM_PAGE_SIZE || get32(h + 16) != GVM_CHUNK_PAGES ||
	    get32(h + 20) != GVM_STORE_HDR_BYTES)
		ERR(-EINVAL, "%s: offset 0: unsupported geometry (page %u, chunk %u, header %u)",
		    st->path, get32(h + 12), get32(h + 16), get32(h + 20));
	return (int)get32(h + 8);
}

/* Format 1 kept a region's key in a record of its own and chunks without
 * keys; they are read into these and upgraded once the scan is done. */
struct v1_key { uint64_t id, slot; uint8_t key[GVM_KEY_SIZE]; };
struct v1_chunk { uint64_t id, index, bitmap, slot; };
struct scan {
	int version;
	struct v1_key *keys;
	size_t n_keys, cap_keys;
	struct v1_chunk *chunks;
	size_t n_chunks, cap_chunks;
};

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return 0;
	size_t c = *cap ? *cap * 2 : 64;
	void *q = realloc(*p, c * size);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

/* Add a chunk found on disk. */
static int load_chunk(struct gvm_store *st, uint64_t slot, uint64_t id, const uint8_t *key,
		      uint64_t index, uint64_t bitmap, char *err, size_t errlen)
{
	uint64_t off = slot_off(slot);
	struct region *rg = region_find(st, id, key);
	struct chunk *c;
	int r;

	if (!rg) {
		/* Owners are not on disk: regions found there belong to nobody. */
		struct owner *o = owner_get(st, 0);
		if (!o || (r = region_reserve(st)) < 0 || !(rg = region_alloc(st, id, key, o)))
			ERR(-ENOMEM, "%s: out of memory", st->path);
		region_insert(st, rg);
	}
	if ((c = chunk_find(rg, index)))
		ERR(-EINVAL, "%s: offset %" PRIu64 ": chunk %" PRIu64 " of region %" PRIu64
		    " already stored at offset %" PRIu64, st->path, off, index, id, slot_off(c->u.slot));
	if ((r = chunk_reserve(rg, 1)) < 0)
		ERR(r, "%s: out of memory", st->path);
	c = chunk_insert(rg, index);
	c->bitmap = bitmap;
	c->u.slot = slot;
	rg->pages += (uint64_t)__builtin_popcountll(bitmap);
	rg->owner->pages += (uint64_t)__builtin_popcountll(bitmap);
	st->pages_stored += (uint64_t)__builtin_popcountll(bitmap);
	st->chunks++;
	return 0;
}

static int scan_slot(struct gvm_store *st, struct scan *sc, uint64_t slot, const uint8_t *h,
		     char *err, size_t errlen)
{
	uint64_t off = slot_off(slot);
	uint64_t magic = get64(h), region = get64(h + 8), index = get64(h + 16), bitmap = get64(h + 24);

	if (magic == 0) {
		for (unsigned i = 0; i < GVM_STORE_SLOT_HDR_SIZE; i++)
			if (h[i])
				ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header "
				    "(zero magic but other bytes set)", st->path, off);
		st->free_slots[st->n_free_slots++] = slot;
		return 0;
	}
	if (magic != GVM_STORE_CHUNK_MAGIC && !(magic == GVM_STORE_KEY_MAGIC && sc->version == 1))
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header (bad magic 0x%016" PRIx64 ")",
		    st->path, off, magic);
	if (get64(h + 64) != gvm_hash_bytes(h, 64, off))
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header (checksum mismatch)",
		    st->path, off);
	if (magic == GVM_STORE_KEY_MAGIC) {
		if (index || bitmap)
			ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt key record (chunk fields set)",
			    st->path, off);
		for (size_t i = 0; i < sc->n_keys; i++)
			if (sc->keys[i].id == region)
				ERR(-EINVAL, "%s: offset %" PRIu64 ": second key record for region %" PRIu64,
				    st->path, off, region);
		if (grow((void **)&sc->keys, &sc->cap_keys, sc->n_keys, sizeof(*sc->keys)) < 0)
			ERR(-ENOMEM, "%s: out of memory", st->path);
		sc->keys[sc->n_keys].id = region;
		sc->keys[sc->n_keys].slot = slot;
		memcpy(sc->keys[sc->n_keys].key, h + 32, GVM_KEY_SIZE);
		sc->n_keys++;
		return 0;
	}
	if (index >= MAX_CHUNK_INDEX)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt chunk header (chunk index %" PRIu64
		    " out of range)", st->path, off, index);
	if (!bitmap)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt chunk header (empty bitmap)", st->path, off);
	if (sc->version >= 2)
		return load_chunk(st, slot, region, h + 32, index, bitmap, err, errlen);
	/* A format 1 chunk header carrying a key was rewritten by an upgrade
	 * that did not finish: it is already in format 2. */
	for (unsigned i = 32; i < 64; i++)
		if (h[i])
			return load_chunk(st, slot, region, h + 32, index, bitmap, err, errlen);
	if (grow((void **)&sc->chunks, &sc->cap_chunks, sc->n_chunks, sizeof(*sc->chunks)) < 0)
		ERR(-ENOMEM, "%s: out of memory", st->path);
	sc->chunks[sc->n_chunks++] = (struct v1_chunk){ region, index, bitmap, slot };
	return 0;
}

/*
 * A format 1 file: give each chunk its region's key, then rewrite the file
 * as format 2: chunk headers with keys (synced), key records cleared, the
 * new file header last. A crash before that last write leaves a format 1
 * header over chunks that already carry their key, which scan_slot takes as
 * they are; the upgrade then simply runs again.
 */
static int upgrade_v1(struct gvm_store *st, struct scan *sc, char *err, size_t errlen)
{
	uint8_t fh[FILE_HDR_SIZE], z[GVM_STORE_SLOT_HDR_SIZE] = { 0 };
	int r;

	for (size_t i = 0; i < sc->n_chunks; i++) {
		const struct v1_chunk *ch = &sc->chunks[i];
		const struct v1_key *k = NULL;
		for (size_t j = 0; j < sc->n_keys && !k; j++)
			if (sc->keys[j].id == ch->id)
				k = &sc->keys[j];
		if (!k)
			ERR(-EINVAL, "%s: offset %" PRIu64 ": chunk of region %" PRIu64
			    " which has no key record", st->path, slot_off(ch->slot), ch->id);
		if ((r = load_chunk(st, ch->slot, ch->id, k->key, ch->index, ch->bitmap, err, errlen)) < 0)
			return r;
	}
	for (size_t i = 0; i < st->rtab_cap; i++) {
		struct region *rg = st->rtab[i];
		if (!rg)
			continue;
		for (size_t j = 0; j < rg->tab_cap; j++) {
			struct chunk *c = &rg->tab[j];
			if (c->index != EMPTY_INDEX &&
			    (r = slot_write_chunk_hdr(st, c->u.slot, rg, c->index, c->bitmap)) < 0)
				ERR(r, "%s: upgrading to format 2: %s", st->path, strerror(-r));
		}
	}
	if ((r = store_sync(st)) < 0)
		ERR(r, "%s: fdatasync: %s", st->path, strerror(-r));
	for (size_t i = 0; i < sc->n_keys; i++) {
		if ((r = pwrite_full(st, z, sizeof(z), slot_off(sc->keys[i].slot))) < 0)
			ERR(r, "%s: upgrading to format 2: %s", st->path, strerror(-r));
		slot_release(st, sc->keys[i].slot);
	}
	file_hdr_encode(fh, GVM_STORE_VERSION);
	if ((r = pwrite_full(st, fh, sizeof(fh), 0)) < 0 || (r = store_sync(st)) < 0)
		ERR(r, "%s: upgrading to format 2: %s", st->path, strerror(-r));
	pr_info("backing file %s: upgraded to format %u (%zu regions)", st->path, GVM_STORE_VERSION,
		st->rtab_n);
	return 0;
}

static int open_backing(struct gvm_store *st, const char *path, char *err, size_t errlen)
{
	uint8_t h[GVM_STORE_SLOT_HDR_SIZE];
	struct scan sc = { 0 };
	struct stat sb;
	uint64_t size, nslots;
	int r;

	st->path = strdup(path);
	if (!st->path)
		ERR(-ENOMEM, "%s: out of memory", path);
	st->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	if (st->fd < 0) {
		r = -errno;
		ERR(r, "%s: %s", path, strerror(-r));
	}
	/* Two servers on one file would overwrite each other's slots. */
	if (flock(st->fd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		if (r == -EWOULDBLOCK)
			ERR(-EBUSY, "%s: in use by another memory server", path);
		ERR(r, "%s: flock: %s", path, strerror(-r));
	}
	if (fstat(st->fd, &sb) < 0) {
		r = -errno;
		ERR(r, "%s: %s", path, strerror(-r));
	}
	if (!S_ISREG(sb.st_mode))
		ERR(-EINVAL, "%s: not a regular file", path);
	size = (uint64_t)sb.st_size;
	if (size == 0) {
		uint8_t fh[FILE_HDR_SIZE];
		file_hdr_encode(fh, GVM_STORE_VERSION);
		if ((r = pwrite_full(st, fh, sizeof(fh), 0)) < 0)
			ERR(r, "%s: writing the file header: %s", path, strerror(-r));
		if (fdatasync(st->fd) < 0) {
			r = -errno;
			ERR(r, "%s: fdatasync: %s", path, strerror(-r));
		}
		return 0;
	}
	if ((r = check_file_hdr(st, size, err, errlen)) < 0)
		return r;
	sc.version = r;

	nslots = size <= GVM_STORE_HDR_BYTES ? 0 :
		 (size - GVM_STORE_HDR_BYTES + GVM_STORE_SLOT_BYTES - 1) / GVM_STORE_SLOT_BYTES;
	if (nslots > SIZE_MAX / sizeof(uint64_t))
		ERR(-EFBIG, "%s: file too large", path);
	st->cap_free_slots = nslots ? (size_t)nslots : 64;
	st->free_slots = malloc(st->cap_free_slots * sizeof(uint64_t));
	st->unsynced_slots = malloc(st->cap_free_slots * sizeof(uint64_t));
	if (!st->free_slots || !st->unsynced_slots)
		ERR(-ENOMEM, "%s: out of memory", path);
	for (uint64_t s = 0; s < nslots; s++) {
		ssize_t n = pread_upto(st->fd, h, sizeof(h), slot_off(s));
		if (n < 0) {
			snprintf(err, errlen, "%s: offset %" PRIu64 ": %s", path, slot_off(s), strerror((int)-n));
			r = (int)n;
			goto out;
		}
		if ((size_t)n < sizeof(h)) {
			/* The file ends inside this header; a hole-only tail is just free. */
			r = -EINVAL;
			if (n == 0 || slot_off(s) + (uint64_t)n < size) {
				snprintf(err, errlen, "%s: offset %" PRIu64 ": short read", path, slot_off(s));
				r = -EIO;
				goto out;
			}
			for (ssize_t i = 0; i < n; i++)
				if (h[i]) {
					snprintf(err, errlen, "%s: offset %" PRIu64 ": truncated slot header",
						 path, slot_off(s));
					goto out;
				}
			memset(h, 0, sizeof(h));
		}
		if ((r = scan_slot(st, &sc, s, h, err, errlen)) < 0)
			goto out;
	}
	st->n_slots = nslots;
	r = sc.version == 1 ? upgrade_v1(st, &sc, err, errlen) : 0;
	/* A server killed before it synced may have freed slots in the page
	 * cache only: make that durable before they are given out again. */
	if (!r && st->n_free_slots && fdatasync(st->fd) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: fdatasync: %s", path, strerror(-r));
	}
out:
	free(sc.keys);
	free(sc.chunks);
	return r;
}

#undef ERR

int gvm_store_open(struct gvm_store **out, const struct gvm_store_opts *o, char *err, size_t errlen)
{
	struct gvm_store *st = calloc(1, sizeof(*st));
	int r;

	*out = NULL;
	if (errlen)
		err[0] = 0;
	if (!st) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	st->fd = -1;
	st->capacity_pages = o->capacity_pages;
	st->max_regions = o->max_regions ? o->max_regions : GVM_STORE_MAX_REGIONS;
	st->fsync_mode = o->fsync_mode;
	st->punch_ok = 1;
	st->test_fail_syncs = o->test_fail_syncs;
	st->rtab_cap = 16;
	st->otab_cap = 16;
	st->max_owner_regions = o->max_owner_regions;
	st->max_owner_pages = o->max_owner_pages;
	/* Small capacities get small arenas (whole 2 MiB huge pages), so
	 * --prealloc populates about the capacity and no more. */
	st->arena_pages = ARENA_PAGES_MAX;
	if (o->capacity_pages && o->capacity_pages < ARENA_PAGES_MAX)
		st->arena_pages = (uint32_t)((o->capacity_pages + 511) / 512 * 512);
	if ((r = gvm_random(&st->seed, sizeof(st->seed))) < 0 || (r = gvm_sipkey_random(&st->hkey)) < 0) {
		snprintf(err, errlen, "getrandom: %s", strerror(-r));
		goto out_free;
	}
	st->rtab = calloc(st->rtab_cap, sizeof(*st->rtab));
	st->otab = calloc(st->otab_cap, sizeof(*st->otab));
	if (!st->rtab || !st->otab) {
		snprintf(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out_free;
	}
	if (o->backing) {
		r = open_backing(st, o->backing, err, errlen);
		if (r < 0)
			goto out_free;
	} else if (o->prealloc) {
		uint64_t left = o->capacity_pages;
		st->prealloc = 1;
		while (left) {
			r = arena_add(st, left);
			if (r < 0) {
				snprintf(err, errlen, "--prealloc: cannot populate %" PRIu64 " MiB: %s",
					 ((uint64_t)st->n_arenas * st->arena_pages * GVM_PAGE_SIZE) >> 20,
					 strerror(-r));
				goto out_free;
			}
			left -= GVM_MIN(left, (uint64_t)st->arena_pages);
		}
	}
	*out = st;
	return 0;

out_free:
	gvm_store_close(st);
	return r;
}

void gvm_store_close(struct gvm_store *st)
{
	if (!st)
		return;
	if (st->fd >= 0) {
		/* A clean stop leaves everything on disk, whatever the fsync mode. */
		if (fdatasync(st->fd) < 0)
			pr_err("backing file %s: fdatasync: %s", st->path, strerror(errno));
		if (close(st->fd) < 0)
			pr_err("backing file %s: close: %s", st->path, strerror(errno));
	}
	for (size_t i = 0; st->rtab && i < st->rtab_cap; i++) {
		struct region *rg = st->rtab[i];
		if (!rg)
			continue;
		if (st->fd < 0)
			for (size_t j = 0; j < rg->tab_cap; j++)
				if (rg->tab[j].index != EMPTY_INDEX) {
					free(rg->tab[j].u.fr);
					free(rg->tab[j].tags);
				}
		region_destroy(rg);
	}
	for (size_t i = 0; i < st->n_arenas; i++)
		if (munmap(st->arenas[i], (size_t)st->arena_pages * GVM_PAGE_SIZE) < 0)
			pr_warn("munmap: %s", strerror(errno));
	free(st->arenas);
	free(st->free_fr);
	free(st->batch);
	free(st->free_slots);
	free(st->unsynced_slots);
	free(st->rtab);
	for (size_t i = 0; st->otab && i < st->otab_cap; i++)
		free(st->otab[i]);
	free(st->otab);
	free(st->path);
	free(st);
}

/* ---------------------------------------------------------------- operations */

static int check_range(uint64_t page, uint64_t count, uint64_t max)
{
	if (count == 0 || count > max)
		return -EINVAL;
	if (page >= MAX_PAGE_INDEX || page + count > MAX_PAGE_INDEX)
		return -EINVAL;
	return 0;
}

struct wplan {
	uint64_t index;
	uint64_t range;  /* pages of this chunk the WRITE covers */
	uint64_t set;    /* of those, the non-zero ones */
	uint64_t old;    /* bitmap before the WRITE */
	int fresh;       /* backing: slot allocated below for a new chunk */
	uint64_t slot;   /* backing: the chunk's slot */
	uint32_t *nfr;   /* RAM: the chunk's new frame array, when its pages change */
	uint8_t *ntags;  /* RAM: a tag array for a chunk that had none */
	const uint8_t *src[GVM_CHUNK_PAGES];
	const uint8_t *tag[GVM_CHUNK_PAGES]; /* each stored page's tag (NULL: zero) */
};

static void plan_release(struct gvm_store *st, struct wplan *pl, unsigned from, unsigned to)
{
	for (unsigned k = from; k < to; k++) {
		if (pl[k].fresh) {
			/* Pages of a WRITE that failed: not for the slot's next owner. */
			punch(st, slot_data_off(pl[k].slot, 0), GVM_CHUNK_BYTES);
			slot_release(st, pl[k].slot);
		}
		pl[k].fresh = 0;
		free(pl[k].nfr);
		pl[k].nfr = NULL;
		free(pl[k].ntags);
		pl[k].ntags = NULL;
	}
}

/* Backing: write the pages of one chunk into its slot (not yet visible). */
static int plan_write_file(struct gvm_store *st, const struct wplan *p)
{
	uint64_t bits = p->set;

	while (bits) {
		unsigned start = (unsigned)__builtin_ctzll(bits), end = start + 1;
		/* Extend the run while the file and the payload are both contiguous. */
		while (end < 64 && (bits >> end & 1) && p->src[end] == p->src[end - 1] + GVM_PAGE_SIZE)
			end++;
		int r = pwrite_full(st, p->src[start], (size_t)(end - start) * GVM_PAGE_SIZE,
				    slot_data_off(p->slot, start));
		if (r < 0)
			return r;
		bits &= ~(lowbits(end) & ~lowbits(start));
	}
	/* Tags go with the data, before the header flips (zero when none came). */
	for (bits = p->set; bits;) {
		unsigned start = (unsigned)__builtin_ctzll(bits), end = start;
		uint8_t t[GVM_CHUNK_PAGES * GVM_TAG_SIZE];
		while (end < 64 && (bits >> end & 1)) {
			if (p->tag[end])
				memcpy(t + (end - start) * GVM_TAG_SIZE, p->tag[end], GVM_TAG_SIZE);
			else
				memset(t + (end - start) * GVM_TAG_SIZE, 0, GVM_TAG_SIZE);
			end++;
		}
		int r = pwrite_full(st, t, (size_t)(end - start) * GVM_TAG_SIZE, slot_tag_off(p->slot, start));
		if (r < 0)
			return r;
		bits &= ~(lowbits(end) & ~lowbits(start));
	}
	return 0;
}

/* RAM: the tags of a chunk's written pages. */
static void plan_apply_tags(struct chunk *c, struct wplan *w)
{
	if (!c->tags && w->ntags) {
		c->tags = w->ntags;
		w->ntags = NULL;
		memset(c->tags, 0, GVM_CHUNK_PAGES * GVM_TAG_SIZE);
	}
	if (!c->tags)
		return;
	for (uint64_t bits = w->set; bits; bits &= bits - 1) {
		unsigned b = (unsigned)__builtin_ctzll(bits);
		if (w->tag[b])
			memcpy(c->tags + b * GVM_TAG_SIZE, w->tag[b], GVM_TAG_SIZE);
		else
			memset(c->tags + b * GVM_TAG_SIZE, 0, GVM_TAG_SIZE);
	}
}

/* Index of page `bit`'s frame in a chunk's frame array. */
static unsigned rank(uint64_t bitmap, unsigned bit)
{
	return (unsigned)__builtin_popcountll(bitmap & lowbits(bit));
}

/*
 * RAM: apply one chunk's plan; cannot fail (frames and arrays were reserved).
 * Kept pages keep their frames, overwritten ones are copied in place, new
 * ones get a fresh frame, forgotten ones give theirs back.
 */
static void plan_apply_ram(struct gvm_store *st, struct chunk *c, struct wplan *w, uint64_t nb)
{
	uint32_t *old = c->u.fr;

	if (!w->nfr) {
		/* Same pages as before (or none left): overwrite in place. */
		for (uint64_t bits = w->set; bits; bits &= bits - 1) {
			unsigned b = (unsigned)__builtin_ctzll(bits);
			memcpy(frame_ptr(st, old[rank(w->old, b)]), w->src[b], GVM_PAGE_SIZE);
		}
		if (!nb && old) {
			frames_release(st, old, (size_t)__builtin_popcountll(w->old));
			free(old);
			c->u.fr = NULL;
		}
		return;
	}
	unsigned n = 0;
	for (uint64_t bits = nb; bits; bits &= bits - 1) {
		unsigned b = (unsigned)__builtin_ctzll(bits);
		uint32_t f = (w->old >> b & 1) ? old[rank(w->old, b)] : frame_take(st);
		if (w->set >> b & 1)
			memcpy(frame_ptr(st, f), w->src[b], GVM_PAGE_SIZE);
		w->nfr[n++] = f;
	}
	uint32_t gone[GVM_CHUNK_PAGES];
	unsigned ng = 0;
	for (uint64_t bits = w->old & ~nb; bits; bits &= bits - 1)
		gone[ng++] = old[rank(w->old, (unsigned)__builtin_ctzll(bits))];
	frames_release(st, gone, ng);
	free(old);
	c->u.fr = w->nfr;
	w->nfr = NULL;
}

/* Drop a region that no longer holds anything: it no longer exists. */
static void region_drop_if_empty(struct gvm_store *st, struct region *rg)
{
	if (rg->pages)
		chunk_maybe_shrink(rg);
	else
		region_remove(st, rg);
}

int gvm_store_write(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		    uint64_t page, unsigned count, const uint8_t *payload, size_t len)
{
	return gvm_store_write_tagged(st, region, key, page, count, payload, len, 0);
}

int gvm_store_write_tagged(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
			   uint64_t page, unsigned count, const uint8_t *payload, size_t len, int tagged)
{
	struct wplan pl[MAX_WRITE_CHUNKS];
	struct region *rg;
	const uint8_t *data;
	const char *why;
	unsigned n_plan, k;
	int64_t delta = 0;
	uint64_t any_set = 0;
	size_t new_frames = 0;
	int r, headers = 0, created = 0;

	if ((r = check_range(page, count, GVM_MAX_PAGES)) < 0)
		return r;
	int nz = gvm_pages_check_tagged(payload, len, count, tagged, &why);
	if (nz < 0)
		return -EINVAL;
	const uint8_t *tags = tagged ? payload + GVM_BITMAP_BYTES(count) + (size_t)nz * GVM_PAGE_SIZE : NULL;
	rg = region_find(st, region, key);

	uint64_t first = page / GVM_CHUNK_PAGES;
	n_plan = (unsigned)((page + count - 1) / GVM_CHUNK_PAGES - first + 1);
	for (k = 0; k < n_plan; k++) {
		pl[k].index = first + k;
		pl[k].range = pl[k].set = pl[k].old = 0;
		pl[k].fresh = 0;
		pl[k].nfr = NULL;
		pl[k].ntags = NULL;
	}
	data = payload + GVM_BITMAP_BYTES(count);
	for (unsigned i = 0; i < count; i++) {
		uint64_t p = page + i;
		struct wplan *w = &pl[p / GVM_CHUNK_PAGES - first];
		unsigned bit = (unsigned)(p % GVM_CHUNK_PAGES);

		w->range |= 1ull << bit;
		if (!gvm_bitmap_test(payload, i))
			continue;
		/* A set bit over an all-zero page is a zero page: store nothing. */
		if (!gvm_page_is_zero(data)) {
			w->set |= 1ull << bit;
			w->src[bit] = data;
			w->tag[bit] = tags;
		}
		data += GVM_PAGE_SIZE;
		if (tags)
			tags += GVM_TAG_SIZE;
	}
	for (k = 0; k < n_plan; k++) {
		struct chunk *c = rg ? chunk_find(rg, pl[k].index) : NULL;
		uint64_t nb;

		pl[k].old = c ? c->bitmap : 0;
		nb = (pl[k].old & ~pl[k].range) | pl[k].set;
		delta += __builtin_popcountll(nb) - __builtin_popcountll(pl[k].old);
		new_frames += (size_t)__builtin_popcountll(pl[k].set & ~pl[k].old);
		any_set |= pl[k].set;
	}
	if (!rg && !any_set)
		return 0;  /* only zero pages for a region that holds none: nothing to do */
	if (delta > 0 && st->capacity_pages &&
	    st->pages_stored + (uint64_t)delta > st->capacity_pages)
		return -ENOSPC;
	/* Quotas count against whoever created the region, whoever writes now. */
	if (rg && delta > 0 && rg->owner->id && st->max_owner_pages &&
	    rg->owner->pages + (uint64_t)delta > st->max_owner_pages)
		return -ENOSPC;

	/* Everything that can fail for lack of memory (or regions) happens before any change. */
	if (!rg) {
		struct owner *o;
		if (st->rtab_n >= st->max_regions)
			return -ENOSPC;
		if (!(o = owner_get(st, st->cur_owner)))
			return -ENOMEM;
		if (o->id && ((st->max_owner_regions && o->regions >= st->max_owner_regions) ||
			      (st->max_owner_pages && o->pages + (uint64_t)delta > st->max_owner_pages))) {
			owner_put(st, o);
			return -ENOSPC;
		}
		if ((r = region_reserve(st)) < 0 || !(rg = region_alloc(st, region, key, o))) {
			owner_put(st, o);
			return r < 0 ? r : -ENOMEM;
		}
		created = 1;
	}
	if ((r = chunk_reserve(rg, n_plan)) < 0)
		goto out_created;
	if (st->fd < 0) {
		if ((r = frames_reserve(st, new_frames)) < 0)
			goto out_created;
		for (k = 0; k < n_plan; k++) {
			uint64_t nb = (pl[k].old & ~pl[k].range) | pl[k].set;
			if (nb == pl[k].old || !nb)
				continue;  /* in place, or the chunk goes */
			pl[k].nfr = malloc(fr_cap((unsigned)__builtin_popcountll(nb)) * sizeof(uint32_t));
			if (!pl[k].nfr) {
				plan_release(st, pl, 0, k);
				r = -ENOMEM;
				goto out_created;
			}
		}
		for (k = 0; tagged && k < n_plan; k++) {
			struct chunk *c = pl[k].old ? chunk_find(rg, pl[k].index) : NULL;
			if (!pl[k].set || (c && c->tags))
				continue;
			if (!(pl[k].ntags = malloc(GVM_CHUNK_PAGES * GVM_TAG_SIZE))) {
				plan_release(st, pl, 0, n_plan);
				r = -ENOMEM;
				goto out_created;
			}
		}
	} else {
		for (k = 0; k < n_plan; k++) {
			struct chunk *c;
			if (pl[k].old) {
				c = chunk_find(rg, pl[k].index);
				pl[k].slot = c->u.slot;
				continue;
			}
			if (!pl[k].set)
				continue;
			if ((r = slot_alloc(st, &pl[k].slot)) < 0) {
				plan_release(st, pl, 0, k);
				goto out_created;
			}
			pl[k].fresh = 1;
		}
		/* Data first: new pages stay invisible until their header says otherwise. */
		for (k = 0; k < n_plan; k++) {
			if ((r = plan_write_file(st, &pl[k])) < 0) {
				plan_release(st, pl, 0, n_plan);
				goto out_created;
			}
		}
		if (st->fsync_mode == GVM_FSYNC_ALWAYS && (r = store_sync(st)) < 0) {
			plan_release(st, pl, 0, n_plan);
			goto out_created;
		}
	}
	if (created)
		region_insert(st, rg);

	/* Visibility: headers (or the in-memory bitmap) flip to the new state. */
	r = 0;
	for (k = 0; k < n_plan; k++) {
		struct wplan *w = &pl[k];
		uint64_t nb = (w->old & ~w->range) | w->set;
		struct chunk *c;

		if (st->fd >= 0) {
			if (nb == w->old)
				continue;
			r = nb ? slot_write_chunk_hdr(st, w->slot, rg, w->index, nb)
			       : slot_clear(st, w->slot);
			if (r < 0) {
				plan_release(st, pl, k, n_plan);
				break;
			}
			headers = 1;
		}
		c = w->old ? chunk_find(rg, w->index) : NULL;
		if (!c) {
			if (!nb)
				continue;
			c = chunk_insert(rg, w->index);
			st->chunks++;
		}
		if (st->fd >= 0) {
			c->u.slot = w->slot;
			w->fresh = 0;
			if (!nb)
				slot_release(st, w->slot);
			else
				punch_pages(st, w->slot, w->old & ~nb);
		} else {
			plan_apply_ram(st, c, w, nb);
			plan_apply_tags(c, w);
			free(w->ntags);
			w->ntags = NULL;
		}
		c->bitmap = nb;
		if (!nb) {
			chunk_delete(rg, c);
			st->chunks--;
		}
		rg->pages = rg->pages + (uint64_t)__builtin_popcountll(nb) - (uint64_t)__builtin_popcountll(w->old);
		rg->owner->pages = rg->owner->pages + (uint64_t)__builtin_popcountll(nb)
				   - (uint64_t)__builtin_popcountll(w->old);
		st->pages_stored = st->pages_stored + (uint64_t)__builtin_popcountll(nb)
				   - (uint64_t)__builtin_popcountll(w->old);
	}
	region_drop_if_empty(st, rg);
	if (!r && headers && st->fsync_mode == GVM_FSYNC_ALWAYS)
		r = store_sync(st);
	return r;

out_created:
	if (created) {
		struct owner *o = rg->owner;
		region_destroy(rg);
		owner_put(st, o);
	} else
		chunk_maybe_shrink(rg);
	return r;
}

ssize_t gvm_store_read(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		       uint64_t page, unsigned count, uint8_t *out)
{
	return gvm_store_read_tagged(st, region, key, page, count, out, NULL);
}

ssize_t gvm_store_read_tagged(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
			      uint64_t page, unsigned count, uint8_t *out, uint8_t *tags)
{
	size_t bm_bytes = GVM_BITMAP_BYTES(count);
	uint8_t *data = out + bm_bytes;
	struct region *rg;
	int r;

	if ((r = check_range(page, count, GVM_MAX_PAGES)) < 0)
		return r;
	memset(out, 0, bm_bytes);
	if (!(rg = region_find(st, region, key)))
		return (ssize_t)bm_bytes;
	for (unsigned i = 0; i < count;) {
		uint64_t p = page + i;
		unsigned bit = (unsigned)(p % GVM_CHUNK_PAGES);
		unsigned n = GVM_MIN(GVM_CHUNK_PAGES - bit, count - i);
		struct chunk *c = chunk_find(rg, p / GVM_CHUNK_PAGES);
		uint64_t bits = c ? (c->bitmap >> bit) & lowbits(n) : 0;

		while (bits) {
			unsigned s = (unsigned)__builtin_ctzll(bits), e = s;
			while (e < n && (bits >> e & 1)) {
				gvm_bitmap_set(out, i + e);
				e++;
			}
			size_t len = (size_t)(e - s) * GVM_PAGE_SIZE;
			if (tags) {
				size_t tl = (size_t)(e - s) * GVM_TAG_SIZE;
				if (st->fd >= 0) {
					if ((r = pread_full(st, tags, tl, slot_tag_off(c->u.slot, bit + s))) < 0)
						return r;
				} else if (c->tags) {
					memcpy(tags, c->tags + (bit + s) * GVM_TAG_SIZE, tl);
				} else {
					memset(tags, 0, tl);
				}
				tags += tl;
			}
			if (st->fd >= 0) {
				if ((r = pread_full(st, data, len, slot_data_off(c->u.slot, bit + s))) < 0)
					return r;
			} else {
				unsigned rk = rank(c->bitmap, bit + s);
				for (unsigned j = 0; j < e - s; j++)
					memcpy(data + (size_t)j * GVM_PAGE_SIZE, frame_ptr(st, c->u.fr[rk + j]),
					       GVM_PAGE_SIZE);
			}
			data += len;
			bits &= ~(lowbits(e) & ~lowbits(s));
		}
		i += n;
	}
	return data - out;
}

int gvm_store_list(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		   uint64_t page, uint32_t count, uint8_t *bitmap)
{
	struct region *rg;
	int r;

	if ((r = check_range(page, count, 1u << 20)) < 0)
		return r;
	memset(bitmap, 0, GVM_BITMAP_BYTES(count));
	if (!(rg = region_find(st, region, key)))
		return 0;
	for (uint32_t i = 0; i < count;) {
		uint64_t p = page + i;
		unsigned bit = (unsigned)(p % GVM_CHUNK_PAGES);
		unsigned n = GVM_MIN(GVM_CHUNK_PAGES - bit, count - i);
		struct chunk *c = chunk_find(rg, p / GVM_CHUNK_PAGES);
		uint64_t bits = c ? (c->bitmap >> bit) & lowbits(n) : 0;

		while (bits) {
			unsigned s = (unsigned)__builtin_ctzll(bits);
			gvm_bitmap_set(bitmap, i + s);
			bits &= bits - 1;
		}
		i += n;
	}
	return 0;
}

/*
 * Walks the region's own chunk table, which is at most 8 times the chunks it
 * holds (tables shrink), so a FREE costs what the region holds and nothing
 * for the rest of the store.
 */
int gvm_store_free(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE])
{
	struct region *rg = region_find(st, region, key);
	size_t nb = 0;
	int r = 0;

	if (!rg)
		return 0;
	if (st->fd < 0 && !st->batch)
		st->batch = malloc(FREE_BATCH * sizeof(uint32_t));  /* without it: chunk by chunk */
	for (size_t i = 0; i < rg->tab_cap && rg->tab_n;) {
		struct chunk *c = &rg->tab[i];
		unsigned n;

		if (c->index == EMPTY_INDEX) {
			i++;
			continue;
		}
		n = (unsigned)__builtin_popcountll(c->bitmap);
		if (st->fd >= 0) {
			/* On an I/O error the chunks not yet cleared stay, and so does the region. */
			if ((r = slot_clear(st, c->u.slot)) < 0)
				break;
			slot_release(st, c->u.slot);
		} else if (st->batch) {
			if (nb + n > FREE_BATCH)
				batch_flush(st, &nb);
			memcpy(st->batch + nb, c->u.fr, n * sizeof(uint32_t));
			nb += n;
			free(c->u.fr);
		} else {
			frames_release(st, c->u.fr, n);
			free(c->u.fr);
		}
		rg->pages -= n;
		rg->owner->pages -= n;
		st->pages_stored -= n;
		st->chunks--;
		/* Deletion may shift a later entry into slot i: look at it again.
		 * Every slot before i is empty by now, so nothing wraps past it. */
		chunk_delete(rg, c);
	}
	if (nb)
		batch_flush(st, &nb);
	if (r < 0)
		return r;
	region_remove(st, rg);
	if (st->fd >= 0 && st->fsync_mode == GVM_FSYNC_ALWAYS)
		r = store_sync(st);
	return r;
}

void gvm_store_set_owner(struct gvm_store *st, uint64_t owner)
{
	st->cur_owner = owner;
}

uint64_t gvm_store_region_pages(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE])
{
	struct region *rg = region_find(st, region, key);

	return rg ? rg->pages : 0;
}

void gvm_store_get_stats(const struct gvm_store *st, struct gvm_store_stats *out)
{
	out->pages_stored = st->pages_stored;
	out->capacity_pages = st->capacity_pages;
	out->regions = st->rtab_n;
	out->chunks = st->chunks;
}
