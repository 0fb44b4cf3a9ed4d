/*
 * giantvm-qemu: the giantvm binary run under that name (a symlink) is an
 * emulator for libvirt's <emulator>: it takes QEMU's command line, and
 * execs the real QEMU with the guest's RAM in the pool.
 *
 * DESIGN (docs/LIBVIRT.md for the operator's side)
 * - Probing passes straight through: a command line with no guest to run
 *   (-machine none, -version, -help, "help" values) execs the real QEMU as
 *   is, with no preload.
 * - Pool, token and engine options come from a system config,
 *   /etc/giantvm/giantvm-qemu.conf ($GIANTVM_QEMU_CONF overrides; libvirt
 *   clears the environment, so under libvirt only the file counts). No pool
 *   configured is an error: a VM never silently gets a pool of its own.
 * - QEMU is the domain's PID: the wrapper checks everything it can, then
 *   execs QEMU with the preload library. libvirt's pid file, cgroups, vCPU
 *   thread placement and `virsh destroy` see the real QEMU, and there is no
 *   guardian process to be SIGKILLed (or OOM-killed) away from QEMU: nothing
 *   of giantvm runs outside QEMU, so nothing can leave QEMU orphaned.
 * - libvirt passes -S and sends `cont` on its own monitor, whenever it
 *   likes. The preload runs in early-attach mode (GIANTVM_ATTACH=early):
 *   each guest RAM block is registered with the engine inside the mmap()
 *   that creates it, during QEMU's machine setup, before QEMU's main loop
 *   (and so any monitor command) runs. Guest RAM that is not private
 *   anonymous memory (-mem-path, file/memfd backends, share=on: libvirt's
 *   <memoryBacking> hugepages/file/memfd/shared) cannot be attached that way
 *   and is refused here, as are mem-lock and VFIO, whose pinning would
 *   fault all guest RAM in locally.
 * - The VM is named by -name guest=NAME: its control socket is
 *   RUN_DIR/NAME.sock (RUN_DIR: run-dir, default /run/giantvm-qemu, where
 *   `giantvm stat NAME` looks), its log RUN_DIR/NAME.log (log-dir).
 * - Nothing is added to QEMU's stderr (libvirt copies it into the domain
 *   log) but an error that stops the VM; one line on stdout names the log.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "giantvm.h"
#include "giantvm_ctl.h"
#include "mode.h"
#include "qemu.h"

#define WRAP "giantvm-qemu"

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = 0;
	return s;
}

static int set_str(char *dst, size_t len, const char *v, int must_be_abs, char *err, size_t errlen)
{
	if (!*v || strlen(v) >= len || (must_be_abs && v[0] != '/')) {
		snprintf(err, errlen, "'%s': %s", v, must_be_abs ? "an absolute path" : "too long or empty");
		return -1;
	}
	snprintf(dst, len, "%s", v);
	return 0;
}

/* key = value lines, '#' comments. Errors: "FILE:LINE: why" in err. */
int gvm_wrapper_conf_parse(const char *path, struct gvm_wrapper_conf *c, char *err, size_t errlen)
{
	char line[4096], why[PATH_MAX + 128];
	struct stat st = { 0 };
	FILE *f;
	int ln = 0, rc = 0, log_set = 0;

	memset(c, 0, sizeof(*c));
	snprintf(c->path, sizeof(c->path), "%s", path);
	snprintf(c->qemu, sizeof(c->qemu), "/usr/bin/qemu-system-x86_64");
	snprintf(c->run_dir, sizeof(c->run_dir), GVM_WRAPPER_RUN_DIR);
	snprintf(c->log_dir, sizeof(c->log_dir), GVM_WRAPPER_RUN_DIR);
	f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	/* fopen() opens a directory; only the first read would fail */
	if (fstat(fileno(f), &st) < 0 || S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s: %s", path, S_ISDIR(st.st_mode) ? strerror(EISDIR) : strerror(errno));
		fclose(f);
		return -1;
	}
	c->found = 1;
	errno = 0;
	while (fgets(line, sizeof(line), f)) {
		char *k, *v, *eq, *hash;
		uint64_t n;
		ln++;
		if (!strchr(line, '\n') && !feof(f)) {
			snprintf(why, sizeof(why), "line too long");
			goto bad;
		}
		if ((hash = strchr(line, '#')))
			*hash = 0;
		k = trim(line);
		if (!*k)
			continue;
		eq = strchr(k, '=');
		if (!eq) {
			snprintf(why, sizeof(why), "'%s': want KEY = VALUE", k);
			goto bad;
		}
		*eq = 0;
		k = trim(k);
		v = trim(eq + 1);
		why[0] = 0;
		if (!strcmp(k, "pool")) {
			if (set_str(c->pool, sizeof(c->pool), v, 1, why, sizeof(why)))
				goto bad;
			c->pool_line = ln;
		} else if (!strcmp(k, "token-file")) {
			if (set_str(c->token, sizeof(c->token), v, 1, why, sizeof(why)))
				goto bad;
			c->token_line = ln;
		} else if (!strcmp(k, "qemu")) {
			if (set_str(c->qemu, sizeof(c->qemu), v, 1, why, sizeof(why)))
				goto bad;
		} else if (!strcmp(k, "run-dir")) {
			if (set_str(c->run_dir, sizeof(c->run_dir), v, 1, why, sizeof(why)))
				goto bad;
		} else if (!strcmp(k, "log-dir")) {
			if (set_str(c->log_dir, sizeof(c->log_dir), v, 1, why, sizeof(why)))
				goto bad;
			log_set = 1;
		} else if (!strcmp(k, "local-mem")) {
			if (gvm_parse_size(v, &n) || n < GVM_CTL_LOCAL_MEM_MIN || strlen(v) >= sizeof(c->local_mem)) {
				snprintf(why, sizeof(why), "local-mem '%s': a size of at least 16M (e.g. 128M, 4G)", v);
				goto bad;
			}
			snprintf(c->local_mem, sizeof(c->local_mem), "%s", v);
		} else if (!strcmp(k, "replicas")) {
			if (gvm_parse_u64(v, GVM_CTL_REPLICAS_MIN, GVM_CTL_REPLICAS_MAX, &n)) {
				snprintf(why, sizeof(why), "replicas '%s': a number from %u to %u", v,
					 GVM_CTL_REPLICAS_MIN, GVM_CTL_REPLICAS_MAX);
				goto bad;
			}
			c->replicas = (unsigned)n;
		} else if (!strcmp(k, "prefetch")) {
			if (gvm_parse_u64(v, GVM_CTL_PREFETCH_MIN, GVM_CTL_PREFETCH_MAX, &n) || (n & (n - 1))) {
				snprintf(why, sizeof(why), "prefetch '%s': a power of two from %u to %u", v,
					 GVM_CTL_PREFETCH_MIN, GVM_CTL_PREFETCH_MAX);
				goto bad;
			}
			c->prefetch = (unsigned)n;
		} else if (!strcmp(k, "timeout-ms")) {
			if (gvm_parse_u64(v, GVM_CTL_TIMEOUT_MS_MIN, GVM_CTL_TIMEOUT_MS_MAX, &n)) {
				snprintf(why, sizeof(why), "timeout-ms '%s': %u to %u", v, GVM_CTL_TIMEOUT_MS_MIN,
					 GVM_CTL_TIMEOUT_MS_MAX);
				goto bad;
			}
			c->timeout_ms = (unsigned long)n;
		} else if (!strcmp(k, "deadline-ms")) {
			if (gvm_parse_u64(v, GVM_CTL_DEADLINE_MS_MIN, GVM_CTL_DEADLINE_MS_MAX, &n)) {
				snprintf(why, sizeof(why), "deadline-ms '%s': %u to %u", v, GVM_CTL_DEADLINE_MS_MIN,
					 GVM_CTL_DEADLINE_MS_MAX);
				goto bad;
			}
			c->deadline_ms = (unsigned long)n;
		} else {
			snprintf(why, sizeof(why), "unknown key '%s' (pool, token-file, qemu, run-dir, log-dir, "
						   "local-mem, replicas, prefetch, timeout-ms, deadline-ms)", k);
			goto bad;
		}
		continue;
bad:
		snprintf(err, errlen, "%s:%d: %s", path, ln, why);
		rc = -1;
		break;
	}
	/* errno is the failed read's: nothing since has set it */
	if (!rc && ferror(f)) {
		snprintf(err, errlen, "%s: after line %d: %s", path, ln, strerror(errno ? errno : EIO));
		rc = -1;
	}
	fclose(f);
	if (!log_set)
		snprintf(c->log_dir, sizeof(c->log_dir), "%s", c->run_dir);
	return rc;
}

