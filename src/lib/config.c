/*
 * Pool file parser: one memory node per line, HOST[:PORT]. See config.h.
 *
 * Built for large pools: a 10,000-line file is parsed with one pass over the
 * text, a temporary open-addressing hash set for duplicate detection, and
 * two amortised arrays (nodes and a string arena). No allocation per line.
 */
#define LOG_PREFIX ""
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define MAX_LINE       1024u              /* bytes per line, excluding the newline */
#define MAX_NODES      (1u << 20)         /* keeps string offsets and M (10*N) in 32 bits */
#define MAX_FILE       (256u << 20)       /* a pool file bigger than this is a mistake */
#define MAX_HOSTNAME   253u
#define MAX_LABEL      63u
#define EMBEDDED       "(embedded)"
/* "[" + longest IPv6 text + "]:" + 5 digits, or a host name + ":65535". */
#define NAME_BUF       (MAX_HOSTNAME + 8u)

/* One parsed HOST[:PORT], before it is stored. */
struct spec {
	uint8_t family;
	uint8_t addr[16];
	uint16_t port;
	char host[MAX_HOSTNAME + 1];  /* canonical host, no brackets */
	char name[NAME_BUF];          /* canonical "host:port" / "[v6]:port" */
	size_t host_len, name_len;
};

/* Duplicate detection while parsing: slot = node index + 1, 0 = empty. */
struct nodeset {
	uint32_t *slots;
	uint32_t mask;
};

void gvm_config_init(struct gvm_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
}

void gvm_config_fini(struct gvm_config *cfg)
{
	free(cfg->path);
	free(cfg->nodes);
	free(cfg->strings);
	gvm_config_init(cfg);
}

/*
 * Quote `n` bytes of user text for an error message: printable ASCII as is,
 * anything else (NUL, control bytes, UTF-8) as \xNN so the message stays one
 * clean line; long text is cut with "...".
 */
static void quote_text(char *out, size_t outlen, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const size_t max_shown = 80;
	size_t o = 0;

	if (!outlen)
		return;
	for (size_t i = 0; i < n && i < max_shown; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\'') {
			if (o + 1 >= outlen) break;
			out[o++] = (char)c;
		} else {
			if (o + 4 >= outlen) break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	if (n > max_shown && o + 3 < outlen) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* "PATH:LINE: REASON: 'TEXT'" (no ":LINE" for line 0, no text when text is NULL). */
static void set_err(char *err, size_t errlen, const char *path, uint32_t line,
		    const char *text, size_t text_len, const char *fmt, ...)
{
	char reason[512], quoted[400], where[32] = "";
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (line)
		snprintf(where, sizeof(where), ":%u", line);
	if (text) {
		quote_text(quoted, sizeof(quoted), text, text_len);
		snprintf(err, errlen, "%s%s: %s: '%s'", path, where, reason, quoted);
	} else {
		snprintf(err, errlen, "%s%s: %s", path, where, reason);
	}
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* Decimal 1..65535; no sign, no spaces. */
static int parse_port(const char *s, size_t n, uint16_t *port)
{
	unsigned v = 0;

	if (n == 0 || n > 5)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v < 1 || v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* The text is not NUL-terminated, so no strspn(). */
static int all_digits_dots(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!(s[i] == '.' || (s[i] >= '0' && s[i] <= '9')))
			return 0;
	}
	return 1;
}

/* RFC 1123 host name; lower-cased into out. Returns NULL or why it is bad. */
static const char *check_hostname(const char *s, size_t n, char *out)
{
	size_t label = 0;

	if (n == 0)
		return "missing host";
	if (n > MAX_HOSTNAME)
		return "host name longer than 253 characters";
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0)
				return "empty label in host name";
			if (s[i - 1] == '-')
				return "host name label ends with '-'";
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || c == '-') {
			if (label == 0 && c == '-')
				return "host name label starts with '-'";
			if (++label > MAX_LABEL)
				return "host name label longer than 63 characters";
		} else {
			return "invalid character in host name";
		}
		/* ASCII only: locale-dependent ctype could pass or fold other bytes. */
		out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
	}
	if (label == 0)
		return "empty label in host name";
	if (s[n - 1] == '-')
		return "host name label ends with '-'";
	out[n] = '\0';
	return NULL;
}

