/*
 * AEGIS-256 with AES-NI. See aegis.h. The names follow the draft
 * (draft-irtf-cfrg-aegis-aead-18): state S0..S5, Update, Init, Absorb, Enc,
 * Dec, DecPartial, Finalize; AESRound(in, rk) is one AESENC.
 *
 * Only the functions that use AES-NI carry a target attribute ("aes,sse4.1",
 * or "aes,avx" for the VEX-encoded copy): the rest of the build keeps its own
 * flags, and nothing here runs an AES (or AVX) instruction before
 * aegis_level() saw that the CPU (and, for AVX, the kernel) supports it.
 *
 * Not wiped: the cipher state lives in XMM registers (and, if the compiler
 * spills, on the stack) and is not cleared on return; the zero-padded copies
 * of partial blocks and the expected tag are (OPENSSL_cleanse).
 */
#include "aegis.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h> /* CRYPTO_memcmp, OPENSSL_cleanse */

#if defined(__x86_64__)

#include <immintrin.h>
#include <wmmintrin.h>

#define AEGIS_TARGET __attribute__((target("aes,sse4.1")))
#define AEGIS_INLINE static inline __attribute__((always_inline, target("aes,sse4.1")))

/* 0: no AES-NI; 1: AES-NI + SSE4.1; 2: and AVX (the OS saves its registers). */
static int aegis_level(void)
{
	static int cached = -1; /* -1: not asked yet; a race only asks twice */
	int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);

	if (v < 0) {
		__builtin_cpu_init(); /* we may run from a constructor */
		v = !__builtin_cpu_supports("aes") || !__builtin_cpu_supports("sse4.1") ? 0
		    : __builtin_cpu_supports("avx") ? 2 : 1;
		if (getenv("GIANTVM_AEGIS_NO_AVX") && v > 1) /* tests and the bench: the SSE form */
			v = 1;
		__atomic_store_n(&cached, v, __ATOMIC_RELAXED);
	}
	return v;
}

int gvm_aegis256_available(void)
{
	return aegis_level() > 0;
}

struct aegis_state { __m128i s0, s1, s2, s3, s4, s5; };

/* Update(M): S'0 = AESRound(S5, S0 ^ M), S'i = AESRound(S(i-1), Si).
 * AESRound(in, rk) ends with "^ rk", so S'0 is also AESRound(S5, M) ^ S0 and
 * AESRound(S5, S0) ^ M; each moves one XOR off a dependency chain:
 *   update(): M does not depend on the state (key, AD, plaintext, lengths):
 *     S'0 = AESRound(S5, M) ^ S0, S0 -> S'0 is one XOR, not XOR + AESENC;
 *   update_dec(): M is the plaintext just computed from the state (Dec):
 *     S'0 = AESRound(S5, S0) ^ M, M -> S'0 is one XOR, not XOR + AESENC.
 * (bench/page_cipher.c here, best of 9 runs per 4 KiB page: seal 0.75 us with
 * the draft's form, 0.57 us with update(); open 0.87 us with update(), 0.77 us
 * with update_dec().) */
#define AEGIS_UPDATE_TAIL(st)                                   \
	const __m128i t = (st)->s5;                             \
	(st)->s5 = _mm_aesenc_si128((st)->s4, (st)->s5);        \
	(st)->s4 = _mm_aesenc_si128((st)->s3, (st)->s4);        \
	(st)->s3 = _mm_aesenc_si128((st)->s2, (st)->s3);        \
	(st)->s2 = _mm_aesenc_si128((st)->s1, (st)->s2);        \
	(st)->s1 = _mm_aesenc_si128((st)->s0, (st)->s1)

AEGIS_INLINE void update(struct aegis_state *st, __m128i m)
{
	AEGIS_UPDATE_TAIL(st);
	st->s0 = _mm_xor_si128(_mm_aesenc_si128(t, m), st->s0);
}

