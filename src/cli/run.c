/*
 * giantvm run [OPTIONS] -- QEMU [ARGS...]
 *
 * DESIGN
 * UFFD mode: QEMU is started with libgiantvm-preload.so, paused (-S) and
 * with a private QMP socket. Over QMP we learn which RAM blocks are guest
 * RAM (query-memdev: every memory backend, including the one -m creates)
 * and their sizes (info ramblock; its HVA column from QEMU 8.0 on). The
 * preload recorded QEMU's RAM mmaps; we match blocks to those mappings, ask
 * the preload to attach each block to the engine, and only then let the
 * guest run (QMP cont). A block that cannot be matched stops everything with
 * an error: the guest never runs on local RAM by accident. With -S the user
 * sends `cont` on a monitor of their own: then the preload attaches RAM as
 * QEMU maps it (early mode, as for giantvm-qemu under libvirt), before
 * QEMU's main loop can run any monitor command.
 *
 * QEMU's stderr stays QEMU's (tools such as libvirt and kvm-unit-tests read
 * it): giantvm's and the preload's messages go to a log file, by default
 * RUNTIME_DIR/VM.log, named in the one line on stdout; only an error that
 * ends the run is also written to stderr. --verbose (or GIANTVM_LOG=stderr)
 * puts everything on stderr as before. QEMU gets PR_SET_PDEATHSIG: it never
 * outlives giantvm run, not even a SIGKILL of it.
 *
 * ORIGINAL mode: exec the original GiantVM QEMU with its cluster options.
 */
#define LOG_PREFIX ""
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "giantvm_ctl.h"
#include "common.h"
#include "mode.h"
#include "qemu.h"

struct run_opts {
	struct cli_pool_args pa;
	unsigned prefetch;
	const char *vm_id;
	const char *local_mem;
	const char *seal;     /* --seal on|off, or NULL */
	const char *orig_qemu;
	const char *orig_conf;
	long orig_id;
	long orig_cpus;
	int allow_vfio;
	int verbose;
	const char *log_path;
	int timeout_ms, deadline_ms;
	char **qemu_argv;
	int qemu_argc;
};

static volatile sig_atomic_t child_pid;

/*
 * With a log file, giantvm run's fd 2 is the log (so every message of the
 * CLI and the library, the embedded memory server's included, lands there)
 * and err_fd the real stderr, which QEMU gets back before exec.
 */
static int err_fd = -1;

/* An informational line: the log (stderr with --verbose). */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

/* An error that ends the run: in the log and on the real stderr. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err_fd >= 0) {
		va_start(ap, fmt);
		vdprintf(err_fd, fmt, ap);
		va_end(ap);
	}
}

static void forward_signal(int sig)
{
	if (sig == SIGALRM) {
		/* QEMU did not stop within 10 s of the signal (e.g. a vCPU stuck
		 * on memory no replica serves): end it. */
		if (child_pid > 0)
			kill(child_pid, SIGKILL);
		return;
	}
	if (child_pid > 0) {
		kill(child_pid, sig);
		alarm(10);
	}
}

