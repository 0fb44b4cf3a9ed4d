/*
 * AEGIS-256 (draft-irtf-cfrg-aegis-aead-18, section "The AEGIS-256
 * Algorithm"): an AEAD built from the AES round function, 32-byte key,
 * 32-byte nonce, 16-byte tag, for sealed pages (issue 14). Written from the
 * draft's pseudocode with AES-NI intrinsics; tests/unit/test_aegis.c checks
 * it against every AEGIS-256 test vector of the draft.
 *
 * Needs a CPU with AES-NI and SSE4.1 (x86-64 only): gvm_aegis256_available()
 * says whether this one has them; a caller falls back to AES-256-GCM when it
 * does not. Elsewhere (other architectures, older CPUs) encrypt and decrypt
 * do nothing but fail with -ENOSYS.
 *
 * As with any AEAD: never encrypt twice under one (key, nonce).
 *
 * Where the CPU has AVX, the same code is used with VEX encodings (faster:
 * no register copies); GIANTVM_AEGIS_NO_AVX=1 in the environment when the
 * process first uses AEGIS keeps the SSE form (for the tests and the bench).
 */
#ifndef GVM_AEGIS_H
#define GVM_AEGIS_H

#include <stddef.h>
#include <stdint.h>

#define GVM_AEGIS256_KEY_SIZE   32u
#define GVM_AEGIS256_NONCE_SIZE 32u
#define GVM_AEGIS256_TAG_SIZE   16u

/* 1 if this CPU runs AEGIS-256 here (AES-NI + SSE4.1 on x86-64), else 0.
 * Cheap: the answer is cached. */
int gvm_aegis256_available(void);

/* Encrypts mlen bytes of m into c (c == m allowed; otherwise they must not
 * overlap) and writes the 16-byte tag, which authenticates m and ad.
 * 0, or -ENOSYS when !gvm_aegis256_available() (c and tag are then zeroed). */
int gvm_aegis256_encrypt(uint8_t *c, uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *m,
			 size_t mlen, const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE]);

/* Checks the tag of clen bytes of c with ad and decrypts them into m
 * (m == c allowed; otherwise they must not overlap). 0; or -EBADMSG when the
 * tag does not match (compared in constant time), -ENOSYS when
 * !gvm_aegis256_available(): in both cases m is zeroed, no unverified
 * plaintext is ever left in it. */
int gvm_aegis256_decrypt(uint8_t *m, const uint8_t *c, size_t clen,
			 const uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE]);

/* For tests (the draft's "Update Test Vector"): one Update(m) of the state
 * S0..S5, 16 bytes each in state[0..95]. 0, or -ENOSYS without AES-NI. */
int gvm_aegis256_update_for_test(uint8_t state[96], const uint8_t m[16]);

#endif