/* name = host ":" port, or "[" host "]:" port; by hand, as snprintf dominated parse time. */
static void make_name(struct spec *sp, int brackets)
{
	char digits[5];
	size_t o = 0, nd = 0;

	if (brackets)
		sp->name[o++] = '[';
	memcpy(sp->name + o, sp->host, sp->host_len);
	o += sp->host_len;
	if (brackets)
		sp->name[o++] = ']';
	sp->name[o++] = ':';
	for (unsigned v = sp->port; v; v /= 10)
		digits[nd++] = (char)('0' + v % 10);
	while (nd)
		sp->name[o++] = digits[--nd];
	sp->name[o] = '\0';
	sp->name_len = o;
}

/*
 * Parse one trimmed, non-empty HOST[:PORT] into *sp. Returns NULL or a static
 * reason. The text is not NUL-terminated (it points into the file buffer).
 */
static const char *parse_spec(const char *s, size_t n, struct spec *sp)
{
	const char *host = s, *port = NULL;
	size_t host_len = n, port_len = 0, colons = 0;
	char tmp[INET6_ADDRSTRLEN + 1];

	/* Only addr needs zeroing (a host name has none); the buffers are written before use. */
	memset(sp->addr, 0, sizeof(sp->addr));
	sp->port = GVM_DEFAULT_PORT;
	for (size_t i = 0; i < n; i++) {
		if (is_blank(s[i]))
			return "whitespace inside the node address (one node per line)";
		colons += s[i] == ':';
	}

	if (s[0] == '[') {
		const char *close = memchr(s, ']', n);
		if (!close)
			return "missing ']' after IPv6 address";
		host = s + 1;
		host_len = (size_t)(close - host);
		if (close + 1 < s + n) {
			if (close[1] != ':')
				return "expected ':PORT' after ']'";
			port = close + 2;
			port_len = (size_t)(s + n - port);
			if (parse_port(port, port_len, &sp->port))
				return "bad port (must be 1..65535)";
		}
		if (host_len == 0 || host_len > INET6_ADDRSTRLEN)
			return "bad IPv6 address";
		memcpy(tmp, host, host_len);
		tmp[host_len] = '\0';
		if (inet_pton(AF_INET6, tmp, sp->addr) != 1)
			return "bad IPv6 address";
		sp->family = AF_INET6;
		/* Canonical text form: "[::1]" and "[0:0::1]" are the same node. */
		if (!inet_ntop(AF_INET6, sp->addr, sp->host, sizeof(sp->host)))
			return "bad IPv6 address";
		sp->host_len = strlen(sp->host);
		make_name(sp, 1);
		return NULL;
	}

	if (colons > 1)
		return "IPv6 address must be in brackets, e.g. '[::1]:9999'";
	if (memchr(s, ']', n))
		return "']' without '['";
	if (colons == 1) {
		const char *c = memchr(s, ':', n);
		host_len = (size_t)(c - s);
		port = c + 1;
		port_len = (size_t)(s + n - port);
		if (host_len == 0)
			return "missing host";
		if (parse_port(port, port_len, &sp->port))
			return "bad port (must be 1..65535)";
	}

	/* Only digits and dots: meant as IPv4 (an all-numeric host name is not
	 * valid at the top level anyway), so "1.2.3" and "256.1.1.1" are errors
	 * rather than names that fail to resolve later. */
	if (all_digits_dots(host, host_len)) {
		if (host_len > INET_ADDRSTRLEN - 1)
			return "bad IPv4 address";
		memcpy(tmp, host, host_len);
		tmp[host_len] = '\0';
		if (inet_pton(AF_INET, tmp, sp->addr) != 1)
			return "bad IPv4 address";
		sp->family = AF_INET;
		if (!inet_ntop(AF_INET, sp->addr, sp->host, sizeof(sp->host)))
			return "bad IPv4 address";
		sp->host_len = strlen(sp->host);
	} else {
		const char *why = check_hostname(host, host_len, sp->host);
		if (why)
			return why;
		sp->family = AF_UNSPEC;
		sp->host_len = host_len;
	}
	make_name(sp, 0);
	return NULL;
}

