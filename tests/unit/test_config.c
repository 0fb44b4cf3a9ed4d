/* Pool file parsing: syntax, canonical names, every error, locate(), scale. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "config.h"
#include "log.h"
#include "util.h"
#include "test.h"

#define PATH "test.conf"

static char err[512];

static int parse(struct gvm_config *c, const char *text)
{
	err[0] = '\0';
	return gvm_config_parse(c, PATH, text, strlen(text), err, sizeof(err));
}

/* The config must be back to its empty state after a failed parse. */
static int is_empty(const struct gvm_config *c)
{
	return c->n_nodes == 0 && c->nodes == NULL && c->strings == NULL;
}

static int find(const struct gvm_config *c, const char *name)
{
	for (uint32_t i = 0; i < c->n_nodes; i++)
		if (!strcmp(gvm_node_name(c, i), name))
			return (int)i;
	return -1;
}


static int test_node_size(void)
{
	/* The header promises a compact node; keep it that way. */
	CHECK(sizeof(struct gvm_node) <= 32);
	return 0;
}

static int test_basic_syntax(void)
{
	struct gvm_config c;
	const char *text =
		"# pool for rack 7\r\n"
		"\r\n"
		"10.0.0.1\r\n"                   /* line 3: CRLF */
		"  \t10.0.0.2:7000   # spare\n"  /* line 4: leading blanks, trailing comment */
		"\t\t\n"                         /* line 5: blanks only */
		"[::1]:8000\t\n"                 /* line 6 */
		"mem-3.Rack7.EXAMPLE#no space before comment\n"
		"   # indented comment\n"
		"[2001:db8::7]";                 /* line 9: no final newline */
	uint8_t a4[4], a6[16];

	gvm_config_init(&c);
	CHECK_EQ(parse(&c, text), 0);
	CHECK_EQ(err[0], 0);
	CHECK_EQ(c.n_nodes, 5);
	CHECK(!strcmp(c.path, PATH));

	CHECK(!strcmp(gvm_node_name(&c, 0), "10.0.0.1:9999"));
	CHECK(!strcmp(gvm_node_host(&c, 0), "10.0.0.1"));
	CHECK_EQ(c.nodes[0].line, 3);
	CHECK_EQ(c.nodes[0].port, 9999);
	CHECK_EQ(c.nodes[0].family, AF_INET);
	CHECK_EQ(inet_pton(AF_INET, "10.0.0.1", a4), 1);
	CHECK(!memcmp(c.nodes[0].addr, a4, 4));

	CHECK(!strcmp(gvm_node_name(&c, 1), "10.0.0.2:7000"));
	CHECK_EQ(c.nodes[1].line, 4);
	CHECK_EQ(c.nodes[1].port, 7000);

	CHECK(!strcmp(gvm_node_name(&c, 2), "[::1]:8000"));
	CHECK(!strcmp(gvm_node_host(&c, 2), "::1"));
	CHECK_EQ(c.nodes[2].line, 6);
	CHECK_EQ(c.nodes[2].family, AF_INET6);
	CHECK_EQ(inet_pton(AF_INET6, "::1", a6), 1);
	CHECK(!memcmp(c.nodes[2].addr, a6, 16));

	CHECK(!strcmp(gvm_node_name(&c, 3), "mem-3.rack7.example:9999"));
	CHECK(!strcmp(gvm_node_host(&c, 3), "mem-3.rack7.example"));
	CHECK_EQ(c.nodes[3].family, AF_UNSPEC);
	CHECK_EQ(c.nodes[3].line, 7);

	CHECK(!strcmp(gvm_node_name(&c, 4), "[2001:db8::7]:9999"));
	CHECK_EQ(c.nodes[4].line, 9);
	gvm_config_fini(&c);
	CHECK(is_empty(&c));
	return 0;
}

