#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static void *embedded_main(void *arg)
{
	struct gvm_memserver *s = arg;

	if (gvm_memserver_run(s) < 0)
		fprintf(stderr, "giantvm: embedded memory server stopped with an error\n");
	return NULL;
}

int cli_pool_open(struct cli_pool *cp, const struct cli_pool_args *a)
{
	char err[512];
	int r = cli_pool_open_err(cp, a, err, sizeof(err));

	if (r)
		fprintf(stderr, "giantvm: %s\n", err);
	return r;
}

/* What named the pool file, for its errors: the caller's label, else the
 * option or variable, else (./cluster_uffd.conf) just "pool file". */
static const char *pool_label(const struct cli_pool_args *a, const char *source)
{
	if (a->pool_label)
		return a->pool_label;
	if (source && !strcmp(source, "--pool"))
		return "--pool";
	if (source && !strcmp(source, "GIANTVM_POOL"))
		return "$GIANTVM_POOL";
	return "pool file";
}

int cli_pool_open_err(struct cli_pool *cp, const struct cli_pool_args *a, char *err, size_t errlen)
{
	struct gvm_pool_opts po = { .replicas = a->replicas };
	int r;

	memset(cp, 0, sizeof(*cp));
	err[0] = 0;
	if (a->token_file) {
		char why[512];
		r = gvm_auth_load_token(a->token_file, &cp->token, &cp->token_len, why, sizeof(why));
		if (r) {
			/* why is "FILE: reason"; the same file could be named by a
			 * pool's setting or a command's: say which */
			snprintf(err, errlen, "%s %s", a->token_label ? a->token_label : "--token-file", why);
			return 1;
		}
		po.token = cp->token;
		po.token_len = cp->token_len;
	}
	cp->path = cli_pool_locate(a->pool_path, &cp->source);
	if (cp->path) {
		po.config_path = cp->path;
	} else {
		struct gvm_memserver_opts so = { .listen = { "127.0.0.1:0" }, .n_listen = 1 };
		const char *node = cp->embedded_addr;

		r = gvm_memserver_open(&cp->embedded, &so);
		if (r) {
			snprintf(err, errlen, "cannot start the embedded memory server: %s", strerror(-r));
			free(cp->token);
			cp->token = NULL;
			return 1;
		}
		snprintf(cp->embedded_addr, sizeof(cp->embedded_addr), "127.0.0.1:%d",
			 gvm_memserver_port(cp->embedded, 0));
		r = pthread_create(&cp->embedded_thread, NULL, embedded_main, cp->embedded);
		if (r) {
			snprintf(err, errlen, "pthread_create: %s", strerror(r));
			gvm_memserver_close(cp->embedded);
			cp->embedded = NULL;
			free(cp->token);
			cp->token = NULL;
			return 1;
		}
		po.nodes = &node;
		po.n_nodes = 1;
		cp->source = "embedded";
	}
	r = gvm_pool_open(&cp->pool, &po, err, errlen);
	if (r) {
		size_t n = cp->path ? strlen(cp->path) : 0;
		/* "FILE: reason" or "FILE:LINE: reason" is about the pool file:
		 * say where its name came from ("--pool FILE: ..."). */
		if (n && !strncmp(err, cp->path, n) && err[n] == ':') {
			char why[512];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, errlen, "%s %s", pool_label(a, cp->source), why);
		}
		cli_pool_close(cp);
		return 1;
	}
	return 0;
}

void cli_pool_close(struct cli_pool *cp)
{
	gvm_pool_close(cp->pool);
	cp->pool = NULL;
	if (cp->embedded) {
		gvm_memserver_stop(cp->embedded);
		pthread_join(cp->embedded_thread, NULL);
		gvm_memserver_close(cp->embedded);
		cp->embedded = NULL;
	}
	free(cp->token);
	cp->token = NULL;
}

const char *cli_optval(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);
	const char *a = argv[*i], *v;

	if (strncmp(a, name, n))
		return NULL;
	if (a[n] == '=') {
		v = a + n + 1;
	} else if (a[n]) {
		return NULL;
	} else if (*i + 1 >= argc) {
		fprintf(stderr, "giantvm: %s needs a value\n", name);
		exit(2); /* usage error, like GVM_EXIT_USAGE */
	} else {
		v = argv[++*i];
	}
	/* No option means anything by an empty value: "--pool=" would only
	 * fail later, as "giantvm: : No such file or directory". */
	if (!*v) {
		fprintf(stderr, "giantvm: %s needs a value (it is empty)\n", name);
		exit(2);
	}
	return v;
}

const char *cli_pool_locate(const char *explicit_path, const char **source)
{
	const char *env, *src = NULL, *path = NULL;

	if (explicit_path) {
		path = explicit_path;
		src = "--pool";
	} else if ((env = getenv("GIANTVM_POOL")) && *env) {
		path = env;
		src = "GIANTVM_POOL";
	} else if (access(CLI_POOL_FILE_DEFAULT, F_OK) == 0) {
		path = CLI_POOL_FILE_DEFAULT;
		src = "./" CLI_POOL_FILE_DEFAULT;
	}
	if (source)
		*source = src;
	return path;
}

int cli_preload_path(char *buf, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	const char *env = getenv("GIANTVM_PRELOAD");
	char *slash;

	if (env) {
		snprintf(buf, len, "%s", env);
		return access(buf, R_OK);
	}
	if (n < 0)
		return -1;
	exe[n] = 0;
	slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	/* Next to the binary (build tree), then PREFIX/lib/giantvm. */
	snprintf(buf, len, "%s/libgiantvm-preload.so", exe);
	if (access(buf, R_OK) == 0)
		return 0;
	snprintf(buf, len, "%s/../lib/giantvm/libgiantvm-preload.so", exe);
	return access(buf, R_OK);
}
