/*
 * Minimal test harness: one program per concern, a table of cases. `-l`
 * lists cases, `-f SUBSTR` runs only the cases whose name contains SUBSTR.
 * Failures print file:line and errno.
 *
 * A table entry is { name, fn } or { name, fn, needs }: `needs` is the
 * kernel features the case requires, like the kernel's userfaultfd
 * selftests (uffd_feature_required): UFFD_FEATURE_* bits (uffd.h), plus
 * GVM_NEEDS_UFFD for "a userfaultfd at all". A case whose needs the kernel
 * (gvm_uffd_probe()) does not offer, or that GIANTVM_UFFD_DISABLE turns
 * off, is not run: "SKIP name: reason". A case may also skip itself at run
 * time with SKIP("reason") (it returns GVM_TEST_SKIP, 77).
 *
 * Output: "ok   name" / "FAIL name" / "SKIP name: reason", then
 * "N passed, M failed, K skipped". Exit status:
 *   1   a case failed, or no case ran at all (a -f filter that matches
 *       nothing is an error, not a pass);
 *   77  nothing failed but at least one case was skipped (even if others
 *       passed: a skip must reach tests/run.sh, which shows it as SKIPPED
 *       and, with CI=true, counts it as a failure);
 *   0   every case that was selected ran and passed.
 */
#ifndef GVM_TEST_H
#define GVM_TEST_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uffd.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes len bytes to path (created or truncated; mode applied even to a
 * file that existed). 0 or -errno. */
static inline int test_write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	const char *d = data;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	if (fd < 0)
		return -errno;
	if (fchmod(fd, mode) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	while (len) {
		ssize_t n = write(fd, d, len);
		if (n < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		d += n;
		len -= (size_t)n;
	}
	return close(fd) < 0 ? -errno : 0;
}

/* The giantvm command built beside this test binary (BUILD/tests/x ->
 * BUILD/giantvm) into buf. 0, or -1 if it cannot be found or run. */
static inline int test_giantvm_path(char *buf, size_t len)
{
	ssize_t n = len > 16 ? readlink("/proc/self/exe", buf, len - 16) : -1;
	char *slash;

	if (n < 0)
		return -1;
	buf[n] = 0;
	slash = strrchr(buf, '/');
	if (!slash)
		return -1;
	strcpy(slash, "/../giantvm");
	return access(buf, X_OK) ? -1 : 0;
}

/* A text file only its owner can read (tokens, configs). 0 or -errno. */
static inline int test_write_text(const char *path, const char *text)
{
	return test_write_file(path, text, strlen(text), 0600);
}

/* Threads of this process whose name starts with `name` (the engine names
 * its threads); the first one's id in *tid if tid. -1 if /proc is unreadable. */
static inline int test_threads_named(const char *name, pid_t *tid)
{
	char path[300], comm[32];
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, name, strlen(name)) && n++ == 0 && tid)
			*tid = (pid_t)atoi(de->d_name);
		fclose(f);
	}
	closedir(d);
	return n;
}

/* Tables may leave `needs` out ({ name, fn }: no kernel feature needed). */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define GVM_TEST_SKIP 77
#define GVM_NEEDS_UFFD (1ull << 63) /* a usable userfaultfd (not a UFFD_FEATURE_ bit) */
/* process_madvise(MADV_DONTNEED) on this process (Linux 6.13+; the
 * evictor's batched drops), GIANTVM_UFFD_DISABLE=PROCESS_MADVISE turns it off */
#define GVM_NEEDS_SELF_MADVISE (1ull << 62)

struct gvm_test { const char *name; int (*fn)(void); uint64_t needs; };

/* How the evictor drops pages (evict.c), chosen through GIANTVM_UFFD_DISABLE:
 * MADV_DONTNEED per run (any kernel), UFFDIO_MOVE per run (6.8+), one
 * process_madvise per batch (6.13+). A case for one path needs its feature
 * (UFFD_FEATURE_MOVE, GVM_NEEDS_SELF_MADVISE): without it the engine falls
 * back silently and the case would test another path. */
enum { GVM_DROP_DONTNEED, GVM_DROP_MOVE, GVM_DROP_BATCH };
static const char *const gvm_drop_name[] = { "dontneed", "move", "batch" };

/* More for GIANTVM_UFFD_DISABLE (e.g. "DONTNEED_LOCKED": a kernel before 5.18). */
static const char *gvm_test_off_extra = "";

/* Engines opened from now on drop pages the `drop` way. */
static inline void gvm_test_set_drop(int drop)
{
	static const char *const off[] = { "MOVE,PROCESS_MADVISE", "PROCESS_MADVISE", "" };
	char v[128];

	snprintf(v, sizeof(v), "%s%s%s", off[drop], *off[drop] && *gvm_test_off_extra ? "," : "",
		 gvm_test_off_extra);
	setenv("GIANTVM_UFFD_DISABLE", v, 1);
}

