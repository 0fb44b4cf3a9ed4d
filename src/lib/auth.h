/* Shared-secret authentication: HMAC-SHA256 from OpenSSL's libcrypto. */
#ifndef GVM_AUTH_H
#define GVM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "giantvm.h"
#include "proto.h"

#define GVM_TOKEN_MIN 16u
#define GVM_TOKEN_MAX 4096u

/* mac = HMAC-SHA256(token, nonce). 0 or -EIO. */
int gvm_auth_mac(const void *token, size_t token_len, const uint8_t nonce[GVM_NONCE_SIZE],
		 uint8_t mac[GVM_MAC_SIZE]);
/* Constant-time compare; 1 if equal. */
int gvm_auth_equal(const uint8_t *a, const uint8_t *b, size_t n);
/* gvm_auth_load_token(): public, include/giantvm.h. */
#endif
