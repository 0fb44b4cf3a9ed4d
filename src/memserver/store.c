/*
 * Page store: (region, chunk) -> 64-page chunk, in RAM or in a backing file.
 * See store.h for the API and docs/MEMSERVER.md for the file format.
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

#include "auth.h"
#include "log.h"
#include "giantvm_memserver.h"
#include "util.h"

#define EMPTY_INDEX      UINT64_MAX
#define MAX_PAGE_INDEX   (1ull << 52)
#define MAX_CHUNK_INDEX  (MAX_PAGE_INDEX / GVM_CHUNK_PAGES)
/* A WRITE of GVM_MAX_PAGES unaligned pages touches at most this many chunks. */
#define MAX_WRITE_CHUNKS (GVM_MAX_PAGES / GVM_CHUNK_PAGES + 1)
/* RAM blocks come from mappings this big so the mapping count stays small. */
#define ARENA_BLOCKS     256u
#define FILE_HDR_SIZE    32u

struct chunk {
	uint64_t region;
	uint64_t index;   /* chunk index within the region; EMPTY_INDEX = unused entry */
	uint64_t bitmap;  /* bit i set = page index*64+i is stored */
	union {
		uint8_t *data;  /* RAM: GVM_CHUNK_BYTES block */
		uint64_t slot;  /* backing file slot */
	} u;
};

struct region {
	uint64_t id;
	uint64_t chunks;    /* chunks currently holding pages */
	uint64_t key_slot;  /* backing: slot of the key record */
	uint8_t used;
	uint8_t key[GVM_KEY_SIZE];
};

struct gvm_store {
	/* Random, so clients cannot pick region/page numbers that collide in the tables. */
	uint64_t seed;
	uint64_t capacity_pages;
	uint64_t pages_stored;

	struct chunk *tab;  /* power-of-two sized, linear probing, load <= 1/2 */
	size_t tab_cap, tab_n;
	struct region *rtab;
	size_t rtab_cap, rtab_n;

	/* RAM mode */
	uint8_t **arenas;
	size_t n_arenas, cap_arenas;
	uint8_t **free_blocks;
	size_t n_free_blocks, cap_free_blocks;

	/* Backing mode (fd >= 0) */
	int fd;
	char *path;
	int fsync_mode;
	int punch_ok;
	int prealloc;        /* RAM mode: arenas populated at open and never discarded */
	uint64_t n_slots;    /* slots the file spans */
	uint64_t *free_slots;
	size_t n_free_slots, cap_free_slots;
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

/* ---------------------------------------------------------------- index */

static size_t chunk_home(const struct gvm_store *st, uint64_t region, uint64_t index)
{
	return (size_t)gvm_mix64(gvm_mix64(region ^ st->seed) ^ index) & (st->tab_cap - 1);
}

static struct chunk *chunk_find(struct gvm_store *st, uint64_t region, uint64_t index)
{
	size_t mask = st->tab_cap - 1, i = chunk_home(st, region, index);

	for (;;) {
		struct chunk *c = &st->tab[i];
		if (c->index == EMPTY_INDEX)
			return NULL;
		if (c->index == index && c->region == region)
			return c;
		i = (i + 1) & mask;
	}
}

/* Caller has reserved room (chunk_reserve) and checked the key is absent. */
static struct chunk *chunk_insert(struct gvm_store *st, uint64_t region, uint64_t index)
{
	size_t mask = st->tab_cap - 1, i = chunk_home(st, region, index);

