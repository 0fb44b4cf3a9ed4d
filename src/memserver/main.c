/*
 * `giantvm memserver`: run one memory server in the foreground until
 * SIGTERM/SIGINT.
 */
#define LOG_PREFIX "memserver: "

#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "log.h"
#include "giantvm_memserver.h"
#include "util.h"

static const char usage_text[] =
	"usage: giantvm memserver [options]\n"
	"\n"
	"Serve guest RAM pages to giantvm clients over TCP.\n"
	"\n"
	"  --listen HOST:PORT   address to listen on; repeatable (up to 16); IPv6 as [ADDR]:PORT;\n"
	"                       port 0 picks a free port (default 127.0.0.1:9999)\n"
	"  --capacity SIZE      most non-zero page bytes to hold, e.g. 16G (default, or 0: unlimited)\n"
	"  --prealloc           with --capacity (RAM store): populate that much memory at start\n"
	"                       (huge pages where THP allows) and keep it, so storing a page\n"
	"                       never waits for the kernel to find and zero fresh memory\n"
	"  --backing FILE       keep pages in this sparse file; they survive a restart\n"
	"                       (default: in RAM)\n"
	"  --fsync MODE         never (default): ack a WRITE once it is in the page cache, which\n"
	"                       survives a crash of the server but not of the machine;\n"
	"                       always: fdatasync the backing file before every ack\n"
	"  --token-file FILE    shared secret (16..4096 bytes, mode 600); clients must prove it\n"
	"  --hello-timeout SEC  close a client that has not completed HELLO within SEC seconds\n"
	"                       (default 10)\n"
	"  --admin-token-file FILE  a second secret: a client proving it sees the node-wide\n"
	"                       STAT (others see only their own connection and regions)\n"
	"  --insecure           allow a non-loopback --listen without --token-file\n"
	"  --port-file FILE     after listening, write each listener's port (one per line)\n"
	"  --metrics HOST:PORT  serve Prometheus metrics (GET /metrics, node-wide counts only,\n"
	"                       no tenant's regions or addresses; docs/METRICS.md) on this\n"
	"                       address; port 0 picks a free port (logged)\n"
	"  --help               show this help\n"
	"\n"
	"Limits (each bounds what clients can make the server hold; see docs/MEMSERVER.md):\n"
	"  --max-regions N      regions holding pages (default 1048576)\n"
	"  --max-peer-regions N of those, created from one IP address (default 1/4 of\n"
	"                       --max-regions)\n"
	"  --max-peer-capacity SIZE  page bytes in regions created from one IP address\n"
	"                       (default: no quota beyond --capacity)\n"
	"  --max-conn-regions N regions one connection may OPEN (default 1024)\n"
	"  --buffer-budget SIZE input and output buffered for all clients together; over it\n"
	"                       clients are not read until buffers drain (default 256M)\n"
	"  --max-clients N      connections (default: open-file limit - 64)\n"
	"  --max-unauthed N     connections before HELLO; a new one evicts the oldest\n"
	"                       (default 1024, at most half of --max-clients)\n"
	"  --max-peer-conns N   connections from one IP address (default 256)\n"
	"  --idle-timeout SEC   close a client with no request for SEC seconds; 0 = never\n"
	"                       (default 600)\n"
	"  --io-timeout SEC     close a client that leaves a frame half-sent for SEC seconds,\n"
	"                       or that does not keep reading: each batch of replies waiting\n"
	"                       for it must be sent within SEC; or whose address held its\n"
	"                       share of the buffer budget for SEC; or that waits 2 x SEC\n"
	"                       for the buffer budget with requests read (default 30)\n"
	"  --keepalive SEC      TCP keepalive after SEC idle seconds; 0 = off (default 60)\n"
	"\n"
	"The server holds tenants' pages: it makes itself non-dumpable (no core dumps,\n"
	"no ptrace by other processes of the same user) at start.\n";

static struct gvm_memserver *volatile g_server;

static void on_signal(int sig)
{
	struct gvm_memserver *s = g_server;

	(void)sig;
	if (s)
		gvm_memserver_stop(s);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "giantvm memserver: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'giantvm memserver --help'.\n");
	return 2; /* usage error, as every giantvm command */
}

