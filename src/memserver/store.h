/*
 * Page store of the memory server: pages grouped per (region, chunk of 64
 * pages), indexed by an open-addressing hash table. Data lives either in RAM
 * (256 KiB blocks carved from big anonymous mappings, untouched pages cost no
 * RSS) or in a sparse backing file that is rescanned at start.
 *
 * Only non-zero pages are stored; writing a zero page forgets it. Capacity is
 * counted in stored pages. Not thread-safe: the server's single event loop
 * owns it. See docs/MEMSERVER.md for the file format.
 */
#ifndef GVM_STORE_H
#define GVM_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

#define GVM_CHUNK_PAGES     64u
#define GVM_CHUNK_BYTES     ((size_t)GVM_CHUNK_PAGES * GVM_PAGE_SIZE)
/* Bound on bound regions: each costs index memory (and a file slot). */
#define GVM_STORE_MAX_REGIONS (1u << 20)

/* Backing file layout (little-endian). */
#define GVM_STORE_FILE_MAGIC 0x45524f54534d5647ull /* "GVMSTORE" */
#define GVM_STORE_CHUNK_MAGIC 0x4b4e4843534d5647ull /* "GVMSCHNK" */
#define GVM_STORE_KEY_MAGIC   0x5359454b534d5647ull /* "GVMSKEYS" */
#define GVM_STORE_VERSION    1u
#define GVM_STORE_HDR_BYTES  4096u  /* file header, and each slot header block */
#define GVM_STORE_SLOT_BYTES ((uint64_t)GVM_STORE_HDR_BYTES + GVM_CHUNK_BYTES)
#define GVM_STORE_SLOT_HDR_SIZE 72u /* bytes of a slot header that are used */

struct gvm_store;

struct gvm_store_opts {
	uint64_t capacity_pages;  /* 0 = unlimited */
	const char *backing;      /* NULL = RAM */
	int fsync_mode;           /* enum gvm_fsync_mode (memserver.h) */
	int prealloc;             /* RAM only, needs capacity_pages: populate it all at open */
};

struct gvm_store_stats {
	uint64_t pages_stored;
	uint64_t capacity_pages;
	uint64_t regions;         /* regions with a bound key */
	uint64_t chunks;
};

/*
 * Create the store; with a backing file, open (or create) it, lock it and
 * rebuild the index from its slot headers. On error returns -errno with a
 * one-line reason in err naming the file (and offset for corruption).
 */
int gvm_store_open(struct gvm_store **out, const struct gvm_store_opts *o, char *err, size_t errlen);
/* Flushes a backing file (fdatasync) and frees everything. NULL is fine. */
void gvm_store_close(struct gvm_store *st);

/*
 * Bind `region` to `key` on first use; later calls must present the same
 * key. 0, -EACCES (key mismatch), -ENOSPC (too many regions), -ENOMEM, -EIO.
 */
int gvm_store_bind_key(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE]);

/*
 * Apply a WRITE: payload is bitmap + non-zero pages (validated here with
 * gvm_pages_check). Set bits store pages, clear bits forget them; a set bit
 * whose page is all zero counts as clear. The region must be bound
 * (-ENOENT). Refused whole with -ENOSPC when it would take the store past
 * its capacity. -EINVAL for a bad range or payload, -ENOMEM, -EIO.
 */
int gvm_store_write(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count,
		    const uint8_t *payload, size_t len);

/*
 * Fill `out` (room for gvm_pages_len(count, count) bytes) with bitmap +
 * stored pages of [page, page+count). Returns the payload length or -errno.
 */
ssize_t gvm_store_read(struct gvm_store *st, uint64_t region, uint64_t page, unsigned count,
		       uint8_t *out);

/* Bitmap (GVM_BITMAP_BYTES(count) bytes) of stored pages; count <= 2^20. */
int gvm_store_list(struct gvm_store *st, uint64_t region, uint64_t page, uint32_t count,
		   uint8_t *bitmap);

/* Forget every page of a region; its key stays bound. 0 or -EIO. */
int gvm_store_free(struct gvm_store *st, uint64_t region);

void gvm_store_get_stats(const struct gvm_store *st, struct gvm_store_stats *out);

#endif
