/*
 * cluster_uffd.conf: one memory node per line, HOST[:PORT] with HOST an IPv4
 * address, a bracketed IPv6 address or a host name; default port 9999; '#'
 * starts a comment; blank lines are ignored. One setting may appear on a
 * line of its own: `seal = on|off` (sealed pages; default: on unless every
 * node is on loopback). Errors name FILE:LINE and why.
 *
 * Nodes are stored compactly (no sockaddr per node) so a 10,000-node pool
 * costs a few hundred KiB; names are resolved when a node is first used.
 */
#ifndef GVM_CONFIG_H
#define GVM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define GVM_DEFAULT_PORT 9999

struct gvm_node {
	uint32_t name;     /* offset in cfg->strings of canonical "host:port" ("[v6]:port") */
	uint32_t host;     /* offset in cfg->strings of the host (no brackets) */
	uint32_t line;     /* line number in the file, 0 if added by code */
	uint16_t port;
	uint8_t  family;   /* AF_INET, AF_INET6, or AF_UNSPEC for a host name */
	uint8_t  addr[16]; /* network byte order when family is AF_INET/AF_INET6 */
};

struct gvm_config {
	char *path;              /* where it came from ("(embedded)" for code-built) */
	struct gvm_node *nodes;
	uint32_t n_nodes;
	uint32_t cap_nodes;
	char *strings;           /* every name and host, NUL-terminated */
	size_t strings_len;
	size_t strings_cap;
	int seal;                /* `seal =`: 0 not given, 1 on, 2 off (enum gvm_seal_mode) */
};

static inline const char *gvm_node_name(const struct gvm_config *c, uint32_t i)
{
	return c->strings + c->nodes[i].name;
}
static inline const char *gvm_node_host(const struct gvm_config *c, uint32_t i)
{
	return c->strings + c->nodes[i].host;
}

void gvm_config_init(struct gvm_config *cfg);
/* 1 if every node is a loopback address (127/8, ::1, or "localhost"). */
int gvm_config_all_loopback(const struct gvm_config *cfg);
void gvm_config_fini(struct gvm_config *cfg);
/*
 * Parse `len` bytes of config text; `path` is used in messages only.
 * On error returns -EINVAL (or -ENOMEM) with a one-line message in err:
 * "PATH:LINE: REASON: 'TEXT'". The config is left empty on error.
 */
int gvm_config_parse(struct gvm_config *cfg, const char *path, const char *text, size_t len,
		     char *err, size_t errlen);
/* Read and parse a file; errors as above, or "PATH: strerror" when unreadable. */
int gvm_config_load(struct gvm_config *cfg, const char *path, char *err, size_t errlen);
/* Add one node from "HOST[:PORT]" (line 0). Same validation as a file line. */
int gvm_config_add(struct gvm_config *cfg, const char *spec, char *err, size_t errlen);

#endif
