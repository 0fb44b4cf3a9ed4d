/*
 * The command line: what the options accept (sizes), and what the giantvm
 * binary built beside this test says and exits with when they are wrong.
 * The cases that run the binary need nothing but the binary: no pool, no
 * QEMU (one case needs a userfaultfd, as `run` checks for it before it
 * opens the pool); VMs are stood in for by listening unix sockets (all
 * `giantvm stat` checks before it talks to one) in a runtime directory of
 * their own ($GIANTVM_RUNTIME_DIR).
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "giantvm.h"
#include "test.h"

static int test_parse_size(void)
{
	static const struct { const char *s; uint64_t v; } good[] = {
		{ "0", 0 }, { "4096", 4096 }, { "512M", 512ull << 20 }, { "512m", 512ull << 20 },
		{ "16G", 16ull << 30 }, { "1.5G", 3ull << 29 }, { "0.5K", 512 }, { "2GiB", 2ull << 30 },
		{ "2GB", 2ull << 30 }, { "64Mi", 64ull << 20 }, { "4096B", 4096 }, { "1T", 1ull << 40 }, { "128k", 128ull << 10 },
		{ "1.5", 1 },                                   /* a fraction of a byte: rounded down */
		{ "0.0000000000000000001T", 0 },                /* beyond 19 digits: ignored */
		{ "1.00000000000000000009G", 1ull << 30 },
		{ "18446744073709551615", UINT64_MAX },
		{ "16777215.9999999999999999999T", UINT64_MAX }, /* 2^64 bytes less 1e-19 T: rounded down */
		{ "18446744073709551615.5", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "nan", "NaN", "inf", "infinity", "0x1000000", "0x10M", "1e9", "1E3M", "-1", "+1",
		" 1", "1 ", "\t1", "1.", ".5G", "1..5", "1.5.G", "M", "1X", "1MM", "1iB",
		"1MiBB", "1,5G", "1_000", "0b101",
	};
	static const char *const range[] = {
		"18446744073709551616", "99999999999999999999999", "16777216T", "17179869184G",
		"18446744073709551615.5K",
	};
	uint64_t v;

	for (size_t i = 0; i < GVM_ARRAY_SIZE(good); i++) {
		v = 12345;
		if (gvm_parse_size(good[i].s, &v) || v != good[i].v) {
			fprintf(stderr, "  '%s': %" PRIu64 ", want %" PRIu64 "\n", good[i].s, v, good[i].v);
			return 1;
		}
	}
	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad); i++) {
		v = 12345;
		if (gvm_parse_size(bad[i], &v) != -EINVAL || v != 12345) {
			fprintf(stderr, "  '%s' accepted or not -EINVAL (%" PRIu64 ")\n", bad[i], v);
			return 1;
		}
	}
	for (size_t i = 0; i < GVM_ARRAY_SIZE(range); i++) {
		int r = gvm_parse_size(range[i], &v);
		if (r != -ERANGE) {
			fprintf(stderr, "  '%s': %d, want -ERANGE\n", range[i], r);
			return 1;
		}
	}
	CHECK_EQ(gvm_parse_size(NULL, &v), -EINVAL);
	return 0;
}

/* ------------------------------------------------- the giantvm binary */

static char tmp[64];            /* this case's directory: cwd and runtime dir of the runs */
static char out[16384];         /* the last run's stdout and stderr */
static const char *qemu_conf;   /* $GIANTVM_QEMU_CONF of the runs, or none */

static int tmp_make(void)
{
	snprintf(tmp, sizeof(tmp), "/tmp/gvm-test-cli.XXXXXX");
	return mkdtemp(tmp) ? 0 : -1;
}

/* Remove dir and everything in it (files, sockets, directories). */
static void rm_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[512];

	if (!d)
		return;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (unlink(path) < 0 && errno == EISDIR)
			rm_tree(path);
	}
	closedir(d);
	rmdir(dir);
}

/*
 * Run the giantvm built beside this test as argv0 ("giantvm", or
 * "giantvm-qemu" for the libvirt wrapper) with the NULL-terminated
 * arguments, in tmp with GIANTVM_RUNTIME_DIR=tmp and no pool from the
 * environment. Its stdout and stderr, together, are in out. Returns its
 * exit status; -1 if it could not be run or ran for more than 20 s.
 */
