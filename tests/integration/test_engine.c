/*
 * Fault engine against real memory servers on loopback (3 nodes, in-process
 * on their own threads, port 0). A second *process* (this binary re-executed
 * with "child ...") attaches the same region and must read back every byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include "giantvm.h"
#include "giantvm_memserver.h"
#include "servers.h"
#include "test.h"
#include "util.h"

#define NODES 3
#define REGION_PAGES (16384u) /* 64 MiB */

static char self_exe[4096];
static const char **nodes = test_nodes;

static int servers_up(void)
{
	CHECK(test_servers_up(NODES) == 0);
	return 0;
}

static void fill_page(uint8_t *p, uint64_t seed, uint64_t page)
{
	uint64_t x = gvm_mix64(seed + page);
	for (unsigned i = 0; i < 4096; i += 8) {
		x = gvm_mix64(x);
		memcpy(p + i, &x, 8);
	}
}

static int open_pool(struct gvm_pool **pool, unsigned replicas)
{
	struct gvm_pool_opts po = { .nodes = nodes, .n_nodes = NODES, .replicas = replicas,
				    .fault_deadline_ms = 3000, .request_timeout_ms = 1000 };
	char err[256];
	int r = gvm_pool_open(pool, &po, err, sizeof(err));
	if (r)
		fprintf(stderr, "pool: %s\n", err);
	return r;
}

/* Child: attach the region fresh, verify pattern pages (every 3rd page is
 * expected zero: the parent never wrote it). argv: child seed region key-hex nodes... */
static int child_main(int argc, char **argv)
{
	uint64_t seed = strtoull(argv[2], NULL, 16), region = strtoull(argv[3], NULL, 16);
	uint8_t key[32], want[4096];
	struct gvm_engine *e;
	struct gvm_pool *pool;
	int extra_fds = atoi(argv[5]);

	for (int i = 0; i < 32; i++)
		sscanf(argv[4] + 2 * i, "%2hhx", &key[i]);
	for (int i = 0; i < NODES && 6 + i < argc; i++)
		nodes[i] = argv[6 + i];
	/* Push every fd the engine opens past 1024: select() would break here. */
	struct rlimit rl = { 4096, 4096 };
	setrlimit(RLIMIT_NOFILE, &rl);
	for (int i = 0; i < extra_fds; i++)
		if (open("/dev/null", O_RDONLY) < 0)
			return 3;
	if (open_pool(&pool, 2) || gvm_engine_open(&e, pool, NULL))
		return 4;
	uint8_t *m = mmap(NULL, REGION_PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || gvm_engine_attach(e, region, key, m, REGION_PAGES * 4096ul))
		return 5;
	for (uint64_t p = 0; p < REGION_PAGES; p++) {
		if (p % 3 == 2)
			memset(want, 0, sizeof(want));
		else
			fill_page(want, seed, p);
		if (memcmp(m + p * 4096, want, 4096)) {
			fprintf(stderr, "child: page %" PRIu64 " differs\n", p);
			return 6;
		}
	}
	struct gvm_stats st;
	gvm_engine_stats(e, &st);
	if (st.pages_fetched == 0 || st.bytes_in == 0)
		return 7;
	gvm_engine_close(e);
	gvm_pool_close(pool);
	return 0;
}

