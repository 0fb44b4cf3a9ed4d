/*
 * The sealed-page cipher, measured two ways (issue 14): the time to seal
 * (encrypt + tag) and to open (check + decrypt) one 4 KiB page in place, with
 *   - AES-256-GCM through OpenSSL EVP, as src/lib/seal.c does it: one keyed
 *     context, a new 96-bit IV per page, 20 bytes of AAD, a 16-byte tag;
 *   - AEGIS-256 (src/lib/aegis.c, AES-NI), 32-byte nonce, the same AAD and
 *     tag size.
 * Each figure is the median (and the minimum) over RUNS runs of the mean
 * over PAGES pages (a buffer of 64 pages cycled through, so it stays in cache
 * as a page being faulted in or written back would be); the two ciphers take
 * turns run by run. GIANTVM_AEGIS_NO_AVX=1 measures AEGIS-256's SSE form.
 *
 *   cc -O2 -Isrc/lib -o build/page_cipher bench/page_cipher.c src/lib/aegis.c -lcrypto
 *   build/page_cipher [--json] [--pages N] [--runs R]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "aegis.h"

#define PAGE 4096u
#define NBUF 64u
#define AAD  20u
#define TAG  16u

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static uint8_t key[32];
static uint8_t *pages;               /* NBUF pages */
static uint8_t tags[NBUF][TAG];

/* The nonce/IV and AAD of page i as seal.c builds them: le64(page) || le32(version). */
static void nonce_aad(uint64_t page, uint32_t version, uint8_t *iv, size_t ivlen, uint8_t aad[AAD])
{
	memset(iv, 0, ivlen);
	for (int i = 0; i < 8; i++) {
		iv[i] = (uint8_t)(page >> (8 * i));
		aad[i] = (uint8_t)(0x42u >> (8 * i)); /* region */
		aad[8 + i] = iv[i];
	}
	for (int i = 0; i < 4; i++)
		iv[8 + i] = aad[16 + i] = (uint8_t)(version >> (8 * i));
}

static int gcm_page(EVP_CIPHER_CTX *ctx, int enc, uint64_t page, uint8_t *data, uint8_t tag[TAG])
{
	uint8_t iv[12], aad[AAD];
	int outl = 0, fl = 0;

	nonce_aad(page, 1, iv, sizeof(iv), aad);
	/* seal.c's order: IV, AAD, data, then (seal) final + get tag or (open) set tag + final */
	if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc) != 1 ||
	    EVP_CipherUpdate(ctx, NULL, &outl, aad, AAD) != 1 ||
	    EVP_CipherUpdate(ctx, data, &outl, data, PAGE) != 1)
		return -1;
	if (enc)
		return EVP_CipherFinal_ex(ctx, data + outl, &fl) != 1 || outl + fl != (int)PAGE ||
		       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, tag) != 1 ? -1 : 0;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG, tag) != 1)
		return -1;
	return EVP_CipherFinal_ex(ctx, data + outl, &fl) != 1 ? -EBADMSG : 0;
}

static int aegis_page(int enc, uint64_t page, uint8_t *data, uint8_t tag[TAG])
{
	uint8_t nonce[32], aad[AAD];

	nonce_aad(page, 1, nonce, sizeof(nonce), aad);
	if (enc)
		return gvm_aegis256_encrypt(data, tag, data, PAGE, aad, AAD, nonce, key);
	return gvm_aegis256_decrypt(data, data, PAGE, tag, aad, AAD, nonce, key);
}

/* Seconds per page for `n` pages of one kind; -1 on any failure. */
static double run(EVP_CIPHER_CTX *ctx, int aegis, int enc, unsigned n)
{
	double t0 = now();

	for (unsigned i = 0; i < n; i++) {
		uint8_t *p = pages + (size_t)(i % NBUF) * PAGE;
		int r = aegis ? aegis_page(enc, i % NBUF, p, tags[i % NBUF])
			      : gcm_page(ctx, enc, i % NBUF, p, tags[i % NBUF]);
		if (r) {
			fprintf(stderr, "page_cipher: %s %s of page %u failed (%d)\n",
				aegis ? "AEGIS-256" : "AES-256-GCM", enc ? "seal" : "open", i, r);
			return -1;
		}
	}
	return (now() - t0) / n;
}