static void usage(FILE *f)
{
	fputs("usage: giantvm run [OPTIONS] -- QEMU [QEMU ARGS...]\n"
	      "\n"
	      "Boots QEMU with the guest's RAM in the memory pool (UFFD mode), or hands over\n"
	      "to the original GiantVM QEMU when the GiantVM kernel module is loaded.\n"
	      "\n"
	      "UFFD mode:\n"
	      "  --pool FILE          pool config (else $GIANTVM_POOL, ./cluster_uffd.conf;\n"
	      "                       with none, an embedded memory server on 127.0.0.1)\n"
	      "  --prefetch N         the largest fetch window in pages, power of two 1..32\n"
	      "                       (default 32); sequential runs use it, other faults\n"
	      "                       a window that adapts below it (1 for random access)\n"
	      "  --replicas R         copies of each stripe (default 2 with 2+ nodes, else 1)\n"
	      "  --local-mem SIZE     resident guest RAM budget (default: unlimited)\n"
	      "  --seal on|off        encrypt and authenticate every page before it leaves\n"
	      "                       this host (default: the pool file's `seal =`, else on\n"
	      "                       unless every node is on loopback; docs/SECURITY.md)\n"
	      "  --vm-id ID           name for `giantvm stat` and region ids (default vm-PID)\n"
	      "  --token-file F       shared secret of the memory servers\n"
	      "  --timeout-ms N       a node silent this long is failed over (default 2000)\n"
	      "  --deadline-ms N      every replica down this long: pages are poisoned\n"
	      "                       (SIGBUS in the guest's accessor) or, without\n"
	      "                       UFFDIO_POISON, the VM is stopped (default 10000)\n"
	      "  --allow-vfio-pinning accept that a vfio-pci device pins (and so fetches)\n"
	      "                       all guest RAM at start\n"
	      "  --log FILE           giantvm's and the preload's messages (default\n"
	      "                       RUNTIME_DIR/VM-ID.log: /run/giantvm as root, else\n"
	      "                       $XDG_RUNTIME_DIR/giantvm or /tmp/giantvm-UID)\n"
	      "  --verbose            those messages on stderr instead (also GIANTVM_LOG=stderr)\n"
	      "ORIGINAL mode:\n"
	      "  --giantvm-qemu PATH  the original GiantVM QEMU (else $GIANTVM_QEMU)\n"
	      "  --giantvm-conf FILE  its cluster file, one HOST:PORT per line\n"
	      "  --giantvm-id N       this node's index in that file\n"
	      "  --giantvm-cpus N     vCPUs run on this node (default: -smp / nodes)\n"
	      "\n"
	      "Accelerator: when QEMU's arguments name none (-accel, -enable-kvm,\n"
	      "-machine accel=), giantvm run adds KVM where it can run a standard guest\n"
	      "kernel (kvm_intel/kvm_amd; not kvm_pvm) and TCG otherwise, and prints which\n"
	      "and why. One given explicitly is passed as given (with a warning where\n"
	      "detection doubts it; refused only when there is no /dev/kvm at all).\n"
	      "\n"
	      "With -S (you send `cont` on a monitor of your own), guest RAM is attached as\n"
	      "QEMU maps it, so no `cont` can run the guest on local RAM.\n"
	      "QEMU's stderr is QEMU's: giantvm adds to it only an error that ends the run.\n"
	      "QEMU's exit status is giantvm run's exit status. Ctrl-C or SIGTERM stop QEMU\n"
	      "and the embedded pool cleanly; QEMU dies with giantvm run, even on SIGKILL.\n"
	      "-overcommit mem-lock=on (-realtime mlock=on) is refused: it would fault all\n"
	      "guest RAM in locally. Under libvirt, use the giantvm-qemu emulator wrapper\n"
	      "(docs/LIBVIRT.md). `giantvm mode` shows which mode applies.\n", f);
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
	int i;

	memset(o, 0, sizeof(*o));
	o->orig_id = -1;
	o->orig_cpus = -1;
	for (i = 1; i < argc; i++) {
		const char *v;
		uint64_t n;
		if (!strcmp(argv[i], "--")) {
			i++;
			break;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			exit(0);
		} else if (!strcmp(argv[i], "--allow-vfio-pinning")) {
			o->allow_vfio = 1;
		} else if (!strcmp(argv[i], "--verbose")) {
			o->verbose = 1;
		} else if ((v = cli_optval(argc, argv, &i, "--log"))) {
			o->log_path = v;
		} else if ((v = cli_optval(argc, argv, &i, "--pool"))) {
			o->pa.pool_path = v;
		} else if ((v = cli_optval(argc, argv, &i, "--token-file"))) {
			o->pa.token_file = v;
		} else if ((v = cli_optval(argc, argv, &i, "--vm-id"))) {
			/* It names RUNTIME_DIR/ID.sock and .log: not "." or "..", no hidden files. */
			if (!*v || strlen(v) > 48 || v[0] == '.' ||
			    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != strlen(v)) {
				fprintf(stderr, "giantvm run: --vm-id '%s': 1-48 letters, digits, '-', '_' or '.', "
						"not starting with '.'\n", v);
				return -1;
			}
			o->vm_id = v;
		} else if ((v = cli_optval(argc, argv, &i, "--prefetch"))) {
			if (gvm_parse_u64(v, GVM_CTL_PREFETCH_MIN, GVM_CTL_PREFETCH_MAX, &n) || (n & (n - 1))) {
				fprintf(stderr, "giantvm run: --prefetch '%s': a power of two from %u to %u\n", v,
					GVM_CTL_PREFETCH_MIN, GVM_CTL_PREFETCH_MAX);
				return -1;
			}
			o->prefetch = (unsigned)n;
		} else if ((v = cli_optval(argc, argv, &i, "--replicas"))) {
			if (gvm_parse_u64(v, GVM_CTL_REPLICAS_MIN, GVM_CTL_REPLICAS_MAX, &n)) {
				fprintf(stderr, "giantvm run: --replicas '%s': a number from %u to %u\n", v,
					GVM_CTL_REPLICAS_MIN, GVM_CTL_REPLICAS_MAX);
				return -1;
			}
			o->pa.replicas = (unsigned)n;
		} else if ((v = cli_optval(argc, argv, &i, "--seal"))) {
			if (strcmp(v, "on") && strcmp(v, "off")) {
				fprintf(stderr, "giantvm run: --seal '%s': on or off\n", v);
				return -1;
			}
			o->seal = v;
		} else if ((v = cli_optval(argc, argv, &i, "--local-mem"))) {
			if (gvm_parse_size(v, &n) || n < GVM_CTL_LOCAL_MEM_MIN) {
				fprintf(stderr, "giantvm run: --local-mem '%s': a size of at least 16M (e.g. 128M, 4G)\n", v);
				return -1;
			}
			o->local_mem = v;
		} else if ((v = cli_optval(argc, argv, &i, "--timeout-ms"))) {
			if (gvm_parse_u64(v, GVM_CTL_TIMEOUT_MS_MIN, GVM_CTL_TIMEOUT_MS_MAX, &n)) {
				fprintf(stderr, "giantvm run: --timeout-ms '%s': %u to %u\n", v, GVM_CTL_TIMEOUT_MS_MIN,
					GVM_CTL_TIMEOUT_MS_MAX);
				return -1;
			}
			o->timeout_ms = (int)n;
		} else if ((v = cli_optval(argc, argv, &i, "--deadline-ms"))) {
			if (gvm_parse_u64(v, GVM_CTL_DEADLINE_MS_MIN, GVM_CTL_DEADLINE_MS_MAX, &n)) {
				fprintf(stderr, "giantvm run: --deadline-ms '%s': %u to %u\n", v, GVM_CTL_DEADLINE_MS_MIN,
					GVM_CTL_DEADLINE_MS_MAX);
				return -1;
			}
			o->deadline_ms = (int)n;
		} else if ((v = cli_optval(argc, argv, &i, "--giantvm-qemu"))) {
			o->orig_qemu = v;
		} else if ((v = cli_optval(argc, argv, &i, "--giantvm-conf"))) {
			o->orig_conf = v;
		} else if ((v = cli_optval(argc, argv, &i, "--giantvm-id"))) {
			if (gvm_parse_u64(v, 0, 1000000, &n)) {
				fprintf(stderr, "giantvm run: --giantvm-id '%s': a node index\n", v);
				return -1;
			}
			o->orig_id = (long)n;
		} else if ((v = cli_optval(argc, argv, &i, "--giantvm-cpus"))) {
			if (gvm_parse_u64(v, 1, 4096, &n)) {
				fprintf(stderr, "giantvm run: --giantvm-cpus '%s': 1 to 4096\n", v);
				return -1;
			}
			o->orig_cpus = (long)n;
		} else {
			fprintf(stderr, "giantvm run: unknown option '%s' (QEMU's arguments go after --)\n", argv[i]);
			return -1;
		}
	}
	if (i >= argc) {
		fprintf(stderr, "giantvm run: no QEMU command given (giantvm run [OPTIONS] -- QEMU [ARGS...])\n");
		return -1;
	}
	o->qemu_argv = argv + i;
	o->qemu_argc = argc - i;
	return 0;
}

