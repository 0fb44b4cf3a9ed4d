/* The poller (src/lib/poller.c): CPU-quota detection on fake cgroup trees,
 * and start / kick / stop in every state without a hang. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "poller.h"
#include "util.h"
#include "test.h"

static char root[] = "/tmp/gvm-poller-XXXXXX";

/* mkdir -p root/dir and write text into root/dir/file. */
static int put(const char *dir, const char *file, const char *text)
{
	char p[512];
	size_t n = (size_t)snprintf(p, sizeof(p), "%s/", root);

	for (const char *s = dir; ; s++) {
		if (*s == '/' || !*s) {
			p[n] = 0;
			if (mkdir(p, 0755) < 0 && errno != EEXIST)
				return -1;
		}
		if (!*s)
			break;
		p[n++] = *s;
	}
	snprintf(p + n, sizeof(p) - n, "/%s", file);
	return test_write_file(p, text, strlen(text), 0644);
}

static int quota(const char *self, char *where)
{
	return gvm_cpu_quota(self, root, where, 1600);
}

/* A quota found for /proc/self/cgroup contents `self`, in file ROOT/rel. */
static int quota_in(const char *self, const char *rel)
{
	char where[1600], want[700];

	CHECK_EQ(quota(self, where), 1);
	snprintf(want, sizeof(want), "%s/%s", root, rel);
	CHECK(strcmp(where, want) == 0);
	return 0;
}

static int test_cpu_quota(void)
{
	char where[1600];

	CHECK(mkdtemp(root) != NULL);
	/* cgroup v1 with cpu and cpuacct mounted together (Debian, Ubuntu). */
	CHECK(put("cpu,cpuacct", "cpu.cfs_quota_us", "-1\n") == 0);
	CHECK(put("cpu,cpuacct/machine/vm1", "cpu.cfs_quota_us", "-1\n") == 0);
	CHECK(put("cpu,cpuacct/machine/vm1/emulator", "cpu.cfs_quota_us", "-1\n") == 0);
	const char *v1 = "12:memory:/machine/vm1\n4:cpu,cpuacct:/machine/vm1/emulator\n1:name=systemd:/x\n";
	CHECK_EQ(quota(v1, where), 0);
	/* libvirt's emulator_quota on the process's own cgroup ... */
	CHECK(put("cpu,cpuacct/machine/vm1/emulator", "cpu.cfs_quota_us", "50000\n") == 0);
	CHECK(quota_in(v1, "cpu,cpuacct/machine/vm1/emulator/cpu.cfs_quota_us") == 0);
	/* ... or on an ancestor: it limits the process too. */
	CHECK(put("cpu,cpuacct/machine/vm1/emulator", "cpu.cfs_quota_us", "-1\n") == 0);
	CHECK(put("cpu,cpuacct/machine", "cpu.cfs_quota_us", "200000\n") == 0);
	CHECK(quota_in(v1, "cpu,cpuacct/machine/cpu.cfs_quota_us") == 0);
	/* Only the line with the cpu controller counts (not cpuset, not cpuacct alone). */
	CHECK_EQ(quota("3:cpuset:/machine\n2:cpuacct:/machine\n", where), 0);

	/* cgroup v2 (unified at the root): cpu.max "max PERIOD" is no quota. */
	CHECK(put(".", "cgroup.controllers", "cpu memory\n") == 0);
	CHECK(put("system.slice/vm.service", "cpu.max", "max 100000\n") == 0);
	CHECK(put("system.slice", "cpu.max", "max 100000\n") == 0);
	const char *v2 = "0::/system.slice/vm.service\n";
	CHECK_EQ(quota(v2, where), 0);
	CHECK(put("system.slice/vm.service", "cpu.max", "150000 100000\n") == 0);
	CHECK(quota_in(v2, "system.slice/vm.service/cpu.max") == 0);
	/* The root cgroup and missing files: none. */
	CHECK_EQ(quota("0::/\n", where), 0);
	CHECK_EQ(quota("0::/no/such/group\n", where), 0);
	/* Malformed lines are skipped, never read past. */
	CHECK_EQ(quota("garbage\n::\n4:cpu\n", where), 0);
	CHECK_EQ(quota("", where), 0);

	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	CHECK(system(cmd) == 0);
	return 0;
}

static int test_start_kick_stop(void)
{
	struct gvm_poller *p;

	/* Stop while asleep (never kicked). */
	CHECK(gvm_poller_start(&p, 2000000) == 0 && p);
	gvm_poller_stop(p);
	/* Stop while spinning (kicked for 2 s: stop must not wait it out). */
	CHECK(gvm_poller_start(&p, 2000000000ull) == 0 && p);
	uint64_t t0 = gvm_now_ns();
	gvm_poller_kick(p, t0);
	usleep(20000);
	gvm_poller_stop(p);
	CHECK(gvm_now_ns() - t0 < 1000000000ull);
	/* Many kicks, asleep and awake in turn (each burst 200 us). */
	CHECK(gvm_poller_start(&p, 200000) == 0 && p);
	for (int i = 0; i < 2000; i++) {
		gvm_poller_kick(p, gvm_now_ns());
		if (i % 100 == 0)
			usleep(1000);
	}
	usleep(5000);
	printf("  poller CPU after 2000 kicks: %.3f ms\n", (double)gvm_poller_cpu_ns(p) / 1e6);
	gvm_poller_stop(p);
	gvm_poller_kick(NULL, 0); /* no poller: no-ops */
	gvm_poller_stop(NULL);
	CHECK_EQ(gvm_poller_cpu_ns(NULL), 0);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "cpu_quota", test_cpu_quota },
	{ "start_kick_stop", test_start_kick_stop },
};

GVM_TEST_MAIN(tests)