static int test_canonical(void)
{
	struct gvm_config c;

	gvm_config_init(&c);
	CHECK_EQ(parse(&c, "[::1]\nHost.Example\n[0:0:0:0:0:0:0:2]:80\n[FE80::A]:1\nlocalhost:65535\n"
			   "a\n1.2.3.4:00080\n"), 0);
	CHECK_EQ(c.n_nodes, 7);
	CHECK(!strcmp(gvm_node_name(&c, 0), "[::1]:9999"));
	CHECK(!strcmp(gvm_node_name(&c, 1), "host.example:9999"));
	CHECK(!strcmp(gvm_node_host(&c, 1), "host.example"));
	CHECK(!strcmp(gvm_node_name(&c, 2), "[::2]:80"));
	CHECK(!strcmp(gvm_node_name(&c, 3), "[fe80::a]:1"));
	CHECK(!strcmp(gvm_node_name(&c, 4), "localhost:65535"));
	CHECK(!strcmp(gvm_node_name(&c, 5), "a:9999"));
	CHECK(!strcmp(gvm_node_name(&c, 6), "1.2.3.4:80"));
	gvm_config_fini(&c);
	return 0;
}

static int test_duplicates(void)
{
	struct gvm_config c;
	static const struct { const char *text; const char *msg; } cases[] = {
		{ "# x\n\n10.0.0.1\n10.0.0.2\n10.0.0.1:9999\n",
		  PATH ":5: duplicate node '10.0.0.1:9999' (first on line 3): '10.0.0.1:9999'" },
		{ "[::1]\n[0::1]:9999\n",
		  PATH ":2: duplicate node '[::1]:9999' (first on line 1): '[0::1]:9999'" },
		{ "Mem1\nmem1:9999\n",
		  PATH ":2: duplicate node 'mem1:9999' (first on line 1): 'mem1:9999'" },
	};

	gvm_config_init(&c);
	for (size_t i = 0; i < GVM_ARRAY_SIZE(cases); i++) {
		CHECK_EQ(parse(&c, cases[i].text), -EINVAL);
		if (strcmp(err, cases[i].msg)) {
			fprintf(stderr, "  got  '%s'\n  want '%s'\n", err, cases[i].msg);
			CHECK(0);
		}
		CHECK(is_empty(&c));
	}
	/* Same host, different ports: different nodes. */
	CHECK_EQ(parse(&c, "10.0.0.1\n10.0.0.1:9998\n"), 0);
	CHECK_EQ(c.n_nodes, 2);
	gvm_config_fini(&c);
	return 0;
}

/* The warnings a parse logs (the library's log, into a pipe meanwhile). */
static int parse_logged(struct gvm_config *c, const char *text, char *log, size_t loglen)
{
	int p[2], r, level = gvm_log_get_level();
	ssize_t n;

	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	gvm_log_set_fd(p[1]);
	gvm_log_set_level(GVM_LOG_WARN); /* whatever $GIANTVM_LOG says */
	r = parse(c, text);
	gvm_log_set_level(level);
	gvm_log_set_fd(2);
	n = read(p[0], log, loglen - 1);
	log[n > 0 ? n : 0] = 0;
	close(p[0]);
	close(p[1]);
	return r;
}

/* Another spelling of one endpoint: accepted (no name lookup decides it),
 * with a warning naming both lines; none for distinct endpoints. */
