/*
 * Shared-secret authentication: HMAC-SHA256 over the server's nonce.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "util.h"
#include <openssl/x509.h>

int gvm_auth_mac(const void *token, size_t token_len, const uint8_t nonce[GVM_NONCE_SIZE],
		 uint8_t mac[GVM_MAC_SIZE])
{
	unsigned int mac_len = 0;

	if (!token || token_len == 0 || token_len > INT_MAX)
		return -EINVAL;
	if (!HMAC(EVP_sha256(), token, (int)token_len, nonce, GVM_NONCE_SIZE, mac, &mac_len))
		return -EIO;
	if (mac_len != GVM_MAC_SIZE)
		return -EIO;
	return 0;
}

int gvm_auth_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

int gvm_auth_load_token(const char *path, uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
	/* Room for the largest token plus a CRLF and one byte to detect "too long". */
	size_t cap = GVM_TOKEN_MAX + 3, len = 0;
	uint8_t *buf = NULL;
	struct stat st;
	int fd, r;

	*out = NULL;
	*out_len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		snprintf(err, errlen, "%s: not a regular file", path);
		goto out_close;
	}
	/* A token others can read is no secret; one others can write lets them pick it. */
	if (st.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH)) {
		r = -EPERM;
		snprintf(err, errlen, "%s: token file is accessible by group or others (mode %03o); "
			 "chmod 600 it", path, (unsigned)(st.st_mode & 0777));
		goto out_close;
	}
	buf = malloc(cap);
	if (!buf) {
		r = -ENOMEM;
		snprintf(err, errlen, "%s: out of memory", path);
		goto out_close;
	}
	while (len < cap) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			snprintf(err, errlen, "%s: %s", path, strerror(-r));
			goto out_free;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	if (len < GVM_TOKEN_MIN || len > GVM_TOKEN_MAX) {
		r = -EINVAL;
		snprintf(err, errlen, "%s: token must be %u to %u bytes (trailing newline excluded)",
			 path, GVM_TOKEN_MIN, GVM_TOKEN_MAX);
		goto out_free;
	}
	close(fd);
	*out = buf;
	*out_len = len;
	return 0;

out_free:
	/* The buffer may hold (part of) the secret. */
	OPENSSL_cleanse(buf, cap);
	free(buf);
out_close:
	close(fd);
	return r;
}

/* ---------------------------------------------------------------- session */

static const uint8_t zero_pub[GVM_PUB_SIZE];

int gvm_region_verifier(const uint8_t key[GVM_KEY_SIZE], uint64_t region, uint8_t v[GVM_KEY_SIZE])
{
	static const char label[] = "giantvm region verifier";
	uint8_t msg[sizeof(label) - 1 + 8];
	unsigned int len = 0;

	memcpy(msg, label, sizeof(label) - 1);
	for (int i = 0; i < 8; i++)
		msg[sizeof(label) - 1 + i] = (uint8_t)(region >> (8 * i));
	if (!HMAC(EVP_sha256(), key, GVM_KEY_SIZE, msg, sizeof(msg), v, &len) || len != GVM_KEY_SIZE)
		return -EIO;
	return 0;
}

void gvm_session_init(struct gvm_session *s)
{
	memset(s, 0, sizeof(*s));
}

void gvm_session_fini(struct gvm_session *s)
{
	EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)s->mac_out);
	EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)s->mac_in);
	EVP_PKEY_free(s->eph);
	OPENSSL_cleanse(s, sizeof(*s));
}

/* HMAC-SHA256(key, msg); 0 or -EIO. */
static int hmac(const void *key, size_t key_len, const void *msg, size_t len, uint8_t out[32])
{
	unsigned int olen = 0;

	if (key_len > INT_MAX)
		return -EIO;
	return HMAC(EVP_sha256(), key, (int)key_len, msg, len, out, &olen) && olen == 32 ? 0 : -EIO;
}

static int eph_new(struct gvm_session *s, uint8_t pub[GVM_PUB_SIZE])
{
	size_t len = GVM_PUB_SIZE;

	s->eph = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	if (!s->eph)
		return -EIO;
	if (EVP_PKEY_get_raw_public_key(s->eph, pub, &len) != 1 || len != GVM_PUB_SIZE)
		return -EIO;
	return 0;
}

/* X25519(our ephemeral key, peer); refuses a low-order peer key (all-zero secret). */
static int eph_derive(struct gvm_session *s, const uint8_t peer_pub[GVM_PUB_SIZE], uint8_t z[32])
{
	EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, GVM_PUB_SIZE);
	EVP_PKEY_CTX *ctx = peer && s->eph ? EVP_PKEY_CTX_new(s->eph, NULL) : NULL;
	size_t len = 32;
	int r = -EACCES;

	if (ctx && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, peer) == 1 &&
	    EVP_PKEY_derive(ctx, z, &len) == 1 && len == 32 && CRYPTO_memcmp(z, zero_pub, 32) != 0)
		r = 0;
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(peer);
	EVP_PKEY_free(s->eph);
	s->eph = NULL;
	return r;
}