static int set_handler(int sig, void (*fn)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

/* Written to a temporary name and renamed, so a reader never sees half a file. */
static int write_port_file(const char *path, const struct gvm_memserver *s, unsigned n)
{
	char tmp[4096], buf[GVM_MEMSERVER_MAX_LISTEN * 8];
	size_t len = 0, off = 0;
	int fd;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp)) {
		pr_err("--port-file %s: path too long", path);
		return -ENAMETOOLONG;
	}
	for (unsigned i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%d\n", gvm_memserver_port(s, i));
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		pr_perror("--port-file %s", tmp);
		return -errno;
	}
	while (off < len) {
		ssize_t w = write(fd, buf + off, len - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			pr_perror("--port-file %s", tmp);
			goto out_unlink;
		}
		off += (size_t)w;
	}
	if (close(fd) < 0) {
		fd = -1;
		pr_perror("--port-file %s", tmp);
		goto out_unlink;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		pr_perror("--port-file: rename %s to %s", tmp, path);
		goto out_unlink;
	}
	return 0;

out_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return -EIO;
}

static int disable_core_dumps(void)
{
	struct rlimit rl = { 0, 0 };

	if (setrlimit(RLIMIT_CORE, &rl) < 0) {
		pr_perror("setrlimit(RLIMIT_CORE)");
		return -errno;
	}
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
		pr_perror("prctl(PR_SET_DUMPABLE)");
		return -errno;
	}
	return 0;
}