static int test_aliases(void)
{
	struct gvm_config c;
	char log[2048];
	int lines = 0;

	gvm_config_init(&c);
	CHECK_EQ(parse_logged(&c, "# pool\n127.0.0.1:5\nlocalhost:5\n[::ffff:127.0.0.1]:5\n[::1]:6\n"
				  "localhost:6\n[::FFFF:10.0.0.1]\n10.0.0.1\n", log, sizeof(log)), 0);
	CHECK_EQ(c.n_nodes, 7);
	CHECK(strstr(log, "giantvm: " PATH ":3: warning: 'localhost:5' may be the same server as "
			  "'127.0.0.1:5' (" PATH ":2): replicas of a stripe may land on it twice; list it once\n"));
	CHECK(strstr(log, PATH ":3: warning: 'localhost:5' may be the same server as '[::ffff:127.0.0.1]:5' ("
			  PATH ":4)"));
	CHECK(strstr(log, PATH ":4: warning: '[::ffff:127.0.0.1]:5' is the same server as '127.0.0.1:5' ("
			  PATH ":2)"));
	CHECK(strstr(log, PATH ":6: warning: 'localhost:6' may be the same server as '[::1]:6' (" PATH ":5)"));
	CHECK(strstr(log, PATH ":7: warning: '[::ffff:10.0.0.1]:9999' is the same server as '10.0.0.1:9999' ("
			  PATH ":8)"));
	/* each pair once: five lines */
	for (const char *q = log; (q = strchr(q, '\n')); q++)
		lines++;
	CHECK_EQ(lines, 5);
	/* other ports, other loopback addresses, plain names: nothing to say */
	CHECK_EQ(parse_logged(&c, "127.0.0.1:5\nlocalhost:6\n127.0.0.2:5\n[::ffff:127.0.0.2]:6\nmem1:5\n"
				  "[::ffff:10.0.0.1]\n10.0.0.2\n", log, sizeof(log)), 0);
	CHECK_EQ(c.n_nodes, 7);
	if (log[0]) {
		fprintf(stderr, "  unexpected: %s", log);
		CHECK(0);
	}
	gvm_config_fini(&c);
	return 0;
}

static int test_errors(void)
{
	static const struct { const char *text; const char *want; } cases[] = {
		{ "10.0.0.1\n256.1.1.1\n", PATH ":2: bad IPv4 address: '256.1.1.1'" },
		{ "1.2.3\n", PATH ":1: bad IPv4 address: '1.2.3'" },
		{ "1.2.3.4.5\n", PATH ":1: bad IPv4 address" },
		{ "01.2.3.4\n", PATH ":1: bad IPv4 address" },
		{ "1.2.3.4:0\n", PATH ":1: bad port (must be 1..65535): '1.2.3.4:0'" },
		{ "1.2.3.4:65536\n", PATH ":1: bad port" },
		{ "1.2.3.4:abc\n", PATH ":1: bad port" },
		{ "1.2.3.4:\n", PATH ":1: bad port" },
		{ "1.2.3.4:-1\n", PATH ":1: bad port" },
		{ "1.2.3.4:+80\n", PATH ":1: bad port" },
		{ "1.2.3.4:999999\n", PATH ":1: bad port" },
		{ "host:80:81\n", PATH ":1: IPv6 address must be in brackets" },
		{ ":80\n", PATH ":1: missing host" },
		{ "[::1\n", PATH ":1: missing ']' after IPv6 address: '[::1'" },
		{ "[::1]80\n", PATH ":1: expected ':PORT' after ']'" },
		{ "[::1]:\n", PATH ":1: bad port" },
		{ "[::1]:0\n", PATH ":1: bad port" },
		{ "[]:80\n", PATH ":1: bad IPv6 address" },
		{ "[1.2.3.4]\n", PATH ":1: bad IPv6 address" },
		{ "[::g]\n", PATH ":1: bad IPv6 address" },
		{ "::1\n", PATH ":1: IPv6 address must be in brackets, e.g. '[::1]:9999': '::1'" },
		{ "fe80::1:9999\n", PATH ":1: IPv6 address must be in brackets" },
		{ "::1]\n", PATH ":1: IPv6 address must be in brackets" },
		{ "host]\n", PATH ":1: ']' without '['" },
		{ "-mem1\n", PATH ":1: host name label starts with '-'" },
		{ "mem1-\n", PATH ":1: host name label ends with '-'" },
		{ "mem1-.example\n", PATH ":1: host name label ends with '-'" },
		{ "a..b\n", PATH ":1: empty label in host name" },
		{ ".a\n", PATH ":1: empty label in host name" },
		{ "a.\n", PATH ":1: empty label in host name" },
		{ "mem_1\n", PATH ":1: invalid character in host name: 'mem_1'" },
		{ "mem\xc3\xa9\n", PATH ":1: invalid character in host name: 'mem\\xc3\\xa9'" },
		{ "10.0.0.1 9999\n", PATH ":1: whitespace inside the node address" },
		{ "a:80 b:80\n", PATH ":1: whitespace inside the node address" },
		{ "", PATH ": no memory nodes" },
		{ "\n\n# nothing\n  \t\r\n", PATH ": no memory nodes" },
	};
	struct gvm_config c;

	gvm_config_init(&c);
	for (size_t i = 0; i < GVM_ARRAY_SIZE(cases); i++) {
		/* A previous success must not survive a failed parse. */
		CHECK_EQ(parse(&c, "10.9.9.9\n"), 0);
		CHECK_EQ(parse(&c, cases[i].text), -EINVAL);
		if (strncmp(err, cases[i].want, strlen(cases[i].want))) {
			fprintf(stderr, "  case %zu: got '%s'\n  want prefix '%s'\n", i, err, cases[i].want);
			CHECK(0);
		}
		CHECK(is_empty(&c));
	}
	/* Exactly "no memory nodes", nothing after. */
	CHECK_EQ(parse(&c, "#\n"), -EINVAL);
	CHECK(!strcmp(err, PATH ": no memory nodes"));
	gvm_config_fini(&c);
	return 0;
}

