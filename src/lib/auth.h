/*
 * Authentication and the authenticated session, from OpenSSL's libcrypto.
 *
 * The handshake (docs/PROTOCOL.md, "Authentication"): the server's GREETING
 * carries a nonce; a client holding the pool token answers with its own
 * nonce, an ephemeral X25519 key and HMAC(token, transcript); the server
 * answers with its ephemeral X25519 key and a proof; both derive the session
 * keys from the token, the Diffie-Hellman secret and the transcript
 * (HKDF-SHA256), so the proof shows the server holds the token too. Every later frame carries a 16-byte GMAC tag (AES-256-GCM
 * with no plaintext) keyed per direction, over the frame and a per-direction
 * sequence number, so frames cannot be altered, replayed, reordered or moved
 * to another connection.
 */
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

/*
 * The verifier a server stores for a region instead of its key:
 * HMAC-SHA256(key, "giantvm region verifier" || le64(region)). Knowing it does
 * not give the key, and the key never leaves the VM host.
 */
int gvm_region_verifier(const uint8_t key[GVM_KEY_SIZE], uint64_t region,
			uint8_t v[GVM_KEY_SIZE]);

struct gvm_session_mac;  /* an EVP_CIPHER_CTX */

struct gvm_session {
	int on;                 /* keys confirmed: every frame now carries a tag */
	int keyed;              /* keys derived (client: awaiting the server's proof) */
	uint64_t seq_out;       /* sequence number of the next frame sent */
	uint64_t seq_in;        /* ... and received */
	uint64_t seq_last_in;   /* sequence number of the frame last checked */
	struct gvm_session_mac *mac_out, *mac_in;
	uint8_t k_open[32];     /* pads OPEN payloads */
	uint8_t proof[GVM_MAC_SIZE]; /* the server's proof (sent, or expected) */
	void *eph;              /* our ephemeral X25519 key (EVP_PKEY) until the keys exist */
	uint8_t greet[GVM_GREETING_SIZE]; /* the GREETING payload (transcript) */
	uint8_t th[32];         /* hash of GREETING and HELLO (transcript) */
};

/* Zeroed state; fini frees the contexts and scrubs the keys. */
void gvm_session_init(struct gvm_session *s);
void gvm_session_fini(struct gvm_session *s);
/* Server: fill a GREETING (fresh nonce, `flags`) and keep it for the transcript. */
int gvm_session_greet(struct gvm_session *s, uint32_t flags, struct gvm_greeting *g);
/*
 * Client: answer the GREETING payload `greet`. With a token: the HELLO's
 * nonce, ephemeral key and MAC. Without: a HELLO with no MAC. 0 or -errno.
 */
int gvm_session_hello(struct gvm_session *s, const void *token, size_t token_len,
		      const uint8_t greet[GVM_GREETING_SIZE], struct gvm_hello *h);
/*
 * Server: does the HELLO's MAC prove `token`? 1 yes: the keys are derived and
 * `reply` is the HELLO reply payload (the caller sets s->on once that reply
 * is queued); 0 no; -errno on failure.
 */
int gvm_session_accept(struct gvm_session *s, const void *token, size_t token_len,
		       const struct gvm_hello *h, uint8_t reply[GVM_PROOF_SIZE]);
/* Client: the HELLO reply payload. 0 (session on), or -EACCES: the server
 * did not prove it holds the token. */
int gvm_session_confirm(struct gvm_session *s, const void *token, size_t token_len,
			const uint8_t reply[GVM_PROOF_SIZE]);

/* Tag of an outgoing frame: begin with its header, add payload pieces, end.
 * Takes the next outgoing sequence number. 0 or -EIO. */
int gvm_session_tag_begin(struct gvm_session *s, const uint8_t hdr[GVM_HDR_SIZE]);
int gvm_session_tag_add(struct gvm_session *s, const void *p, size_t len);
int gvm_session_tag_end(struct gvm_session *s, uint8_t tag[GVM_TAG_SIZE]);
/* Check an incoming frame (header, payload, tag). 0, or -EBADMSG. Sets seq_last_in. */
int gvm_session_check(struct gvm_session *s, const uint8_t hdr[GVM_HDR_SIZE], const void *payload,
		      size_t len, const uint8_t tag[GVM_TAG_SIZE]);
/* OPEN payload <-> region verifier: XOR with HMAC(k_open, le64(region) || le64(seq)),
 * seq = the OPEN frame's sequence number. Its own inverse. */
int gvm_session_open_pad(const struct gvm_session *s, uint64_t region, uint64_t seq,
			 const uint8_t in[GVM_KEY_SIZE], uint8_t out[GVM_KEY_SIZE]);
#endif
