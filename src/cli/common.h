/* What several subcommands share: choosing the pool, the embedded server. */
#ifndef GVM_CLI_COMMON_H
#define GVM_CLI_COMMON_H

#include <pthread.h>
#include <stdint.h>

#include "giantvm.h"
#include "giantvm_memserver.h"

struct cli_pool {
	struct gvm_pool *pool;
	const char *path;              /* config file used, or NULL (embedded) */
	const char *source;            /* where the path came from */
	struct gvm_memserver *embedded;/* the embedded server, or NULL */
	pthread_t embedded_thread;
	char embedded_addr[64];        /* "127.0.0.1:PORT" */
	uint8_t *token;
	size_t token_len;
};

struct cli_pool_args {
	const char *pool_path;         /* --pool */
	const char *token_file;        /* --token-file */
	unsigned replicas;             /* --replicas (0 = default) */
	/* What named each file, put before it in an error about it (a token
	 * file's, a pool file's: "--token-file /x: No such file or directory");
	 * NULL: the option, $GIANTVM_POOL or "pool file" as cli_pool_locate() found it. */
	const char *pool_label, *token_label;
};

/* Open the pool named by the arguments / environment, or start an embedded
 * server. Prints a clear error and returns non-zero on failure. An error
 * about the token or pool file names the setting that named the file. */
int cli_pool_open(struct cli_pool *cp, const struct cli_pool_args *a);
/* The same, the error in err instead of on stderr. */
int cli_pool_open_err(struct cli_pool *cp, const struct cli_pool_args *a, char *err, size_t errlen);
void cli_pool_close(struct cli_pool *cp);

#define CLI_POOL_FILE_DEFAULT "cluster_uffd.conf"
/* The pool file: explicit_path (--pool), else $GIANTVM_POOL, else
 * ./cluster_uffd.conf if it exists; NULL when none (embedded pool). *source
 * says which ("--pool", "GIANTVM_POOL", "./cluster_uffd.conf"). */
const char *cli_pool_locate(const char *explicit_path, const char **source);

/* Parse "--opt=value" or "--opt value"; returns the value or NULL (argv[*i]
 * is another option). A missing or empty value exits with status 2. */
const char *cli_optval(int argc, char **argv, int *i, const char *name);

/* libgiantvm-preload.so: $GIANTVM_PRELOAD, else next to the running binary,
 * else ../lib/giantvm/ from it. 0 if readable. */
int cli_preload_path(char *buf, size_t len);

/* giantvm-qemu, the emulator wrapper for libvirt (src/cli/qemu_wrapper.c):
 * the giantvm binary run under that name. */
int cmd_qemu_wrapper(int argc, char **argv);

#endif