/* `seal = on|off` (sealed pages) and what loopback means for its default. */
static int test_seal_setting(void)
{
	static const struct { const char *text; const char *want; } bad[] = {
		{ "10.0.0.1\nseal = maybe\n", PATH ":2: seal must be 'on' or 'off': 'seal = maybe'" },
		{ "seal = on\n10.0.0.1\nseal=off\n", PATH ":3: 'seal' given twice (first on line 1)" },
		{ "sealed = on\n10.0.0.1\n", PATH ":1: unknown setting (the only one is 'seal = on|off')" },
		{ "seal =\n10.0.0.1\n", PATH ":1: seal must be 'on' or 'off'" },
		{ "seal = on\n", PATH ": no memory nodes" },
	};
	struct gvm_config c;

	gvm_config_init(&c);
	CHECK_EQ(parse(&c, "10.0.0.1\n"), 0);
	CHECK_EQ(c.seal, 0);
	CHECK_EQ(gvm_config_all_loopback(&c), 0);
	CHECK_EQ(parse(&c, "  seal = on  # always\n127.0.0.1:7000\n"), 0);
	CHECK_EQ(c.seal, 1);
	CHECK_EQ(c.n_nodes, 1);
	CHECK_EQ(gvm_config_all_loopback(&c), 1);
	CHECK_EQ(parse(&c, "127.0.0.2\n[::1]:9\nlocalhost\nseal=off\n"), 0);
	CHECK_EQ(c.seal, 2);
	CHECK_EQ(gvm_config_all_loopback(&c), 1);
	CHECK_EQ(parse(&c, "127.0.0.1\nmem1.example\n"), 0);
	CHECK_EQ(gvm_config_all_loopback(&c), 0);
	CHECK_EQ(parse(&c, "[::ffff:127.0.0.1]:9\n[::1]:9\n"), 0); /* IPv4-mapped loopback */
	CHECK_EQ(gvm_config_all_loopback(&c), 1);
	CHECK_EQ(parse(&c, "[::ffff:10.0.0.1]:9\n"), 0);
	CHECK_EQ(gvm_config_all_loopback(&c), 0);
	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad); i++) {
		CHECK_EQ(parse(&c, bad[i].text), -EINVAL);
		if (strncmp(err, bad[i].want, strlen(bad[i].want))) {
			fprintf(stderr, "  case %zu: got '%s'\n  want prefix '%s'\n", i, err, bad[i].want);
			CHECK(0);
		}
		CHECK(is_empty(&c));
		CHECK_EQ(c.seal, 0);
	}
	gvm_config_fini(&c);
	return 0;
}

