/*
 * Node failure with replicas (R=2 over 3 memory-server processes): a
 * workload writes and verifies memory under a small local budget (so pages
 * live in the pool) while a node is killed with SIGKILL; the node comes back
 * empty and is re-synced; then another node is killed and every page must
 * still be right. A node that stops answering (SIGSTOP) is failed over the
 * same way. Fault latency before, during and after is printed.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "giantvm.h"
#include "test.h"
#include "util.h"

#define NODES 3
#define PAGES 8192u          /* 32 MiB ... */
#define BUDGET (8u << 20)    /* ... 4x an 8 MiB budget */

static char giantvm[PATH_MAX];
static pid_t srv_pid[NODES];
static int srv_port[NODES];
static char names[NODES][32];
static const char *nodes[NODES];

static int start_server(int i, int port)
{
	char listen[64], portfile[64];
	pid_t pid;

	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	snprintf(portfile, sizeof(portfile), "/tmp/gvm-failover-%d-%d.port", (int)getpid(), i);
	unlink(portfile);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		execl(giantvm, giantvm, "memserver", "--listen", listen, "--port-file", portfile, (char *)NULL);
		_exit(127);
	}
	for (int t = 0; t < 500; t++) {
		FILE *f = fopen(portfile, "r");
		if (f) {
			int ok = fscanf(f, "%d", &srv_port[i]) == 1;
			fclose(f);
			if (ok) {
				unlink(portfile);
				srv_pid[i] = pid;
				snprintf(names[i], sizeof(names[i]), "127.0.0.1:%d", srv_port[i]);
				nodes[i] = names[i];
				return 0;
			}
		}
		usleep(10000);
	}
	kill(pid, SIGKILL);
	return -1;
}

static void stop_server(int i, int sig)
{
	if (srv_pid[i] <= 0)
		return;
	kill(srv_pid[i], sig);
	if (sig == SIGKILL || sig == SIGTERM) {
		waitpid(srv_pid[i], NULL, 0);
		srv_pid[i] = 0;
	}
}

static void fill(uint8_t *p, uint64_t seed, uint64_t page, uint32_t ver)
{
	uint64_t x = gvm_mix64(seed ^ (page << 24) ^ ver);
	for (unsigned i = 0; i < 4096; i += 8) {
		x = gvm_mix64(x);
		memcpy(p + i, &x, 8);
	}
}

struct vm {
	struct gvm_pool *pool;
	struct gvm_engine *e;
	uint8_t *m;
	uint32_t *ver;
	uint64_t seed;
};