/* Room for one more node and `extra` string bytes; amortised doubling. */
static int reserve(struct gvm_config *cfg, size_t extra)
{
	if (cfg->n_nodes == cfg->cap_nodes) {
		uint32_t cap = cfg->cap_nodes ? cfg->cap_nodes * 2 : 16;
		struct gvm_node *n = reallocarray(cfg->nodes, cap, sizeof(*n));
		if (!n)
			return -ENOMEM;
		cfg->nodes = n;
		cfg->cap_nodes = cap;
	}
	if (cfg->strings_len + extra > cfg->strings_cap) {
		size_t cap = cfg->strings_cap ? cfg->strings_cap : 1024;
		char *s;
		while (cap < cfg->strings_len + extra)
			cap *= 2;
		s = realloc(cfg->strings, cap);
		if (!s)
			return -ENOMEM;
		cfg->strings = s;
		cfg->strings_cap = cap;
	}
	return 0;
}

/*
 * Size both arrays once from the text: at most one node per line, and a
 * node's two strings take at most about twice its line (+ ":65535" and two
 * NULs), so a file never pays for repeated realloc copies.
 */
static int presize(struct gvm_config *cfg, size_t lines, size_t len)
{
	size_t nodes = GVM_MIN(lines, (size_t)MAX_NODES);
	struct gvm_node *n = reallocarray(NULL, nodes, sizeof(*n));
	char *s = malloc(2 * len + 16 * nodes);

	if (!n || !s) {
		free(n);
		free(s);
		return -ENOMEM;
	}
	cfg->nodes = n;
	cfg->cap_nodes = (uint32_t)nodes;
	cfg->strings = s;
	cfg->strings_cap = 2 * len + 16 * nodes;
	return 0;
}

/* Give back what presize() over-estimated (comments, blank lines). */
static void shrink(struct gvm_config *cfg)
{
	struct gvm_node *n = reallocarray(cfg->nodes, cfg->n_nodes, sizeof(*n));
	char *s = realloc(cfg->strings, cfg->strings_len);

	/* A failed shrink leaves the larger block in place, which is fine. */
	if (n) {
		cfg->nodes = n;
		cfg->cap_nodes = cfg->n_nodes;
	}
	if (s) {
		cfg->strings = s;
		cfg->strings_cap = cfg->strings_len;
	}
}

/* Append a parsed node; the caller has checked for duplicates. */
static int append(struct gvm_config *cfg, const struct spec *sp, uint32_t line)
{
	struct gvm_node *nd;
	int r = reserve(cfg, sp->name_len + sp->host_len + 2);

	if (r)
		return r;
	nd = &cfg->nodes[cfg->n_nodes++];
	memset(nd, 0, sizeof(*nd));
	nd->name = (uint32_t)cfg->strings_len;
	memcpy(cfg->strings + cfg->strings_len, sp->name, sp->name_len + 1);
	cfg->strings_len += sp->name_len + 1;
	nd->host = (uint32_t)cfg->strings_len;
	memcpy(cfg->strings + cfg->strings_len, sp->host, sp->host_len + 1);
	cfg->strings_len += sp->host_len + 1;
	nd->line = line;
	nd->port = sp->port;
	nd->family = sp->family;
	memcpy(nd->addr, sp->addr, sizeof(nd->addr));
	return 0;
}

static int set_init(struct nodeset *set, size_t expect)
{
	size_t size = 16;

	while (size < expect * 2)
		size *= 2;
	set->slots = calloc(size, sizeof(*set->slots));
	if (!set->slots)
		return -ENOMEM;
	set->mask = (uint32_t)(size - 1);
	return 0;
}

/*
 * Find `name` in the set; returns the node index or -1, and in *slot the
 * slot where it is or would go.
 */
