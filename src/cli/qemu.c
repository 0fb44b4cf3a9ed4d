#include "qemu.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "giantvm_ctl.h"
#include "giantvm.h"

/* ------------------------------------------------------ command line */

int gvm_qemu_has_arg(int argc, char **argv, const char *arg)
{
	size_t n = strlen(arg);

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		/* QEMU accepts -opt and --opt alike */
		if (a[0] == '-' && a[1] == '-')
			a++;
		if (!strncmp(a, arg, n) && (a[n] == 0 || a[n] == '='))
			return 1;
	}
	return 0;
}

static const char *opt_value(int argc, char **argv, int i, const char *opt)
{
	const char *a = argv[i];
	size_t n = strlen(opt);

	if (a[0] == '-' && a[1] == '-')
		a++;
	if (strncmp(a, opt, n))
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] == 0 && i + 1 < argc)
		return argv[i + 1];
	return NULL;
}

/*
 * One property of an option's value, in either form QEMU takes: JSON
 * ('{"driver":"vfio-pci","host":"01:00.0"}', as libvirt writes -device and
 * -object) or key=value,... where ",," is a literal comma and a first item
 * without '=' is the value of the option's implied key (`implied`: "driver"
 * for -device, "qom-type" for -object, "type" for -machine, "guest" for
 * -name). The value goes to out (unescaped; JSON true/false as "on"/"off").
 * 0, or -ENOENT when the value does not set key.
 */
int gvm_qemu_opt_get(const char *v, const char *key, const char *implied, char *out, size_t len)
{
	size_t klen = strlen(key);

	while (*v == ' ' || *v == '\t')
		v++;
	if (*v == '{') {
		const char *p = v;
		while ((p = strchr(p, '"'))) {
			const char *q = strchr(p + 1, '"');
			size_t n = 0;
			if (!q)
				return -ENOENT;
			/* a key is a quoted string followed by ':' */
			const char *c = q + 1;
			while (*c == ' ' || *c == '\t')
				c++;
			if (*c != ':') {
				p = q + 1;
				continue;
			}
			if ((size_t)(q - p - 1) != klen || strncmp(p + 1, key, klen)) {
				p = c + 1;
				continue;
			}
			c++;
			while (*c == ' ' || *c == '\t')
				c++;
			if (*c == '"') {
				for (c++; *c && *c != '"'; c++) {
					if (*c == '\\' && c[1])
						c++;
					if (n + 1 < len)
						out[n++] = *c;
				}
			} else if (!strncmp(c, "true", 4)) {
				n = (size_t)snprintf(out, len, "on");
			} else if (!strncmp(c, "false", 5)) {
				n = (size_t)snprintf(out, len, "off");
			} else {
				while (*c && *c != ',' && *c != '}' && *c != ' ' && n + 1 < len)
					out[n++] = *c++;
			}
			if (len)
				out[n < len ? n : len - 1] = 0;
			return 0;
		}
		return -ENOENT;
	}
	for (int first = 1; *v; first = 0) {
		char item[512];
		size_t n = 0;
		const char *eq;
		/* one item, ",," unescaped */
		while (*v) {
			if (*v == ',') {
				if (v[1] == ',') {
					v += 2;
					if (n + 1 < sizeof(item))
						item[n++] = ',';
					continue;
				}
				v++;
				break;
			}
			if (n + 1 < sizeof(item))
				item[n++] = *v;
			v++;
		}
		item[n] = 0;
		eq = strchr(item, '=');
		if (eq && (size_t)(eq - item) == klen && !strncmp(item, key, klen)) {
			snprintf(out, len, "%s", eq + 1);
			return 0;
		}
		if (!eq && first && implied && !strcmp(implied, key)) {
			snprintf(out, len, "%s", item);
			return 0;
		}
	}
	return -ENOENT;
}

/* The value of the n-th use of opt (n from 0) and its index, or NULL. */
static const char *opt_nth(int argc, char **argv, int *i, const char *opt)
{
	for (; *i < argc; ++*i) {
		const char *v = opt_value(argc, argv, *i, opt);
		if (v)
			return v;
	}
	return NULL;
}

