/*
 * Transport: the engine's connections to memory nodes. One connection per
 * node, opened on first use and kept; every request is pipelined on it with
 * a request id, and replies come back in order, so the outstanding requests
 * of a connection are a FIFO. Used only from the engine thread (no locks);
 * sockets are non-blocking and driven by the engine's epoll.
 *
 * A connection that fails (refused, reset, EOF, bad frame, no reply within
 * the request timeout) hands its outstanding requests back through
 * on_fail() and is retried with exponential backoff.
 */
#ifndef GVM_TRANSPORT_H
#define GVM_TRANSPORT_H

#include <stdint.h>
#include <sys/uio.h>

#include "auth.h"
#include "config.h"
#include "proto.h"

enum gvm_conn_state {
	GVM_CONN_IDLE = 0,    /* never used, or closed while idle */
	GVM_CONN_CONNECTING,  /* connect() in progress */
	GVM_CONN_GREETING,    /* waiting for the server's GREETING */
	GVM_CONN_READY,       /* HELLO sent; requests flow */
	GVM_CONN_HELLO,       /* with a token: HELLO sent, nothing else until the server's proof */
	GVM_CONN_DOWN,        /* failed; retry not before retry_at */
};

struct gvm_req {
	uint64_t id;
	uint64_t region;
	uint64_t page;
	uint64_t sent_ns;
	uint32_t count;
	uint16_t op;
	void *ctx;            /* the engine's object waiting for this reply */
	uint64_t end;         /* tx_queued after this frame: its reply is only valid once sent */
	uint8_t tagged;       /* a READ that asked for the pages' tags */
};

struct gvm_out_ext {          /* payload sent from the caller's memory, not copied */
	size_t pos;           /* inline output offset it follows */
	const uint8_t *p;
	size_t len;
};

struct gvm_conn {
	int fd;               /* -1 when not connected */
	int state;            /* enum gvm_conn_state */
	uint32_t node;
	uint32_t failures;    /* consecutive, for backoff */
	uint64_t retry_at;    /* ns: earliest reconnect when DOWN */
	uint64_t last_used;   /* ns: for idle close */
	uint64_t last_rx;     /* ns: last byte received (progress, for the timeout) */
	uint8_t *out;         /* queued bytes not yet written */
	size_t out_len, out_off, out_cap;
	struct gvm_out_ext *ext; /* ring of referenced payloads interleaved with out */
	uint32_t ext_head, ext_len, ext_cap;
	size_t ext_done;      /* bytes of the head ext already written */
	uint64_t tx_queued, tx_sent; /* bytes queued / written since connect */
	uint8_t *in;          /* received bytes not yet consumed */
	size_t in_len, in_off, in_cap;
	struct gvm_req *q;    /* ring of outstanding requests (replies in order) */
	uint32_t q_head, q_len, q_cap;
	uint64_t *opened;     /* region ids OPENed on this connection */
	uint32_t n_opened;
	struct gvm_session sess; /* with a token: the frame keys once the server proved itself */
	uint64_t hello_end;   /* tx_queued at the end of HELLO: all that may leave before the proof */
	int epoll_out;        /* EPOLLOUT armed */
	int dirty;            /* on the flush list */
	struct gvm_conn *next_dirty;
	/* statistics */
	uint64_t reqs, pages_in, bytes_in, bytes_out, errors;
	uint64_t pages_rejected; /* sealed pages from this node that failed verification */
	uint64_t rtt_ewma_ns;
};

struct gvm_transport;
#define GVM_TRANSPORT_MAX_KEYS 64

struct gvm_transport_ops {
	/* A reply arrived for req. payload is valid only during the call. */
	void (*on_reply)(void *owner, struct gvm_conn *c, const struct gvm_req *req,
			 const struct gvm_hdr *h, const uint8_t *payload);
	/* req will get no reply from this connection (err < 0 says why). */
	void (*on_fail)(void *owner, struct gvm_conn *c, const struct gvm_req *req, int err);
	/* A node that had failed answered HELLO again (it may have restarted empty). */
	void (*on_up)(void *owner, struct gvm_conn *c);
};

struct gvm_region_key_ent {
	uint64_t region;
	uint8_t verifier[GVM_KEY_SIZE]; /* what OPEN proves (auth.h); the key is not kept */
};

struct gvm_transport {
	const struct gvm_config *cfg;
	const uint8_t *token;
	size_t token_len;
	int epfd;
	int timeout_ms;
	struct gvm_conn **conns;       /* n_nodes pointers, NULL until first use */
	uint32_t n_nodes;
	uint32_t n_open;               /* connections with an fd */
	uint64_t next_id;
	struct gvm_transport_ops ops;
	void *owner;
	struct gvm_region_key_ent keys[GVM_TRANSPORT_MAX_KEYS];
	uint32_t n_keys;               /* published with release after keys[] */
	struct gvm_conn *dirty;        /* connections with bytes to write */
	struct { uint8_t *buf; size_t cap; } spare[16]; /* idle receive buffers, reused */
	unsigned n_spare;
	uint64_t conn_failures;
};

int gvm_transport_init(struct gvm_transport *t, int epfd, const struct gvm_config *cfg,
		       const void *token, size_t token_len, int timeout_ms,
		       const struct gvm_transport_ops *ops, void *owner);
void gvm_transport_fini(struct gvm_transport *t);
/* Make a region's key known; OPEN is sent on each connection before first use.
 * The only function that may be called from another thread (while the
 * engine thread runs): keys[] is append-only and n_keys is published last. */
int gvm_transport_add_key(struct gvm_transport *t, uint64_t region, const uint8_t key[GVM_KEY_SIZE]);
/*
 * Queue a request to `node`. h->id is assigned here; h->len must equal the
 * iov total. Bytes are copied, so iov memory may be reused at once. Returns
 * 0, or -EHOSTDOWN when the node is in backoff (nothing queued).
 */
int gvm_transport_send(struct gvm_transport *t, uint32_t node, struct gvm_hdr *h,
		       const struct iovec *iov, int iovcnt, void *ctx);
/*
 * The same with one payload that is NOT copied: it is written from `payload`
 * itself, which must stay valid and unchanged until this request gets its
 * reply or is handed to on_fail (the transport never delivers a reply
 * before the whole frame is written). Used for write-backs: a copy per
 * replica was up to 8 MiB of output buffer per node.
 */
int gvm_transport_send_ref(struct gvm_transport *t, uint32_t node, struct gvm_hdr *h,
			   const void *payload, size_t len, void *ctx);
/* epoll event for a connection (epoll data.ptr is the struct gvm_conn). */
void gvm_transport_event(struct gvm_transport *t, struct gvm_conn *c, uint32_t events);
/* Write what was queued during this loop turn. */
void gvm_transport_flush(struct gvm_transport *t);
/* Fail connections whose oldest request is older than the timeout; close
 * connections idle for idle_ns (0 = never). Returns ms until the next check. */
int gvm_transport_tick(struct gvm_transport *t, uint64_t now, uint64_t idle_ns);
/* 1 if the node may be used now (not in backoff). */
int gvm_transport_usable(const struct gvm_transport *t, uint32_t node, uint64_t now);

#endif
