/*
 * giantvm memory server: the public API of the daemon (embedded by `giantvm
 * run` and `giantvm bench` when no pool is given), and the `giantvm
 * memserver` command itself. One epoll event loop serving any number of clients,
 * pages kept per region in RAM (sparse) or in a sparse backing file that
 * survives a restart. It knows nothing of userfaultfd.
 */
#ifndef GIANTVM_MEMSERVER_H
#define GIANTVM_MEMSERVER_H

#include <stddef.h>
#include <stdint.h>

#define GVM_MEMSERVER_MAX_LISTEN 16

enum gvm_fsync_mode {
	GVM_FSYNC_NONE = 0,   /* ack after pwrite: survives SIGKILL, not power loss */
	GVM_FSYNC_ALWAYS,     /* fdatasync before each WRITE ack */
};

struct gvm_memserver_opts {
	const char *listen[GVM_MEMSERVER_MAX_LISTEN]; /* "HOST:PORT", "[v6]:PORT"; port 0 = any */
	unsigned n_listen;        /* 0 = "127.0.0.1:9999" */
	uint64_t capacity;        /* bytes of non-zero pages; 0 = unlimited */
	const char *backing;      /* sparse backing file, or NULL for RAM */
	const char *token_file;   /* shared secret; NULL = no authentication */
	int insecure;             /* allow a non-loopback listener without a token */
	int fsync_mode;           /* enum gvm_fsync_mode */
	int prealloc;             /* populate `capacity` of RAM at open (RAM store only) */
	int hello_timeout_ms;     /* close a client that has not said HELLO by then; 0 = 10 s */
	/* Limits (docs/MEMSERVER.md "Limits"); 0 = the default shown. */
	uint64_t max_regions;     /* regions holding pages; 0 = 1048576 */
	uint64_t max_peer_regions;  /* of those, created from one address; 0 = max_regions / 4 */
	uint64_t max_peer_capacity; /* bytes in regions created from one address; 0 = no quota */
	unsigned max_conn_regions;/* regions OPEN on one connection; 0 = 1024 */
	uint64_t buffer_budget;   /* buffered input + output bytes over all clients; 0 = 256 MiB */
	unsigned max_clients;     /* connections; 0 = open-file limit - 64 */
	unsigned max_unauthed;    /* connections before HELLO; 0 = 1024 (at most max_clients / 2) */
	unsigned max_peer_conns;  /* connections from one peer address; 0 = 256 */
	int idle_timeout_ms;      /* close a client with no request for this long; 0 = 600 s, < 0 = never */
	int io_timeout_ms;        /* close a client stuck mid-frame or not reading its replies; 0 = 30 s */
	int keepalive_s;          /* TCP keepalive idle seconds; 0 = 60, < 0 = off */
	const char *admin_token_file; /* HELLO proving this token gets the node-wide STAT */
	const char *metrics_listen;   /* "HOST:PORT": serve Prometheus GET /metrics there; NULL = off */
	/* Tests only (a node that lies, tests/integration/test_seal.c): called with
	 * each READ reply's payload (bitmap, pages, and their tags when `tagged`)
	 * before it is sent, in a buffer of `cap` bytes; returns its new length.
	 * NULL in any real use. */
	size_t (*test_read_hook)(void *arg, uint64_t region, uint64_t page, unsigned count, int tagged,
				 uint8_t *payload, size_t len, size_t cap);
	void *test_hook_arg;
};

struct gvm_memserver;

/* Bind, load the backing file. 0 or -errno with a logged reason. */
int gvm_memserver_open(struct gvm_memserver **out, const struct gvm_memserver_opts *opts);
/* Port bound by listener `idx` (useful with port 0). */
int gvm_memserver_port(const struct gvm_memserver *s, unsigned idx);
/* Port of the --metrics listener (-EINVAL when there is none). */
int gvm_memserver_metrics_port(const struct gvm_memserver *s);
/* Serve until gvm_memserver_stop(). 0 or -errno. */
int gvm_memserver_run(struct gvm_memserver *s);
/* Ask the loop to return. Async-signal-safe (an eventfd write). */
void gvm_memserver_stop(struct gvm_memserver *s);
void gvm_memserver_close(struct gvm_memserver *s);

/* `giantvm memserver [OPTIONS]`: parse the options, serve in the foreground
 * until SIGTERM/SIGINT. Returns the exit status (0, 1, or 2 for bad usage);
 * prints its usage and errors. */
int gvm_memserver_main(int argc, char **argv);

#endif