int gvm_qemu_has_vfio(int argc, char **argv)
{
	const char *v;
	char drv[128];

	for (int i = 1; (v = opt_nth(argc, argv, &i, "-device")); i++)
		if (!gvm_qemu_opt_get(v, "driver", "driver", drv, sizeof(drv)) && !strncmp(drv, "vfio", 4))
			return 1;
	return 0;
}

/* A boolean QEMU option value that is not off. */
static int opt_on(const char *s)
{
	return strcmp(s, "off") && strcmp(s, "no") && strcmp(s, "false") && strcmp(s, "n");
}

int gvm_qemu_mem_lock(int argc, char **argv)
{
	const char *v;
	char val[64];

	for (int i = 1; (v = opt_nth(argc, argv, &i, "-overcommit")); i++)
		if (!gvm_qemu_opt_get(v, "mem-lock", NULL, val, sizeof(val)) && opt_on(val))
			return 1;
	for (int i = 1; (v = opt_nth(argc, argv, &i, "-realtime")); i++)
		if (!gvm_qemu_opt_get(v, "mlock", NULL, val, sizeof(val)) && opt_on(val))
			return 1;
	return 0;
}

int gvm_qemu_is_probe(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i][0] == '-' && argv[i][1] == '-' ? argv[i] + 1 : argv[i];
		const char *v;
		char type[64];
		if (!strcmp(a, "-version") || !strcmp(a, "-help") || !strcmp(a, "-h"))
			return 1;
		if (a[0] != '-' || i + 1 >= argc || strchr(a, '='))
			continue;
		v = argv[i + 1];
		/* -device help, -cpu ?, -machine help, -device e1000,help */
		if (!strcmp(v, "help") || !strcmp(v, "?") ||
		    (strlen(v) > 5 && !strcmp(v + strlen(v) - 5, ",help")))
			return 1;
		if ((!strcmp(a, "-machine") || !strcmp(a, "-M")) &&
		    !gvm_qemu_opt_get(v, "type", "type", type, sizeof(type)) && !strcmp(type, "none"))
			return 1;
	}
	return 0;
}

int gvm_qemu_vm_name(int argc, char **argv, char *out, size_t len)
{
	const char *v;
	int found = -ENOENT;

	/* the last -name wins, as in QEMU */
	for (int i = 1; (v = opt_nth(argc, argv, &i, "-name")); i++)
		if (!gvm_qemu_opt_get(v, "guest", "guest", out, len))
			found = 0;
	return found;
}

int gvm_qemu_local_ram(int argc, char **argv, char *why, size_t len)
{
	const char *v;
	char type[64], share[16], id[64];

	for (int i = 1; i < argc; i++) {
		if (opt_value(argc, argv, i, "-mem-path")) {
			snprintf(why, len, "-mem-path puts guest RAM in a file (hugepages or file backing), "
					   "which cannot live in the pool");
			return 1;
		}
	}
	for (int i = 1; (v = opt_nth(argc, argv, &i, "-object")); i++) {
		if (gvm_qemu_opt_get(v, "qom-type", "qom-type", type, sizeof(type)) ||
		    strncmp(type, "memory-backend-", 15))
			continue;
		if (gvm_qemu_opt_get(v, "id", NULL, id, sizeof(id)))
			snprintf(id, sizeof(id), "?");
		if (strcmp(type, "memory-backend-ram")) {
			snprintf(why, len, "memory backend '%s' is %s: only private anonymous RAM "
					   "(memory-backend-ram, or -m) can live in the pool", id, type);
			return 1;
		}
		if (!gvm_qemu_opt_get(v, "share", NULL, share, sizeof(share)) && opt_on(share)) {
			snprintf(why, len, "memory backend '%s' has share=on: only private anonymous RAM "
					   "(memory-backend-ram, or -m) can live in the pool", id);
			return 1;
		}
	}
	return 0;
}

