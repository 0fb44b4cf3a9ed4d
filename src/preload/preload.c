/*
 * libgiantvm-preload.so: loaded into a stock QEMU by `giantvm run`.
 *
 * DESIGN
 * Finding guest RAM: QEMU maps every RAM block with qemu_ram_mmap(): a
 * PROT_NONE reservation, then mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
 * PROT_READ | PROT_WRITE) of exactly the block's size over it
 * (util/mmap-alloc.c). This library interposes mmap/munmap and records such
 * mappings of 1 MiB or more as candidates, nothing else. `giantvm run`
 * starts QEMU paused (-S), asks QEMU over QMP which RAM blocks are guest RAM
 * and how large (and, from QEMU 8.0 on, at which host address), matches
 * them to the candidates, and sends ATTACH commands over the control socket;
 * only then does the guest run. So no guest page is ever served locally by
 * accident, and a block that cannot be found is an error, not a silent
 * fallback to local RAM.
 *
 * Early attach (GIANTVM_ATTACH=early, set by the giantvm-qemu emulator
 * wrapper, where libvirt owns the monitor and sends its own `cont`): each
 * RAM-like mapping is attached to the engine inside the mmap() call that
 * creates it, before QEMU returns to its own code. QEMU allocates guest RAM
 * while it builds the machine, in qemu_init(), and runs no monitor command
 * (so no `cont`) before its main loop starts after that: whoever sends
 * `cont`, and whenever, the guest's RAM is already in the pool. Blocks that
 * are not guest RAM but look like it (vga.vram, the ACPI tables) live in the
 * pool too; guest RAM that is not private anonymous memory is refused by the
 * wrapper on QEMU's command line. Each attach logs how many of the block's
 * pages were resident before it (mincore): 0 means nothing, guest or QEMU,
 * touched them on local RAM. Regions are named ram0, ram1... in mapping order
 * and freed in the pool when QEMU exits normally.
 *
 * Messages: to the file GIANTVM_LOG_FILE names (else stderr). An error that
 * ends QEMU is also written to stderr.
 *
 * Threads: the control thread (started by the constructor, all signals
 * blocked so QEMU's signals never land on it) and the engine thread it
 * starts. Neither writes to stdout.
 *
 * The control protocol (environment, ranges, commands) is defined in
 * include/giantvm_ctl.h.
 */
#define LOG_PREFIX "preload: "
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "giantvm.h"
#include "giantvm_ctl.h"
#include "log.h"
#include "stats_json.h"
#include "util.h"

#define MAX_CANDIDATES 256
#define MIN_CANDIDATE (1ul << 20)

struct candidate {
	uintptr_t addr;
	size_t len;
};

static pthread_mutex_t cand_mu = PTHREAD_MUTEX_INITIALIZER;
static struct candidate cands[MAX_CANDIDATES];
static unsigned n_cands;
static int active;                 /* GIANTVM_CTL was set */

static char ctl_path[108];
static int ctl_fd = -1;
static struct gvm_pool *pool;
static struct gvm_engine *engine;
static uint8_t vm_secret[32];
static char vm_name[64] = "vm";
static uint64_t start_ns;
static int log_fd = 2;

static int early;                  /* GIANTVM_ATTACH=early */
static __thread int in_attach;     /* this thread is attaching: its own mmaps are not RAM */
static pthread_mutex_t attach_mu = PTHREAD_MUTEX_INITIALIZER;
static char vm_key[128];           /* region ids derive from it, as in giantvm run */
static uint64_t early_regions[MAX_CANDIDATES];
static unsigned n_early;

/* An error that ends QEMU: into the log and onto QEMU's stderr. */
static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* A failed write has nowhere better to be reported. */
	if (log_fd != 2 && write(log_fd, buf, (size_t)n) < 0)
		buf[0] = 0;
	if (write(2, buf, (size_t)n) < 0)
		buf[0] = 0;
	_exit(code);
}

static int ram_like(size_t len, int prot, int flags, int fd)
{
	return fd == -1 && len >= MIN_CANDIDATE && prot == (PROT_READ | PROT_WRITE) &&
	       (flags & (MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE)) == (MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE);
}