static int gvm(const char *argv0, ...)
{
	char path[4096], *argv[32];
	int p[2], argc = 0, status;
	size_t len = 0;
	va_list ap;
	pid_t pid;

	out[0] = 0;
	if (test_giantvm_path(path, sizeof(path)))
		return -1;
	argv[argc++] = (char *)argv0;
	va_start(ap, argv0);
	while (argc < 31 && (argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0 || chdir(tmp) < 0)
			_exit(126);
		setenv("GIANTVM_RUNTIME_DIR", tmp, 1);
		/* an empty host: UFFD mode, TCG, whatever this one has loaded */
		setenv("GIANTVM_SYSROOT", tmp, 1);
		unsetenv("GIANTVM_POOL");
		unsetenv("GIANTVM_LOG");
		if (qemu_conf)
			setenv("GIANTVM_QEMU_CONF", qemu_conf, 1);
		else
			unsetenv("GIANTVM_QEMU_CONF");
		execv(path, argv);
		_exit(127);
	}
	close(p[1]);
	for (uint64_t end = gvm_time_ns() + 20000000000ull;;) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		ssize_t n;
		if (gvm_time_ns() > end || poll(&pfd, 1, 100) < 0) {
			kill(pid, SIGKILL);
			break;
		}
		if (!pfd.revents)
			continue;
		n = read(p[0], out + len, sizeof(out) - 1 - len);
		if (n <= 0 || (len += (size_t)n) == sizeof(out) - 1)
			break;
	}
	out[len] = 0;
	close(p[0]);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

/* The run exited `rc` and said `text` (with the run's output on failure). */
#define CHECK_RUN(r, rc, text) do { int r_ = (r); \
	if (r_ != (rc) || !strstr(out, (text))) { \
		fprintf(stderr, "  FAIL %s:%d: exit %d (want %d), output lacks '%s':\n%s\n", __FILE__, \
			__LINE__, r_, (rc), (text), out); \
		return 1; } } while (0)

/* A VM as `giantvm stat` finds one: a listening socket tmp/NAME.sock. */
static int fake_vm(const char *name)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s/%s.sock", tmp, name);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 8) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int stat_several(void)
{
	const char *const names[] = { "alpha", "beta", "gamma" };
	char line[64];
	int fd[3];

	for (int i = 0; i < 3; i++)
		CHECK((fd[i] = fake_vm(names[i])) >= 0);
	/* each of them listed, the first found as much as the others */
	CHECK_RUN(gvm("giantvm", "stat", NULL), 1, "several VMs are running; name one:\n");
	for (int i = 0; i < 3; i++) {
		snprintf(line, sizeof(line), "\n  %s\n", names[i]);
		if (!strstr(out, line)) {
			fprintf(stderr, "  FAIL: '%s' not listed:\n%s\n", names[i], out);
			return 1;
		}
	}
	for (int i = 0; i < 3; i++)
		close(fd[i]);
	return 0;
}

static int stat_args(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	char addr[64];
	int fd;

	CHECK_RUN(gvm("giantvm", "stat", "--count", NULL), 2, "--count needs a value");
	/* --count=N as every other option's value; parsed, then the VM is looked for */
	CHECK_RUN(gvm("giantvm", "stat", "no-such-vm", "--count=3", NULL), 1, "VM 'no-such-vm' is not running");
	CHECK_RUN(gvm("giantvm", "stat", "no-such-vm", "--count", "2", NULL), 1, "is not running");
	CHECK_RUN(gvm("giantvm", "stat", "--count", "3x", NULL), 2, "--count '3x': a positive whole number");
	CHECK_RUN(gvm("giantvm", "stat", "--count=0", NULL), 2, "--count '0'");
	CHECK_RUN(gvm("giantvm", "stat", "--count", "-1", NULL), 2, "--count '-1'");
	CHECK_RUN(gvm("giantvm", "stat", "a", "b", NULL), 2, "giantvm stat: one VM at a time ('a', then 'b')");
	CHECK_RUN(gvm("giantvm", "stat", "--bogus", NULL), 2, "unknown option '--bogus'");
	/* a malformed address is bad usage; one that cannot be had is not */
	CHECK_RUN(gvm("giantvm", "stat", "--metrics", "bogus", NULL), 2, "metrics address 'bogus'");
	CHECK_RUN(gvm("giantvm", "stat", "--metrics=127.0.0.1:99999", NULL), 2, "metrics address");
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(fd, 1) == 0);
	CHECK(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	CHECK_RUN(gvm("giantvm", "stat", "--metrics", addr, NULL), 1, "cannot listen on metrics address");
	close(fd);
	return 0;
}

/* --vm-id names RUNTIME_DIR/ID.sock: ".", ".." and hidden names are refused
 * before anything runs, as giantvm-qemu refuses such a domain name. */
static int run_vm_id(void)
{
	static const char *const bad[] = { ".", "..", ".hidden", "", "a/b", "a b" };

	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad); i++) {
		char opt[64], want[80];
		snprintf(opt, sizeof(opt), "--vm-id=%s", bad[i]);
		snprintf(want, sizeof(want), "--vm-id '%s': 1-48 letters", bad[i]);
		if (!*bad[i])
			snprintf(want, sizeof(want), "--vm-id");
		CHECK_RUN(gvm("giantvm", "run", opt, "--", "true", NULL), 2, want);
	}
	return 0;
}