long gvm_qemu_smp(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *v = opt_value(argc, argv, i, "-smp");
		const char *c;
		if (!v)
			continue;
		if ((c = strstr(v, "cpus=")) && (c == v || c[-1] == ','))
			return strtol(c + 5, NULL, 10) > 0 ? strtol(c + 5, NULL, 10) : 1;
		return strtol(v, NULL, 10) > 0 ? strtol(v, NULL, 10) : 1;
	}
	return 1;
}

const char *gvm_qemu_accel(int argc, char **argv, int kvm, const char *kvm_why, char *msg, size_t msglen)
{
	int chose = 0, wants_kvm = 0, allows_other = 0;

	msg[0] = '\0';
	for (int i = 1; i < argc; i++) {
		const char *v;
		const char *a = argv[i][0] == '-' && argv[i][1] == '-' ? argv[i] + 1 : argv[i];
		if (!strcmp(a, "-enable-kvm")) {
			chose = wants_kvm = 1;
		} else if ((v = opt_value(argc, argv, i, "-accel"))) {
			chose = 1;
			if (!strncmp(v, "kvm", 3) || strstr(v, "accel=kvm"))
				wants_kvm = 1;
			else
				allows_other = 1;
		} else if ((v = opt_value(argc, argv, i, "-machine")) || (v = opt_value(argc, argv, i, "-M"))) {
			const char *ac = strstr(v, "accel=");
			if (ac) {
				chose = 1;
				if (!strncmp(ac + 6, "kvm", 3))
					wants_kvm = 1;
				if (strchr(ac + 6, ':') || strncmp(ac + 6, "kvm", 3))
					allows_other = 1;
			}
		}
	}
	/* No /dev/kvm at all: QEMU would only fail, so say why before starting it. */
	if (wants_kvm && !allows_other && kvm == GVM_KVM_NONE) {
		snprintf(msg, msglen, "KVM was requested on the QEMU command line but %s; drop "
				      "-enable-kvm/-accel kvm to run with TCG", kvm_why);
		return NULL;
	}
	/* Given explicitly: the user may know better (a PVM-built guest kernel
	 * runs on kvm_pvm), so it goes to QEMU as given; QEMU tries KVM first
	 * even in "kvm:tcg", so a doubtful KVM is worth a warning there too. */
	if (wants_kvm && kvm == GVM_KVM_DOUBTFUL)
		snprintf(msg, msglen, "KVM was requested on the QEMU command line and is passed as given, "
				      "but %s: a standard guest kernel may hang or QEMU may abort; "
				      "use -accel tcg if it does", kvm_why);
	if (chose)
		return "";
	return kvm == GVM_KVM_USABLE ? "kvm" : "tcg";
}

/* ----------------------------------------------------------- parsers */

void gvm_json_unescape(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		if (*r != '\\' || !r[1]) {
			*w++ = *r;
			continue;
		}
		r++;
		switch (*r) {
		case 'n': *w++ = '\n'; break;
		case 'r': *w++ = '\r'; break;
		case 't': *w++ = '\t'; break;
		case 'u': /* QMP text is ASCII; keep a placeholder for anything else */
			*w++ = '?';
			for (int k = 0; k < 4 && r[1]; k++)
				r++;
			break;
		default: *w++ = *r; break;
		}
	}
	*w = 0;
}

int gvm_parse_ramblocks(const char *text, struct run_ram *out, int max)
{
	const char *line = text;
	int n = 0, header = 0;

	while (line && *line) {
		const char *end = strchr(line, '\n');
		size_t len = end ? (size_t)(end - line) : strlen(line);
		char buf[512], name[128], ps1[32], ps2[32];
		unsigned long long off, used, total, hva;
		int k;

		if (len >= sizeof(buf))
			return -EINVAL;
		memcpy(buf, line, len);
		buf[len] = 0;
		line = end ? end + 1 : NULL;
		if (strstr(buf, "Block Name")) {
			header = 1;
			continue;
		}
		k = sscanf(buf, "%127s %31s %31s 0x%llx 0x%llx 0x%llx 0x%llx", name, ps1, ps2, &off, &used,
			   &total, &hva);
		if (k < 6)
			continue;
		if (n >= max)
			return -E2BIG;
		memset(&out[n], 0, sizeof(out[n]));
		snprintf(out[n].name, sizeof(out[n].name), "%s", name);
		out[n].size = total;
		out[n].hva = k >= 7 ? hva : 0;
		n++;
	}
	return header ? n : -EINVAL;
}