AEGIS_INLINE void update_dec(struct aegis_state *st, __m128i m)
{
	AEGIS_UPDATE_TAIL(st);
	st->s0 = _mm_xor_si128(_mm_aesenc_si128(t, st->s0), m);
}

AEGIS_INLINE void init(struct aegis_state *st, const uint8_t nonce[32], const uint8_t key[32])
{
	static const uint8_t c0b[16] = { 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x08, 0x0d,
					 0x15, 0x22, 0x37, 0x59, 0x90, 0xe9, 0x79, 0x62 };
	static const uint8_t c1b[16] = { 0xdb, 0x3d, 0x18, 0x55, 0x6d, 0xc2, 0x2f, 0xf1,
					 0x20, 0x11, 0x31, 0x42, 0x73, 0xb5, 0x28, 0xdd };
	const __m128i c0 = _mm_loadu_si128((const __m128i *)c0b);
	const __m128i c1 = _mm_loadu_si128((const __m128i *)c1b);
	const __m128i k0 = _mm_loadu_si128((const __m128i *)key);
	const __m128i k1 = _mm_loadu_si128((const __m128i *)(key + 16));
	const __m128i k0n0 = _mm_xor_si128(k0, _mm_loadu_si128((const __m128i *)nonce));
	const __m128i k1n1 = _mm_xor_si128(k1, _mm_loadu_si128((const __m128i *)(nonce + 16)));

	st->s0 = k0n0;
	st->s1 = k1n1;
	st->s2 = c1;
	st->s3 = c0;
	st->s4 = _mm_xor_si128(k0, c0);
	st->s5 = _mm_xor_si128(k1, c1);
	for (int i = 0; i < 4; i++) {
		update(st, k0);
		update(st, k1);
		update(st, k0n0);
		update(st, k1n1);
	}
}

/* The keystream block: z = S1 ^ S4 ^ S5 ^ (S2 & S3). */
AEGIS_INLINE __m128i keystream(const struct aegis_state *st)
{
	return _mm_xor_si128(_mm_xor_si128(st->s1, st->s4),
			     _mm_xor_si128(st->s5, _mm_and_si128(st->s2, st->s3)));
}

/* Absorb the associated data: every 16-byte block, the last one zero-padded. */
AEGIS_INLINE void absorb_ad(struct aegis_state *st, const uint8_t *ad, size_t adlen)
{
	size_t i;

	for (i = 0; i + 16 <= adlen; i += 16)
		update(st, _mm_loadu_si128((const __m128i *)(ad + i)));
	if (i < adlen) {
		uint8_t pad[16] = { 0 };

		memcpy(pad, ad + i, adlen - i);
		update(st, _mm_loadu_si128((const __m128i *)pad));
		OPENSSL_cleanse(pad, sizeof(pad));
	}
}

/* Finalize with the 128-bit tag: t = S3 ^ (LE64(ad bits) || LE64(msg bits)),
 * 7 x Update(t), tag = S0 ^ S1 ^ S2 ^ S3 ^ S4 ^ S5. */
AEGIS_INLINE __m128i finalize(struct aegis_state *st, size_t adlen, size_t mlen)
{
	/* x86 is little-endian: the low 64 bits are the first 8 bytes. */
	const __m128i t = _mm_xor_si128(st->s3, _mm_set_epi64x((long long)((uint64_t)mlen << 3),
							      (long long)((uint64_t)adlen << 3)));

	for (int i = 0; i < 7; i++)
		update(st, t);
	return _mm_xor_si128(_mm_xor_si128(_mm_xor_si128(st->s0, st->s1), _mm_xor_si128(st->s2, st->s3)),
			     _mm_xor_si128(st->s4, st->s5));
}