/* ------------------------------------------------------- original mode */

static int run_original(struct run_opts *o)
{
	const char *qemu = o->orig_qemu ? o->orig_qemu : getenv("GIANTVM_QEMU");
	struct gvm_pool_opts po = { .replicas = 1 };
	struct gvm_pool *cluster;
	char err[512], iplist[65536], localcpu[256];
	unsigned n_nodes;
	char **args;
	long smp, cpus;
	size_t off = 0;
	int n = 0;

	printf("[GiantVM] Detected Custom Kernel Module. Entering ORIGINAL Mode.\n");
	fflush(stdout);
	if (!qemu) {
		fprintf(stderr, "giantvm run: ORIGINAL mode needs the original GiantVM QEMU: "
				"--giantvm-qemu PATH or $GIANTVM_QEMU\n");
		return 1;
	}
	if (access(qemu, X_OK) < 0) {
		fprintf(stderr, "giantvm run: original GiantVM QEMU '%s': %s\n", qemu, strerror(errno));
		return 1;
	}
	if (!o->orig_conf || o->orig_id < 0) {
		fprintf(stderr, "giantvm run: ORIGINAL mode needs --giantvm-conf cluster.conf and --giantvm-id N\n");
		return 1;
	}
	/* The cluster file has the pool file's syntax; a node's id is its line's rank. */
	po.config_path = o->orig_conf;
	if (gvm_pool_open(&cluster, &po, err, sizeof(err))) {
		/* "FILE: reason" / "FILE:LINE: reason": say which option named it */
		fprintf(stderr, "giantvm run: %s%s\n",
			!strncmp(err, o->orig_conf, strlen(o->orig_conf)) ? "--giantvm-conf " : "", err);
		return 1;
	}
	n_nodes = gvm_pool_node_count(cluster);
	if ((unsigned long)o->orig_id >= n_nodes) {
		fprintf(stderr, "giantvm run: --giantvm-id %ld: %s has %u nodes (ids 0..%u)\n", o->orig_id,
			o->orig_conf, n_nodes, n_nodes - 1);
		gvm_pool_close(cluster);
		return 1;
	}
	for (unsigned i = 0; i < n_nodes; i++) {
		int w = snprintf(iplist + off, sizeof(iplist) - off, "%s%s", i ? " " : "",
				 gvm_pool_node_name(cluster, i));
		if (w < 0 || (size_t)w >= sizeof(iplist) - off) {
			fprintf(stderr, "giantvm run: %s: too many nodes for -local-cpu\n", o->orig_conf);
			gvm_pool_close(cluster);
			return 1;
		}
		off += (size_t)w;
	}
	gvm_pool_close(cluster);
	smp = gvm_qemu_smp(o->qemu_argc, o->qemu_argv);
	cpus = o->orig_cpus > 0 ? o->orig_cpus : smp / (long)n_nodes;
	if (cpus < 1)
		cpus = 1;
	snprintf(localcpu, sizeof(localcpu), "%ld,start=%ld,iplist=", cpus, cpus * o->orig_id);
	args = calloc((size_t)o->qemu_argc + 4, sizeof(*args));
	if (!args)
		return 1;
	args[n++] = (char *)qemu;
	for (int i = 1; i < o->qemu_argc; i++)
		args[n++] = o->qemu_argv[i];
	args[n++] = "-local-cpu";
	char *lc = malloc(strlen(localcpu) + strlen(iplist) + 3);
	if (!lc)
		return 1;
	sprintf(lc, "%s\"%s\"", localcpu, iplist);
	args[n++] = lc;
	args[n] = NULL;
	fflush(NULL);
	execv(qemu, args);
	fprintf(stderr, "giantvm run: exec %s: %s\n", qemu, strerror(errno));
	return 1;
}