/* Value of "key": inside [obj, end). */
static const char *find_key(const char *obj, const char *end, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	for (p = obj; (p = strstr(p, pat)) && p < end; p += strlen(pat)) {
		const char *v = p + strlen(pat);
		while (*v == ' ')
			v++;
		if (*v == ':') {
			v++;
			while (*v == ' ')
				v++;
			return v < end ? v : NULL;
		}
	}
	return NULL;
}

int gvm_parse_memdevs(const char *json, struct run_ram *out, int max)
{
	const char *p = strstr(json, "\"return\"");
	int n = 0;

	if (!p || !(p = strchr(p, '[')))
		return -EINVAL;
	p++;
	for (;;) {
		const char *obj, *end, *v;
		int depth = 0;

		while (*p == ' ' || *p == ',' || *p == '\r' || *p == '\n')
			p++;
		if (*p == ']')
			return n;
		if (*p != '{')
			return -EINVAL;
		obj = p;
		for (end = p; *end; end++) {
			if (*end == '{' || *end == '[')
				depth++;
			else if ((*end == '}' || *end == ']') && --depth == 0)
				break;
		}
		if (!*end)
			return -EINVAL;
		if (n >= max)
			return -E2BIG;
		memset(&out[n], 0, sizeof(out[n]));
		v = find_key(obj, end, "size");
		if (!v)
			return -EINVAL;
		out[n].size = strtoull(v, NULL, 10);
		v = find_key(obj, end, "id");
		if (v && *v == '"') {
			const char *q = strchr(v + 1, '"');
			if (!q || q > end || (size_t)(q - v - 1) >= sizeof(out[n].name))
				return -EINVAL;
			memcpy(out[n].name, v + 1, (size_t)(q - v - 1));
		}
		v = find_key(obj, end, "share");
		out[n].shared = v && !strncmp(v, "true", 4);
		n++;
		p = end + 1;
	}
}

int gvm_json_number(const char *json, const char *key, double *out)
{
	const char *v = find_key(json, json + strlen(json), key);
	char *e;

	if (!v)
		return -ENOENT;
	*out = strtod(v, &e);
	return e == v ? -ENOENT : 0;
}

int gvm_run_match(struct run_ram *b, int nb, const struct run_cand *c, int nc, char *err, size_t errlen)
{
	char used[256] = { 0 };

	if (nc > 256)
		nc = 256;
	for (int i = 0; i < nb; i++) {
		if (b[i].shared) {
			snprintf(err, errlen, "memory backend '%s' has share=on: only private anonymous RAM "
					      "(memory-backend-ram, or -m) can live in the pool", b[i].name);
			return -EPERM;
		}
		if (!b[i].hva)
			continue;
		for (int k = 0; k < nc; k++)
			if (c[k].addr == b[i].hva)
				used[k] = 1;
	}
	for (int i = 0; i < nb; i++) {
		int same_blocks = 0, found = -1, cands = 0;
		if (b[i].hva)
			continue;
		for (int j = 0; j < nb; j++)
			same_blocks += !b[j].hva && b[j].size == b[i].size;
		for (int k = 0; k < nc; k++) {
			if (used[k] || c[k].len != b[i].size)
				continue;
			cands++;
			if (found < 0)
				found = k;
		}
		if (found < 0) {
			snprintf(err, errlen, "guest RAM block '%s' (%llu bytes) has no matching mapping in "
					      "QEMU; refusing to run it on local RAM", b[i].name,
				 (unsigned long long)b[i].size);
			return -ENOENT;
		}
		if (cands > same_blocks) {
			snprintf(err, errlen, "guest RAM block '%s' (%llu bytes): %d mappings of that size "
					      "in QEMU, cannot tell which is guest RAM (QEMU >= 8.0 reports "
					      "it; or choose another RAM size)", b[i].name,
				 (unsigned long long)b[i].size, cands);
			return -EEXIST;
		}
		/* Same-size blocks may swap: harmless, each is a fresh region. */
		used[found] = 1;
		b[i].hva = c[found].addr;
	}
	return 0;
}