static int run_child(uint64_t seed, uint64_t region, const uint8_t *key, int extra_fds)
{
	char s[32], r[32], k[65], f[16];
	pid_t pid;
	int status;

	snprintf(s, sizeof(s), "%" PRIx64, seed);
	snprintf(r, sizeof(r), "%" PRIx64, region);
	for (int i = 0; i < 32; i++)
		sprintf(k + 2 * i, "%02x", key[i]);
	snprintf(f, sizeof(f), "%d", extra_fds);
	pid = fork();
	if (pid == 0) {
		execl(self_exe, self_exe, "child", s, r, k, f, nodes[0], nodes[1], nodes[2], (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "  child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		return -1;
	}
	return 0;
}

struct writer {
	uint8_t *m;
	uint64_t seed;
	int id, nthreads;
};

static void *writer_main(void *a)
{
	struct writer *w = a;
	/* Interleaved pages from several threads: faults race in shared windows. */
	for (uint64_t p = (uint64_t)w->id; p < REGION_PAGES; p += (uint64_t)w->nthreads)
		if (p % 3 != 2)
			fill_page(w->m + p * 4096, w->seed, p);
	return NULL;
}

static int write_flush_readback(int extra_fds)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t key[32];
	uint64_t seed, region;
	pthread_t th[4];
	struct writer w[4];

	CHECK(servers_up() == 0);
	CHECK(gvm_random(&seed, sizeof(seed)) == 0 && gvm_random(key, sizeof(key)) == 0);
	region = gvm_region_id("test-engine", extra_fds ? "fds" : "ram");
	CHECK(open_pool(&pool, 2) == 0);
	CHECK(gvm_engine_open(&e, pool, NULL) == 0);
	uint8_t *m = mmap(NULL, REGION_PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK(gvm_engine_attach(e, region, key, m, REGION_PAGES * 4096ul) == 0);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct writer){ m, seed, i, 4 };
		CHECK(pthread_create(&th[i], NULL, writer_main, &w[i]) == 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	CHECK(gvm_engine_flush(e) == 0);
	gvm_engine_stats(e, &st);
	/* A fresh region is all zero in the pool: nothing fetched but zero
	 * pages, each page at most once (no double fetch across threads); only
	 * pages nobody touched (the untouched third) may be left out. */
	CHECK(st.pages_fetched <= REGION_PAGES);
	CHECK(st.pages_fetched >= REGION_PAGES - REGION_PAGES / 3);
	CHECK_EQ(st.zero_pages, st.pages_fetched);
	CHECK_EQ(st.bytes_out, (uint64_t)(REGION_PAGES - REGION_PAGES / 3) * 4096);
	gvm_engine_close(e);
	gvm_pool_close(pool);
	munmap(m, REGION_PAGES * 4096ul);
	CHECK(run_child(seed, region, key, extra_fds) == 0);
	return 0;
}

static int test_flush_readback_3_nodes(void) { return write_flush_readback(0); }
static int test_readback_with_2000_fds(void) { return write_flush_readback(2000); }

/*
 * A thread that writes pages and then calls gvm_engine_flush() finds them
 * all in the pool. The engine wakes the faulting thread (UFFDIO_COPY) just
 * before it marks the window's pages resident, and flush sends only pages
 * marked resident: without the barrier at flush's start, about 1 run in 4
 * of a 100-page write (4 windows installed dirty) lost its last pages.
 */
static int test_flush_right_after_install(void)
{
	enum { RUN = 100, ITER = 40 };
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t key[32];
	uint64_t seed;

	CHECK(servers_up() == 0);
	CHECK(gvm_random(&seed, sizeof(seed)) == 0 && gvm_random(key, sizeof(key)) == 0);
	CHECK(open_pool(&pool, 1) == 0);
	CHECK(gvm_engine_open(&e, pool, NULL) == 0);
	size_t len = (size_t)RUN * ITER * 4096 + (1u << 20);
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK(gvm_engine_attach(e, gvm_region_id("test-engine", "flush-race"), key, m, len) == 0);
	for (uint64_t i = 0; i < ITER; i++) {
		for (uint64_t p = i * RUN; p < (i + 1) * RUN; p++)
			fill_page(m + p * 4096, seed, p);
		CHECK(gvm_engine_flush(e) == 0);
		gvm_engine_stats(e, &st);
		/* Every resident page with data goes out at each flush: all
		 * the runs so far (zero pages of the windows are never sent). */
		CHECK_EQ(st.bytes_out, (i + 1) * (i + 2) / 2 * RUN * 4096);
	}
	gvm_engine_close(e);
	gvm_pool_close(pool);
	munmap(m, len);
	return 0;
}

static int test_wrong_key_gets_no_pages(void)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	uint8_t key[32], other[32];
	uint64_t region = gvm_region_id("test-engine", "isolation");

	CHECK(servers_up() == 0);
	CHECK(gvm_random(key, 32) == 0 && gvm_random(other, 32) == 0);
	/* Owner writes and flushes one page. */
	CHECK(open_pool(&pool, 1) == 0);
	CHECK(gvm_engine_open(&e, pool, NULL) == 0);
	uint8_t *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK(gvm_engine_attach(e, region, key, m, 1 << 20) == 0);
	memset(m, 0xab, 4096);
	CHECK(gvm_engine_flush(e) == 0);
	gvm_engine_close(e);
	munmap(m, 1 << 20);
	gvm_pool_close(pool);
	/* Someone with another key cannot read it: the fault is never served
	 * with the owner's data. A region is named by (id, key), so the other
	 * key names another, empty region: the child reads a zero page (exit
	 * 5), never 0xab (exit 4). */
	pid_t pid = fork();
	if (pid == 0) {
		struct gvm_pool *p2;
		struct gvm_engine *e2;
		if (open_pool(&p2, 1) || gvm_engine_open(&e2, p2, NULL))
			_exit(2);
		uint8_t *m2 = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m2 == MAP_FAILED || gvm_engine_attach(e2, region, other, m2, 1 << 20))
			_exit(3);
		volatile uint8_t v = m2[0];
		_exit(v == 0xab ? 4 : 5);
	}
	int status;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 5);
	return 0;
}