static void record(void *addr, size_t len, int prot, int flags, int fd)
{
	if (!active || in_attach || !ram_like(len, prot, flags, fd))
		return;
	pthread_mutex_lock(&cand_mu);
	for (unsigned i = 0; i < n_cands; i++) {
		if (cands[i].addr == (uintptr_t)addr) {
			cands[i].len = len;
			goto out;
		}
	}
	if (n_cands < MAX_CANDIDATES)
		cands[n_cands++] = (struct candidate){ (uintptr_t)addr, len };
out:
	pthread_mutex_unlock(&cand_mu);
}

static void forget(void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;

	if (!active)
		return;
	pthread_mutex_lock(&cand_mu);
	for (unsigned i = 0; i < n_cands;) {
		if (cands[i].addr < a + len && a < cands[i].addr + cands[i].len)
			cands[i] = cands[--n_cands];
		else
			i++;
	}
	pthread_mutex_unlock(&cand_mu);
}

static void early_attach(void *addr, size_t len);

/* The raw syscalls: no dlsym, so this works before any constructor ran. */
__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags, int fd,
						   off_t off)
{
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);

	if (r == -1)
		return MAP_FAILED;
	record((void *)r, len, prot, flags, fd);
	if (early && active && !in_attach && ram_like(len, prot, flags, fd))
		early_attach((void *)r, len);
	return (void *)r;
}

__attribute__((visibility("default"))) void *mmap64(void *addr, size_t len, int prot, int flags,
						     int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	long r = syscall(SYS_munmap, addr, len);

	if (r == 0)
		forget(addr, len);
	return (int)r;
}

/* Set once guest RAM is attached; the engine is never closed before exit. */
static struct gvm_engine *discard_engine;

/*
 * QEMU gives guest pages back with madvise (ram_block_discard_range: a
 * balloon, free page reporting, virtio-mem): once that succeeded the engine
 * is told, before QEMU answers the guest, so they read as zero and are never
 * fetched from the pool again (gvm_engine_discard). The engine's own drops
 * use the system call.
 */
__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice)
{
	struct gvm_engine *e = __atomic_load_n(&discard_engine, __ATOMIC_ACQUIRE);
	long r = syscall(SYS_madvise, addr, len, advice);
	int err = errno;

	if (r == 0 && e && (advice == MADV_DONTNEED || advice == MADV_REMOVE || advice == MADV_DONTNEED_LOCKED) &&
	    gvm_engine_discard(e, addr, len) < 0)
		pr_warn("madvise(%p, %zu): the engine was not told of the discard: out of memory", addr, len);
	errno = err;
	return (int)r;
}

/* ------------------------------------------------------------ control */