int gvm_memserver_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "capacity", required_argument, NULL, 'c' },
		{ "backing", required_argument, NULL, 'b' },
		{ "prealloc", no_argument, NULL, 'P' },
		{ "hello-timeout", required_argument, NULL, 'H' },
		{ "token-file", required_argument, NULL, 't' },
		{ "insecure", no_argument, NULL, 'i' },
		{ "fsync", required_argument, NULL, 'f' },
		{ "port-file", required_argument, NULL, 'p' },
		{ "metrics", required_argument, NULL, 'M' },
		{ "admin-token-file", required_argument, NULL, 'A' },
		{ "max-regions", required_argument, NULL, 'R' },
		{ "max-peer-regions", required_argument, NULL, 'G' },
		{ "max-peer-capacity", required_argument, NULL, 'Q' },
		{ "max-conn-regions", required_argument, NULL, 'r' },
		{ "buffer-budget", required_argument, NULL, 'B' },
		{ "max-clients", required_argument, NULL, 'C' },
		{ "max-unauthed", required_argument, NULL, 'U' },
		{ "max-peer-conns", required_argument, NULL, 'E' },
		{ "idle-timeout", required_argument, NULL, 'I' },
		{ "io-timeout", required_argument, NULL, 'O' },
		{ "keepalive", required_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct gvm_memserver_opts o = { 0 };
	struct gvm_memserver *s = NULL;
	const char *port_file = NULL;
	int ch, r;

	opterr = 0;
	optind = 0; /* full re-initialisation: getopt may have run before */
	while ((ch = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'l':
			if (o.n_listen >= GVM_MEMSERVER_MAX_LISTEN)
				return usage_error("--listen: at most %u addresses", GVM_MEMSERVER_MAX_LISTEN);
			o.listen[o.n_listen++] = optarg;
			break;
		case 'c':
			if (gvm_parse_size(optarg, &o.capacity) < 0)
				return usage_error("--capacity: invalid size '%s' (e.g. 512M, 16G)", optarg);
			if (o.capacity && o.capacity < 4096)
				return usage_error("--capacity: '%s' is less than one 4 KiB page", optarg);
			break;
		case 'b':
			o.backing = optarg;
			break;
		case 'P':
			o.prealloc = 1;
			break;
		case 'H': {
			uint64_t sec;
			if (gvm_parse_u64(optarg, 1, 3600, &sec) < 0)
				return usage_error("--hello-timeout: '%s' is not a number of seconds from 1 to 3600",
						   optarg);
			o.hello_timeout_ms = (int)sec * 1000;
			break;
		}
		case 't':
			o.token_file = optarg;
			break;
		case 'A':
			o.admin_token_file = optarg;
			break;
		case 'Q':
			if (gvm_parse_size(optarg, &o.max_peer_capacity) < 0 || o.max_peer_capacity < 4096)
				return usage_error("--max-peer-capacity: '%s' is not a size of at least 4K", optarg);
			break;
		case 'R': case 'r': case 'C': case 'U': case 'E': case 'G': {
			uint64_t v;
			if (gvm_parse_u64(optarg, 1, 1ull << 30, &v) < 0)
				return usage_error("--%s: '%s' is not a number from 1 to 2^30",
						   ch == 'R' ? "max-regions" : ch == 'r' ? "max-conn-regions" :
						   ch == 'C' ? "max-clients" : ch == 'U' ? "max-unauthed" :
						   ch == 'G' ? "max-peer-regions" : "max-peer-conns", optarg);
			if (ch == 'R')
				o.max_regions = v;
			else if (ch == 'r')
				o.max_conn_regions = (unsigned)v;
			else if (ch == 'C')
				o.max_clients = (unsigned)v;
			else if (ch == 'U')
				o.max_unauthed = (unsigned)v;
			else if (ch == 'G')
				o.max_peer_regions = v;
			else
				o.max_peer_conns = (unsigned)v;
			break;
		}
		case 'B':
			if (gvm_parse_size(optarg, &o.buffer_budget) < 0 || o.buffer_budget < (1u << 20))
				return usage_error("--buffer-budget: '%s' is not a size of at least 1M", optarg);
			break;
		case 'I': case 'O': case 'K': {
			uint64_t sec;
			if (gvm_parse_u64(optarg, ch == 'O' ? 1 : 0, 86400, &sec) < 0)
				return usage_error("%s: '%s' is not a number of seconds from %d to 86400",
						   ch == 'I' ? "--idle-timeout" : ch == 'O' ? "--io-timeout" : "--keepalive",
						   optarg, ch == 'O' ? 1 : 0);
			if (ch == 'I')
				o.idle_timeout_ms = sec ? (int)sec * 1000 : -1;
			else if (ch == 'O')
				o.io_timeout_ms = (int)sec * 1000;
			else
				o.keepalive_s = sec ? (int)sec : -1;
			break;
		}
		case 'i':
			o.insecure = 1;
			break;
		case 'f':
			if (!strcmp(optarg, "never"))
				o.fsync_mode = GVM_FSYNC_NONE;
			else if (!strcmp(optarg, "always"))
				o.fsync_mode = GVM_FSYNC_ALWAYS;
			else
				return usage_error("--fsync: expected 'never' or 'always', not '%s'", optarg);
			break;
		case 'p':
			port_file = optarg;
			break;
		case 'M':
			o.metrics_listen = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case ':':
			return usage_error("option '%s' needs a value", argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (o.prealloc && !o.capacity)
		return usage_error("--prealloc needs --capacity SIZE (how much memory to populate)");
	if (o.prealloc && o.backing)
		return usage_error("--prealloc is for the RAM store; the --backing file's pages live in the page cache");

	/* Guest pages must not end up in a core file, nor be readable through
	 * ptrace or /proc/PID/mem by other processes of the user. */
	if (disable_core_dumps() < 0)
		return 1;
	r = gvm_memserver_open(&s, &o);
	if (r < 0)
		return 1;
	if (port_file && write_port_file(port_file, s, o.n_listen ? o.n_listen : 1) < 0) {
		gvm_memserver_close(s);
		return 1;
	}

	g_server = s;
	if (set_handler(SIGTERM, on_signal) < 0 || set_handler(SIGINT, on_signal) < 0) {
		pr_perror("sigaction");
		g_server = NULL;
		gvm_memserver_close(s);
		return 1;
	}
	r = gvm_memserver_run(s);
	/* Back to the default so a second ^C during shutdown still works. */
	if (set_handler(SIGTERM, SIG_DFL) < 0 || set_handler(SIGINT, SIG_DFL) < 0)
		pr_perror("sigaction");
	g_server = NULL;
	gvm_memserver_close(s);
	if (r < 0)
		return 1;
	pr_info("stopped");
	return 0;
}