	while (st->tab[i].index != EMPTY_INDEX)
		i = (i + 1) & mask;
	st->tab[i].region = region;
	st->tab[i].index = index;
	st->tab[i].bitmap = 0;
	st->tab_n++;
	return &st->tab[i];
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

/* Make room for `extra` more chunks so inserts cannot fail mid-operation. */
static int chunk_reserve(struct gvm_store *st, size_t extra)
{
	size_t want = st->tab_cap, old_cap = st->tab_cap;
	struct chunk *old = st->tab, *t;

	while ((st->tab_n + extra) * 2 > want)
		want *= 2;
	if (want == st->tab_cap)
		return 0;
	t = table_alloc(want);
	if (!t)
		return -ENOMEM;
	st->tab = t;
	st->tab_cap = want;
	st->tab_n = 0;
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].index == EMPTY_INDEX)
			continue;
		struct chunk *c = chunk_insert(st, old[i].region, old[i].index);
		*c = old[i];
	}
	free(old);
	return 0;
}

/* Backward-shift deletion: no tombstones, so probe chains stay short. */
static void chunk_delete_at(struct gvm_store *st, size_t i)
{
	size_t mask = st->tab_cap - 1, j = i;

	for (;;) {
		j = (j + 1) & mask;
		if (st->tab[j].index == EMPTY_INDEX)
			break;
		size_t k = chunk_home(st, st->tab[j].region, st->tab[j].index);
		/* Entry j may stay if its home lies cyclically in (i, j]. */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		st->tab[i] = st->tab[j];
		i = j;
	}
	st->tab[i].index = EMPTY_INDEX;
	st->tab_n--;
}

static void chunk_delete(struct gvm_store *st, struct chunk *c)
{
	chunk_delete_at(st, (size_t)(c - st->tab));
}

static struct region *region_find(struct gvm_store *st, uint64_t id)
{
	size_t mask = st->rtab_cap - 1, i = (size_t)gvm_mix64(id ^ st->seed) & mask;

	for (;;) {
		struct region *r = &st->rtab[i];
		if (!r->used)
			return NULL;
		if (r->id == id)
			return r;
		i = (i + 1) & mask;
	}
}

static int region_reserve(struct gvm_store *st)
{
	size_t cap = st->rtab_cap * 2;
	struct region *old = st->rtab, *t;

	if ((st->rtab_n + 1) * 2 <= st->rtab_cap)
		return 0;
	t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < st->rtab_cap; i++) {
		if (!old[i].used)
			continue;
		size_t j = (size_t)gvm_mix64(old[i].id ^ st->seed) & (cap - 1);
		while (t[j].used)
			j = (j + 1) & (cap - 1);
		t[j] = old[i];
	}
	free(old);
	st->rtab = t;
	st->rtab_cap = cap;
	return 0;
}

/* Caller has reserved room and checked the id is absent. */
static struct region *region_insert(struct gvm_store *st, uint64_t id, const uint8_t key[GVM_KEY_SIZE])
{
	size_t mask = st->rtab_cap - 1, i = (size_t)gvm_mix64(id ^ st->seed) & mask;

	while (st->rtab[i].used)
		i = (i + 1) & mask;
	st->rtab[i].used = 1;
	st->rtab[i].id = id;
	st->rtab[i].chunks = 0;
	st->rtab[i].key_slot = 0;
	memcpy(st->rtab[i].key, key, GVM_KEY_SIZE);
	st->rtab_n++;
	return &st->rtab[i];
}