static struct gvm_session_mac *gmac_new(const uint8_t key[32])
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL) == 1)
		return (struct gvm_session_mac *)ctx;
	EVP_CIPHER_CTX_free(ctx);
	return NULL;
}

/* "giantvm hello" || SHA-256(GREETING payload || HELLO payload without its
 * MAC): what the HELLO MAC covers. */
static int transcript(const uint8_t greet[GVM_GREETING_SIZE], const struct gvm_hello *h,
		      uint8_t msg[13 + 32])
{
	uint8_t hb[GVM_HELLO_SIZE], buf[GVM_GREETING_SIZE + GVM_HELLO_SIZE - GVM_MAC_SIZE];
	unsigned int len = 32;

	gvm_hello_encode(h, hb);
	memcpy(buf, greet, GVM_GREETING_SIZE);
	memcpy(buf + GVM_GREETING_SIZE, hb, GVM_HELLO_SIZE - GVM_MAC_SIZE);
	memcpy(msg, "giantvm hello", 13);
	return EVP_Digest(buf, sizeof(buf), msg + 13, &len, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

/*
 * HKDF-SHA256 with salt = SHA-256(hello transcript hash || server's X25519
 * key): PRK = HMAC(salt, Z || token), then one-block expansions
 * (info || 0x01) for the two directions' GMAC keys, the OPEN pad key and the
 * server's proof.
 */
static int derive(struct gvm_session *s, int server, const void *token, size_t token_len,
		  const uint8_t z[32], const uint8_t pub_s[GVM_PUB_SIZE])
{
	uint8_t *ikm = malloc(32 + token_len), prk[32], k[32], salt_in[64], salt[32];
	unsigned int slen = 32;
	int r = -EIO;

	if (!ikm)
		return -ENOMEM;
	memcpy(salt_in, s->th, 32);
	memcpy(salt_in + 32, pub_s, GVM_PUB_SIZE);
	memcpy(ikm, z, 32);
	memcpy(ikm + 32, token, token_len);
	if (EVP_Digest(salt_in, sizeof(salt_in), salt, &slen, EVP_sha256(), NULL) != 1 ||
	    hmac(salt, 32, ikm, 32 + token_len, prk) < 0)
		goto out;
	if (hmac(prk, 32, "giantvm c2s\x01", 12, k) < 0)
		goto out;
	if (!(server ? (s->mac_in = gmac_new(k)) : (s->mac_out = gmac_new(k))))
		goto out;
	if (hmac(prk, 32, "giantvm s2c\x01", 12, k) < 0)
		goto out;
	if (!(server ? (s->mac_out = gmac_new(k)) : (s->mac_in = gmac_new(k))))
		goto out;
	if (hmac(prk, 32, "giantvm open\x01", 13, s->k_open) < 0 ||
	    hmac(prk, 32, "giantvm server proof\x01", 21, s->proof) < 0)
		goto out;
	s->keyed = 1;
	s->seq_in = s->seq_out = 0;
	r = 0;
out:
	OPENSSL_cleanse(ikm, 32 + token_len);
	OPENSSL_cleanse(prk, sizeof(prk));
	OPENSSL_cleanse(k, sizeof(k));
	free(ikm);
	return r;
}

int gvm_session_greet(struct gvm_session *s, uint32_t flags, struct gvm_greeting *g)
{
	int r;

	memset(g, 0, sizeof(*g));
	g->version = GVM_PROTO_VERSION;
	g->flags = flags;
	if ((r = gvm_random(g->nonce, sizeof(g->nonce))) < 0)
		return r;
	gvm_greeting_encode(g, s->greet);
	return 0;
}

int gvm_session_hello(struct gvm_session *s, const void *token, size_t token_len,
		      const uint8_t greet[GVM_GREETING_SIZE], struct gvm_hello *h)
{
	uint8_t msg[13 + 32];
	int r;

	memset(h, 0, sizeof(*h));
	h->version = GVM_PROTO_VERSION;
	memcpy(s->greet, greet, GVM_GREETING_SIZE);
	if (!token)
		return 0;
	if ((r = gvm_random(h->nonce, sizeof(h->nonce))) < 0 || (r = eph_new(s, h->pub)) < 0)
		return r;
	h->flags = GVM_HELLO_MAC;
	if ((r = transcript(greet, h, msg)) == 0)
		r = hmac(token, token_len, msg, sizeof(msg), h->mac);
	memcpy(s->th, msg + 13, 32);
	return r;
}

int gvm_session_accept(struct gvm_session *s, const void *token, size_t token_len,
		       const struct gvm_hello *h, uint8_t reply[GVM_PROOF_SIZE])
{
	uint8_t z[32], msg[13 + 32], mac[GVM_MAC_SIZE];
	int r;

	if ((r = transcript(s->greet, h, msg)) < 0 || (r = hmac(token, token_len, msg, sizeof(msg), mac)) < 0)
		return r;
	if (!gvm_auth_equal(mac, h->mac, GVM_MAC_SIZE))
		return 0;
	/* The ephemeral key only for a client that proved the token: a flood
	 * of strangers costs one HMAC each. */
	memcpy(s->th, msg + 13, 32);
	if ((r = eph_new(s, reply)) < 0)
		return r;
	r = eph_derive(s, h->pub, z);
	if (r == 0)
		r = derive(s, 1, token, token_len, z, reply);
	if (r == 0)
		memcpy(reply + GVM_PUB_SIZE, s->proof, GVM_MAC_SIZE);
	OPENSSL_cleanse(z, sizeof(z));
	return r < 0 ? r : 1;
}

int gvm_session_confirm(struct gvm_session *s, const void *token, size_t token_len,
			const uint8_t reply[GVM_PROOF_SIZE])
{
	uint8_t z[32];
	int r;

	if (!token || !s->eph)
		return -EACCES;
	r = eph_derive(s, reply, z);
	if (r == 0)
		r = derive(s, 0, token, token_len, z, reply);
	OPENSSL_cleanse(z, sizeof(z));
	if (r < 0)
		return r == -ENOMEM ? r : -EACCES;
	if (!gvm_auth_equal(reply + GVM_PUB_SIZE, s->proof, GVM_MAC_SIZE))
		return -EACCES;
	s->on = 1;
	return 0;
}

static int gmac_begin(struct gvm_session_mac *m, uint64_t seq, const uint8_t hdr[GVM_HDR_SIZE])
{
	EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)m;
	uint8_t iv[12] = { 0 };
	int outl;

	for (int i = 0; i < 8; i++)
		iv[4 + i] = (uint8_t)(seq >> (8 * i));
	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &outl, hdr, GVM_HDR_SIZE) != 1)
		return -EIO;
	return 0;
}