static long set_find(const struct nodeset *set, const struct gvm_config *cfg,
		     const char *name, size_t len, uint32_t *slot)
{
	uint32_t i = (uint32_t)gvm_hash_bytes(name, len, 0) & set->mask;

	for (;; i = (i + 1) & set->mask) {
		uint32_t v = set->slots[i];
		if (!v) {
			*slot = i;
			return -1;
		}
		if (!strcmp(gvm_node_name(cfg, v - 1), name)) {
			*slot = i;
			return (long)(v - 1);
		}
	}
}

/* Where the duplicate first appeared, for the message. */
static void dup_where(const struct gvm_config *cfg, long idx, char *buf, size_t len)
{
	if (cfg->nodes[idx].line)
		snprintf(buf, len, "first on line %u", cfg->nodes[idx].line);
	else
		snprintf(buf, len, "already in the pool");
}

/*
 * Two spellings of one endpoint pass the duplicate check ("localhost:5" and
 * "127.0.0.1:5", "[::ffff:127.0.0.1]:5"), yet they are two nodes to the
 * placement, which could put every replica of a stripe on that one server.
 * Warn, naming both lines. Only what needs no name lookup: localhost, and
 * IPv4-mapped IPv6 addresses against their IPv4 form; only those nodes
 * look anything up, so a large pool of plain addresses pays one test each.
 */
static void warn_aliases(const struct gvm_config *cfg, const struct nodeset *set)
{
	for (uint32_t i = 0; i < cfg->n_nodes; i++) {
		const struct gvm_node *nd = &cfg->nodes[i];
		const char *how = "is";
		char alt[3][NAME_BUF];
		int n = 0;

		/* ::ffff:a.b.c.d, byte by byte: addr[] is not aligned for struct in6_addr. */
		static const uint8_t v4mapped[12] = { [10] = 0xff, [11] = 0xff };
		if (nd->family == AF_INET6 && !memcmp(nd->addr, v4mapped, sizeof(v4mapped))) {
			snprintf(alt[n++], NAME_BUF, "%u.%u.%u.%u:%u", nd->addr[12], nd->addr[13], nd->addr[14],
				 nd->addr[15], nd->port);
		} else if (nd->family == AF_UNSPEC && !strcmp(gvm_node_host(cfg, i), "localhost")) {
			/* it resolves to one of these on any sane host */
			how = "may be";
			snprintf(alt[n++], NAME_BUF, "127.0.0.1:%u", nd->port);
			snprintf(alt[n++], NAME_BUF, "[::1]:%u", nd->port);
			snprintf(alt[n++], NAME_BUF, "[::ffff:127.0.0.1]:%u", nd->port);
		}
		for (int k = 0; k < n; k++) {
			uint32_t slot;
			long j = set_find(set, cfg, alt[k], strlen(alt[k]), &slot);
			if (j < 0)
				continue;
			pr_warn("%s:%u: warning: '%s' %s the same server as '%s' (%s:%u): replicas "
				"of a stripe may land on it twice; list it once", cfg->path, nd->line,
				gvm_node_name(cfg, i), how, gvm_node_name(cfg, (uint32_t)j), cfg->path,
				cfg->nodes[j].line);
		}
	}
}