/* ---------------------------------------------------------------- RAM blocks */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Map one more arena and put its blocks on the free list. */
static int arena_add(struct gvm_store *st, int populate)
{
	size_t bytes = (size_t)ARENA_BLOCKS * GVM_CHUNK_BYTES;
	uint8_t **fb, **ar;
	uint8_t *a;

	if (st->n_arenas == st->cap_arenas) {
		size_t cap = st->cap_arenas ? st->cap_arenas * 2 : 16;
		ar = realloc(st->arenas, cap * sizeof(*ar));
		if (!ar)
			return -ENOMEM;
		st->arenas = ar;
		st->cap_arenas = cap;
	}
	/* Every block ever made must fit on the free list, so freeing never fails. */
	fb = realloc(st->free_blocks, (st->cap_free_blocks + ARENA_BLOCKS) * sizeof(*fb));
	if (!fb)
		return -ENOMEM;
	st->free_blocks = fb;
	st->cap_free_blocks += ARENA_BLOCKS;
	a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (a == MAP_FAILED)
		return -ENOMEM;
	/* Huge pages where THP is in "madvise" mode: storing a page
	 * otherwise costs a page fault per 4 KiB (most of the server's
	 * time under a write-back stream). EINVAL = no THP: fine. */
	if (madvise(a, bytes, MADV_HUGEPAGE) < 0 && errno != EINVAL)
		pr_debug("madvise(MADV_HUGEPAGE): %s", strerror(errno));
	/* GIANTVM_NO_POPULATE=1 takes the pre-5.14 path (tests cover both). */
	if (populate && (getenv("GIANTVM_NO_POPULATE") || madvise(a, bytes, MADV_POPULATE_WRITE) < 0)) {
		if (!getenv("GIANTVM_NO_POPULATE") && errno != EINVAL) { /* EINVAL: before 5.14; touch instead */
			int e = errno;
			munmap(a, bytes);
			return -e;
		}
		for (size_t off = 0; off < bytes; off += GVM_PAGE_SIZE)
			((volatile uint8_t *)a)[off] = 0;
	}
	st->arenas[st->n_arenas++] = a;
	for (unsigned i = ARENA_BLOCKS; i-- > 0;)
		st->free_blocks[st->n_free_blocks++] = a + (size_t)i * GVM_CHUNK_BYTES;
	return 0;
}

static int block_alloc(struct gvm_store *st, uint8_t **out)
{
	if (!st->n_free_blocks) {
		int r = arena_add(st, 0);
		if (r < 0)
			return r;
	}
	*out = st->free_blocks[--st->n_free_blocks];
	return 0;
}

static void ram_discard(struct gvm_store *st, uint8_t *p, size_t len)
{
	/* Gives the RSS back. Preallocated memory stays: reads go by the
	 * chunk bitmaps, so what a freed page held is never sent again. */
	if (st->prealloc)
		return;
	if (madvise(p, len, MADV_DONTNEED) < 0)
		pr_debug("madvise(DONTNEED): %s", strerror(errno));
}

