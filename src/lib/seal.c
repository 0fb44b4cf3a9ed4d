/*
 * Sealed pages: AEGIS-256 or AES-256-GCM per page. See seal.h and
 * docs/SECURITY.md.
 */
#define LOG_PREFIX "seal: "
#include "seal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aegis.h"
#include "giantvm.h"
#include "log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

int gvm_seal_key(const uint8_t region_key[GVM_KEY_SIZE], uint64_t region,
		 uint8_t out[GVM_SEAL_KEY_SIZE])
{
	static const char label[] = "giantvm seal key";
	uint8_t msg[sizeof(label) - 1 + 8];
	unsigned int len = 0;

	memcpy(msg, label, sizeof(label) - 1);
	for (int i = 0; i < 8; i++)
		msg[sizeof(label) - 1 + i] = (uint8_t)(region >> (8 * i));
	if (!HMAC(EVP_sha256(), region_key, GVM_KEY_SIZE, msg, sizeof(msg), out, &len) ||
	    len != GVM_SEAL_KEY_SIZE)
		return -EIO;
	return 0;
}

static int use_aegis;
static pthread_once_t cipher_once = PTHREAD_ONCE_INIT;

static void cipher_choose(void)
{
	const char *c = getenv("GIANTVM_SEAL_CIPHER");

	use_aegis = gvm_aegis256_available() && !(c && !strcmp(c, "aes-256-gcm"));
	if (c && *c && strcmp(c, "aes-256-gcm") && strcmp(c, "aegis-256"))
		pr_warn("GIANTVM_SEAL_CIPHER='%s': not aegis-256 or aes-256-gcm; using %s", c,
			use_aegis ? "aegis-256" : "aes-256-gcm");
	else if (c && !strcmp(c, "aegis-256") && !use_aegis)
		pr_warn("GIANTVM_SEAL_CIPHER=aegis-256: this CPU has no AES-NI; using aes-256-gcm");
}

const char *gvm_seal_cipher(void)
{
	pthread_once(&cipher_once, cipher_choose);
	return use_aegis ? "aegis-256" : "aes-256-gcm";
}

int gvm_sealer_init(struct gvm_sealer *s, const uint8_t key[GVM_SEAL_KEY_SIZE], uint64_t region)
{
	EVP_CIPHER_CTX *ctx;

	pthread_once(&cipher_once, cipher_choose);
	s->ctx = NULL;
	s->region = region;
	s->aegis = use_aegis;
	if (s->aegis) {
		memcpy(s->key, key, GVM_SEAL_KEY_SIZE);
		return 0;
	}
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -ENOMEM;
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL, 1) != 1) {
		EVP_CIPHER_CTX_free(ctx);
		return -EIO;
	}
	s->ctx = ctx;
	return 0;
}

void gvm_sealer_fini(struct gvm_sealer *s)
{
	EVP_CIPHER_CTX_free(s->ctx);
	s->ctx = NULL;
	OPENSSL_cleanse(s->key, sizeof(s->key));
	s->aegis = 0;
}

/* Nonce: le64(page) || le32(version) (12 bytes; AEGIS-256 pads it with
 * zeros to 32). AAD: le64(region) || le64(page) || le32(version). */
static void nonce_aad(const struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t nonce[12],
		      uint8_t aad[20])
{
	for (int i = 0; i < 8; i++) {
		nonce[i] = (uint8_t)(page >> (8 * i));
		aad[i] = (uint8_t)(s->region >> (8 * i));
		aad[8 + i] = nonce[i];
	}
	for (int i = 0; i < 4; i++)
		nonce[8 + i] = aad[16 + i] = (uint8_t)(version >> (8 * i));
}

static void aegis_params(const struct gvm_sealer *s, uint64_t page, uint32_t version,
			 uint8_t nonce[GVM_AEGIS256_NONCE_SIZE], uint8_t aad[20])
{
	memset(nonce, 0, GVM_AEGIS256_NONCE_SIZE);
	nonce_aad(s, page, version, nonce, aad);
}

static int start(struct gvm_sealer *s, int enc, uint64_t page, uint32_t version)
{
	uint8_t iv[12], aad[20];
	int outl;

	nonce_aad(s, page, version, iv, aad);
	if (EVP_CipherInit_ex(s->ctx, NULL, NULL, NULL, iv, enc) != 1 ||
	    EVP_CipherUpdate(s->ctx, NULL, &outl, aad, sizeof(aad)) != 1)
		return -EIO;
	return 0;
}

int gvm_seal_page(struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t *data,
		  uint8_t tag[GVM_TAG_SIZE])
{
	int outl = 0, fl = 0;

	if (s->aegis) {
		uint8_t nonce[GVM_AEGIS256_NONCE_SIZE], aad[20];
		aegis_params(s, page, version, nonce, aad);
		return gvm_aegis256_encrypt(data, tag, data, GVM_PAGE_SIZE, aad, sizeof(aad), nonce, s->key) ? -EIO : 0;
	}
	if (!s->ctx || start(s, 1, page, version) < 0 ||
	    EVP_CipherUpdate(s->ctx, data, &outl, data, GVM_PAGE_SIZE) != 1 ||
	    EVP_CipherFinal_ex(s->ctx, data + outl, &fl) != 1 || outl + fl != GVM_PAGE_SIZE ||
	    EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_GET_TAG, GVM_TAG_SIZE, tag) != 1)
		return -EIO;
	return 0;
}

int gvm_open_page(struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t *data,
		  const uint8_t tag[GVM_TAG_SIZE])
{
	int outl = 0, fl = 0;

	if (s->aegis) {
		uint8_t nonce[GVM_AEGIS256_NONCE_SIZE], aad[20];
		aegis_params(s, page, version, nonce, aad);
		int r = gvm_aegis256_decrypt(data, data, GVM_PAGE_SIZE, tag, aad, sizeof(aad), nonce, s->key);
		return r == -EBADMSG ? -EBADMSG : r ? -EIO : 0;
	}
	if (!s->ctx || start(s, 0, page, version) < 0 ||
	    EVP_CipherUpdate(s->ctx, data, &outl, data, GVM_PAGE_SIZE) != 1 ||
	    EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_SET_TAG, GVM_TAG_SIZE, (void *)tag) != 1)
		return -EIO;
	if (EVP_CipherFinal_ex(s->ctx, data + outl, &fl) != 1)
		return -EBADMSG;
	return 0;
}