/* A SIZE is decimal: "nan" was taken for no budget, "1e9" for a size. */
static int size_args(void)
{
	static const char *const bad[] = { "nan", "inf", "0x1000000", "1e9" };

	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad); i++) {
		char want[64];
		snprintf(want, sizeof(want), "--local-mem '%s': a size", bad[i]);
		CHECK_RUN(gvm("giantvm", "run", "--local-mem", bad[i], "--", "true", NULL), 2, want);
		snprintf(want, sizeof(want), "--size '%s': a size", bad[i]);
		CHECK_RUN(gvm("giantvm", "bench", "--size", bad[i], NULL), 2, want);
	}
	return 0;
}

static int write_in_tmp(const char *name, const char *text, char *path, size_t len)
{
	snprintf(path, len, "%s/%s", tmp, name);
	return test_write_text(path, text);
}

/* An error about a file says which setting named it, and why. */
static int file_errors(void)
{
	char pool[128], want[256];

	CHECK_RUN(gvm("giantvm", "bench", "--token-file", "/nonexistent", NULL), 1,
		  "giantvm bench: --token-file /nonexistent: No such file or directory");
	CHECK(write_in_tmp("pool.conf", "# pool\n127.0.0.1:99999\n", pool, sizeof(pool)) == 0);
	snprintf(want, sizeof(want), "giantvm bench: --pool %s:2: bad port", pool);
	CHECK_RUN(gvm("giantvm", "bench", "--pool", pool, NULL), 1, want);
	/* empty: nothing to look for */
	CHECK_RUN(gvm("giantvm", "bench", "--pool=", NULL), 2, "giantvm: --pool needs a value (it is empty)");
	CHECK_RUN(gvm("giantvm", "run", "--pool=", "--", "true", NULL), 2, "--pool needs a value (it is empty)");
	CHECK_RUN(gvm("giantvm", "run", "--token-file", "", "--", "true", NULL), 2, "--token-file needs a value");
	/* giantvm-qemu's config a directory: why it cannot be read */
	qemu_conf = tmp;
	snprintf(want, sizeof(want), "giantvm-qemu: %s: Is a directory", tmp);
	CHECK_RUN(gvm("giantvm-qemu", "-m", "64", NULL), 1, want);
	return 0;
}

/* The same where the run gets as far as the pool: it needs a userfaultfd. */
static int file_errors_pool(void)
{
	char conf[128], want[256];

	CHECK_RUN(gvm("giantvm", "run", "--verbose", "--token-file", "/nonexistent", "--", "true", NULL), 1,
		  "giantvm run: --token-file /nonexistent: No such file or directory");
	CHECK_RUN(gvm("giantvm", "run", "--verbose", "--pool", "/nonexistent", "--", "true", NULL), 1,
		  "giantvm run: --pool /nonexistent: No such file or directory");
	/* giantvm-qemu: the config's line that named the file */
	CHECK(write_in_tmp("wrapper.conf", "# libvirt\npool = /nonexistent\n", conf, sizeof(conf)) == 0);
	qemu_conf = conf;
	snprintf(want, sizeof(want), "giantvm-qemu: %s:2: pool = /nonexistent: No such file or directory", conf);
	CHECK_RUN(gvm("giantvm-qemu", "-m", "64", NULL), 1, want);
	CHECK(write_in_tmp("wrapper.conf", "pool = /nonexistent\n\ntoken-file = /no-token\n", conf,
			   sizeof(conf)) == 0);
	snprintf(want, sizeof(want), "giantvm-qemu: %s:3: token-file = /no-token: No such file or directory", conf);
	CHECK_RUN(gvm("giantvm-qemu", "-m", "64", NULL), 1, want);
	return 0;
}

/* Each case that runs the binary gets a fresh tmp, removed after it. */
#define IN_TMP(fn) static int test_##fn(void) { int r; \
	CHECK(tmp_make() == 0); r = fn(); rm_tree(tmp); qemu_conf = NULL; return r; }
IN_TMP(stat_several)
IN_TMP(stat_args)
IN_TMP(run_vm_id)
IN_TMP(size_args)
IN_TMP(file_errors)
IN_TMP(file_errors_pool)

static const struct gvm_test tests[] = {
	{ "parse_size", test_parse_size },
	{ "stat_several", test_stat_several },
	{ "stat_args", test_stat_args },
	{ "run_vm_id", test_run_vm_id },
	{ "size_args", test_size_args },
	{ "file_errors", test_file_errors },
	{ "file_errors_pool", test_file_errors_pool, GVM_NEEDS_UFFD },
};
GVM_TEST_MAIN(tests)
