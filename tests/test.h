/*
 * Minimal test harness: one program per concern, a table of cases, exit 0
 * pass, 1 fail. `-l` lists cases, `-f SUBSTR` filters. Failures print
 * file:line and errno. There is no skip: a test that cannot run fails.
 */
#ifndef GVM_TEST_H
#define GVM_TEST_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gvm_test { const char *name; int (*fn)(void); };

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "  FAIL %s:%d: %s (errno %d %s)\n", __FILE__, __LINE__, #cond, errno, strerror(errno)); \
	return 1; } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); if (a_ != b_) { \
	fprintf(stderr, "  FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, a_, b_); \
	return 1; } } while (0)

static inline int gvm_test_main(int argc, char **argv, const struct gvm_test *t, size_t n)
{
	const char *filter = NULL;
	int failed = 0, ran = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-l")) {
			for (size_t k = 0; k < n; k++) puts(t[k].name);
			return 0;
		}
		if (!strcmp(argv[i], "-f") && i + 1 < argc) filter = argv[++i];
	}
	for (size_t k = 0; k < n; k++) {
		if (filter && !strstr(t[k].name, filter)) continue;
		int r = t[k].fn();
		ran++;
		printf("%s %s\n", r ? "FAIL" : "ok  ", t[k].name);
		fflush(stdout);
		failed += r != 0;
	}
	printf("%d passed, %d failed\n", ran - failed, failed);
	return failed ? 1 : 0;
}
#define GVM_TEST_MAIN(table) int main(int argc, char **argv) { \
	return gvm_test_main(argc, argv, table, sizeof(table) / sizeof(table[0])); }

#endif