static void reply(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(int fd, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	for (size_t off = 0; off < (size_t)n;) {
		ssize_t w = send(fd, buf + off, (size_t)n - off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		off += (size_t)w;
	}
}

static void on_fatal(const char *why, void *arg)
{
	(void)arg;
	die(75, "giantvm: preload: FATAL: %s; stopping the VM", why);
}

static int engine_start(char *err, size_t errlen)
{
	struct gvm_pool_opts po = { 0 };
	struct gvm_engine_opts eo = { .on_fatal = on_fatal };
	const char *nodes = getenv(GVM_ENV_POOL_NODES), *v;
	char *list = NULL, *save = NULL;
	const char *arr[GVM_CTL_POOL_NODES_MAX];
	uint64_t n;
	int r;

	if (engine)
		return 0;
	po.config_path = getenv(GVM_ENV_POOL_FILE);
	if (!po.config_path && nodes) {
		list = strdup(nodes);
		if (!list)
			return -ENOMEM;
		for (char *t = strtok_r(list, ",", &save); t && po.n_nodes < GVM_CTL_POOL_NODES_MAX; t = strtok_r(NULL, ",", &save))
			arr[po.n_nodes++] = t;
		po.nodes = arr;
	}
	if ((v = getenv(GVM_ENV_REPLICAS)) && !gvm_parse_u64(v, GVM_CTL_REPLICAS_MIN, GVM_CTL_REPLICAS_MAX, &n))
		po.replicas = (unsigned)n;
	if ((v = getenv(GVM_ENV_PREFETCH)) && !gvm_parse_u64(v, GVM_CTL_PREFETCH_MIN, GVM_CTL_PREFETCH_MAX, &n))
		eo.prefetch = (unsigned)n;
	if ((v = getenv(GVM_ENV_LOCAL_MEM)) && !gvm_parse_size(v, &n) && n >= GVM_CTL_LOCAL_MEM_MIN)
		eo.local_mem = n;
	if ((v = getenv(GVM_ENV_SEAL)))
		eo.seal = !strcmp(v, "on") ? GVM_SEAL_ON : !strcmp(v, "off") ? GVM_SEAL_OFF : GVM_SEAL_AUTO;
	if ((v = getenv(GVM_ENV_DEADLINE_MS)) &&
	    !gvm_parse_u64(v, GVM_CTL_DEADLINE_MS_MIN, GVM_CTL_DEADLINE_MS_MAX, &n))
		po.fault_deadline_ms = (int)n;
	if ((v = getenv(GVM_ENV_TIMEOUT_MS)) &&
	    !gvm_parse_u64(v, GVM_CTL_TIMEOUT_MS_MIN, GVM_CTL_TIMEOUT_MS_MAX, &n))
		po.request_timeout_ms = (int)n;
	if ((v = getenv(GVM_ENV_TOKEN)) && *v) {
		po.token = v;
		po.token_len = strlen(v);
	}
	r = gvm_pool_open(&pool, &po, err, errlen);
	free(list);
	if (r)
		return r;
	r = gvm_engine_open(&engine, pool, &eo);
	if (r) {
		snprintf(err, errlen, "engine: %s", strerror(-r));
		gvm_pool_close(pool);
		pool = NULL;
		return r;
	}
	pr_info("userfaultfd features: %s", gvm_engine_features(engine));
	return 0;
}

/* Pages of [addr, addr+len) present in memory. */
static size_t resident_pages(void *addr, size_t len)
{
	unsigned char vec[4096];
	size_t page = 4096, n = 0;

	for (size_t off = 0; off < len; off += sizeof(vec) * page) {
		size_t chunk = len - off < sizeof(vec) * page ? len - off : sizeof(vec) * page;
		if (mincore((char *)addr + off, chunk, vec) < 0)
			return 0;
		for (size_t i = 0; i < (chunk + page - 1) / page; i++)
			n += vec[i] & 1;
	}
	return n;
}

/*
 * QEMU exits normally (early mode): no giantvm run waits for us, so the
 * figures go to the log and the regions back to the pool. An atexit()
 * handler registered after OpenSSL's own (which the first region key
 * installs), so it runs while libcrypto still works; a destructor runs too
 * late.
 */
static void early_exit(void)
{
	size_t cap = GVM_CTL_REPLY_MAX;
	char *buf = malloc(cap);

	if (!engine)
		return;
	if (buf && gvm_stats_json(engine, vm_name, (double)(gvm_now_ns() - start_ns) / 1e9, buf, cap) >= 0)
		pr_info("engine at exit: %.900s", buf);
	free(buf);
	if (n_early && gvm_pool_free_regions(pool, early_regions, n_early, vm_secret, sizeof(vm_secret), 1000) < 1)
		pr_warn("could not free the %u regions of this VM in the pool", n_early);
}

/* Early attach: called from mmap() in the thread that maps guest RAM. */
static void early_attach(void *addr, size_t len)
{
	static int delayed;
	char err[512] = "", name[32];
	uint8_t key[GVM_REGION_KEY_SIZE];
	sigset_t all, old;
	uint64_t region;
	size_t before;
	const char *d;
	int r;

	pthread_mutex_lock(&attach_mu);
	in_attach = 1;
	if (!delayed && (d = getenv(GVM_ENV_TEST_ATTACH_DELAY_MS))) {
		/* test only: a slow attach (a slow pool) must not let the guest run first */
		unsigned long ms = strtoul(d, NULL, 10);
		pr_info("test: delaying the attach by %lu ms", ms);
		usleep((useconds_t)(ms * 1000));
	}
	delayed = 1;
	if (n_early >= MAX_CANDIDATES)
		die(70, "giantvm: preload: more than %d RAM blocks", MAX_CANDIDATES);
	/* The engine's threads must not take QEMU's signals: they inherit this mask. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = engine_start(err, sizeof(err));
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		die(70, "giantvm: preload: the pool cannot take guest RAM: %s", err[0] ? err : strerror(-r));
	before = resident_pages(addr, len);
	snprintf(name, sizeof(name), "ram%u", n_early);
	region = gvm_region_id(vm_key, name);
	r = gvm_region_key(vm_secret, sizeof(vm_secret), region, key);
	if (!r)
		r = gvm_engine_attach_flags(engine, region, key, addr, len, GVM_ATTACH_FRESH);
	if (r)
		die(70, "giantvm: preload: attach RAM block %s (%zu MiB at %p): %s", name, len >> 20, addr,
		    strerror(-r));
	if (n_early == 0 && atexit(early_exit))
		pr_warn("atexit: the regions will not be freed at exit");
	early_regions[n_early++] = region;
	__atomic_store_n(&discard_engine, engine, __ATOMIC_RELEASE);
	pr_info("RAM block %s: %zu MiB at %p attached as QEMU mapped it (%zu pages resident before)", name,
		len >> 20, addr, before);
	in_attach = 0;
	pthread_mutex_unlock(&attach_mu);
}

static void cmd_attach(int fd, char *args)
{
	unsigned long long addr, len, region;
	char name[128], err[512] = "";
	uint8_t key[GVM_REGION_KEY_SIZE];
	int r;

	if (sscanf(args, "%llx %llu %llx %127s", &addr, &len, &region, name) != 4) {
		reply(fd, "ERR usage: ATTACH ADDR LEN REGION NAME\n");
		return;
	}
	r = engine_start(err, sizeof(err));
	if (r) {
		reply(fd, "ERR %s\n", err[0] ? err : strerror(-r));
		return;
	}
	r = gvm_region_key(vm_secret, sizeof(vm_secret), region, key);
	if (!r)
		/* giantvm run makes region ids unique per run: fresh. */
		r = gvm_engine_attach_flags(engine, region, key, (void *)(uintptr_t)addr, (size_t)len,
					    GVM_ATTACH_FRESH);
	if (r) {
		reply(fd, "ERR attach %s at %#llx (%llu bytes): %s\n", name, addr, len, strerror(-r));
		return;
	}
	__atomic_store_n(&discard_engine, engine, __ATOMIC_RELEASE);
	pr_info("guest RAM block '%s' (%llu MiB at %#llx) is in the pool", name, len >> 20, addr);
	reply(fd, "OK\n");
}

static void cmd_stat(int fd)
{
	size_t cap = GVM_CTL_REPLY_MAX;
	char *buf = malloc(cap);

	if (!buf) {
		reply(fd, "ERR out of memory\n");
		return;
	}
	if (gvm_stats_json(engine, vm_name, (double)(gvm_now_ns() - start_ns) / 1e9, buf, cap) < 0) {
		reply(fd, "ERR stats do not fit\n");
	} else {
		size_t n = strlen(buf);
		buf[n] = '\n';
		for (size_t off = 0; off <= n;) {
			ssize_t w = send(fd, buf + off, n + 1 - off, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += (size_t)w;
		}
	}
	free(buf);
}

static void serve(int fd)
{
	char line[512];
	size_t len = 0;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char *nl;
		ssize_t n;

		if (poll(&p, 1, 60000) <= 0)
			return;
		n = recv(fd, line + len, sizeof(line) - 1 - len, 0);
		if (n <= 0)
			return;
		len += (size_t)n;
		line[len] = 0;
		while ((nl = strchr(line, '\n'))) {
			*nl = 0;
			if (!strcmp(line, GVM_CTL_CMD_CANDIDATES)) {
				pthread_mutex_lock(&cand_mu);
				struct candidate c[MAX_CANDIDATES];
				unsigned nc = n_cands;
				memcpy(c, cands, sizeof(c[0]) * nc);
				pthread_mutex_unlock(&cand_mu);
				for (unsigned i = 0; i < nc; i++)
					reply(fd, "C %lx %zu\n", (unsigned long)c[i].addr, c[i].len);
				reply(fd, "END\n");
			} else if (!strncmp(line, GVM_CTL_CMD_ATTACH " ", strlen(GVM_CTL_CMD_ATTACH " "))) {
				cmd_attach(fd, line + strlen(GVM_CTL_CMD_ATTACH " "));
			} else if (!strcmp(line, GVM_CTL_CMD_STAT)) {
				if (engine)
					cmd_stat(fd);
				else
					reply(fd, "ERR no guest RAM attached yet\n");
			} else {
				reply(fd, "ERR unknown command\n");
			}
			len -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len + 1);
		}
		if (len == sizeof(line) - 1)
			return; /* a line that long is not ours */
	}
}

static void *ctl_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int c = accept4(ctl_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			pr_perror("accept(control socket)");
			return NULL;
		}
		serve(c);
		close(c);
	}
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

