/*
 * Page store of the memory server. A region is named by (id, key): the same
 * id under another key is another region, so tenants can neither collide nor
 * learn of each other. A region exists only while it holds pages; within it,
 * pages are grouped in chunks of 64 in the region's own hash table. Data
 * lives in RAM (one 4 KiB frame per stored page, so RSS follows the pages
 * stored whatever the write pattern) or in a sparse backing file that is
 * rescanned at start.
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
/* Default bound on regions holding pages: each costs index memory. */
#define GVM_STORE_MAX_REGIONS (1u << 20)

/* Backing file layout (little-endian). */
#define GVM_STORE_FILE_MAGIC 0x45524f54534d5647ull /* "GVMSTORE" */
#define GVM_STORE_CHUNK_MAGIC 0x4b4e4843534d5647ull /* "GVMSCHNK" */
#define GVM_STORE_KEY_MAGIC   0x5359454b534d5647ull /* "GVMSKEYS" */
#define GVM_STORE_VERSION    2u  /* 1 (keys in records of their own) is upgraded at open */
#define GVM_STORE_HDR_BYTES  4096u  /* file header, and each slot header block */
#define GVM_STORE_SLOT_BYTES ((uint64_t)GVM_STORE_HDR_BYTES + GVM_CHUNK_BYTES)
#define GVM_STORE_SLOT_HDR_SIZE 72u /* bytes of a slot header that are used */
#define GVM_STORE_TAG_OFF    128u /* the pages' tags (16 bytes each) in the header block */

struct gvm_store;

struct gvm_store_opts {
	uint64_t capacity_pages;  /* 0 = unlimited */
	const char *backing;      /* NULL = RAM */
	int fsync_mode;           /* enum gvm_fsync_mode (memserver.h) */
	int prealloc;             /* RAM only, needs capacity_pages: populate it all at open */
	uint64_t max_regions;     /* regions holding pages; 0 = GVM_STORE_MAX_REGIONS */
	uint64_t max_owner_regions; /* regions one owner may have created; 0 = no quota */
	uint64_t max_owner_pages;   /* pages in the regions one owner created; 0 = no quota */
	unsigned test_fail_syncs;   /* tests: the next this many syncs fail as a write-back error does */
};

struct gvm_store_stats {
	uint64_t pages_stored;
	uint64_t capacity_pages;
	uint64_t regions;         /* regions holding pages */
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
 * Apply a WRITE to region (id, key): payload is bitmap + non-zero pages
 * (validated here with gvm_pages_check). Set bits store pages, clear bits
 * forget them; a set bit whose page is all zero counts as clear. The region
 * comes into being with its first stored page and ceases to exist with its
 * last. Refused whole with -ENOSPC when it would take the store past its
 * capacity or its region limit. -EINVAL for a bad range or payload, -ENOMEM,
 * -EIO or -ENOSPC (disk full) from the backing file.
 */
int gvm_store_write(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		    uint64_t page, unsigned count, const uint8_t *payload, size_t len);

/* The same for a tagged payload (tagged: bitmap, pages, then a 16-byte tag per
 * non-zero page, kept next to the page; see PROTOCOL.md, sealed pages). An
 * untagged write stores zero tags. */
int gvm_store_write_tagged(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
			   uint64_t page, unsigned count, const uint8_t *payload, size_t len, int tagged);

/*
 * Fill `out` (room for gvm_pages_len(count, count) bytes) with bitmap +
 * stored pages of [page, page+count). Returns the payload length or -errno.
 */
ssize_t gvm_store_read(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		       uint64_t page, unsigned count, uint8_t *out);
/* The same, and the stored pages' tags into `tags` (room for count tags), in
 * the order of the pages. Returns the page payload length (without tags). */
ssize_t gvm_store_read_tagged(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
			      uint64_t page, unsigned count, uint8_t *out, uint8_t *tags);

/* Bitmap (GVM_BITMAP_BYTES(count) bytes) of stored pages; count <= 2^20. */
int gvm_store_list(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		   uint64_t page, uint32_t count, uint8_t *bitmap);

/* Forget every page of a region, which then no longer exists; time is
 * proportional to what it held. 0 or -errno from the backing file. */
int gvm_store_free(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE]);

/*
 * Who the following WRITEs are for (the server: the client's address). A
 * region belongs to the owner that created it: the owner quotas count its
 * regions and their pages, whoever writes them later. Owner 0 (the default,
 * and every region loaded from a backing file) has no quotas.
 */
void gvm_store_set_owner(struct gvm_store *st, uint64_t owner);

/* Pages a region holds (0 if it does not exist). */
uint64_t gvm_store_region_pages(struct gvm_store *st, uint64_t region, const uint8_t key[GVM_KEY_SIZE]);

void gvm_store_get_stats(const struct gvm_store *st, struct gvm_store_stats *out);

#endif