int gvm_config_parse(struct gvm_config *cfg, const char *path, const char *text, size_t len,
		     char *err, size_t errlen)
{
	struct nodeset set = { 0 };
	const char *p = text, *end = text + len;
	size_t lines = 1;
	uint32_t lineno = 0, seal_line = 0;
	int r;

	gvm_config_fini(cfg);
	if (!path)
		path = "(config)";
	if (err && errlen)
		err[0] = '\0';
	cfg->path = strdup(path);
	if (!cfg->path) {
		r = -ENOMEM;
		goto fail_nomem;
	}

	/* Size the duplicate set once: a node per line at most (and MAX_NODES in
	 * all), so it never grows. */
	for (const char *q = text; q < end && (q = memchr(q, '\n', (size_t)(end - q))); q++)
		lines++;
	r = set_init(&set, GVM_MIN(lines, (size_t)MAX_NODES));
	if (r)
		goto fail_nomem;
	r = presize(cfg, lines, len);
	if (r)
		goto fail_nomem;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *eol = nl ? nl : end;
		const char *s = p, *e = eol, *hash;
		struct spec sp;
		const char *why;
		uint32_t slot;
		long dup;

		p = nl ? nl + 1 : end;
		if (lineno == UINT32_MAX) {
			set_err(err, errlen, path, 0, NULL, 0, "more than %u lines", UINT32_MAX);
			r = -EINVAL;
			goto fail;
		}
		lineno++;
		if (eol > s && eol[-1] == '\r')
			e = eol - 1; /* CRLF: the '\r' is not part of the line */
		if ((size_t)(e - s) > MAX_LINE) {
			set_err(err, errlen, path, lineno, s, (size_t)(e - s),
				"line longer than %u bytes", MAX_LINE);
			r = -EINVAL;
			goto fail;
		}
		if (memchr(s, '\0', (size_t)(e - s))) {
			set_err(err, errlen, path, lineno, s, (size_t)(e - s), "NUL byte in line");
			r = -EINVAL;
			goto fail;
		}
		hash = memchr(s, '#', (size_t)(e - s));
		if (hash)
			e = hash;
		while (s < e && is_blank(*s))
			s++;
		while (e > s && is_blank(e[-1]))
			e--;
		if (s == e)
			continue;
		/* "KEY = VALUE" settings (no node spec has an '='). */
		const char *eq = memchr(s, '=', (size_t)(e - s));
		if (eq) {
			const char *k = s, *ke = eq, *v = eq + 1;
			while (ke > k && is_blank(ke[-1]))
				ke--;
			while (v < e && is_blank(*v))
				v++;
			if ((size_t)(ke - k) != 4 || memcmp(k, "seal", 4)) {
				set_err(err, errlen, path, lineno, s, (size_t)(e - s),
					"unknown setting (the only one is 'seal = on|off')");
				r = -EINVAL;
				goto fail;
			}
			if (seal_line) {
				set_err(err, errlen, path, lineno, s, (size_t)(e - s),
					"'seal' given twice (first on line %u)", seal_line);
				r = -EINVAL;
				goto fail;
			}
			if ((size_t)(e - v) == 2 && !memcmp(v, "on", 2)) {
				cfg->seal = 1;
			} else if ((size_t)(e - v) == 3 && !memcmp(v, "off", 3)) {
				cfg->seal = 2;
			} else {
				set_err(err, errlen, path, lineno, s, (size_t)(e - s),
					"seal must be 'on' or 'off'");
				r = -EINVAL;
				goto fail;
			}
			seal_line = lineno;
			continue;
		}

		why = parse_spec(s, (size_t)(e - s), &sp);
		if (why) {
			set_err(err, errlen, path, lineno, s, (size_t)(e - s), "%s", why);
			r = -EINVAL;
			goto fail;
		}
		dup = set_find(&set, cfg, sp.name, sp.name_len, &slot);
		if (dup >= 0) {
			char where[48];
			dup_where(cfg, dup, where, sizeof(where));
			set_err(err, errlen, path, lineno, s, (size_t)(e - s),
				"duplicate node '%s' (%s)", sp.name, where);
			r = -EINVAL;
			goto fail;
		}
		if (cfg->n_nodes >= MAX_NODES) {
			set_err(err, errlen, path, lineno, s, (size_t)(e - s),
				"too many memory nodes (max %u)", MAX_NODES);
			r = -EINVAL;
			goto fail;
		}
		r = append(cfg, &sp, lineno);
		if (r)
			goto fail_nomem;
		set.slots[slot] = cfg->n_nodes; /* index + 1 */
	}
	if (cfg->n_nodes == 0) {
		set_err(err, errlen, path, 0, NULL, 0, "no memory nodes");
		r = -EINVAL;
		goto fail;
	}
	warn_aliases(cfg, &set);
	free(set.slots);
	shrink(cfg);
	return 0;

fail_nomem:
	set_err(err, errlen, path, lineno, NULL, 0, "%s", strerror(-r));
fail:
	free(set.slots);
	gvm_config_fini(cfg);
	return r;
}