/* --------------------------------------------------------------- I/O */

static int unix_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int write_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read one '\n'-terminated line (without it) within timeout_ms. */
/* One line from a stream socket, without reading past it (the next line
 * stays in the socket): peek, then take up to the newline. */
static int read_line(int fd, char *out, size_t len, int timeout_ms)
{
	size_t n = 0;

	while (n + 1 < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, timeout_ms);
		ssize_t got;

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -ETIMEDOUT;
		got = recv(fd, out + n, len - 1 - n, MSG_PEEK);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return -ECONNRESET;
		const char *nl = memchr(out + n, '\n', (size_t)got);
		size_t take = nl ? (size_t)(nl - (out + n)) + 1 : (size_t)got;
		got = recv(fd, out + n, take, 0);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return -ECONNRESET;
		n += (size_t)got;
		if (out[n - 1] == '\n') {
			n--;
			if (n && out[n - 1] == '\r')
				n--;
			out[n] = 0;
			return (int)n;
		}
	}
	out[n] = 0;
	return -E2BIG;
}

int gvm_qmp_command(int fd, const char *json, char *resp, size_t len)
{
	char *buf = malloc(1 << 20);
	int r;

	if (!buf)
		return -ENOMEM;
	if (write_all(fd, json, strlen(json)) || write_all(fd, "\r\n", 2)) {
		free(buf);
		return -EPIPE;
	}
	for (;;) {
		r = read_line(fd, buf, 1 << 20, 30000);
		if (r < 0)
			break;
		if (strstr(buf, "\"event\"") && !strstr(buf, "\"return\""))
			continue;
		if (resp)
			snprintf(resp, len, "%s", buf);
		r = strstr(buf, "\"return\"") ? 0 : -EREMOTEIO;
		if (r)
			fprintf(stderr, "giantvm run: QMP %s: %s\n", json, buf);
		break;
	}
	free(buf);
	return r < 0 ? r : 0;
}

int gvm_qmp_connect(const char *path, pid_t pid, int timeout_ms, int *reaped, int *wstatus)
{
	uint64_t end = gvm_time_ns() + (uint64_t)timeout_ms * 1000000ull;
	char line[4096];
	int fd;

	for (;;) {
		int status;
		fd = unix_connect(path);
		if (fd >= 0)
			break;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			fprintf(stderr, "giantvm run: QEMU exited before it was ready (status %d)\n",
				WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
			*reaped = 1;
			*wstatus = status;
			return -ECHILD;
		}
		if (gvm_time_ns() > end) {
			fprintf(stderr, "giantvm run: QEMU's monitor %s did not appear\n", path);
			return -ETIMEDOUT;
		}
		usleep(2000);
	}
	if (read_line(fd, line, sizeof(line), 30000) < 0 || !strstr(line, "QMP")) {
		fprintf(stderr, "giantvm run: no QMP greeting from QEMU\n");
		close(fd);
		return -EPROTO;
	}
	if (gvm_qmp_command(fd, "{\"execute\":\"qmp_capabilities\"}", NULL, 0)) {
		close(fd);
		return -EPROTO;
	}
	return fd;
}