static void block_free(struct gvm_store *st, uint8_t *b)
{
	ram_discard(st, b, GVM_CHUNK_BYTES);
	st->free_blocks[st->n_free_blocks++] = b;
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

static int store_sync(struct gvm_store *st)
{
	if (fdatasync(st->fd) < 0) {
		int r = -errno;
		pr_err("backing file %s: fdatasync: %s", st->path, strerror(-r));
		return r;
	}
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

static int slot_write_chunk_hdr(struct gvm_store *st, uint64_t slot, uint64_t region,
				uint64_t index, uint64_t bitmap)
{
	uint8_t h[GVM_STORE_SLOT_HDR_SIZE];

	slot_hdr_encode(h, GVM_STORE_CHUNK_MAGIC, region, index, bitmap, NULL, slot_off(slot));
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

/* Slot numbers handed out by slot_alloc() always fit on the free list. */
static int slot_alloc(struct gvm_store *st, uint64_t *slot)
{
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
		st->cap_free_slots = cap;
	}
	*slot = st->n_slots++;
	return 0;
}

static void slot_release(struct gvm_store *st, uint64_t slot)
{
	st->free_slots[st->n_free_slots++] = slot;
}

/* Make a slot free on disk: zero header first, so a crash never shows stale data. */
static int slot_clear(struct gvm_store *st, uint64_t slot)
{
	uint8_t z[GVM_STORE_SLOT_HDR_SIZE] = { 0 };
	int r = pwrite_full(st, z, sizeof(z), slot_off(slot));

	if (r < 0)
		return r;
	punch(st, slot_data_off(slot, 0), GVM_CHUNK_BYTES);
	return 0;
}

/* ---------------------------------------------------------------- open / scan */

/* `code` is evaluated before the message is formatted, so -errno survives. */
#define ERR(code, ...) do { int e__ = (code); snprintf(err, errlen, __VA_ARGS__); return e__; } while (0)

static void file_hdr_encode(uint8_t out[FILE_HDR_SIZE])
{
	put64(out, GVM_STORE_FILE_MAGIC);
	put32(out + 8, GVM_STORE_VERSION);
	put32(out + 12, GVM_PAGE_SIZE);
	put32(out + 16, GVM_CHUNK_PAGES);
	put32(out + 20, GVM_STORE_HDR_BYTES);
	put64(out + 24, gvm_hash_bytes(out, 24, 0));
}

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
	if (get32(h + 8) != GVM_STORE_VERSION)
		ERR(-EINVAL, "%s: offset 0: unsupported format version %u", st->path, get32(h + 8));
	if (get32(h + 12) != GVM_PAGE_SIZE || get32(h + 16) != GVM_CHUNK_PAGES ||
	    get32(h + 20) != GVM_STORE_HDR_BYTES)
		ERR(-EINVAL, "%s: offset 0: unsupported geometry (page %u, chunk %u, header %u)",
		    st->path, get32(h + 12), get32(h + 16), get32(h + 20));
	return 0;
}

static int scan_slot(struct gvm_store *st, uint64_t slot, const uint8_t *h, char *err, size_t errlen)
{
	uint64_t off = slot_off(slot);
	uint64_t magic = get64(h), region = get64(h + 8), index = get64(h + 16), bitmap = get64(h + 24);
	int r;

	if (magic == 0) {
		for (unsigned i = 0; i < GVM_STORE_SLOT_HDR_SIZE; i++)
			if (h[i])
				ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header "
				    "(zero magic but other bytes set)", st->path, off);
		st->free_slots[st->n_free_slots++] = slot;
		return 0;
	}
	if (magic != GVM_STORE_CHUNK_MAGIC && magic != GVM_STORE_KEY_MAGIC)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header (bad magic 0x%016" PRIx64 ")",
		    st->path, off, magic);
	if (get64(h + 64) != gvm_hash_bytes(h, 64, off))
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt slot header (checksum mismatch)",
		    st->path, off);
	if (magic == GVM_STORE_KEY_MAGIC) {
		if (index || bitmap)
			ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt key record (chunk fields set)",
			    st->path, off);
		if (region_find(st, region))
			ERR(-EINVAL, "%s: offset %" PRIu64 ": second key record for region %" PRIu64,
			    st->path, off, region);
		if (st->rtab_n >= GVM_STORE_MAX_REGIONS)
			ERR(-EINVAL, "%s: offset %" PRIu64 ": more than %u regions", st->path, off,
			    GVM_STORE_MAX_REGIONS);
		if ((r = region_reserve(st)) < 0)
			ERR(r, "%s: out of memory", st->path);
		region_insert(st, region, h + 32)->key_slot = slot;
		return 0;
	}
	for (unsigned i = 32; i < 64; i++)
		if (h[i])
			ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt chunk header (key bytes set)",
			    st->path, off);
	if (index >= MAX_CHUNK_INDEX)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt chunk header (chunk index %" PRIu64
		    " out of range)", st->path, off, index);
	if (!bitmap)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": corrupt chunk header (empty bitmap)", st->path, off);
	struct chunk *dup = chunk_find(st, region, index);
	if (dup)
		ERR(-EINVAL, "%s: offset %" PRIu64 ": chunk %" PRIu64 " of region %" PRIu64
		    " already stored at offset %" PRIu64, st->path, off, index, region,
		    slot_off(dup->u.slot));
	if ((r = chunk_reserve(st, 1)) < 0)
		ERR(r, "%s: out of memory", st->path);
	struct chunk *c = chunk_insert(st, region, index);
	c->bitmap = bitmap;
	c->u.slot = slot;
	st->pages_stored += (uint64_t)__builtin_popcountll(bitmap);
	return 0;
}