static int test_hostname_limits(void)
{
	struct gvm_config c;
	char text[600], label63[64], label64[65];

	memset(label63, 'a', 63);
	label63[63] = '\0';
	memset(label64, 'b', 64);
	label64[64] = '\0';
	gvm_config_init(&c);

	snprintf(text, sizeof(text), "%s.x\n", label63);
	CHECK_EQ(parse(&c, text), 0);
	snprintf(text, sizeof(text), "%s.x\n", label64);
	CHECK_EQ(parse(&c, text), -EINVAL);
	CHECK(strstr(err, "label longer than 63"));

	/* 4 labels of 63 + 3 dots = 255 > 253; 3 labels of 63 + "a.b" = 195+... */
	snprintf(text, sizeof(text), "%s.%s.%s.%s\n", label63, label63, label63, label63);
	CHECK_EQ(parse(&c, text), -EINVAL);
	CHECK(strstr(err, "longer than 253"));
	/* Exactly 253: 63*3 + 3 dots + 61. */
	snprintf(text, sizeof(text), "%s.%s.%s.%.61s:1\n", label63, label63, label63, label63);
	CHECK_EQ(parse(&c, text), 0);
	CHECK_EQ(strlen(gvm_node_host(&c, 0)), 253);
	CHECK(!strcmp(gvm_node_name(&c, 0) + 253, ":1"));
	/* All-numeric names are treated as (bad) IPv4, not as names. */
	CHECK_EQ(parse(&c, "12345\n"), -EINVAL);
	CHECK(strstr(err, "bad IPv4"));
	/* A digit-led label is a valid name (RFC 1123). */
	CHECK_EQ(parse(&c, "3com.example\n"), 0);
	gvm_config_fini(&c);
	return 0;
}

static int test_line_limits(void)
{
	struct gvm_config c;
	char *text = malloc(4096);
	size_t n;

	CHECK(text);
	gvm_config_init(&c);
	/* 1024 bytes (a comment padding a node) is the longest line allowed. */
	n = (size_t)sprintf(text, "10.0.0.1 #");
	memset(text + n, 'x', 1024 - n);
	strcpy(text + 1024, "\r\n");
	CHECK_EQ(parse(&c, text), 0);
	CHECK_EQ(c.n_nodes, 1);

	n = (size_t)sprintf(text, "10.0.0.1\n10.0.0.2 #");
	memset(text + n, 'y', 1025 - (n - 9));
	strcpy(text + 9 + 1025, "\n");
	CHECK_EQ(strlen(text), 9 + 1025 + 1);
	CHECK_EQ(parse(&c, text), -EINVAL);
	{
		static const char want[] = PATH ":2: line longer than 1024 bytes: '10.0.0.2 #yyy";
		CHECK(!strncmp(err, want, sizeof(want) - 1));
	}
	CHECK(strstr(err, "...'")); /* long text is cut */
	CHECK(is_empty(&c));

	/* NUL byte, even inside a comment, shown escaped. */
	{
		static const char t[] = "10.0.0.1\n10.0.0.2 # a\0b\n";
		err[0] = '\0';
		CHECK_EQ(gvm_config_parse(&c, PATH, t, sizeof(t) - 1, err, sizeof(err)), -EINVAL);
		CHECK(!strcmp(err, PATH ":2: NUL byte in line: '10.0.0.2 # a\\x00b'"));
		CHECK(is_empty(&c));
		static const char t2[] = "\0";
		CHECK_EQ(gvm_config_parse(&c, PATH, t2, 1, err, sizeof(err)), -EINVAL);
		CHECK(!strncmp(err, PATH ":1: NUL byte in line", 20));
	}
	/* A tiny or missing error buffer must not crash. */
	CHECK_EQ(gvm_config_parse(&c, PATH, "x_", 2, NULL, 0), -EINVAL);
	CHECK_EQ(gvm_config_parse(&c, PATH, "x_", 2, err, 4), -EINVAL);
	CHECK_EQ(strlen(err), 3);
	gvm_config_fini(&c);
	free(text);
	return 0;
}

