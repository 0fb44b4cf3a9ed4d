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