AEGIS_INLINE void encrypt_body(uint8_t *c, uint8_t tag[16], const uint8_t *m, size_t mlen,
			       const uint8_t *ad, size_t adlen, const uint8_t nonce[32],
			       const uint8_t key[32])
{
	struct aegis_state st;
	size_t i;

	init(&st, nonce, key);
	absorb_ad(&st, ad, adlen);
	/* Enc(xi): z from the state before Update(xi); ci = xi ^ z. Each block
	 * is read before it is written: c == m works. */
	for (i = 0; i + 16 <= mlen; i += 16) {
		const __m128i x = _mm_loadu_si128((const __m128i *)(m + i));
		const __m128i z = keystream(&st);

		update(&st, x);
		_mm_storeu_si128((__m128i *)(c + i), _mm_xor_si128(x, z));
	}
	if (i < mlen) { /* the last partial block: ZeroPad, Enc, Truncate */
		uint8_t pad[16] = { 0 };
		const __m128i z = keystream(&st);
		__m128i x;

		memcpy(pad, m + i, mlen - i);
		x = _mm_loadu_si128((const __m128i *)pad);
		update(&st, x);
		_mm_storeu_si128((__m128i *)pad, _mm_xor_si128(x, z));
		memcpy(c + i, pad, mlen - i);
		OPENSSL_cleanse(pad, sizeof(pad));
	}
	_mm_storeu_si128((__m128i *)tag, finalize(&st, adlen, mlen));
}

/* Decrypts and writes the tag the ciphertext should have. */
AEGIS_INLINE void decrypt_body(uint8_t *m, uint8_t tag[16], const uint8_t *c, size_t clen,
			       const uint8_t *ad, size_t adlen, const uint8_t nonce[32],
			       const uint8_t key[32])
{
	struct aegis_state st;
	size_t i;

	init(&st, nonce, key);
	absorb_ad(&st, ad, adlen);
	/* Dec(ci): xi = ci ^ z, Update(xi). */
	for (i = 0; i + 16 <= clen; i += 16) {
		const __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(c + i)), keystream(&st));

		update_dec(&st, x);
		_mm_storeu_si128((__m128i *)(m + i), x);
	}
	if (i < clen) { /* DecPartial(cn): the state absorbs ZeroPad(xn), not the keystream's tail */
		uint8_t pad[16] = { 0 };
		const size_t n = clen - i;

		memcpy(pad, c + i, n);
		_mm_storeu_si128((__m128i *)pad,
				 _mm_xor_si128(_mm_loadu_si128((const __m128i *)pad), keystream(&st)));
		memset(pad + n, 0, sizeof(pad) - n);
		update_dec(&st, _mm_loadu_si128((const __m128i *)pad));
		memcpy(m + i, pad, n);
		OPENSSL_cleanse(pad, sizeof(pad));
	}
	_mm_storeu_si128((__m128i *)tag, finalize(&st, adlen, clen));
}

/* Each body twice: with SSE encodings, and with AVX (VEX) encodings where the
 * CPU has AVX. AESENC overwrites its input, and every state block is both the
 * input of one round and the round key of the next, so the SSE form needs a
 * register copy per round; VAESENC's three operands need none (about a third
 * fewer instructions per block: ~1.4x here). No wider instruction is used. */
#define AEGIS_ARGS(out, in, len) uint8_t *out, uint8_t tag[16], const uint8_t *in, size_t len, \
	const uint8_t *ad, size_t adlen, const uint8_t nonce[32], const uint8_t key[32]
static AEGIS_TARGET void encrypt_sse(AEGIS_ARGS(c, m, mlen))
{
	encrypt_body(c, tag, m, mlen, ad, adlen, nonce, key);
}
static __attribute__((target("aes,avx"))) void encrypt_avx(AEGIS_ARGS(c, m, mlen))
{
	encrypt_body(c, tag, m, mlen, ad, adlen, nonce, key);
}
static AEGIS_TARGET void decrypt_sse(AEGIS_ARGS(m, c, clen))
{
	decrypt_body(m, tag, c, clen, ad, adlen, nonce, key);
}
static __attribute__((target("aes,avx"))) void decrypt_avx(AEGIS_ARGS(m, c, clen))
{
	decrypt_body(m, tag, c, clen, ad, adlen, nonce, key);
}