__attribute__((constructor)) static void preload_init(void)
{
	const char *ctl = getenv(GVM_ENV_CTL), *secret = getenv(GVM_ENV_VM_SECRET), *name;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	sigset_t all, old;
	pthread_t th;
	int r;

	if (!ctl)
		return; /* loaded by something other than giantvm run: stay inert */
	/* QEMU's helpers (e.g. a bridge helper) must not load us again. */
	unsetenv("LD_PRELOAD");
	start_ns = gvm_now_ns();
	if ((name = getenv(GVM_ENV_LOG_FILE)) && *name && strcmp(name, "stderr")) {
		int fd = open(name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd < 0)
			die(70, "giantvm: preload: log file %s: %s", name, strerror(errno));
		log_fd = fd;
		gvm_log_set_fd(fd);
	}
	unsetenv(GVM_ENV_LOG_FILE);
	if ((name = getenv(GVM_ENV_VM_ID)))
		snprintf(vm_name, sizeof(vm_name), "%s", name);
	if (!secret || strlen(secret) != 64) {
		die(70, "giantvm: preload: GIANTVM_VM_SECRET missing or malformed; start QEMU with `giantvm run`");
	}
	for (int i = 0; i < 32; i++) {
		int hi = hexval(secret[2 * i]), lo = hexval(secret[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			die(70, "giantvm: preload: GIANTVM_VM_SECRET is not hex");
		}
		vm_secret[i] = (uint8_t)(hi << 4 | lo);
	}
	unsetenv(GVM_ENV_VM_SECRET);
	snprintf(vm_key, sizeof(vm_key), "%s/%.16s", vm_name, secret);
	if ((name = getenv(GVM_ENV_ATTACH)) && !strcmp(name, "early"))
		early = 1;
	if (strlen(ctl) >= sizeof(sa.sun_path)) {
		die(70, "giantvm: preload: control socket path too long: %s", ctl);
	}
	snprintf(ctl_path, sizeof(ctl_path), "%s", ctl);
	strcpy(sa.sun_path, ctl_path);
	ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ctl_fd < 0) {
		die(70, "giantvm: preload: socket(AF_UNIX): %s", strerror(errno));
	}
	unlink(ctl_path);
	if (bind(ctl_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ctl_fd, 8) < 0) {
		die(70, "giantvm: preload: control socket %s: %s", ctl_path, strerror(errno));
	}
	active = 1;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = pthread_create(&th, NULL, ctl_thread, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		die(70, "giantvm: preload: pthread_create: %s", strerror(r));
	}
	pthread_detach(th);
}

/* Leave the final figures for `giantvm run` to print, and the socket gone. */
__attribute__((destructor)) static void preload_fini(void)
{
	char path[128], tmp[136];
	size_t cap = GVM_CTL_REPLY_MAX;
	char *buf;
	FILE *f;

	if (!active)
		return;
	unlink(ctl_path);
	if (!engine)
		return;
	buf = malloc(cap);
	if (!buf)
		return;
	if (early) {
		free(buf); /* early_exit() did the rest */
		return;
	}
	if (gvm_stats_json(engine, vm_name, (double)(gvm_now_ns() - start_ns) / 1e9, buf, cap) >= 0) {
		snprintf(path, sizeof(path), "%s.final", ctl_path);
		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		f = fopen(tmp, "w");
		if (f) {
			int ok = fputs(buf, f) >= 0;
			if (fclose(f) == 0 && ok)
				rename(tmp, path);
		}
	}
	free(buf);
}