/* ----------------------------------------------------------- UFFD mode */

static void hex(const uint8_t *b, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static int attach_ram(int ctl, int qmp, const char *vm_key, uint64_t *regions, unsigned *n_regions)
{
	struct run_ram blocks[GVM_RUN_MAX_RAM];
	struct run_cand cands[256];
	char resp[65536], line[512];
	int nb, nc;

	nb = gvm_qmp_ram_blocks(qmp, blocks, GVM_RUN_MAX_RAM, resp, sizeof(resp));
	if (nb < 0)
		return -1;
	if (nb == 0) {
		fail("giantvm run: QEMU reports no guest RAM block (query-memdev is empty)\n");
		return -1;
	}
	nc = gvm_ctl_candidates(ctl, cands, 256);
	if (nc < 0) {
		fail("giantvm run: cannot read the RAM mappings from the preload library\n");
		return -1;
	}
	if (gvm_run_match(blocks, nb, cands, nc, line, sizeof(line)) < 0) {
		fail("giantvm run: %s\n", line);
		return -1;
	}
	for (int i = 0; i < nb; i++) {
		uint64_t region = gvm_region_id(vm_key, blocks[i].name);
		char cmd[256];
		snprintf(cmd, sizeof(cmd), GVM_CTL_CMD_ATTACH " %" PRIx64 " %" PRIu64 " %" PRIx64 " %s\n", blocks[i].hva,
			 blocks[i].size, region, blocks[i].name);
		if (gvm_ctl_command(ctl, cmd, line, sizeof(line)) < 0 || strncmp(line, "OK", 2)) {
			fail("giantvm run: guest RAM block '%s': %s\n", blocks[i].name, line);
			return -1;
		}
		regions[(*n_regions)++] = region;
		say("[GiantVM] guest RAM '%s': %" PRIu64 " MiB in the pool\n", blocks[i].name, blocks[i].size >> 20);
	}
	return 0;
}

static void print_final(const char *ctl_path)
{
	char path[PATH_MAX], *buf;
	struct gvm_run_stats s;
	size_t cap = GVM_CTL_REPLY_MAX;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s.final", ctl_path);
	f = fopen(path, "r");
	if (!f)
		return;
	buf = malloc(cap);
	if (!buf) {
		fclose(f);
		return;
	}
	n = fread(buf, 1, cap - 1, f);
	fclose(f);
	unlink(path);
	buf[n] = 0;
	if (gvm_run_parse_stats(buf, &s) == 0)
		say("[GiantVM] engine: %" PRIu64 " faults, %" PRIu64 " pages fetched (%" PRIu64
			" zero, %" PRIu64 " by readahead), %.1f MiB received, fault p50 %.1f us p99 %.1f us, "
			"%" PRIu64 " errors\n",
			s.faults, s.pages_fetched, s.zero_pages, s.readahead_pages,
			(double)s.bytes_in / 1048576.0, s.p50_us, s.p99_us, s.errors);
	if (getenv("GIANTVM_STATS_OUT")) {
		FILE *o = fopen(getenv("GIANTVM_STATS_OUT"), "w");
		if (o) {
			fputs(buf, o);
			fclose(o);
		}
	}
	free(buf);
}

static int run_uffd(struct run_opts *o, struct gvm_mode *m)
{
	char dir[PATH_MAX - 64], ctl_path[PATH_MAX], qmp_path[PATH_MAX], preload[PATH_MAX];
	char vm_id[64], vm_key[128], secret_hex[65], err[512], accel_err[512];
	char qmp_arg[PATH_MAX + 32], nodes_env[256], log_path[PATH_MAX];
	uint8_t secret[32];
	uint64_t regions[GVM_RUN_MAX_RAM];
	unsigned n_regions = 0;
	struct cli_pool cp;
	struct sigaction sa = { .sa_handler = forward_signal };
	const char *accel;
	char **args;
	int status = 0, rc = 1, ctl = -1, qmp = -1, n = 0, user_paused, reaped = 0, killed = 0;
	pid_t pid, child_parent;

	const char *lenv = getenv("GIANTVM_LOG");

	if (gvm_runtime_dir(dir, sizeof(dir))) {
		fprintf(stderr, "giantvm run: cannot create the runtime directory %s: %s\n", dir, strerror(errno));
		return 1;
	}
	snprintf(vm_id, sizeof(vm_id), "%s", o->vm_id ? o->vm_id : "");
	if (!o->vm_id)
		snprintf(vm_id, sizeof(vm_id), "vm-%d", (int)getpid());
	snprintf(ctl_path, sizeof(ctl_path), "%s/%s.sock", dir, vm_id);
	snprintf(qmp_path, sizeof(qmp_path), "%s/%s.qmp", dir, vm_id);
	/* before its log is opened (and truncated): that VM's own */
	if (gvm_ctl_in_use(ctl_path)) {
		fprintf(stderr, "giantvm run: a VM named '%s' is running already (%s)\n", vm_id, ctl_path);
		return 1;
	}
	log_path[0] = 0;
	if (!o->verbose && !(lenv && !strcmp(lenv, "stderr"))) {
		int lfd;
		if (o->log_path)
			snprintf(log_path, sizeof(log_path), "%s", o->log_path);
		else
			snprintf(log_path, sizeof(log_path), "%s/%s.log", dir, vm_id);
		lfd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640);
		if (lfd < 0) {
			fprintf(stderr, "giantvm run: log file %s: %s\n", log_path, strerror(errno));
			return 1;
		}
		fflush(stderr);
		err_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
		if (err_fd < 0 || dup2(lfd, 2) < 0) {
			fprintf(stderr, "giantvm run: log file %s: %s\n", log_path, strerror(errno));
			close(lfd);
			if (err_fd >= 0)
				close(err_fd);
			err_fd = -1;
			return 1;
		}
		close(lfd);
		printf("[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode. Log: %s\n", log_path);
	} else {
		printf("[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode.\n");
	}
	fflush(stdout);
	if (!m->uffd) {
		fail("giantvm run: userfaultfd is not available (%s); as root, or with "
				"vm.unprivileged_userfaultfd=1, or access to /dev/userfaultfd\n", m->uffd_why);
		return 1;
	}
	if (gvm_qemu_has_vfio(o->qemu_argc, o->qemu_argv) && !o->allow_vfio) {
		fail("giantvm run: a vfio-pci device pins all guest RAM at start, so its pages "
				"cannot stay in the pool and be fetched lazily. Pass --allow-vfio-pinning to "
				"accept that all RAM is fetched at start and pinned, or drop the device.\n");
		return 1;
	}
	if (gvm_qemu_mem_lock(o->qemu_argc, o->qemu_argv)) {
		fail("giantvm run: -overcommit mem-lock=on (or -realtime mlock=on) locks all guest RAM "
		     "in local memory at start, so it cannot stay in the pool; drop it (libvirt: "
		     "<memoryBacking><locked/>)\n");
		return 1;
	}
	if (gvm_qemu_has_arg(o->qemu_argc, o->qemu_argv, "-daemonize")) {
		fail("giantvm run: -daemonize is not supported (giantvm run waits for QEMU); "
				"run giantvm itself in the background instead\n");
		return 1;
	}
	accel = gvm_qemu_accel(o->qemu_argc, o->qemu_argv, m->kvm, m->kvm_why, accel_err, sizeof(accel_err));
	if (!accel) {
		fail("giantvm run: %s\n", accel_err);
		return 1;
	}
	if (accel_err[0])
		say("giantvm run: warning: %s\n", accel_err);
	say("[GiantVM] UFFD Mode: accelerator %s (%s)\n", *accel ? accel : "as given", m->kvm_why);
	if (cli_preload_path(preload, sizeof(preload))) {
		fail("giantvm run: libgiantvm-preload.so not found next to giantvm or in "
				"../lib/giantvm (set $GIANTVM_PRELOAD)\n");
		return 1;
	}
	if (cli_pool_open_err(&cp, &o->pa, err, sizeof(err))) {
		fail("giantvm run: %s\n", err);
		return 1;
	}
	if (!cp.embedded && gvm_pool_probe(cp.pool, 3000, err, sizeof(err))) {
		fail("giantvm run: pool not reachable, the guest was not started: %s\n", err);
		goto out_pool;
	}
	say("[GiantVM] pool: %u node%s (%s%s%s), replicas %u\n", gvm_pool_node_count(cp.pool),
	       gvm_pool_node_count(cp.pool) == 1 ? "" : "s", cp.source, cp.path ? " " : "",
	       cp.path ? cp.path : "", gvm_pool_replicas(cp.pool));
	unlink(qmp_path);
	if (gvm_random(secret, sizeof(secret))) {
		fail("giantvm run: getrandom failed\n");
		goto out_pool;
	}
	hex(secret, sizeof(secret), secret_hex);
	/* Region ids are per run: a VM's RAM does not outlive the VM, and a
	 * crashed run's pages can never be mistaken for the next run's. */
	snprintf(vm_key, sizeof(vm_key), "%s/%.16s", vm_id, secret_hex);

	/* -S given: the user sends `cont` on a monitor of their own, whenever
	 * they like, so the RAM is attached as QEMU maps it (the preload's early
	 * mode, as under libvirt), not over QMP before our own `cont`. */
	user_paused = gvm_qemu_has_arg(o->qemu_argc, o->qemu_argv, "-S");
	if (user_paused && gvm_qemu_local_ram(o->qemu_argc, o->qemu_argv, err, sizeof(err))) {
		fail("giantvm run: %s\n", err);
		goto out_pool;
	}
	args = calloc((size_t)o->qemu_argc + 8, sizeof(*args));
	if (!args)
		goto out_pool;
	for (int i = 0; i < o->qemu_argc; i++)
		args[n++] = o->qemu_argv[i];
	if (*accel) {
		args[n++] = "-accel";
		args[n++] = (char *)accel;
	}
	if (!user_paused)
		args[n++] = "-S";
	snprintf(qmp_arg, sizeof(qmp_arg), "unix:%s,server=on,wait=off", qmp_path);
	args[n++] = "-qmp";
	args[n++] = qmp_arg;
	args[n] = NULL;

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	fflush(NULL);
	child_parent = getpid();
	pid = fork();
	if (pid < 0) {
		perror("giantvm run: fork");
		goto out_args;
	}
	if (pid == 0) {
		/* QEMU never outlives us (SIGKILL included); if we died before
		 * this, our pid is gone as parent already. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != child_parent) {
			fprintf(stderr, "giantvm run: QEMU not started: giantvm run is gone\n");
			_exit(127);
		}
		/* QEMU's stderr is the real one */
		if (err_fd >= 0 && dup2(err_fd, 2) < 0)
			_exit(127);
		setenv("LD_PRELOAD", preload, 1);
		setenv(GVM_ENV_LOG_FILE, log_path[0] ? log_path : "stderr", 1);
		if (user_paused)
			setenv(GVM_ENV_ATTACH, "early", 1);
		setenv(GVM_ENV_CTL, ctl_path, 1);
		setenv(GVM_ENV_VM_ID, vm_id, 1);
		setenv(GVM_ENV_VM_SECRET, secret_hex, 1);
		if (cp.path) {
			setenv(GVM_ENV_POOL_FILE, cp.path, 1);
		} else {
			snprintf(nodes_env, sizeof(nodes_env), "%s", cp.embedded_addr);
			setenv(GVM_ENV_POOL_NODES, nodes_env, 1);
		}
		if (cp.token) {
			char *tok = strndup((const char *)cp.token, cp.token_len);
			if (tok)
				setenv(GVM_ENV_TOKEN, tok, 1);
		}
		char num[32];
		snprintf(num, sizeof(num), "%u", gvm_pool_replicas(cp.pool));
		setenv(GVM_ENV_REPLICAS, num, 1);
		if (o->prefetch) {
			snprintf(num, sizeof(num), "%u", o->prefetch);
			setenv(GVM_ENV_PREFETCH, num, 1);
		}
		if (o->local_mem)
			setenv(GVM_ENV_LOCAL_MEM, o->local_mem, 1);
		if (o->seal)
			setenv(GVM_ENV_SEAL, o->seal, 1);
		if (o->timeout_ms) {
			snprintf(num, sizeof(num), "%d", o->timeout_ms);
			setenv(GVM_ENV_TIMEOUT_MS, num, 1);
		}
		if (o->deadline_ms) {
			snprintf(num, sizeof(num), "%d", o->deadline_ms);
			setenv(GVM_ENV_DEADLINE_MS, num, 1);
		}
		execvp(args[0], args);
		fprintf(stderr, "giantvm run: cannot start QEMU '%s': %s\n", args[0], strerror(errno));
		_exit(127);
	}
	child_pid = pid;

	qmp = gvm_qmp_connect(qmp_path, pid, 60000, &reaped, &status);
	if (qmp < 0) {
		if (!reaped)
			goto kill_child;
		goto wait_child;
	}
	ctl = gvm_ctl_connect(ctl_path, 5000);
	if (ctl < 0) {
		fail("giantvm run: the preload library did not start in QEMU (%s)\n", ctl_path);
		goto kill_child;
	}
	if (user_paused) {
		/* attached already; the preload frees the regions at exit */
		say("[GiantVM] VM '%s' ready, paused (-S) with its RAM in the pool until your `cont`; "
		    "`giantvm stat %s` shows its engine\n", vm_id, vm_id);
	} else {
		if (attach_ram(ctl, qmp, vm_key, regions, &n_regions) < 0)
			goto kill_child;
		if (gvm_qmp_command(qmp, "{\"execute\":\"cont\"}", NULL, 0) < 0) {
			fail("giantvm run: QMP cont failed\n");
			goto kill_child;
		}
		say("[GiantVM] VM '%s' running; `giantvm stat %s` shows its engine\n", vm_id, vm_id);
	}
	close(ctl);
	ctl = -1;
	goto wait_child;

kill_child:
	kill(pid, SIGKILL);
	killed = 1;
	if (log_path[0])
		fail("giantvm run: QEMU stopped before the guest ran (details in %s)\n", log_path);
wait_child:
	while (!reaped && waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			perror("giantvm run: waitpid");
			break;
		}
	}
	child_pid = 0;
	if (ctl >= 0)
		close(ctl);
	if (qmp >= 0)
		close(qmp);
	unlink(qmp_path);
	unlink(ctl_path);
	print_final(ctl_path);
	if (killed) {
		rc = 1; /* we stopped QEMU because of the error printed above */
	} else if (WIFEXITED(status)) {
		rc = WEXITSTATUS(status);
		if (rc == 75)
			fail("giantvm run: the VM was stopped: guest memory could not be fetched "
					"from any replica (see %s)\n", log_path[0] ? log_path : "the log above");
	} else if (WIFSIGNALED(status)) {
		rc = 128 + WTERMSIG(status);
		if (WTERMSIG(status) == SIGBUS)
			fail("giantvm run: QEMU died of SIGBUS: it touched guest memory that no "
					"replica could serve (poisoned pages, see %s)\n", log_path[0] ? log_path : "the log above");
		else
			fail("giantvm run: QEMU was killed by signal %d\n", WTERMSIG(status));
	}
	if (!cp.embedded && n_regions)
		gvm_pool_free_regions(cp.pool, regions, n_regions, secret, sizeof(secret), 1000);
out_args:
	free(args);
out_pool:
	cli_pool_close(&cp);
	if (err_fd >= 0) {
		fflush(stderr);
		dup2(err_fd, 2);
		close(err_fd);
		err_fd = -1;
	}
	return rc;
}

int cmd_run(int argc, char **argv)
{
	struct run_opts o;
	struct gvm_mode m;

	if (parse_args(argc, argv, &o))
		return GVM_EXIT_USAGE;
	gvm_mode_detect(&m);
	if (m.original)
		return run_original(&o);
	return run_uffd(&o, &m);
}