static int test_add(void)
{
	struct gvm_config c;

	gvm_config_init(&c);
	err[0] = 'x';
	CHECK_EQ(gvm_config_add(&c, "127.0.0.1:7001", err, sizeof(err)), 0);
	CHECK_EQ(err[0], 0);
	CHECK_EQ(gvm_config_add(&c, "  [::1]:7002 # comment", err, sizeof(err)), 0);
	CHECK_EQ(gvm_config_add(&c, "LocalHost", err, sizeof(err)), 0);
	CHECK_EQ(c.n_nodes, 3);
	CHECK(!strcmp(c.path, "(embedded)"));
	CHECK_EQ(c.nodes[0].line, 0);
	CHECK(!strcmp(gvm_node_name(&c, 1), "[::1]:7002"));
	CHECK(!strcmp(gvm_node_name(&c, 2), "localhost:9999"));

	CHECK_EQ(gvm_config_add(&c, "127.0.0.1:07001", err, sizeof(err)), -EINVAL);
	CHECK(!strcmp(err, "(embedded): duplicate node '127.0.0.1:7001' (already in the pool): '127.0.0.1:07001'"));
	CHECK_EQ(gvm_config_add(&c, "127.0.0.1:0", err, sizeof(err)), -EINVAL);
	CHECK(!strcmp(err, "(embedded): bad port (must be 1..65535): '127.0.0.1:0'"));
	CHECK_EQ(gvm_config_add(&c, "::1", err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "brackets"));
	CHECK_EQ(gvm_config_add(&c, "", err, sizeof(err)), -EINVAL);
	CHECK_EQ(c.n_nodes, 3); /* failures change nothing */

	/* add() after a file parse: duplicates name the file line. */
	CHECK_EQ(parse(&c, "\n10.1.1.1\n"), 0);
	CHECK_EQ(gvm_config_add(&c, "10.1.1.1", err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "(first on line 2)"));
	CHECK_EQ(gvm_config_add(&c, "10.1.1.2", err, sizeof(err)), 0);
	CHECK_EQ(c.n_nodes, 2);
	CHECK(!strcmp(c.path, PATH));

	/* Many adds: amortised growth keeps earlier offsets valid. */
	gvm_config_fini(&c);
	for (int i = 0; i < 2000; i++) {
		char spec[64];
		snprintf(spec, sizeof(spec), "node-%d.example:%d", i, 1000 + i);
		CHECK_EQ(gvm_config_add(&c, spec, err, sizeof(err)), 0);
	}
	CHECK_EQ(c.n_nodes, 2000);
	CHECK(!strcmp(gvm_node_name(&c, 1234), "node-1234.example:2234"));
	CHECK(!strcmp(gvm_node_host(&c, 0), "node-0.example"));
	gvm_config_fini(&c);
	return 0;
}

static int make_tmpdir(char *dir, size_t len)
{
	snprintf(dir, len, "/tmp/gvm-test-config-XXXXXX");
	return mkdtemp(dir) ? 0 : -errno;
}

static int test_load(void)
{
	struct gvm_config c;
	char dir[64], path[128];
	static const char text[] = "# pool\n10.0.0.1\n[::1]:9000\n";

	CHECK_EQ(make_tmpdir(dir, sizeof(dir)), 0);
	snprintf(path, sizeof(path), "%s/pool.conf", dir);
	CHECK_EQ(test_write_file(path, text, sizeof(text) - 1, 0600), 0);
	gvm_config_init(&c);
	CHECK_EQ(gvm_config_load(&c, path, err, sizeof(err)), 0);
	CHECK_EQ(c.n_nodes, 2);
	CHECK(!strcmp(c.path, path));
	CHECK(!strcmp(gvm_node_name(&c, 1), "[::1]:9000"));

	/* Parse errors carry the file path. */
	CHECK_EQ(test_write_file(path, "10.0.0.1\n\n10.0.0.300\n", 21, 0600), 0);
	CHECK_EQ(gvm_config_load(&c, path, err, sizeof(err)), -EINVAL);
	{
		char want[256];
		snprintf(want, sizeof(want), "%s:3: bad IPv4 address: '10.0.0.300'", path);
		CHECK(!strcmp(err, want));
	}
	CHECK(is_empty(&c));

	/* Empty file. */
	CHECK_EQ(test_write_file(path, "", 0, 0600), 0);
	CHECK_EQ(gvm_config_load(&c, path, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, ": no memory nodes"));

	CHECK_EQ(unlink(path), 0);
	CHECK_EQ(gvm_config_load(&c, path, err, sizeof(err)), -ENOENT);
	{
		char want[256];
		snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
		CHECK(!strcmp(err, want));
	}
	CHECK(is_empty(&c));
	CHECK_EQ(gvm_config_load(&c, dir, err, sizeof(err)), -EISDIR);
	CHECK(strstr(err, strerror(EISDIR)));
	CHECK_EQ(rmdir(dir), 0);
	gvm_config_fini(&c);
	return 0;
}