int gvm_config_load(struct gvm_config *cfg, const char *path, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t cap, len = 0;
	int fd, r;

	gvm_config_fini(cfg);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto fail_errno;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto fail_errno;
	}
	if (S_ISDIR(st.st_mode)) {
		r = -EISDIR;
		goto fail_errno;
	}
	/* st_size is only a hint (pipes, /proc): read until EOF, growing as needed. */
	cap = S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size < MAX_FILE
		? (size_t)st.st_size + 1 : 4096;
	buf = malloc(cap);
	if (!buf) {
		r = -ENOMEM;
		goto fail_errno;
	}
	for (;;) {
		ssize_t n;
		if (len == cap) {
			char *nb;
			if (cap >= MAX_FILE) {
				r = -EFBIG;
				goto fail_errno;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				r = -ENOMEM;
				goto fail_errno;
			}
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			goto fail_errno;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		goto fail_errno;
	}
	fd = -1;
	r = gvm_config_parse(cfg, path, buf, len, err, errlen);
	goto cleanup;

fail_errno:
	set_err(err, errlen, path, 0, NULL, 0, "%s", strerror(-r));
cleanup:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

int gvm_config_add(struct gvm_config *cfg, const char *spec, char *err, size_t errlen)
{
	const char *s = spec, *e, *why;
	struct spec sp;
	size_t n;
	int r;

	if (err && errlen)
		err[0] = '\0';
	n = strnlen(spec, MAX_LINE + 1);
	if (n > MAX_LINE) {
		set_err(err, errlen, EMBEDDED, 0, spec, n, "node spec longer than %u bytes", MAX_LINE);
		return -EINVAL;
	}
	e = s + n;
	if (memchr(s, '#', n))
		e = memchr(s, '#', n);
	while (s < e && is_blank(*s))
		s++;
	while (e > s && is_blank(e[-1]))
		e--;
	if (s == e) {
		set_err(err, errlen, EMBEDDED, 0, spec, n, "empty node spec");
		return -EINVAL;
	}
	why = parse_spec(s, (size_t)(e - s), &sp);
	if (why) {
		set_err(err, errlen, EMBEDDED, 0, s, (size_t)(e - s), "%s", why);
		return -EINVAL;
	}
	/* Linear scan: add() builds small pools node by node; files use the hash set. */
	for (uint32_t i = 0; i < cfg->n_nodes; i++) {
		if (cfg->nodes[i].port == sp.port && !strcmp(gvm_node_name(cfg, i), sp.name)) {
			char where[48];
			dup_where(cfg, i, where, sizeof(where));
			set_err(err, errlen, EMBEDDED, 0, s, (size_t)(e - s),
				"duplicate node '%s' (%s)", sp.name, where);
			return -EINVAL;
		}
	}
	if (cfg->n_nodes >= MAX_NODES) {
		set_err(err, errlen, EMBEDDED, 0, s, (size_t)(e - s),
			"too many memory nodes (max %u)", MAX_NODES);
		return -EINVAL;
	}
	if (!cfg->path) {
		cfg->path = strdup(EMBEDDED);
		if (!cfg->path)
			goto nomem;
	}
	r = append(cfg, &sp, 0);
	if (r)
		goto nomem;
	return 0;

nomem:
	set_err(err, errlen, EMBEDDED, 0, NULL, 0, "%s", strerror(ENOMEM));
	return -ENOMEM;
}

int gvm_config_all_loopback(const struct gvm_config *cfg)
{
	static const uint8_t v6_loop[16] = { [15] = 1 };
	static const uint8_t v4mapped[12] = { [10] = 0xff, [11] = 0xff };

	for (uint32_t i = 0; i < cfg->n_nodes; i++) {
		const struct gvm_node *n = &cfg->nodes[i];
		if (n->family == AF_INET && n->addr[0] == 127)
			continue;
		if (n->family == AF_INET6 && !memcmp(n->addr, v6_loop, 16))
			continue;
		/* ::ffff:127.x.y.z is IPv4 loopback too. */
		if (n->family == AF_INET6 && !memcmp(n->addr, v4mapped, 12) && n->addr[12] == 127)
			continue;
		if (n->family != AF_INET && n->family != AF_INET6 && !strcmp(gvm_node_host(cfg, i), "localhost"))
			continue;
		return 0;
	}
	return 1;
}