static char gvm_test_skip_why[256];

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "  FAIL %s:%d: %s (errno %d %s)\n", __FILE__, __LINE__, #cond, errno, strerror(errno)); \
	return 1; } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if (a_ != b_) { \
	fprintf(stderr, "  FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, a_, b_); \
	return 1; } } while (0)
/* Skip the running case: SKIP("no /dev/kvm"). */
#define SKIP(...) do { snprintf(gvm_test_skip_why, sizeof(gvm_test_skip_why), __VA_ARGS__); \
	return GVM_TEST_SKIP; } while (0)

/* Why a case needing `needs` cannot run here ("" if it can). `have` is the
 * probe's result: features, or -errno if no userfaultfd could be opened;
 * `off` is GIANTVM_UFFD_DISABLE as the program started (cases may set it). */
static inline const char *gvm_test_unmet(uint64_t needs, int64_t have, const char *off, char *buf,
					 size_t len)
{
	uint64_t missing, disabled = 0;
	char names[128];

	buf[0] = 0;
	if (!needs)
		return buf;
	if (have < 0) {
		snprintf(buf, len, "userfaultfd unavailable: %s", strerror((int)-have));
		return buf;
	}
	if (strstr(off, "POISON"))
		disabled |= UFFD_FEATURE_POISON;
	if (strstr(off, "MOVE"))
		disabled |= UFFD_FEATURE_MOVE;
	if (strstr(off, "PROCESS_MADVISE"))
		disabled |= GVM_NEEDS_SELF_MADVISE;
	missing = needs & ~GVM_NEEDS_UFFD & ~(uint64_t)have;
	if (missing & ~GVM_NEEDS_SELF_MADVISE)
		snprintf(buf, len, "the kernel lacks userfaultfd %s",
			 gvm_uffd_features_str(missing & ~GVM_NEEDS_SELF_MADVISE, names, sizeof(names)));
	else if (missing)
		snprintf(buf, len, "the kernel refuses process_madvise(MADV_DONTNEED) on the calling process (Linux 6.13+)");
	else if (needs & disabled & GVM_NEEDS_SELF_MADVISE)
		snprintf(buf, len, "GIANTVM_UFFD_DISABLE=%s turns off process_madvise", off);
	else if (needs & disabled)
		snprintf(buf, len, "GIANTVM_UFFD_DISABLE=%s turns off %s", off,
			 gvm_uffd_features_str(needs & disabled, names, sizeof(names)));
	return buf;
}

static inline int gvm_test_main(int argc, char **argv, const struct gvm_test *t, size_t n)
{
	const char *filter = NULL;
	int failed = 0, ran = 0, skipped = 0, probed = 0;
	int64_t have = 0;
	char why[256], off[128];

	snprintf(off, sizeof(off), "%s", getenv("GIANTVM_UFFD_DISABLE") ? getenv("GIANTVM_UFFD_DISABLE") : "");

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-l")) {
			for (size_t k = 0; k < n; k++) puts(t[k].name);
			return 0;
		}
		if (!strcmp(argv[i], "-f") && i + 1 < argc) {
			filter = argv[++i];
			continue;
		}
		fprintf(stderr, "usage: %s [-l] [-f SUBSTR]\n", argv[0]);
		return 1;
	}
	for (size_t k = 0; k < n; k++) {
		if (filter && !strstr(t[k].name, filter)) continue;
		if (t[k].needs && !probed) {
			have = gvm_uffd_probe();
			int fd = have >= 0 ? gvm_self_madvise_fd() : -1;
			if (fd >= 0) {
				have |= (int64_t)GVM_NEEDS_SELF_MADVISE;
				close(fd);
			}
			probed = 1;
		}
		ran++;
		if (*gvm_test_unmet(t[k].needs, have, off, why, sizeof(why))) {
			printf("SKIP %s: %s\n", t[k].name, why);
			fflush(stdout);
			skipped++;
			continue;
		}
		gvm_test_skip_why[0] = 0;
		int r = t[k].fn();
		if (r == GVM_TEST_SKIP) {
			printf("SKIP %s: %s\n", t[k].name, gvm_test_skip_why[0] ? gvm_test_skip_why : "(no reason given)");
			skipped++;
		} else {
			printf("%s %s\n", r ? "FAIL" : "ok  ", t[k].name);
			failed += r != 0;
		}
		fflush(stdout);
	}
	printf("%d passed, %d failed, %d skipped\n", ran - failed - skipped, failed, skipped);
	if (!ran) {
		fprintf(stderr, "%s: no case ran (%s%s%s): failing\n", argv[0], filter ? "-f '" : "an empty table",
			filter ? filter : "", filter ? "' matched nothing" : "");
		return 1;
	}
	return failed ? 1 : skipped ? GVM_TEST_SKIP : 0;
}
#define GVM_TEST_MAIN(table) int main(int argc, char **argv) { \
	return gvm_test_main(argc, argv, table, sizeof(table) / sizeof(table[0])); }

#endif