static void fatal_exit(const char *why, void *arg)
{
	(void)arg;
	fprintf(stderr, "  fatal hook: %s\n", why);
	_exit(42);
}

/* Every replica down: the fault must be resolved, never left hanging: SIGBUS
 * via UFFDIO_POISON, or (POISON disabled) the fatal hook, exit 42; and no
 * thread may spin while it waits. */
static int all_down(int disable_poison)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	char dead[32];
	int s = socket(AF_INET, SOCK_STREAM, 0);

	/* A port that was free a moment ago and has no listener. */
	CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(getsockname(s, (struct sockaddr *)&a, &al) == 0);
	snprintf(dead, sizeof(dead), "127.0.0.1:%u", ntohs(a.sin_port));
	close(s);
	uint64_t t0 = gvm_now_ns();
	pid_t pid = fork();
	if (pid == 0) {
		const char *n[1] = { dead };
		struct gvm_pool_opts po = { .nodes = n, .n_nodes = 1, .fault_deadline_ms = 500,
					    .request_timeout_ms = 200 };
		struct gvm_engine_opts eo = { .on_fatal = fatal_exit };
		struct gvm_pool *p;
		struct gvm_engine *e;
		char err[128];
		uint8_t key[32] = { 1 };
		if (disable_poison)
			setenv("GIANTVM_UFFD_DISABLE", "POISON", 1);
		if (gvm_pool_open(&p, &po, err, sizeof(err)) || gvm_engine_open(&e, p, &eo))
			_exit(2);
		uint8_t *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED || gvm_engine_attach(e, 77, key, m, 1 << 20))
			_exit(3);
		volatile uint8_t v = m[4096];
		(void)v;
		_exit(4); /* served with something: wrong */
	}
	int status;
	struct rusage ru;
	CHECK(wait4(pid, &status, 0, &ru) == pid);
	double secs = (double)(gvm_now_ns() - t0) / 1e9;
	double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		     (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	printf("  resolved after %.2f s (deadline 0.5 s), %.3f s of CPU\n", secs, cpu);
	/* Nothing spins through the wait on a node that does not answer: the
	 * poller stays awake only GIANTVM_POLL_US after a fault. */
	CHECK(cpu < secs / 4);
	if (disable_poison)
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 42);
	else /* the table skips this case where the kernel has no POISON */
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS);
	CHECK(secs < 10);
	return 0;
}