static int valid_name(const char *s)
{
	return *s && strlen(s) <= 48 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == strlen(s) &&
	       s[0] != '.';
}

static void setenv_u(const char *k, unsigned long v)
{
	char num[32];

	snprintf(num, sizeof(num), "%lu", v);
	setenv(k, num, 1);
}

int cmd_qemu_wrapper(int argc, char **argv)
{
	const char *conf_path = getenv("GIANTVM_QEMU_CONF");
	char err[PATH_MAX + 512], name[128], why[512], preload[PATH_MAX];
	char ctl_path[PATH_MAX], log_path[PATH_MAX], secret_hex[65];
	char pool_label[PATH_MAX + 32], token_label[PATH_MAX + 32];
	struct cli_pool_args pa = { 0 };
	struct cli_pool cp;
	struct gvm_mode m;
	uint8_t secret[32];
	static struct gvm_wrapper_conf c;
	int fd;

	if (!conf_path || !*conf_path)
		conf_path = GVM_WRAPPER_CONF;
	if (gvm_wrapper_conf_parse(conf_path, &c, err, sizeof(err))) {
		fprintf(stderr, WRAP ": %s\n", err);
		return 1;
	}
	argv[0] = c.qemu;
	if (gvm_qemu_is_probe(argc, argv)) {
		/* libvirt's capability probing, -version, -help: QEMU as is */
		execv(c.qemu, argv);
		fprintf(stderr, WRAP ": cannot run QEMU '%s' (qemu in %s): %s\n", c.qemu, c.path, strerror(errno));
		return 127;
	}
	if (!c.pool[0]) {
		fprintf(stderr, WRAP ": %s: no pool configured (pool = /etc/giantvm/cluster_uffd.conf); "
				"refusing to run the guest without one\n", c.path);
		return 1;
	}
	if (gvm_qemu_has_vfio(argc, argv)) {
		fprintf(stderr, WRAP ": a vfio device pins all guest RAM at start, so its pages cannot stay in "
				"the pool: remove the <hostdev> (vfio-pci) from the domain\n");
		return 1;
	}
	if (gvm_qemu_mem_lock(argc, argv)) {
		fprintf(stderr, WRAP ": -overcommit mem-lock=on (or -realtime mlock=on) locks all guest RAM in "
				"local memory at start, so it cannot stay in the pool: remove "
				"<memoryBacking><locked/> from the domain\n");
		return 1;
	}
	if (gvm_qemu_local_ram(argc, argv, why, sizeof(why))) {
		fprintf(stderr, WRAP ": %s: remove <memoryBacking> (hugepages, file, memfd, shared access) "
				"from the domain\n", why);
		return 1;
	}
	if (gvm_qemu_has_arg(argc, argv, "-daemonize")) {
		fprintf(stderr, WRAP ": -daemonize with a guest is not supported (the preload's threads "
				"would not survive QEMU's fork)\n");
		return 1;
	}
	if (gvm_qemu_vm_name(argc, argv, name, sizeof(name)))
		snprintf(name, sizeof(name), "vm-%d", (int)getpid());
	if (!valid_name(name)) {
		fprintf(stderr, WRAP ": VM name '%s': giantvm needs 1-48 letters, digits, '-', '_' or '.', "
				"not starting with '.' (the domain's <name>)\n", name);
		return 1;
	}
	gvm_mode_detect(&m);
	if (!m.uffd) {
		fprintf(stderr, WRAP ": userfaultfd is unavailable to QEMU's user (uid %u): %s. Under libvirt: "
				"add \"/dev/userfaultfd\" to cgroup_device_acl in /etc/libvirt/qemu.conf and "
				"give the device to group kvm, mode 0660 (docs/LIBVIRT.md)\n",
			(unsigned)getuid(), m.uffd_why);
		return 1;
	}
	if (cli_preload_path(preload, sizeof(preload))) {
		fprintf(stderr, WRAP ": libgiantvm-preload.so not found next to giantvm or in ../lib/giantvm\n");
		return 1;
	}
	/* The pool: opened and probed here, so a VM that cannot have its RAM
	 * there does not start (the preload opens its own). */
	pa.pool_path = c.pool;
	pa.token_file = c.token[0] ? c.token : NULL;
	pa.replicas = c.replicas;
	/* an error about either file points at the line that named it */
	snprintf(pool_label, sizeof(pool_label), "%s:%d: pool =", c.path, c.pool_line);
	snprintf(token_label, sizeof(token_label), "%s:%d: token-file =", c.path, c.token_line);
	pa.pool_label = pool_label;
	pa.token_label = token_label;
	if (cli_pool_open_err(&cp, &pa, err, sizeof(err))) {
		fprintf(stderr, WRAP ": %s\n", err);
		return 1;
	}
	if (gvm_pool_probe(cp.pool, 3000, err, sizeof(err))) {
		fprintf(stderr, WRAP ": pool %s not reachable, the guest was not started: %s\n", c.pool, err);
		cli_pool_close(&cp);
		return 1;
	}
	setenv_u(GVM_ENV_REPLICAS, gvm_pool_replicas(cp.pool));
	if (cp.token) {
		char *tok = strndup((const char *)cp.token, cp.token_len);
		if (!tok) {
			cli_pool_close(&cp);
			return 1;
		}
		setenv(GVM_ENV_TOKEN, tok, 1);
		free(tok);
	}
	printf("[GiantVM] giantvm-qemu: VM '%s', guest RAM in the pool of %s (%u node%s, replicas %u); "
	       "log: %s/%s.log\n", name, c.pool, gvm_pool_node_count(cp.pool),
	       gvm_pool_node_count(cp.pool) == 1 ? "" : "s", gvm_pool_replicas(cp.pool), c.log_dir, name);
	fflush(stdout);
	cli_pool_close(&cp);

	if (mkdir(c.run_dir, 0770) < 0 && errno != EEXIST) {
		fprintf(stderr, WRAP ": run directory %s: %s (create it for QEMU's user: "
				"install -d -m 2770 -g kvm %s; docs/LIBVIRT.md)\n", c.run_dir, strerror(errno), c.run_dir);
		return 1;
	}
	if (strcmp(c.log_dir, c.run_dir) && mkdir(c.log_dir, 0770) < 0 && errno != EEXIST) {
		fprintf(stderr, WRAP ": log directory %s: %s\n", c.log_dir, strerror(errno));
		return 1;
	}
	snprintf(ctl_path, sizeof(ctl_path), "%s/%s.sock", c.run_dir, name);
	snprintf(log_path, sizeof(log_path), "%s/%s.log", c.log_dir, name);
	if (gvm_ctl_in_use(ctl_path)) {
		fprintf(stderr, WRAP ": a VM named '%s' is running already (%s)\n", name, ctl_path);
		return 1;
	}
	fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0) {
		fprintf(stderr, WRAP ": log file %s: %s (create %s for QEMU's user; docs/LIBVIRT.md)\n",
			log_path, strerror(errno), c.log_dir);
		return 1;
	}
	dprintf(fd, WRAP ": VM '%s': QEMU %s, pool %s, control socket %s (pid %d)\n", name, c.qemu, c.pool,
		ctl_path, (int)getpid());
	close(fd);
	if (gvm_random(secret, sizeof(secret))) {
		fprintf(stderr, WRAP ": getrandom failed\n");
		return 1;
	}
	for (size_t i = 0; i < sizeof(secret); i++)
		sprintf(secret_hex + 2 * i, "%02x", secret[i]);

	setenv("LD_PRELOAD", preload, 1);
	setenv(GVM_ENV_ATTACH, "early", 1);
	setenv(GVM_ENV_CTL, ctl_path, 1);
	setenv(GVM_ENV_VM_ID, name, 1);
	setenv(GVM_ENV_VM_SECRET, secret_hex, 1);
	setenv(GVM_ENV_POOL_FILE, c.pool, 1);
	setenv(GVM_ENV_LOG_FILE, log_path, 1);
	unsetenv(GVM_ENV_POOL_NODES);
	if (c.prefetch)
		setenv_u(GVM_ENV_PREFETCH, c.prefetch);
	if (c.local_mem[0])
		setenv(GVM_ENV_LOCAL_MEM, c.local_mem, 1);
	if (c.timeout_ms)
		setenv_u(GVM_ENV_TIMEOUT_MS, c.timeout_ms);
	if (c.deadline_ms)
		setenv_u(GVM_ENV_DEADLINE_MS, c.deadline_ms);
	execv(c.qemu, argv);
	fprintf(stderr, WRAP ": cannot run QEMU '%s' (qemu in %s): %s\n", c.qemu, c.path, strerror(errno));
	return 127;
}
