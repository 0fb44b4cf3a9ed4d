/*
 * libFuzzer harness: arbitrary bytes as the text `giantvm run` reads from QEMU
 * and from the preload library (src/cli/qemu.c):
 *   - gvm_parse_ramblocks(): `info ramblock` output, raw and after
 *     gvm_json_unescape() (the way gvm_qmp_ram_blocks() gets it, inside a
 *     QMP "return" string);
 *   - gvm_parse_memdevs(): a query-memdev reply;
 *   - gvm_json_number() / gvm_run_parse_stats(): the engine's stats JSON.
 * Each parser gets a NUL-terminated exact-size copy of the input (cut at the
 * first NUL, as a C string would be) and output arrays of exactly `max`
 * entries, so ASan sees any overrun. Results must be within bounds and every
 * name NUL-terminated.
 *
 * Finding F1 (tests/fuzz/findings/README.md): gvm_run_parse_stats() cast
 * any JSON number to uint64_t, undefined for negative, huge or NaN values.
 * Fixed (json_count clamps); the reproducers stay in findings/ and the seed
 * corpus, and every input is fuzzed again. GVM_FUZZ_KNOWN_BUGS=0 would skip
 * those inputs if a regression had to be parked.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "qemu.h"

static int known_bugs;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *e = getenv("GVM_FUZZ_KNOWN_BUGS");

	(void)argc;
	(void)argv;
	known_bugs = !(e && *e == '0');
	return 0;
}

static char *cstr(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t n = nul ? (size_t)(nul - data) : size;
	char *s = malloc(n + 1);

	CHECK(s != NULL);
	memcpy(s, data, n);
	s[n] = '\0';
	return s;
}

static void check_rams(const struct run_ram *r, int n, int max)
{
	CHECK(n <= max);
	for (int i = 0; i < n; i++)
		CHECK(memchr(r[i].name, '\0', sizeof(r[i].name)) != NULL);
}

/* max entries, exact size; a different max per input to reach -E2BIG. */
static void parse_ramblocks(const char *text, int max)
{
	struct run_ram *out = malloc((size_t)(max ? max : 1) * sizeof(*out));
	int n;

	CHECK(out != NULL);
	n = gvm_parse_ramblocks(text, out, max);
	CHECK(n == -EINVAL || n == -E2BIG || n >= 0);
	if (n >= 0)
		check_rams(out, n, max);
	free(out);
}

/*
 * gvm_run_match() the way `giantvm run` uses it: memory backends (query-memdev)
 * completed by `info ramblock` rows of the same name (gvm_qmp_ram_blocks),
 * against the preload library's candidate lines "C ADDR LEN"
 * (gvm_ctl_candidates), all taken from the same text. On success every block
 * has an address, and blocks QEMU gave no address got distinct candidates of
 * exactly their size.
 */
static void run_match(const char *text, int max)
{
	struct run_ram *b = malloc((size_t)max * sizeof(*b)), rb[64], orig[8];
	struct run_cand *c = malloc(300 * sizeof(*c));
	char err[256];
	int nb, nr, nc = 0, r;

	CHECK(b != NULL && c != NULL);
	nb = gvm_parse_memdevs(text, b, max);
	nr = gvm_parse_ramblocks(text, rb, 64);
	if (nb < 0)
		nb = 0;
	for (int i = 0; i < nb; i++)
		for (int k = 0; k < nr; k++)
			if (!strcmp(rb[k].name, b[i].name)) {
				b[i].size = rb[k].size;
				b[i].hva = rb[k].hva;
			}
	for (const char *l = text; l && *l && nc < 300; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		unsigned long long a, n;
		if (sscanf(l, "C %llx %llu", &a, &n) == 2)
			c[nc++] = (struct run_cand){ a, n };
	}
	memcpy(orig, b, (size_t)nb * sizeof(*b));
	memset(err, 0, sizeof(err));
	r = gvm_run_match(b, nb, c, nc, err, sizeof(err));
	CHECK(r == 0 || r == -EPERM || r == -ENOENT || r == -EEXIST);
	if (r) {
		CHECK(err[0] != '\0');
	} else {
		int lim = nc < 256 ? nc : 256, distinct = 1;

		/* Candidates with distinct addresses identify themselves by address. */
		for (int k = 0; k < lim && distinct; k++)
			for (int m = 0; m < k; m++)
				if (c[m].addr == c[k].addr)
					distinct = 0;
		for (int i = 0; i < nb; i++) {
			int k;

			CHECK(!orig[i].shared);
			if (orig[i].hva) {
				CHECK(b[i].hva == orig[i].hva);
				continue;
			}
			/* The candidate it got has its size ... */
			for (k = 0; k < lim; k++)
				if (c[k].addr == b[i].hva && c[k].len == orig[i].size)
					break;
			CHECK(k < lim);
			/* ... and is nobody else's: not a block QEMU placed, not taken twice. */
			for (int j = 0; distinct && j < nb; j++)
				CHECK(j == i || b[j].hva != b[i].hva);
		}
	}
	free(b);
	free(c);
}

/* Would converting this JSON number to uint64_t be defined behaviour? */
static int u64_ok(const char *json, const char *key)
{
	double v;

	if (gvm_json_number(json, key, &v))
		return 1;
	return !isnan(v) && v > -1.0 && v < 18446744073709551616.0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const u64_keys[] = { "faults", "pages_fetched", "zero_pages",
						"readahead_pages", "bytes_in", "errors" };
	int max = size ? 1 + data[0] % 8 : 1;
	char *text = cstr(data, size), *esc;
	size_t len = strlen(text);
	struct run_ram *mem;
	struct gvm_run_stats st;
	double v;
	int n, ok;

	parse_ramblocks(text, max);
	parse_ramblocks(text, 64); /* what gvm_qmp_ram_blocks() passes */

	/* The QMP path: unescape in place (never longer), then parse. */
	esc = strdup(text);
	CHECK(esc != NULL);
	gvm_json_unescape(esc);
	CHECK(strlen(esc) <= len);
	parse_ramblocks(esc, 64);
	free(esc);

	run_match(text, max);

	mem = malloc((size_t)max * sizeof(*mem));
	CHECK(mem != NULL);
	n = gvm_parse_memdevs(text, mem, max);
	CHECK(n == -EINVAL || n == -E2BIG || n >= 0);
	if (n >= 0)
		check_rams(mem, n, max);
	free(mem);

	/* A key that is not there is -ENOENT. */
	if (!strstr(text, "\"no-such-key\""))
		CHECK(gvm_json_number(text, "no-such-key", &v) == -ENOENT);

	ok = 1;
	for (size_t i = 0; i < sizeof(u64_keys) / sizeof(u64_keys[0]); i++)
		ok &= u64_ok(text, u64_keys[i]);
	if (ok || known_bugs) {
		int r = gvm_run_parse_stats(text, &st);
		CHECK(r == 0 || r == -EINVAL);
		CHECK(r == 0 || gvm_json_number(text, "faults", &v) != 0);
	}
	free(text);
	return 0;
}
