/*
 * Sealed pages: AES-256-GCM per page. See seal.h and docs/SECURITY.md.
 */
#include "seal.h"

#include <errno.h>
#include <string.h>

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

int gvm_sealer_init(struct gvm_sealer *s, const uint8_t key[GVM_SEAL_KEY_SIZE], uint64_t region)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	s->ctx = NULL;
	s->region = region;
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
}

/* Nonce: le64(page) || le32(version). AAD: le64(region) || le64(page) || le32(version). */
static int start(struct gvm_sealer *s, int enc, uint64_t page, uint32_t version)
{
	uint8_t iv[12], aad[20];
	int outl;

	for (int i = 0; i < 8; i++) {
		iv[i] = (uint8_t)(page >> (8 * i));
		aad[i] = (uint8_t)(s->region >> (8 * i));
		aad[8 + i] = iv[i];
	}
	for (int i = 0; i < 4; i++)
		iv[8 + i] = aad[16 + i] = (uint8_t)(version >> (8 * i));
	if (EVP_CipherInit_ex(s->ctx, NULL, NULL, NULL, iv, enc) != 1 ||
	    EVP_CipherUpdate(s->ctx, NULL, &outl, aad, sizeof(aad)) != 1)
		return -EIO;
	return 0;
}

int gvm_seal_page(struct gvm_sealer *s, uint64_t page, uint32_t version, uint8_t *data,
		  uint8_t tag[GVM_TAG_SIZE])
{
	int outl = 0, fl = 0;

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

	if (!s->ctx || start(s, 0, page, version) < 0 ||
	    EVP_CipherUpdate(s->ctx, data, &outl, data, GVM_PAGE_SIZE) != 1 ||
	    EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_SET_TAG, GVM_TAG_SIZE, (void *)tag) != 1)
		return -EIO;
	if (EVP_CipherFinal_ex(s->ctx, data + outl, &fl) != 1)
		return -EBADMSG;
	return 0;
}