int main(int argc, char **argv)
{
	unsigned npages = 20000, runs = 7;
	int json = 0, have_aegis = gvm_aegis256_available();
	const char *name[2] = { "AES-256-GCM (OpenSSL EVP)", "AEGIS-256 (AES-NI)" };
	double med[2][2] = { { 0 } }, best[2][2] = { { 0 } }; /* [cipher][seal/open] s per page */
	double *t[2][2] = { { NULL } };
	int ncipher;
	EVP_CIPHER_CTX *ctx;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--pages") && i + 1 < argc && atoi(argv[i + 1]) > 0)
			npages = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc && atoi(argv[i + 1]) > 0)
			runs = (unsigned)atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: %s [--json] [--pages N (20000)] [--runs R (7)]\n", argv[0]);
			return 2;
		}
	}
	/* Whole sweeps: every page is sealed before it is opened again. */
	npages = (npages + NBUF - 1) / NBUF * NBUF;
	pages = aligned_alloc(64, (size_t)NBUF * PAGE);
	ctx = EVP_CIPHER_CTX_new();
	if (!pages || !ctx) {
		fprintf(stderr, "page_cipher: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)(i * 37 + 1);
	for (size_t i = 0; i < (size_t)NBUF * PAGE; i++)
		pages[i] = (uint8_t)(i * 2654435761u >> 13);
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL, 1) != 1) {
		fprintf(stderr, "page_cipher: AES-256-GCM key setup failed\n");
		return 1;
	}
	ncipher = have_aegis ? 2 : 1;
	for (int c = 0; c < ncipher; c++)
		for (int k = 0; k < 2; k++)
			if (!(t[c][k] = calloc(runs, sizeof(double)))) {
				fprintf(stderr, "page_cipher: out of memory\n");
				return 1;
			}
	for (int c = 0; c < ncipher; c++)
		run(ctx, c, 1, NBUF), run(ctx, c, 0, NBUF); /* warm up */
	/* The ciphers take turns run by run, so a noisy neighbour hits both alike. */
	for (unsigned r = 0; r < runs; r++) {
		for (int c = 0; c < ncipher; c++) {
			/* seal and open alternate in slices, so every open sees a sealed page */
			double sum[2] = { 0, 0 };
			for (unsigned done = 0; done < npages; done += NBUF) {
				double a = run(ctx, c, 1, NBUF), b = run(ctx, c, 0, NBUF);
				if (a < 0 || b < 0)
					return 1;
				sum[0] += a, sum[1] += b;
			}
			for (int k = 0; k < 2; k++)
				t[c][k][r] = sum[k] / (npages / NBUF);
		}
	}
	for (int c = 0; c < ncipher; c++)
		for (int k = 0; k < 2; k++) {
			qsort(t[c][k], runs, sizeof(double), cmp_double);
			med[c][k] = t[c][k][runs / 2];
			best[c][k] = t[c][k][0];
			free(t[c][k]);
		}
	EVP_CIPHER_CTX_free(ctx);
	free(pages);

	if (json) {
		printf("{\"page_bytes\":%u,\"aad_bytes\":%u,\"pages\":%u,\"runs\":%u,"
		       "\"gcm_seal_ns\":%.1f,\"gcm_open_ns\":%.1f,\"gcm_seal_min_ns\":%.1f,\"gcm_open_min_ns\":%.1f",
		       PAGE, AAD, npages, runs, med[0][0] * 1e9, med[0][1] * 1e9, best[0][0] * 1e9,
		       best[0][1] * 1e9);
		if (have_aegis)
			printf(",\"aegis256_seal_ns\":%.1f,\"aegis256_open_ns\":%.1f,"
			       "\"aegis256_seal_min_ns\":%.1f,\"aegis256_open_min_ns\":%.1f,"
			       "\"speedup_seal\":%.2f,\"speedup_open\":%.2f",
			       med[1][0] * 1e9, med[1][1] * 1e9, best[1][0] * 1e9, best[1][1] * 1e9,
			       med[0][0] / med[1][0], med[0][1] / med[1][1]);
		else
			printf(",\"aegis256\":null");
		printf("}\n");
		return 0;
	}
	printf("per 4 KiB page, in place, 20-byte AAD, 16-byte tag; median of %u runs of %u pages\n",
	       runs, npages);
	printf("%-27s %9s %9s %9s %9s %9s %9s\n", "cipher", "seal us", "open us", "seal GB/s",
	       "open GB/s", "min seal", "min open");
	for (int c = 0; c < 2; c++) {
		if (c == 1 && !have_aegis) {
			printf("%-27s (this CPU lacks AES-NI/SSE4.1)\n", name[1]);
			break;
		}
		printf("%-27s %9.3f %9.3f %9.2f %9.2f %9.3f %9.3f\n", name[c], med[c][0] * 1e6,
		       med[c][1] * 1e6, PAGE / med[c][0] / 1e9, PAGE / med[c][1] / 1e9, best[c][0] * 1e6,
		       best[c][1] * 1e6);
	}
	if (have_aegis)
		printf("AEGIS-256 speed-up: seal %.2fx, open %.2fx\n", med[0][0] / med[1][0],
		       med[0][1] / med[1][1]);
	return 0;
}