static int test_locate(void)
{
	char dir[64], *old_env = getenv("GIANTVM_POOL");
	const char *src = NULL, *p;
	int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = 1;

	CHECK(cwd >= 0);
	if (old_env) {
		old_env = strdup(old_env);
		CHECK(old_env);
	}
	CHECK_EQ(make_tmpdir(dir, sizeof(dir)), 0);
	CHECK_EQ(chdir(dir), 0);

	/* Nothing configured. */
	CHECK_EQ(unsetenv("GIANTVM_POOL"), 0);
	src = "stale";
	p = cli_pool_locate(NULL, &src);
	if (p || src) {
		fprintf(stderr, "  expected none, got %s (%s)\n", p ? p : "NULL", src ? src : "NULL");
		goto out;
	}
	/* An empty variable counts as unset. */
	CHECK_EQ(setenv("GIANTVM_POOL", "", 1), 0);
	if (cli_pool_locate(NULL, &src) != NULL)
		goto out;

	/* ./cluster_uffd.conf in the cwd. */
	if (test_write_file(CLI_POOL_FILE_DEFAULT, "10.0.0.1\n", 9, 0600))
		goto out;
	p = cli_pool_locate(NULL, &src);
	if (!p || strcmp(p, "cluster_uffd.conf") || strcmp(src, "./cluster_uffd.conf"))
		goto out;

	/* GIANTVM_POOL beats the cwd file (even if it does not exist: the user asked). */
	if (setenv("GIANTVM_POOL", "/nonexistent/pool.conf", 1))
		goto out;
	p = cli_pool_locate(NULL, &src);
	if (!p || strcmp(p, "/nonexistent/pool.conf") || strcmp(src, "GIANTVM_POOL"))
		goto out;

	/* --pool beats both. */
	p = cli_pool_locate("/etc/other.conf", &src);
	if (!p || strcmp(p, "/etc/other.conf") || strcmp(src, "--pool"))
		goto out;
	/* A NULL source pointer is allowed. */
	if (strcmp(cli_pool_locate("x", NULL), "x"))
		goto out;
	ret = 0;
out:
	if (ret)
		fprintf(stderr, "  FAIL %s:%d: locate order\n", __FILE__, __LINE__);
	unlink(CLI_POOL_FILE_DEFAULT);
	CHECK_EQ(fchdir(cwd), 0);
	close(cwd);
	CHECK_EQ(rmdir(dir), 0);
	if (old_env) {
		CHECK_EQ(setenv("GIANTVM_POOL", old_env, 1), 0);
		free(old_env);
	} else {
		CHECK_EQ(unsetenv("GIANTVM_POOL"), 0);
	}
	return ret;
}

