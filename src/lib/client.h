/*
 * A blocking client for one memory node: one connection, one request at a
 * time. Used by tests, by `giantvm bench` to fill the pool, and by tools.
 * The fault engine does not use it: it has its own pipelined, non-blocking
 * transport (engine.c).
 *
 * All functions return 0 (or a count) on success, -errno on failure; a
 * non-zero status in a server reply is returned as is (e.g. -EACCES,
 * -ENOSPC). After a transport or protocol error the connection is closed
 * and every later call returns -ENOTCONN.
 */
#ifndef GVM_CLIENT_H
#define GVM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "proto.h"
#include "seal.h"

struct gvm_client {
	int fd;               /* -1 when not connected */
	uint64_t next_id;
	int timeout_ms;       /* per blocking step; <= 0 waits forever */
	uint8_t *buf;         /* GVM_MAX_PAYLOAD scratch for replies */
	struct gvm_session sess; /* with a token: every frame after HELLO is tagged */
	struct gvm_sealer seal;  /* gvm_client_seal(): pages of seal.region sealed at seal_ver */
	uint32_t seal_ver;
};

/*
 * Connect to "HOST:PORT" / "[V6]:PORT" / "HOST" (port 9999), read the
 * GREETING, send HELLO and wait for its reply. With a token, the server must
 * offer a session and prove it holds the token too (-EACCES otherwise), and
 * every later frame is authenticated (auth.h). timeout_ms bounds each step.
 */
int gvm_client_connect(struct gvm_client *c, const char *hostport, const void *token,
		       size_t token_len, int timeout_ms);
void gvm_client_close(struct gvm_client *c);
/* Bind `region` to this connection with its 32-byte key (only its verifier
 * is sent, padded in a session: the key never leaves). */
int gvm_client_open(struct gvm_client *c, uint64_t region, const uint8_t key[GVM_KEY_SIZE]);
/* Read count pages into buf (zero pages are written as zeros). */
int gvm_client_read(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count, void *buf);
/* Like gvm_client_read, and also returns the reply bitmap (GVM_BITMAP_BYTES(count)). */
int gvm_client_read_bm(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		       void *buf, uint8_t *bitmap);
/* Write count pages from buf; all-zero pages are marked in the bitmap, not sent. */
int gvm_client_write(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		     const void *buf);
int gvm_client_stat(struct gvm_client *c, struct gvm_stat *st);
int gvm_client_free(struct gvm_client *c, uint64_t region);
/* Bitmap of pages stored (non-zero) in [page, page+count). */
int gvm_client_list(struct gvm_client *c, uint64_t region, uint64_t page, unsigned count,
		    uint8_t *bitmap);
int gvm_client_ping(struct gvm_client *c);
/* From now on, pages of `region` written are sealed at `version` (seal.h)
 * with the key derived from `key`, and pages read are checked and opened at
 * it (-EBADMSG if one fails). For tools that fill a pool a sealed engine
 * then reads (GVM_ATTACH_SEALED_V1). */
int gvm_client_seal(struct gvm_client *c, uint64_t region, const uint8_t key[GVM_KEY_SIZE],
		    uint32_t version);

#endif