static int open_backing(struct gvm_store *st, const char *path, char *err, size_t errlen)
{
	uint8_t h[GVM_STORE_SLOT_HDR_SIZE];
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
		file_hdr_encode(fh);
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

	nslots = size <= GVM_STORE_HDR_BYTES ? 0 :
		 (size - GVM_STORE_HDR_BYTES + GVM_STORE_SLOT_BYTES - 1) / GVM_STORE_SLOT_BYTES;
	if (nslots > SIZE_MAX / sizeof(uint64_t))
		ERR(-EFBIG, "%s: file too large", path);
	st->cap_free_slots = nslots ? (size_t)nslots : 64;
	st->free_slots = malloc(st->cap_free_slots * sizeof(uint64_t));
	if (!st->free_slots)
		ERR(-ENOMEM, "%s: out of memory", path);
	for (uint64_t s = 0; s < nslots; s++) {
		ssize_t n = pread_upto(st->fd, h, sizeof(h), slot_off(s));
		if (n < 0)
			ERR((int)n, "%s: offset %" PRIu64 ": %s", path, slot_off(s), strerror((int)-n));
		if ((size_t)n < sizeof(h)) {
			/* The file ends inside this header; a hole-only tail is just free. */
			if (n == 0 || slot_off(s) + (uint64_t)n < size)
				ERR(-EIO, "%s: offset %" PRIu64 ": short read", path, slot_off(s));
			for (ssize_t i = 0; i < n; i++)
				if (h[i])
					ERR(-EINVAL, "%s: offset %" PRIu64 ": truncated slot header",
					    path, slot_off(s));
			memset(h, 0, sizeof(h));
		}
		if ((r = scan_slot(st, s, h, err, errlen)) < 0)
			return r;
	}
	st->n_slots = nslots;
	for (size_t i = 0; i < st->tab_cap; i++) {
		struct chunk *c = &st->tab[i];
		if (c->index == EMPTY_INDEX)
			continue;
		struct region *rg = region_find(st, c->region);
		if (!rg)
			ERR(-EINVAL, "%s: offset %" PRIu64 ": chunk of region %" PRIu64
			    " which has no key record", path, slot_off(c->u.slot), c->region);
		rg->chunks++;
	}
	return 0;
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
	st->fsync_mode = o->fsync_mode;
	st->punch_ok = 1;
	st->tab_cap = 64;
	st->rtab_cap = 16;
	if ((r = gvm_random(&st->seed, sizeof(st->seed))) < 0) {
		snprintf(err, errlen, "getrandom: %s", strerror(-r));
		goto out_free;
	}
	st->tab = table_alloc(st->tab_cap);
	st->rtab = calloc(st->rtab_cap, sizeof(*st->rtab));
	if (!st->tab || !st->rtab) {
		snprintf(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out_free;
	}
	if (o->backing) {
		r = open_backing(st, o->backing, err, errlen);
		if (r < 0)
			goto out_free;
	} else if (o->prealloc) {
		/* Enough blocks for the capacity in full chunks; sparser data
		 * takes more blocks, mapped on demand as usual. */
		uint64_t blocks = (o->capacity_pages + GVM_CHUNK_PAGES - 1) / GVM_CHUNK_PAGES;
		st->prealloc = 1;
		while ((uint64_t)st->n_arenas * ARENA_BLOCKS < blocks) {
			r = arena_add(st, 1);
			if (r < 0) {
				snprintf(err, errlen, "--prealloc: cannot populate %" PRIu64 " MiB: %s",
					 ((uint64_t)st->n_arenas * ARENA_BLOCKS * GVM_CHUNK_BYTES) >> 20,
					 strerror(-r));
				goto out_free;
			}
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
	for (size_t i = 0; i < st->n_arenas; i++)
		if (munmap(st->arenas[i], (size_t)ARENA_BLOCKS * GVM_CHUNK_BYTES) < 0)
			pr_warn("munmap: %s", strerror(errno));
	free(st->arenas);
	free(st->free_blocks);
	free(st->free_slots);
	free(st->tab);
	free(st->rtab);
	free(st->path);
	free(st);
}

/* ---------------------------------------------------------------- operations */

int gvm_store_bind_key(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE])
{
	struct region *rg = region_find(st, region);
	uint64_t slot = 0;
	int r;

	if (rg)
		return gvm_auth_equal(rg->key, key, GVM_KEY_SIZE) ? 0 : -EACCES;
	if (st->rtab_n >= GVM_STORE_MAX_REGIONS)
		return -ENOSPC;
	if ((r = region_reserve(st)) < 0)
		return r;
	if (st->fd >= 0) {
		uint8_t h[GVM_STORE_SLOT_HDR_SIZE];

		if ((r = slot_alloc(st, &slot)) < 0)
			return r;
		slot_hdr_encode(h, GVM_STORE_KEY_MAGIC, region, 0, 0, key, slot_off(slot));
		r = pwrite_full(st, h, sizeof(h), slot_off(slot));
		if (!r && st->fsync_mode == GVM_FSYNC_ALWAYS)
			r = store_sync(st);
		if (r < 0) {
			slot_release(st, slot);
			return -EIO;
		}
	}
	region_insert(st, region, key)->key_slot = slot;
	return 0;
}

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
	int fresh;       /* no chunk yet: block/slot allocated below */
	union { uint8_t *data; uint64_t slot; } u;
	const uint8_t *src[GVM_CHUNK_PAGES];
};

static void plan_release(struct gvm_store *st, struct wplan *pl, unsigned from, unsigned to)
{
	for (unsigned k = from; k < to; k++) {
		if (!pl[k].fresh)
			continue;
		if (st->fd >= 0)
			slot_release(st, pl[k].u.slot);
		else
			block_free(st, pl[k].u.data);
		pl[k].fresh = 0;
	}
}

/* Data phase: copy/write the pages of one chunk (not yet made visible). */
static int plan_write_data(struct gvm_store *st, const struct wplan *p)
{
	uint64_t bits = p->set;

	while (bits) {
		unsigned start = (unsigned)__builtin_ctzll(bits), end = start + 1;
		/* Extend the run while the file and the payload are both contiguous. */
		while (end < 64 && (bits >> end & 1) && p->src[end] == p->src[end - 1] + GVM_PAGE_SIZE)
			end++;
		size_t len = (size_t)(end - start) * GVM_PAGE_SIZE;
		if (st->fd >= 0) {
			int r = pwrite_full(st, p->src[start], len, slot_data_off(p->u.slot, start));
			if (r < 0)
				return r;
		} else {
			memcpy(p->u.data + (size_t)start * GVM_PAGE_SIZE, p->src[start], len);
		}
		bits &= ~(lowbits(end) & ~lowbits(start));
	}
	return 0;
}

static void ram_discard_pages(struct gvm_store *st, uint8_t *block, uint64_t bits)
{
	while (bits) {
		unsigned start = (unsigned)__builtin_ctzll(bits), end = start;
		while (end < 64 && (bits >> end & 1))
			end++;
		ram_discard(st, block + (size_t)start * GVM_PAGE_SIZE, (size_t)(end - start) * GVM_PAGE_SIZE);
		bits &= ~(lowbits(end) & ~lowbits(start));
	}
}

int gvm_store_write(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count,
		    const uint8_t *payload, size_t len)
{
	struct wplan pl[MAX_WRITE_CHUNKS];
	const uint8_t *data;
	const char *why;
	struct region *rg;
	unsigned n_plan, k;
	int64_t delta = 0;
	int r, headers = 0;

	if ((r = check_range(page, count, GVM_MAX_PAGES)) < 0)
		return r;
	if (gvm_pages_check(payload, len, count, &why) < 0)
		return -EINVAL;
	rg = region_find(st, region);
	if (!rg)
		return -ENOENT;

	uint64_t first = page / GVM_CHUNK_PAGES;
	n_plan = (unsigned)((page + count - 1) / GVM_CHUNK_PAGES - first + 1);
	for (k = 0; k < n_plan; k++) {
		pl[k].index = first + k;
		pl[k].range = pl[k].set = pl[k].old = 0;
		pl[k].fresh = 0;
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
		}
		data += GVM_PAGE_SIZE;
	}
	for (k = 0; k < n_plan; k++) {
		struct chunk *c = chunk_find(st, region, pl[k].index);
		uint64_t nb;

		pl[k].old = c ? c->bitmap : 0;
		nb = (pl[k].old & ~pl[k].range) | pl[k].set;
		delta += __builtin_popcountll(nb) - __builtin_popcountll(pl[k].old);
	}
	if (delta > 0 && st->capacity_pages &&
	    st->pages_stored + (uint64_t)delta > st->capacity_pages)
		return -ENOSPC;

	/* Everything that can fail for lack of memory happens before any change. */
	if ((r = chunk_reserve(st, n_plan)) < 0)
		return r;
	for (k = 0; k < n_plan; k++) {
		if (pl[k].old || !pl[k].set)
			continue;
		r = st->fd >= 0 ? slot_alloc(st, &pl[k].u.slot) : block_alloc(st, &pl[k].u.data);
		if (r < 0) {
			plan_release(st, pl, 0, k);
			return r;
		}
		pl[k].fresh = 1;
	}
	for (k = 0; k < n_plan; k++) {
		if (!pl[k].old)
			continue;
		struct chunk *c = chunk_find(st, region, pl[k].index);
		if (st->fd >= 0)
			pl[k].u.slot = c->u.slot;
		else
			pl[k].u.data = c->u.data;
	}

	/* Data first: new pages stay invisible until their header says otherwise. */
	for (k = 0; k < n_plan; k++) {
		if ((r = plan_write_data(st, &pl[k])) < 0) {
			plan_release(st, pl, 0, n_plan);
			return r;
		}
	}
	if (st->fd >= 0 && st->fsync_mode == GVM_FSYNC_ALWAYS && (r = store_sync(st)) < 0) {
		plan_release(st, pl, 0, n_plan);
		return r;
	}

	/* Visibility: headers (or the in-memory bitmap) flip to the new state. */
	for (k = 0; k < n_plan; k++) {
		struct wplan *w = &pl[k];
		uint64_t nb = (w->old & ~w->range) | w->set;
		struct chunk *c;

		if (nb == w->old)
			continue;
		if (st->fd >= 0) {
			r = nb ? slot_write_chunk_hdr(st, w->u.slot, region, w->index, nb)
			       : slot_clear(st, w->u.slot);
			if (r < 0) {
				plan_release(st, pl, k, n_plan);
				return r;
			}
			headers = 1;
		}
		if (!w->old) {
			c = chunk_insert(st, region, w->index);
			c->u.data = NULL;
			if (st->fd >= 0)
				c->u.slot = w->u.slot;
			else
				c->u.data = w->u.data;
			c->bitmap = nb;
			w->fresh = 0;
			rg->chunks++;
		} else if (!nb) {
			c = chunk_find(st, region, w->index);
			if (st->fd >= 0)
				slot_release(st, w->u.slot);
			else
				block_free(st, w->u.data);
			chunk_delete(st, c);
			rg->chunks--;
		} else {
			c = chunk_find(st, region, w->index);
			c->bitmap = nb;
			if (st->fd >= 0)
				punch_pages(st, w->u.slot, w->old & ~nb);
			else
				ram_discard_pages(st, w->u.data, w->old & ~nb);
		}
		st->pages_stored = st->pages_stored + (uint64_t)__builtin_popcountll(nb)
				   - (uint64_t)__builtin_popcountll(w->old);
	}
	if (headers && st->fsync_mode == GVM_FSYNC_ALWAYS && (r = store_sync(st)) < 0)
		return r;
	return 0;
}