/* 10,000 lines in four styles, with comments and blank lines mixed in. */
static char *gen_pool(unsigned nodes, unsigned bad_line, size_t *len_out)
{
	size_t cap = (size_t)nodes * 64 + 64, len = 0;
	char *t = malloc(cap);
	unsigned line = 0;

	if (!t)
		return NULL;
	for (unsigned i = 0; i < nodes; i++) {
		line++;
		if (line == bad_line) {
			len += (size_t)sprintf(t + len, "10.0.%u.%u:99999\n", i / 256, i % 256);
			continue;
		}
		switch (i % 4) {
		case 0: len += (size_t)sprintf(t + len, "10.%u.%u.%u\n", i >> 16, (i >> 8) & 255, i & 255); break;
		case 1: len += (size_t)sprintf(t + len, "  [fd00::%x]:%u  # v6\r\n", i, 9000 + i % 1000); break;
		case 2: len += (size_t)sprintf(t + len, "Mem-%u.Rack%u.example\n", i, i % 40); break;
		default: len += (size_t)sprintf(t + len, "\t192.168.%u.%u:7777\n", i >> 8, i & 255); break;
		}
	}
	*len_out = len;
	return t;
}

static int test_large_pool(void)
{
	struct gvm_config c;
	size_t len;
	char *text = gen_pool(10000, 0, &len);
	uint64_t t0, t1;

	CHECK(text);
	gvm_config_init(&c);
	t0 = gvm_now_ns();
	CHECK_EQ(gvm_config_parse(&c, "big.conf", text, len, err, sizeof(err)), 0);
	t1 = gvm_now_ns();
	printf("info: parsed 10000 lines (%zu bytes) in %.3f ms; %zu bytes of node data\n", len,
	       (double)(t1 - t0) / 1e6,
	       (size_t)c.n_nodes * sizeof(struct gvm_node) + c.strings_len);
	CHECK_EQ(c.n_nodes, 10000);
	CHECK_EQ(c.nodes[9999].line, 10000);
	CHECK(!strcmp(gvm_node_name(&c, 0), "10.0.0.0:9999"));
	CHECK(!strcmp(gvm_node_name(&c, 1), "[fd00::1]:9001"));
	CHECK(!strcmp(gvm_node_name(&c, 2), "mem-2.rack2.example:9999"));
	CHECK(!strcmp(gvm_node_name(&c, 3), "192.168.0.3:7777"));
	CHECK(!strcmp(gvm_node_name(&c, 9998), "mem-9998.rack38.example:9999"));
	CHECK_EQ(find(&c, "10.0.39.12:9999"), 9996);
	gvm_config_fini(&c);
	free(text);
	return 0;
}

static int test_large_pool_bad_line(void)
{
	struct gvm_config c;
	size_t len;
	char *text = gen_pool(10000, 7777, &len);

	CHECK(text);
	gvm_config_init(&c);
	CHECK_EQ(gvm_config_parse(&c, "big.conf", text, len, err, sizeof(err)), -EINVAL);
	CHECK(strstr(err, "big.conf:7777: bad port"));
	CHECK(is_empty(&c));
	free(text);

	/* A duplicate far apart names both lines. */
	text = gen_pool(10000, 0, &len);
	CHECK(text);
	{
		char *t2 = realloc(text, len + 32);
		CHECK(t2);
		text = t2;
		len += (size_t)sprintf(text + len, "10.0.0.4:9999\n");
	}
	CHECK_EQ(gvm_config_parse(&c, "big.conf", text, len, err, sizeof(err)), -EINVAL);
	CHECK(!strcmp(err, "big.conf:10001: duplicate node '10.0.0.4:9999' (first on line 5): '10.0.0.4:9999'"));
	free(text);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "node_size", test_node_size },
	{ "basic_syntax", test_basic_syntax },
	{ "canonical", test_canonical },
	{ "duplicates", test_duplicates },
	{ "aliases", test_aliases },
	{ "errors", test_errors },
	{ "seal_setting", test_seal_setting },
	{ "hostname_limits", test_hostname_limits },
	{ "line_limits", test_line_limits },
	{ "add", test_add },
	{ "load", test_load },
	{ "locate", test_locate },
	{ "large_pool", test_large_pool },
	{ "large_pool_bad_line", test_large_pool_bad_line },
};
GVM_TEST_MAIN(tests)