int gvm_aegis256_encrypt(uint8_t *c, uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *m,
			 size_t mlen, const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE])
{
	if (!aegis_level()) {
		if (mlen)
			memset(c, 0, mlen);
		memset(tag, 0, GVM_AEGIS256_TAG_SIZE);
		return -ENOSYS;
	}
	(aegis_level() > 1 ? encrypt_avx : encrypt_sse)(c, tag, m, mlen, ad, adlen, nonce, key);
	return 0;
}

int gvm_aegis256_decrypt(uint8_t *m, const uint8_t *c, size_t clen,
			 const uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE])
{
	uint8_t expected[GVM_AEGIS256_TAG_SIZE];
	int bad;

	if (!aegis_level()) {
		if (clen)
			memset(m, 0, clen);
		return -ENOSYS;
	}
	(aegis_level() > 1 ? decrypt_avx : decrypt_sse)(m, expected, c, clen, ad, adlen, nonce, key);
	bad = CRYPTO_memcmp(expected, tag, sizeof(expected)) != 0;
	OPENSSL_cleanse(expected, sizeof(expected));
	if (bad) {
		if (clen)
			OPENSSL_cleanse(m, clen); /* zeroes, and is not optimised away */
		return -EBADMSG;
	}
	return 0;
}

static AEGIS_TARGET void update_sse(uint8_t state[96], const uint8_t m[16])
{
	struct aegis_state st = {
		_mm_loadu_si128((const __m128i *)state), _mm_loadu_si128((const __m128i *)(state + 16)),
		_mm_loadu_si128((const __m128i *)(state + 32)), _mm_loadu_si128((const __m128i *)(state + 48)),
		_mm_loadu_si128((const __m128i *)(state + 64)), _mm_loadu_si128((const __m128i *)(state + 80)),
	};

	update(&st, _mm_loadu_si128((const __m128i *)m));
	_mm_storeu_si128((__m128i *)state, st.s0);
	_mm_storeu_si128((__m128i *)(state + 16), st.s1);
	_mm_storeu_si128((__m128i *)(state + 32), st.s2);
	_mm_storeu_si128((__m128i *)(state + 48), st.s3);
	_mm_storeu_si128((__m128i *)(state + 64), st.s4);
	_mm_storeu_si128((__m128i *)(state + 80), st.s5);
}

int gvm_aegis256_update_for_test(uint8_t state[96], const uint8_t m[16])
{
	if (!aegis_level())
		return -ENOSYS;
	update_sse(state, m);
	return 0;
}

#else /* !__x86_64__: no AES-NI; callers use AES-256-GCM */

int gvm_aegis256_available(void)
{
	return 0;
}

int gvm_aegis256_encrypt(uint8_t *c, uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *m,
			 size_t mlen, const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE])
{
	(void)m, (void)ad, (void)adlen, (void)nonce, (void)key;
	if (mlen)
		memset(c, 0, mlen);
	memset(tag, 0, GVM_AEGIS256_TAG_SIZE);
	return -ENOSYS;
}

int gvm_aegis256_decrypt(uint8_t *m, const uint8_t *c, size_t clen,
			 const uint8_t tag[GVM_AEGIS256_TAG_SIZE], const uint8_t *ad, size_t adlen,
			 const uint8_t nonce[GVM_AEGIS256_NONCE_SIZE],
			 const uint8_t key[GVM_AEGIS256_KEY_SIZE])
{
	(void)c, (void)tag, (void)ad, (void)adlen, (void)nonce, (void)key;
	if (clen)
		memset(m, 0, clen);
	return -ENOSYS;
}

int gvm_aegis256_update_for_test(uint8_t state[96], const uint8_t m[16])
{
	(void)state, (void)m;
	return -ENOSYS;
}

#endif