static int gmac_add(struct gvm_session_mac *m, const void *p, size_t len)
{
	EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)m;
	int outl;

	while (len) {
		int n = len > (1u << 30) ? (1 << 30) : (int)len;
		if (EVP_EncryptUpdate(ctx, NULL, &outl, p, n) != 1)
			return -EIO;
		p = (const uint8_t *)p + n;
		len -= (size_t)n;
	}
	return 0;
}

static int gmac_end(struct gvm_session_mac *m, uint8_t tag[GVM_TAG_SIZE])
{
	EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)m;
	uint8_t dummy[16];
	int outl;

	if (EVP_EncryptFinal_ex(ctx, dummy, &outl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GVM_TAG_SIZE, tag) != 1)
		return -EIO;
	return 0;
}

int gvm_session_tag_begin(struct gvm_session *s, const uint8_t hdr[GVM_HDR_SIZE])
{
	return gmac_begin(s->mac_out, s->seq_out++, hdr);
}

int gvm_session_tag_add(struct gvm_session *s, const void *p, size_t len)
{
	return gmac_add(s->mac_out, p, len);
}

int gvm_session_tag_end(struct gvm_session *s, uint8_t tag[GVM_TAG_SIZE])
{
	return gmac_end(s->mac_out, tag);
}

int gvm_session_check(struct gvm_session *s, const uint8_t hdr[GVM_HDR_SIZE], const void *payload,
		      size_t len, const uint8_t tag[GVM_TAG_SIZE])
{
	uint8_t want[GVM_TAG_SIZE];
	uint64_t seq = s->seq_in++;

	if (gmac_begin(s->mac_in, seq, hdr) < 0 || gmac_add(s->mac_in, payload, len) < 0 ||
	    gmac_end(s->mac_in, want) < 0)
		return -EIO;
	if (!gvm_auth_equal(want, tag, GVM_TAG_SIZE))
		return -EBADMSG;
	s->seq_last_in = seq;
	return 0;
}

int gvm_session_open_pad(const struct gvm_session *s, uint64_t region, uint64_t seq,
			 const uint8_t in[GVM_KEY_SIZE], uint8_t out[GVM_KEY_SIZE])
{
	uint8_t msg[16], pad[32];

	for (int i = 0; i < 8; i++) {
		msg[i] = (uint8_t)(region >> (8 * i));
		msg[8 + i] = (uint8_t)(seq >> (8 * i));
	}
	if (hmac(s->k_open, sizeof(s->k_open), msg, sizeof(msg), pad) < 0)
		return -EIO;
	for (unsigned i = 0; i < GVM_KEY_SIZE; i++)
		out[i] = in[i] ^ pad[i];
	OPENSSL_cleanse(pad, sizeof(pad));
	return 0;
}
