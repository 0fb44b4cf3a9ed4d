/*
 * libFuzzer harness: arbitrary bytes as a pool file (cluster_uffd.conf).
 *
 * gvm_config_parse() gets the raw bytes (exact size, no NUL terminator). On
 * success the result must be well formed: at least one node, every name and
 * host non-empty and NUL-terminated inside the string arena, ports non-zero,
 * line numbers increasing, names canonical ("host:port", "[v6]:port" with the
 * inet_ntop text, lower-case host names), no two nodes with the same name,
 * and the canonical names must parse back to themselves (a fixpoint), also
 * through gvm_config_add(). On failure the message is one line naming the
 * file and the config is left empty. Parsing again with a tiny error buffer
 * gives the same result. gvm_config_fini() always runs (LeakSanitizer).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "fuzz_common.h"

#define PATH "fuzz.conf"

static const struct gvm_config *sort_cfg;

static int cmp_name(const void *a, const void *b)
{
	return strcmp(gvm_node_name(sort_cfg, *(const uint32_t *)a),
		      gvm_node_name(sort_cfg, *(const uint32_t *)b));
}

static void check_empty(const struct gvm_config *c)
{
	CHECK(c->n_nodes == 0 && c->nodes == NULL && c->strings == NULL && c->path == NULL && c->seal == 0);
}

static void check_node(const struct gvm_config *c, uint32_t i)
{
	const struct gvm_node *n = &c->nodes[i];
	char expect[300], ntop[INET6_ADDRSTRLEN];
	const char *name, *host;

	CHECK(n->name < c->strings_len && n->host < c->strings_len);
	CHECK(memchr(c->strings + n->name, '\0', c->strings_len - n->name) != NULL);
	CHECK(memchr(c->strings + n->host, '\0', c->strings_len - n->host) != NULL);
	name = gvm_node_name(c, i);
	host = gvm_node_host(c, i);
	CHECK(name[0] != '\0' && host[0] != '\0');
	CHECK(n->port != 0);
	CHECK(n->line >= 1);
	CHECK(i == 0 || n->line > c->nodes[i - 1].line);
	switch (n->family) {
	case AF_INET:
		CHECK(inet_ntop(AF_INET, n->addr, ntop, sizeof(ntop)) != NULL);
		CHECK(strcmp(ntop, host) == 0);
		snprintf(expect, sizeof(expect), "%s:%u", host, n->port);
		break;
	case AF_INET6:
		CHECK(inet_ntop(AF_INET6, n->addr, ntop, sizeof(ntop)) != NULL);
		CHECK(strcmp(ntop, host) == 0);
		snprintf(expect, sizeof(expect), "[%s]:%u", host, n->port);
		break;
	case AF_UNSPEC:
		for (const char *p = host; *p; p++)
			CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.');
		CHECK(strlen(host) <= 253);
		for (unsigned k = 0; k < sizeof(n->addr); k++)
			CHECK(n->addr[k] == 0);
		snprintf(expect, sizeof(expect), "%s:%u", host, n->port);
		break;
	default:
		CHECK(!"bad address family");
	}
	CHECK(strcmp(expect, name) == 0);
}

static void check_no_dups(const struct gvm_config *c)
{
	uint32_t *idx = malloc(c->n_nodes * sizeof(*idx));

	CHECK(idx != NULL);
	for (uint32_t i = 0; i < c->n_nodes; i++)
		idx[i] = i;
	sort_cfg = c;
	qsort(idx, c->n_nodes, sizeof(*idx), cmp_name);
	for (uint32_t i = 1; i < c->n_nodes; i++)
		CHECK(strcmp(gvm_node_name(c, idx[i - 1]), gvm_node_name(c, idx[i])) != 0);
	free(idx);
}

static int same_node(const struct gvm_config *a, uint32_t i, const struct gvm_config *b, uint32_t j)
{
	return !strcmp(gvm_node_name(a, i), gvm_node_name(b, j)) &&
	       !strcmp(gvm_node_host(a, i), gvm_node_host(b, j)) &&
	       a->nodes[i].port == b->nodes[j].port && a->nodes[i].family == b->nodes[j].family &&
	       !memcmp(a->nodes[i].addr, b->nodes[j].addr, sizeof(a->nodes[i].addr));
}

/* Canonical names, one per line, must parse to the same nodes. */
static void check_fixpoint(const struct gvm_config *c)
{
	struct gvm_config again, added;
	char err[512];
	size_t len = 0, cap = 0;
	char *text;
	uint32_t n_add = c->n_nodes < 64 ? c->n_nodes : 64;

	for (uint32_t i = 0; i < c->n_nodes; i++)
		cap += strlen(gvm_node_name(c, i)) + 1;
	text = malloc(cap);
	CHECK(text != NULL);
	for (uint32_t i = 0; i < c->n_nodes; i++) {
		size_t l = strlen(gvm_node_name(c, i));
		memcpy(text + len, gvm_node_name(c, i), l);
		len += l;
		text[len++] = '\n';
	}
	gvm_config_init(&again);
	if (gvm_config_parse(&again, "again", text, len, err, sizeof(err)) != 0)
		fprintf(stderr, "canonical names do not parse back: %s\n", err);
	CHECK(again.n_nodes == c->n_nodes);
	for (uint32_t i = 0; i < c->n_nodes; i++)
		CHECK(same_node(c, i, &again, i));
	gvm_config_fini(&again);
	free(text);

	/* gvm_config_add() applies the same rules (it is what --node uses). */
	gvm_config_init(&added);
	for (uint32_t i = 0; i < n_add; i++) {
		int r = gvm_config_add(&added, gvm_node_name(c, i), err, sizeof(err));
		if (r)
			fprintf(stderr, "gvm_config_add('%s'): %s\n", gvm_node_name(c, i), err);
		CHECK(r == 0);
		CHECK(same_node(c, i, &added, i));
	}
	CHECK(gvm_config_add(&added, gvm_node_name(c, 0), err, sizeof(err)) == -EINVAL);
	CHECK(err[0] != '\0');
	CHECK(added.n_nodes == n_add);
	gvm_config_fini(&added);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gvm_config cfg, cfg2, one;
	char err[512], small[48];
	size_t small_len = 1 + size % sizeof(small);
	char *text = (char *)fz_dup(data, size);
	int r, r2;

	gvm_config_init(&cfg);
	memset(err, 'X', sizeof(err));
	r = gvm_config_parse(&cfg, PATH, text, size, err, sizeof(err));
	CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
	CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	if (r == 0) {
		CHECK(cfg.n_nodes > 0);
		CHECK(cfg.seal >= 0 && cfg.seal <= 2); /* `seal =`: not given, on, off */
		CHECK(cfg.n_nodes <= cfg.cap_nodes);
		CHECK(cfg.strings_len <= cfg.strings_cap);
		CHECK(cfg.path && strcmp(cfg.path, PATH) == 0);
		CHECK(err[0] == '\0');
		for (uint32_t i = 0; i < cfg.n_nodes; i++)
			check_node(&cfg, i);
		check_no_dups(&cfg);
		check_fixpoint(&cfg);
	} else {
		check_empty(&cfg);
		CHECK(strncmp(err, PATH, strlen(PATH)) == 0);
		CHECK(strchr(err, '\n') == NULL);
	}

	/* Same input, tiny error buffer, then none at all: same verdict, no overflow. */
	gvm_config_init(&cfg2);
	memset(small, 'X', sizeof(small));
	r2 = gvm_config_parse(&cfg2, PATH, text, size, small, small_len);
	CHECK(r2 == r);
	CHECK(memchr(small, '\0', small_len) != NULL);
	CHECK(cfg2.n_nodes == cfg.n_nodes);
	gvm_config_fini(&cfg2);
	r2 = gvm_config_parse(&cfg2, NULL, text, size, NULL, 0);
	CHECK(r2 == r);
	gvm_config_fini(&cfg2);

	/* A single line (no newline, no NUL) is also a --node spec: same verdict. */
	if (size <= 1024 && !memchr(data, '\n', size) && !memchr(data, '\0', size)) {
		char *spec = malloc(size + 1);
		CHECK(spec != NULL);
		memcpy(spec, data, size);
		spec[size] = '\0';
		gvm_config_init(&one);
		r2 = gvm_config_add(&one, spec, err, sizeof(err));
		CHECK((r2 == 0) == (r == 0));
		if (r2 == 0)
			CHECK(one.n_nodes == 1 && cfg.n_nodes == 1 && same_node(&cfg, 0, &one, 0));
		else
			CHECK(one.n_nodes == 0 && err[0] != '\0');
		gvm_config_fini(&one);
		free(spec);
	}

	gvm_config_fini(&cfg);
	check_empty(&cfg);
	free(text);
	return 0;
}