static int vm_open(struct vm *v, const char *name)
{
	struct gvm_pool_opts po = { .nodes = nodes, .n_nodes = NODES, .replicas = 2,
				    .request_timeout_ms = 300, .fault_deadline_ms = 20000 };
	struct gvm_engine_opts eo = { .local_mem = BUDGET };
	uint8_t key[32];
	char err[256];

	CHECK(gvm_random(&v->seed, 8) == 0 && gvm_random(key, 32) == 0);
	CHECK(gvm_pool_open(&v->pool, &po, err, sizeof(err)) == 0);
	CHECK(gvm_engine_open(&v->e, v->pool, &eo) == 0);
	v->m = mmap(NULL, PAGES * 4096ul, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(v->m != MAP_FAILED);
	CHECK(gvm_engine_attach(v->e, gvm_region_id("test-failover", name), key, v->m, PAGES * 4096ul) == 0);
	v->ver = calloc(PAGES, sizeof(*v->ver));
	CHECK(v->ver != NULL);
	return 0;
}

static void vm_close(struct vm *v)
{
	gvm_engine_close(v->e);
	gvm_pool_close(v->pool);
	munmap(v->m, PAGES * 4096ul);
	free(v->ver);
}

/* Write every page once more, then read and check every page; p50 and p99
 * get the page-touch latency percentiles of the check pass, in us. */
static int pass(struct vm *v, double *p50, double *p99)
{
	uint8_t want[4096];
	uint64_t *lat = malloc(PAGES * sizeof(*lat));

	CHECK(lat != NULL);
	for (uint64_t p = 0; p < PAGES; p++)
		fill(v->m + p * 4096, v->seed, p, ++v->ver[p]);
	for (uint64_t p = 0; p < PAGES; p++) {
		uint64_t t0 = gvm_now_ns();
		volatile uint8_t b = v->m[p * 4096];
		(void)b;
		lat[p] = gvm_now_ns() - t0;
		fill(want, v->seed, p, v->ver[p]);
		if (memcmp(v->m + p * 4096, want, 4096)) {
			fprintf(stderr, "  page %" PRIu64 " (version %u) is wrong\n", p, v->ver[p]);
			free(lat);
			return 1;
		}
	}
	/* sort for percentiles */
	for (size_t gap = PAGES / 2; gap; gap /= 2)
		for (size_t i = gap; i < PAGES; i++)
			for (size_t j = i; j >= gap && lat[j - gap] > lat[j]; j -= gap) {
				uint64_t t = lat[j]; lat[j] = lat[j - gap]; lat[j - gap] = t;
			}
	*p50 = (double)lat[PAGES / 2] / 1000.0;
	*p99 = (double)lat[PAGES * 99 / 100] / 1000.0;
	free(lat);
	return 0;
}

static int test_kill_restart_resync(void)
{
	struct vm v;
	struct gvm_stats st;
	double p50, p99;

	for (int i = 0; i < NODES; i++)
		CHECK(start_server(i, 0) == 0);
	if (vm_open(&v, "kill"))
		return 1;
	CHECK(pass(&v, &p50, &p99) == 0);
	printf("  before:  touch p50 %.1f us p99 %.1f us\n", p50, p99);
	stop_server(1, SIGKILL);
	CHECK(pass(&v, &p50, &p99) == 0);
	gvm_engine_stats(v.e, &st);
	printf("  node 1 killed: touch p50 %.1f us p99 %.1f us, errors %" PRIu64 ", under-replicated %" PRIu64 "\n",
	       p50, p99, st.errors, st.under_replicated);
	CHECK(st.under_replicated > 0);
	CHECK(pass(&v, &p50, &p99) == 0);
	printf("  after failover: touch p50 %.1f us p99 %.1f us\n", p50, p99);
	/* Back, empty, on the same port: re-synced from the live replicas. */
	CHECK(start_server(1, srv_port[1]) == 0);
	uint64_t t0 = gvm_now_ns();
	for (int t = 0; t < 600; t++) {
		gvm_engine_stats(v.e, &st);
		if (st.under_replicated == 0 && st.resynced_stripes > 0)
			break;
		usleep(50000);
	}
	printf("  re-sync: %" PRIu64 " stripes in %.2f s, under-replicated now %" PRIu64 "\n",
	       st.resynced_stripes, (double)(gvm_now_ns() - t0) / 1e9, st.under_replicated);
	CHECK_EQ(st.under_replicated, 0);
	CHECK(st.resynced_stripes > 0);
	/* Now lose another node: every stripe must still have a copy. */
	stop_server(2, SIGKILL);
	CHECK(pass(&v, &p50, &p99) == 0);
	printf("  node 2 killed after re-sync: touch p50 %.1f us p99 %.1f us\n", p50, p99);
	vm_close(&v);
	for (int i = 0; i < NODES; i++)
		stop_server(i, SIGKILL);
	return 0;
}

static int test_silent_node_fails_over(void)
{
	struct vm v;
	double p50, p99;

	for (int i = 0; i < NODES; i++)
		CHECK(start_server(i, 0) == 0);
	if (vm_open(&v, "stop"))
		return 1;
	CHECK(pass(&v, &p50, &p99) == 0);
	stop_server(0, SIGSTOP); /* alive but silent, like a cut link */
	CHECK(pass(&v, &p50, &p99) == 0);
	printf("  node 0 silent: touch p50 %.1f us p99 %.1f us (timeout 300 ms)\n", p50, p99);
	kill(srv_pid[0], SIGCONT);
	vm_close(&v);
	for (int i = 0; i < NODES; i++)
		stop_server(i, SIGKILL);
	return 0;
}

static const struct gvm_test tests[] = {
	/* A local memory budget: the engine needs userfaultfd write-protect. */
	{ "kill_restart_resync", test_kill_restart_resync, GVM_NEEDS_UFFD | UFFD_FEATURE_PAGEFAULT_FLAG_WP },
	{ "silent_node_fails_over", test_silent_node_fails_over, GVM_NEEDS_UFFD | UFFD_FEATURE_PAGEFAULT_FLAG_WP },
};

int main(int argc, char **argv)
{
	if (test_giantvm_path(giantvm, sizeof(giantvm))) {
		fprintf(stderr, "test_failover: %s not built\n", giantvm);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	int r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	for (int i = 0; i < NODES; i++)
		if (srv_pid[i] > 0) {
			kill(srv_pid[i], SIGCONT);
			stop_server(i, SIGKILL);
		}
	return r;
}