/* ns a thread of this process has run (schedstat), or -1. */
static long long thread_cpu_ns(pid_t tid)
{
	char path[64];
	long long ns = -1;

	snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lld", &ns) != 1)
		ns = -1;
	fclose(f);
	return ns;
}

/*
 * The poller (poller.c) that keeps a CPU awake through fault bursts runs at
 * SCHED_IDLE, so it can never take a CPU another thread wants, and sleeps
 * once the faults stop; GIANTVM_POLL_US=0 means no poller thread at all.
 */
static int test_poller_idle_priority(void)
{
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct gvm_stats st;
	uint8_t key[32];
	size_t len = 4u << 20;

	CHECK(servers_up() == 0);
	CHECK(gvm_random(key, sizeof(key)) == 0);
	for (int off = 0; off < 2; off++) {
		if (off)
			setenv("GIANTVM_POLL_US", "0", 1);
		CHECK(open_pool(&pool, 1) == 0);
		CHECK(gvm_engine_open(&e, pool, NULL) == 0);
		uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(m != MAP_FAILED);
		CHECK(gvm_engine_attach(e, gvm_region_id("test-engine", off ? "poll-off" : "poll"), key, m, len) == 0);
		for (size_t o = 0; o < len; o += 4096) /* a burst of faults */
			m[o] = 1;
		pid_t tid = -1;
		int n = test_threads_named("gvm-poll", &tid);
		if (off) {
			CHECK_EQ(n, 0);
		} else {
			CHECK(n == 1 && tid > 0);
			CHECK_EQ(sched_getscheduler(tid), SCHED_IDLE);
			usleep(20000); /* past the 500 us after the last fault */
			long long c0 = thread_cpu_ns(tid);
			usleep(300000);
			long long c1 = thread_cpu_ns(tid);
			gvm_engine_stats(e, &st);
			printf("  poller: SCHED_IDLE, %.1f ms of CPU in the burst, %.3f ms in the 300 ms after\n",
			       (double)st.poll_ns / 1e6, (double)(c1 - c0) / 1e6);
			CHECK(c0 >= 0 && c1 >= c0 && c1 - c0 < 5000000);
		}
		gvm_engine_close(e);
		gvm_pool_close(pool);
		munmap(m, len);
	}
	unsetenv("GIANTVM_POLL_US");
	return 0;
}

static int test_all_replicas_down_poison(void) { return all_down(0); }
static int test_all_replicas_down_fatal_fallback(void) { return all_down(1); }

static const struct gvm_test tests[] = {
	{ "all_replicas_down_poison", test_all_replicas_down_poison, GVM_NEEDS_UFFD | UFFD_FEATURE_POISON },
	{ "all_replicas_down_fatal_fallback", test_all_replicas_down_fatal_fallback, GVM_NEEDS_UFFD },
	{ "flush_readback_3_nodes", test_flush_readback_3_nodes, GVM_NEEDS_UFFD },
	{ "flush_right_after_install", test_flush_right_after_install, GVM_NEEDS_UFFD },
	{ "poller_idle_priority", test_poller_idle_priority, GVM_NEEDS_UFFD },
	{ "readback_with_2000_fds", test_readback_with_2000_fds, GVM_NEEDS_UFFD },
	{ "wrong_key_gets_no_pages", test_wrong_key_gets_no_pages, GVM_NEEDS_UFFD | UFFD_FEATURE_POISON },
};

int main(int argc, char **argv)
{
	ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);

	if (n < 0)
		return 1;
	self_exe[n] = 0;
	if (argc >= 6 && !strcmp(argv[1], "child"))
		return child_main(argc, argv);
	int r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	test_servers_down();
	return r;
}