ssize_t gvm_store_read(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count,
		       uint8_t *out)
{
	size_t bm_bytes = GVM_BITMAP_BYTES(count);
	uint8_t *data = out + bm_bytes;
	int r;

	if ((r = check_range(page, count, GVM_MAX_PAGES)) < 0)
		return r;
	memset(out, 0, bm_bytes);
	if (!region_find(st, region))
		return (ssize_t)bm_bytes;
	for (unsigned i = 0; i < count;) {
		uint64_t p = page + i;
		unsigned bit = (unsigned)(p % GVM_CHUNK_PAGES);
		unsigned n = GVM_MIN(GVM_CHUNK_PAGES - bit, count - i);
		struct chunk *c = chunk_find(st, region, p / GVM_CHUNK_PAGES);
		uint64_t bits = c ? (c->bitmap >> bit) & lowbits(n) : 0;

		while (bits) {
			unsigned s = (unsigned)__builtin_ctzll(bits), e = s;
			while (e < n && (bits >> e & 1)) {
				gvm_bitmap_set(out, i + e);
				e++;
			}
			size_t len = (size_t)(e - s) * GVM_PAGE_SIZE;
			if (st->fd >= 0) {
				if ((r = pread_full(st, data, len, slot_data_off(c->u.slot, bit + s))) < 0)
					return r;
			} else {
				memcpy(data, c->u.data + (size_t)(bit + s) * GVM_PAGE_SIZE, len);
			}
			data += len;
			bits &= ~(lowbits(e) & ~lowbits(s));
		}
		i += n;
	}
	return data - out;
}

