/*
 * The frame protection of an authenticated session, measured two ways (issue
 * 14, "measure both and choose"; the numbers are in docs/PROTOCOL.md):
 *   - giantvm's: a 16-byte GMAC tag (AES-256-GCM over no plaintext) on each
 *     frame, computed by the sender and checked by the receiver; and, for
 *     comparison, HMAC-SHA256 doing the same;
 *   - TLS 1.3 with an external PSK (the pool token's role), AES-256-GCM, one
 *     128 KiB application write read back on the other end, through memory
 *     BIOs (no sockets: only what TLS adds).
 * Each is the time to protect and check one 128 KiB frame (a 32-page READ
 * reply), both ends on this thread.
 *
 *   cc -O2 -o build/mac_vs_tls bench/mac_vs_tls.c -lssl -lcrypto && build/mac_vs_tls
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#define FRAME (128u * 1024u)
#define ITERS 3000

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void gmac(EVP_CIPHER_CTX *c, uint64_t seq, const uint8_t *p, size_t n, uint8_t tag[16])
{
	uint8_t iv[12] = { 0 }, dummy[16];
	int l;

	memcpy(iv + 4, &seq, 8);
	EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv);
	EVP_EncryptUpdate(c, NULL, &l, p, (int)n);
	EVP_EncryptFinal_ex(c, dummy, &l);
	EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag);
}

static const unsigned char psk_key[32] = "giantvm pool token, 32 bytes....";
static const unsigned char psk_id[] = "giantvm";

static SSL_SESSION *psk_session(SSL *s)
{
	SSL_SESSION *sess = SSL_SESSION_new();
	const SSL_CIPHER *cipher = SSL_CIPHER_find(s, (const unsigned char[]){ 0x13, 0x02 }); /* TLS_AES_256_GCM_SHA384 */

	if (!sess || !cipher || !SSL_SESSION_set1_master_key(sess, psk_key, sizeof(psk_key)) ||
	    !SSL_SESSION_set_cipher(sess, cipher) || !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
		SSL_SESSION_free(sess);
		return NULL;
	}
	return sess;
}

static int use_cb(SSL *s, const EVP_MD *md, const unsigned char **id, size_t *idlen, SSL_SESSION **sess)
{
	(void)md;
	*sess = psk_session(s);
	*id = psk_id;
	*idlen = sizeof(psk_id) - 1;
	return *sess != NULL;
}

static int find_cb(SSL *s, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	if (idlen != sizeof(psk_id) - 1 || memcmp(id, psk_id, idlen)) {
		*sess = NULL;
		return 1;
	}
	*sess = psk_session(s);
	return *sess != NULL;
}

/* Move what one side wrote into its BIO to the other side's BIO. */
static void pump(BIO *from, BIO *to, uint8_t *tmp, size_t cap)
{
	int n;
	while ((n = BIO_read(from, tmp, (int)cap)) > 0)
		BIO_write(to, tmp, n);
}

int main(void)
{
	uint8_t *buf = malloc(FRAME), *out = malloc(FRAME), *tmp = malloc(4 * FRAME), key[32] = { 7 }, t1[16], t2[16];
	EVP_CIPHER_CTX *a = EVP_CIPHER_CTX_new(), *b = EVP_CIPHER_CTX_new();
	double t;
	unsigned l;

	memset(buf, 0x5a, FRAME);
	EVP_EncryptInit_ex(a, EVP_aes_256_gcm(), NULL, key, NULL);
	EVP_EncryptInit_ex(b, EVP_aes_256_gcm(), NULL, key, NULL);
	t = now();
	for (uint64_t i = 0; i < ITERS; i++) {
		gmac(a, i, buf, FRAME, t1);
		gmac(b, i, buf, FRAME, t2);
		if (CRYPTO_memcmp(t1, t2, 16))
			return 1;
	}
	double gmac_us = (now() - t) / ITERS * 1e6;

	t = now();
	for (int i = 0; i < ITERS / 4; i++) {
		HMAC(EVP_sha256(), key, 32, buf, FRAME, t1, &l);
		HMAC(EVP_sha256(), key, 32, buf, FRAME, t2, &l);
	}
	double hmac_us = (now() - t) / (ITERS / 4) * 1e6;

	/* TLS 1.3, external PSK, memory BIOs. */
	SSL_CTX *cc = SSL_CTX_new(TLS_client_method()), *sc = SSL_CTX_new(TLS_server_method());
	SSL_CTX_set_min_proto_version(cc, TLS1_3_VERSION);
	SSL_CTX_set_min_proto_version(sc, TLS1_3_VERSION);
	SSL_CTX_set_ciphersuites(cc, "TLS_AES_256_GCM_SHA384");
	SSL_CTX_set_ciphersuites(sc, "TLS_AES_256_GCM_SHA384");
	SSL *c = SSL_new(cc), *s = SSL_new(sc);
	SSL_set_psk_use_session_callback(c, use_cb);
	SSL_set_psk_find_session_callback(s, find_cb);
	BIO *cr = BIO_new(BIO_s_mem()), *cw = BIO_new(BIO_s_mem()), *sr = BIO_new(BIO_s_mem()), *sw = BIO_new(BIO_s_mem());
	SSL_set_bio(c, cr, cw);
	SSL_set_bio(s, sr, sw);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	for (int k = 0; k < 20 && (!SSL_is_init_finished(c) || !SSL_is_init_finished(s)); k++) {
		SSL_do_handshake(c);
		pump(cw, sr, tmp, 4 * FRAME);
		SSL_do_handshake(s);
		pump(sw, cr, tmp, 4 * FRAME);
	}
	if (!SSL_is_init_finished(c) || !SSL_is_init_finished(s)) {
		fprintf(stderr, "TLS 1.3 PSK handshake did not finish\n");
		return 1;
	}
	t = now();
	for (int i = 0; i < ITERS; i++) {
		size_t got = 0;
		if (SSL_write(c, buf, FRAME) != (int)FRAME)
			return 1;
		pump(cw, sr, tmp, 4 * FRAME);
		while (got < FRAME) {
			int n = SSL_read(s, out + got, (int)(FRAME - got));
			if (n <= 0)
				return 1;
			got += (size_t)n;
		}
	}
	double tls_us = (now() - t) / ITERS * 1e6;
	printf("per 128 KiB frame, sender + receiver, one thread:\n");
	printf("  GMAC tag (AES-256-GCM, no plaintext)   %7.1f us  (%.2f GB/s)\n", gmac_us, FRAME / gmac_us / 1e3);
	printf("  HMAC-SHA256                            %7.1f us  (%.2f GB/s)\n", hmac_us, FRAME / hmac_us / 1e3);
	printf("  TLS 1.3 PSK, TLS_AES_256_GCM_SHA384    %7.1f us  (%.2f GB/s)  cipher %s\n", tls_us,
	       FRAME / tls_us / 1e3, SSL_CIPHER_get_name(SSL_get_current_cipher(c)));
	return 0;
}
