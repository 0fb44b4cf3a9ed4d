/*
 * Sealed pages (docs/SECURITY.md): every non-zero page is encrypted and
 * authenticated on the VM host before it leaves, with AES-256-GCM (OpenSSL
 * EVP: AES-NI and PCLMULQDQ where the CPU has them), under a key derived per
 * region from the region's key, itself derived from the run's secret; no
 * node ever sees either. The 96-bit nonce is the page index (64 bits) and
 * the page's version (32 bits), and the additional data binds region, page
 * and version, so a node that returns a flipped page, another page, another
 * region's page or an older version of this page fails the tag.
 *
 * Versions: the engine keeps one u32 per guest page. 0 = never written (the
 * page must be zero); each write-back of a non-zero page takes the next
 * count; a page written as zero keeps its count with GVM_SEAL_ZERO set (it
 * must come back zero, and the next non-zero write never reuses a nonce).
 */
#ifndef GVM_SEAL_H
#define GVM_SEAL_H

#include <stdint.h>

#include "proto.h"

#define GVM_SEAL_KEY_SIZE 32u
#define GVM_SEAL_ZERO     0x80000000u /* version flag: last written as zero */
#define GVM_SEAL_MAX_VER  0x7fffffffu /* writes of one page per run; then write-backs fail */

struct gvm_sealer {           /* one per thread that seals or opens */
	void *ctx;            /* EVP_CIPHER_CTX, keyed */
	uint64_t region;
};

/* The region's seal key: HMAC-SHA256(region key, "giantvm seal key" || le64(region)). */
int gvm_seal_key(const uint8_t region_key[GVM_KEY_SIZE], uint64_t region,
		 uint8_t out[GVM_SEAL_KEY_SIZE]);
/* 0 or -ENOMEM/-EIO. fini is safe on a zeroed or failed sealer. */
int gvm_sealer_init(struct gvm_sealer *s, const uint8_t key[GVM_SEAL_KEY_SIZE], uint64_t region);
void gvm_sealer_fini(struct gvm_sealer *s);
/* Encrypt one page in place; writes its tag. 0 or -EIO. */
int gvm_seal_page(struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t *data,
		  uint8_t tag[GVM_TAG_SIZE]);
/* Check and decrypt one page in place: 0, or -EBADMSG (the page is then garbage). */
int gvm_open_page(struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t *data,
		  const uint8_t tag[GVM_TAG_SIZE]);
/* Versions in write order: (count, non-zero) < (count, zero) < (count+1, non-zero). */
static inline uint64_t gvm_seal_order(uint32_t v)
{
	return ((uint64_t)(v & ~GVM_SEAL_ZERO) << 1) | !!(v & GVM_SEAL_ZERO);
}
/* The version a page must be read at: 0 when it must be zero. */
static inline uint32_t gvm_seal_live(uint32_t v)
{
	return (v & GVM_SEAL_ZERO) ? 0 : v;
}

#endif