int gvm_store_list(struct gvm_store *st, uint64_t region, uint64_t page, uint32_t count,
		   uint8_t *bitmap)
{
	int r;

	if ((r = check_range(page, count, 1u << 20)) < 0)
		return r;
	memset(bitmap, 0, GVM_BITMAP_BYTES(count));
	if (!region_find(st, region))
		return 0;
	for (uint32_t i = 0; i < count;) {
		uint64_t p = page + i;
		unsigned bit = (unsigned)(p % GVM_CHUNK_PAGES);
		unsigned n = GVM_MIN(GVM_CHUNK_PAGES - bit, count - i);
		struct chunk *c = chunk_find(st, region, p / GVM_CHUNK_PAGES);
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

int gvm_store_free(struct gvm_store *st, uint64_t region)
{
	struct region *rg = region_find(st, region);
	int r = 0;

	if (!rg || !rg->chunks)
		return 0;
	for (size_t i = 0; i < st->tab_cap && rg->chunks;) {
		struct chunk *c = &st->tab[i];

		if (c->index == EMPTY_INDEX || c->region != region) {
			i++;
			continue;
		}
		if (st->fd >= 0) {
			if ((r = slot_clear(st, c->u.slot)) < 0)
				return r;
			slot_release(st, c->u.slot);
		} else {
			block_free(st, c->u.data);
		}
		st->pages_stored -= (uint64_t)__builtin_popcountll(c->bitmap);
		rg->chunks--;
		/* Deletion may shift a later entry into slot i: look at it again. */
		chunk_delete_at(st, i);
	}
	if (st->fd >= 0 && st->fsync_mode == GVM_FSYNC_ALWAYS)
		r = store_sync(st);
	return r;
}

void gvm_store_get_stats(const struct gvm_store *st, struct gvm_store_stats *out)
{
	out->pages_stored = st->pages_stored;
	out->capacity_pages = st->capacity_pages;
	out->regions = st->rtab_n;
	out->chunks = st->tab_n;
}
