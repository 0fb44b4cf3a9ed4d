/*
 * Sealed pages (docs/SECURITY.md): every non-zero page is encrypted and
 * authenticated on the VM host before it leaves, with AEGIS-256 (aegis.h,
 * AES-NI) or, on CPUs without AES-NI, AES-256-GCM (OpenSSL EVP), under a
 * key derived per region from the region's key, itself derived from the
 * run's secret; no node ever sees either. The nonce is the page index (64
 * bits) and the page's version (32 bits) (zero-padded to AEGIS-256's 256
 * bits), and the additional data binds region, page and version, so a node
 * that returns a flipped page, another page, another region's page or an
 * older version of this page fails the tag.
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
	void *ctx;            /* AES-256-GCM: EVP_CIPHER_CTX, keyed; NULL with AEGIS-256 */
	uint64_t region;
	int aegis;            /* AEGIS-256 (aegis.h) with key */
	uint8_t key[GVM_SEAL_KEY_SIZE];
};
/* Keyed (gvm_sealer_init succeeded)? */
static inline int gvm_sealer_ready(const struct gvm_sealer *s)
{
	return s->ctx || s->aegis;
}
/* gvm_seal_cipher() (giantvm.h): AEGIS-256 where the CPU has AES-NI (about
 * twice as fast here), else AES-256-GCM; $GIANTVM_SEAL_CIPHER=aes-256-gcm|
 * aegis-256 chooses (read once). Pages are sealed and opened by the same
 * engine, so the choice never has to match another host's. */

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