int gvm_qmp_ram_blocks(int fd, struct run_ram *out, int max, char *buf, size_t len)
{
	struct run_ram rb[64];
	char *text;
	int nm, nr;

	if (gvm_qmp_command(fd, "{\"execute\":\"query-memdev\"}", buf, len))
		return -EPROTO;
	nm = gvm_parse_memdevs(buf, out, max);
	if (nm < 0) {
		fprintf(stderr, "giantvm run: cannot parse query-memdev: %s\n", buf);
		return -EINVAL;
	}
	if (gvm_qmp_command(fd, "{\"execute\":\"human-monitor-command\",\"arguments\":"
				"{\"command-line\":\"info ramblock\"}}", buf, len))
		return -EPROTO;
	text = strstr(buf, "\"return\"");
	text = text ? strchr(text + 8, '"') : NULL;
	if (!text) {
		fprintf(stderr, "giantvm run: cannot parse info ramblock: %s\n", buf);
		return -EINVAL;
	}
	text++;
	char *q = strrchr(text, '"');
	if (q)
		*q = 0;
	gvm_json_unescape(text);
	nr = gvm_parse_ramblocks(text, rb, 64);
	if (nr < 0) {
		fprintf(stderr, "giantvm run: cannot parse info ramblock output\n");
		return -EINVAL;
	}
	for (int i = 0; i < nm; i++) {
		int found = 0;
		for (int k = 0; k < nr; k++) {
			if (!strcmp(rb[k].name, out[i].name)) {
				out[i].size = rb[k].size;
				out[i].hva = rb[k].hva;
				found = 1;
			}
		}
		if (!found) {
			fprintf(stderr, "giantvm run: memory backend '%s' has no RAM block in QEMU\n", out[i].name);
			return -ENOENT;
		}
	}
	return nm;
}

/* ----------------------------------------------------------- control */

int gvm_runtime_dir(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR"), *env = getenv("GIANTVM_RUNTIME_DIR");

	/* empty as unset, like $XDG_RUNTIME_DIR: not "mkdir '': No such file" */
	if (env && *env)
		snprintf(buf, len, "%s", env);
	else if (getuid() == 0)
		snprintf(buf, len, "/run/giantvm");
	else if (xdg && *xdg)
		snprintf(buf, len, "%s/giantvm", xdg);
	else
		snprintf(buf, len, "/tmp/giantvm-%u", (unsigned)getuid());
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int gvm_ctl_connect(const char *path, int timeout_ms)
{
	uint64_t end = gvm_time_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		int fd = unix_connect(path);
		if (fd >= 0 || gvm_time_ns() > end)
			return fd;
		usleep(10000);
	}
}

int gvm_ctl_in_use(const char *path)
{
	int fd = unix_connect(path);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

int gvm_ctl_command(int fd, const char *cmd, char *out, size_t len)
{
	if (write_all(fd, cmd, strlen(cmd)) < 0) {
		snprintf(out, len, "control socket closed");
		return -EPIPE;
	}
	if (read_line(fd, out, len, 120000) < 0) {
		snprintf(out, len, "no reply on the control socket");
		return -ETIMEDOUT;
	}
	return 0;
}

int gvm_ctl_candidates(int fd, struct run_cand *out, int max)
{
	char line[256];
	int n = 0;

	if (write_all(fd, GVM_CTL_CMD_CANDIDATES "\n", strlen(GVM_CTL_CMD_CANDIDATES "\n")) < 0)
		return -EPIPE;
	for (;;) {
		unsigned long long a, l;
		if (read_line(fd, line, sizeof(line), 10000) < 0)
			return -ETIMEDOUT;
		if (!strcmp(line, "END"))
			return n;
		if (sscanf(line, "C %llx %llu", &a, &l) == 2 && n < max)
			out[n++] = (struct run_cand){ a, l };
	}
}

/* A count from JSON: out-of-range, negative or non-finite values are 0. */
static uint64_t json_count(const char *json, const char *key)
{
	double v;

	if (gvm_json_number(json, key, &v) || !(v >= 0) || v >= 18446744073709551616.0)
		return 0;
	return (uint64_t)v;
}

int gvm_run_parse_stats(const char *json, struct gvm_run_stats *s)
{
	double v;

	memset(s, 0, sizeof(*s));
	if (gvm_json_number(json, "faults", &v))
		return -EINVAL;
	s->faults = json_count(json, "faults");
	s->pages_fetched = json_count(json, "pages_fetched");
	s->zero_pages = json_count(json, "zero_pages");
	s->readahead_pages = json_count(json, "readahead_pages");
	s->bytes_in = json_count(json, "bytes_in");
	s->errors = json_count(json, "errors");
	if (!gvm_json_number(json, "fault_p50_us", &v)) s->p50_us = v;
	if (!gvm_json_number(json, "fault_p99_us", &v)) s->p99_us = v;
	return 0;
}
