/*
 * Prometheus metrics (docs/METRICS.md): the memory server's --metrics and
 * the VM engines' `giantvm stat --prometheus` / `giantvm stat --metrics`,
 * with traffic driven through a real engine, values checked to move as the
 * traffic says, and every output passed through `promtool check metrics`
 * (Debian's prometheus package; without it the cases skip). Scrapers that
 * send nothing, trickle, send garbage or come one too many must not hold up
 * page service, and are closed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "giantvm.h"
#include "giantvm_memserver.h"
#include "stats_json.h"
#include "test.h"
#include "util.h"

#define REGION_PAGES 256u
#define WRITTEN      100u   /* non-zero pages the engine writes */
#define VM_NAME      "metrics-vm"

static char giantvm_bin[4096];
static char tmpdir[] = "/tmp/gvm-metrics-XXXXXX";

/* ---------------------------------------------------------------- helpers */

static uint64_t ms_now(void)
{
	return gvm_now_ns() / 1000000;
}

static int tcp_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read until EOF (or timeout_ms): bytes read, -1 on timeout or error. */
static ssize_t read_all(int fd, char *buf, size_t cap, int timeout_ms)
{
	uint64_t end = ms_now() + (uint64_t)timeout_ms;
	size_t len = 0;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = ms_now();
		if (now >= end || poll(&p, 1, (int)(end - now)) <= 0)
			return -1;
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == ECONNRESET)
			n = 0;
		if (n < 0)
			return -1;
		if (n == 0 || len + (size_t)n == cap - 1) {
			len += (size_t)n;
			buf[len] = 0;
			return (ssize_t)len;
		}
		len += (size_t)n;
	}
}

/* GET /metrics: the body (malloc'd), NULL unless 200 with the 0.0.4 type. */
static char *scrape(int port)
{
	const char req[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";
	size_t cap = 8u << 20;
	char *buf = malloc(cap), *body;
	int fd = tcp_connect(port);
	ssize_t n;

	if (!buf || fd < 0 || send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(req) - 1) {
		fprintf(stderr, "  scrape :%d: cannot connect or send\n", port);
		goto fail;
	}
	n = read_all(fd, buf, cap, 10000);
	if (n < 0 || strncmp(buf, "HTTP/1.1 200 ", 13) ||
	    !strstr(buf, "\r\nContent-Type: text/plain; version=0.0.4") || !(body = strstr(buf, "\r\n\r\n"))) {
		fprintf(stderr, "  scrape :%d: bad answer: %.200s\n", port, n < 0 ? "(none)" : buf);
		goto fail;
	}
	close(fd);
	memmove(buf, body + 4, strlen(body + 4) + 1);
	return buf;
fail:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

/* The value of the sample `series` ("name" or "name{labels}"), or -1. */
static double value(const char *text, const char *series)
{
	size_t n = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, series, n) && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return -1;
}

static int have_promtool(void)
{
	return system("promtool --version >/dev/null 2>&1") == 0;
}

/* 0 when `promtool check metrics` finds nothing wrong with text. */
static int promtool_check(const char *text, const char *what)
{
	char path[256], cmd[512];
	FILE *f;
	int r;

	snprintf(path, sizeof(path), "%s/%s.prom", tmpdir, what);
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f)) {
		fprintf(stderr, "  %s: %s\n", path, strerror(errno));
		return -1;
	}
	snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
	r = system(cmd);
	if (r != 0)
		fprintf(stderr, "  promtool check metrics found problems in %s (exit %d)\n", path, r);
	return r;
}

/* ---------------------------------------------------------------- fixtures */

static struct gvm_memserver *srv;
static pthread_t srv_thr;
static int srv_port, srv_mport;

static void *srv_main(void *a)
{
	gvm_memserver_run(a);
	return NULL;
}

static int server_up(void)
{
	struct gvm_memserver_opts o = { .listen = { "127.0.0.1:0" }, .n_listen = 1,
					.metrics_listen = "127.0.0.1:0" };

	if (srv)
		return 0;
	CHECK(gvm_memserver_open(&srv, &o) == 0);
	srv_port = gvm_memserver_port(srv, 0);
	srv_mport = gvm_memserver_metrics_port(srv);
	CHECK(srv_mport > 0);
	CHECK(pthread_create(&srv_thr, NULL, srv_main, srv) == 0);
	return 0;
}

static void server_down(void)
{
	if (!srv)
		return;
	gvm_memserver_stop(srv);
	pthread_join(srv_thr, NULL);
	gvm_memserver_close(srv);
	srv = NULL;
}

static struct gvm_pool *pool;
static struct gvm_engine *engine;
static uint8_t *ram;

static int engine_up(void)
{
	char node[64], err[256];
	const char *nodes[1] = { node };
	struct gvm_pool_opts po = { .nodes = nodes, .n_nodes = 1, .replicas = 1 };
	uint8_t key[GVM_REGION_KEY_SIZE] = { 7 };

	if (engine)
		return 0;
	snprintf(node, sizeof(node), "127.0.0.1:%d", srv_port);
	if (gvm_pool_open(&pool, &po, err, sizeof(err))) {
		fprintf(stderr, "  pool: %s\n", err);
		return 1;
	}
	/* One page per fault and no readahead: nothing is installed behind the
	 * test's back (a window installed while the test writes is not yet
	 * marked resident for the flush), so what it writes is what the flush
	 * sends. */
	struct gvm_engine_opts eo = { .prefetch = 1, .readahead = -1u };
	CHECK(gvm_engine_open(&engine, pool, &eo) == 0);
	ram = mmap(NULL, REGION_PAGES * GVM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ram != MAP_FAILED);
	CHECK(gvm_engine_attach(engine, 0x6d657472696373ull, key, ram, REGION_PAGES * GVM_PAGE_SIZE) == 0);
	return 0;
}

static void engine_down(void)
{
	if (engine)
		gvm_engine_close(engine);
	if (pool)
		gvm_pool_close(pool);
	if (ram)
		munmap(ram, REGION_PAGES * GVM_PAGE_SIZE);
	engine = NULL, pool = NULL, ram = NULL;
}

/* The preload library's side of the control socket, STAT only, on a thread. */
static int ctl_fd = -1, ctl_stop_fd = -1, ctl_stop_wr = -1;
static pthread_t ctl_thr;

static void *ctl_main(void *a)
{
	(void)a;
	for (;;) {
		struct pollfd p[2] = { { .fd = ctl_fd, .events = POLLIN }, { .fd = ctl_stop_fd, .events = POLLIN } };
		char line[64];
		size_t len = 0;

		if (poll(p, 2, -1) < 0 || (p[1].revents & POLLIN))
			return NULL;
		int c = accept4(ctl_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		for (;;) {
			ssize_t n = recv(c, line + len, sizeof(line) - 1 - len, 0);
			if (n <= 0)
				break;
			len += (size_t)n;
			line[len] = 0;
			if (strchr(line, '\n')) {
				size_t cap = 1u << 20;
				char *buf = malloc(cap + 1);
				int r = buf ? gvm_stats_json(engine, VM_NAME, 1.0, buf, cap) : -ENOMEM;
				if (r > 0) {
					buf[r] = '\n';
					if (send(c, buf, (size_t)r + 1, MSG_NOSIGNAL) < 0)
						perror("ctl send");
				}
				free(buf);
				len = 0;
			}
			if (len == sizeof(line) - 1)
				break;
		}
		close(c);
	}
}

static int ctl_up(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int pfd[2];

	if (ctl_fd >= 0)
		return 0;
	CHECK(setenv("GIANTVM_RUNTIME_DIR", tmpdir, 1) == 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s.sock", tmpdir, VM_NAME);
	ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(ctl_fd >= 0);
	CHECK(bind(ctl_fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CHECK(listen(ctl_fd, 8) == 0);
	CHECK(pipe2(pfd, O_CLOEXEC) == 0);
	ctl_stop_fd = pfd[0];
	ctl_stop_wr = pfd[1];
	CHECK(pthread_create(&ctl_thr, NULL, ctl_main, NULL) == 0);
	return 0;
}

static void ctl_down(void)
{
	char path[256];

	if (ctl_fd < 0)
		return;
	if (write(ctl_stop_wr, "x", 1) != 1)
		perror("ctl stop");
	pthread_join(ctl_thr, NULL);
	close(ctl_fd);
	close(ctl_stop_fd);
	close(ctl_stop_wr);
	ctl_fd = ctl_stop_fd = ctl_stop_wr = -1;
	snprintf(path, sizeof(path), "%s/%s.sock", tmpdir, VM_NAME);
	unlink(path);
}

/* Run argv with stdout and stderr into a pipe: its pid, the pipe in *out. */
static pid_t spawn(char *const argv[], int *out)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		execv(argv[0], argv);
		_exit(127);
	}
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		return -1;
	}
	*out = p[0];
	return pid;
}

/* Read the child's output until `marker` appears; the rest of its line in
 * buf ("ADDR/metrics..."), or -1 after timeout_ms. */
static int wait_for(int fd, const char *marker, char *buf, size_t len, int timeout_ms)
{
	char acc[4096];
	size_t have = 0;
	uint64_t end = ms_now() + (uint64_t)timeout_ms;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = ms_now();
		char *m;
		if (now >= end || poll(&p, 1, (int)(end - now)) <= 0)
			return -1;
		ssize_t n = read(fd, acc + have, sizeof(acc) - 1 - have);
		if (n <= 0)
			return -1;
		have += (size_t)n;
		acc[have] = 0;
		if ((m = strstr(acc, marker)) && strchr(m, '\n')) {
			m += strlen(marker);
			snprintf(buf, len, "%.*s", (int)(strchr(m, '\n') - m), m);
			return 0;
		}
		if (have == sizeof(acc) - 1)
			return -1;
	}
}

/* Stop a child we started, by its pid. Its exit status, or -1. */
static int stop_child(pid_t pid)
{
	int st;

	kill(pid, SIGTERM);
	for (int i = 0; i < 100; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(50000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/* Run `giantvm stat ARGS`: its stdout (malloc'd) and exit status. */
static char *run_stat(const char *a1, const char *a2, int *status)
{
	char *argv[] = { giantvm_bin, "stat", (char *)a1, (char *)a2, NULL };
	size_t cap = 4u << 20;
	char *buf = malloc(cap);
	int fd, st;
	pid_t pid;

	if (!buf || (pid = spawn(argv, &fd)) < 0) {
		free(buf);
		return NULL;
	}
	ssize_t n = read_all(fd, buf, cap, 20000);
	close(fd);
	if (waitpid(pid, &st, 0) != pid || n < 0) {
		free(buf);
		return NULL;
	}
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	return buf;
}

/* ---------------------------------------------------------------- cases */

/* Pages the engine writes and flushes show up on the server: stored pages,
 * requests by op, bytes, clients, regions; the histogram counts them all. */
static int t_memserver_values_move(void)
{
	char *a = NULL, *b = NULL;
	int rc = 1;

	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	CHECK(server_up() == 0);
	a = scrape(srv_mport);
	CHECK(a);
	if (promtool_check(a, "memserver-idle"))
		goto out;
	CHECK(value(a, "giantvm_memserver_stored_pages") == 0);
	CHECK(value(a, "giantvm_memserver_requests_total{op=\"write\"}") == 0);
	CHECK(value(a, "giantvm_memserver_build_info{version=\"" GVM_VERSION "\"}") == 1);
	CHECK(value(a, "giantvm_memserver_start_time_seconds") > 1.6e9);

	CHECK(engine_up() == 0);
	for (unsigned i = 0; i < WRITTEN; i++)
		memset(ram + (size_t)i * 2 * GVM_PAGE_SIZE, (int)(i + 1), GVM_PAGE_SIZE); /* every other page */
	/* The engine wakes a faulting thread (UFFDIO_COPY) before it marks the
	 * page resident, and the flush writes only pages marked resident: one
	 * more fault, served after the engine thread is done with the last
	 * written page, makes sure the flush sees it. (That a flush racing a
	 * fault may miss the page just written is the engine's matter.) */
	volatile uint8_t last = ram[(size_t)(REGION_PAGES - 1) * GVM_PAGE_SIZE];
	(void)last;
	CHECK(gvm_engine_flush(engine) == 0);
	b = scrape(srv_mport);
	CHECK(b);
	if (promtool_check(b, "memserver-busy"))
		goto out;
	CHECK_EQ(value(b, "giantvm_memserver_stored_pages"), WRITTEN);
	CHECK_EQ(value(b, "giantvm_memserver_stored_bytes"), WRITTEN * GVM_PAGE_SIZE);
	CHECK_EQ(value(b, "giantvm_memserver_regions"), 1);
	CHECK(value(b, "giantvm_memserver_clients") >= 1);
	CHECK(value(b, "giantvm_memserver_requests_total{op=\"read\"}") >= 1);   /* the faults' fetches */
	CHECK(value(b, "giantvm_memserver_requests_total{op=\"write\"}") >= 1);  /* the flush */
	CHECK(value(b, "giantvm_memserver_requests_total{op=\"hello\"}") >= 1);
	CHECK(value(b, "giantvm_memserver_requests_total{op=\"open\"}") >= 1);
	CHECK_EQ(value(b, "giantvm_memserver_request_errors_total{op=\"write\"}"), 0);
	CHECK(value(b, "giantvm_memserver_received_bytes_total") >= WRITTEN * GVM_PAGE_SIZE);
	CHECK(value(b, "giantvm_memserver_sent_bytes_total") > value(a, "giantvm_memserver_sent_bytes_total"));
	/* Every request answered is in the service-time histogram, once. */
	double sum = 0;
	const char *ops[] = { "hello", "open", "read", "write", "stat", "free", "list", "ping" };
	for (unsigned i = 0; i < 8; i++) {
		char series[96];
		snprintf(series, sizeof(series), "giantvm_memserver_requests_total{op=\"%s\"}", ops[i]);
		CHECK(value(b, series) >= 0);
		sum += value(b, series);
	}
	CHECK_EQ(value(b, "giantvm_memserver_request_duration_seconds_count"), sum);
	CHECK_EQ(value(b, "giantvm_memserver_request_duration_seconds_bucket{le=\"+Inf\"}"), sum);
	CHECK(value(b, "giantvm_memserver_request_duration_seconds_sum") > 0);
	CHECK(value(b, "giantvm_memserver_metrics_scrapes_total") == value(a, "giantvm_memserver_metrics_scrapes_total") + 1);
	/* Nothing that names a tenant: no region ids, keys or client addresses. */
	CHECK(!strstr(b, "region=") && !strstr(b, "client=") && !strstr(b, "127.0.0.1"));
	rc = 0;
out:
	free(a);
	free(b);
	return rc;
}

/* `giantvm stat NAME --prometheus` and `giantvm stat --prometheus` (all VMs). */
static int t_stat_prometheus(void)
{
	struct gvm_stats st, st2;
	char series[256], *out = NULL, *all = NULL;
	int status = -1, rc = 1;

	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	CHECK(server_up() == 0);
	CHECK(engine_up() == 0);
	CHECK(ctl_up() == 0);
	/* Read faults on pages never written: more missing faults and fetches. */
	volatile uint8_t sink = 0;
	for (unsigned i = 0; i < REGION_PAGES; i += 37)
		sink += ram[(size_t)i * GVM_PAGE_SIZE + 1];
	(void)sink;
	CHECK(gvm_engine_stats(engine, &st) == 0);
	CHECK(st.faults > 0);
	out = run_stat(VM_NAME, "--prometheus", &status);
	CHECK(out);
	/* A fault's thread is woken before the engine has counted all of it:
	 * each figure lies between the stats before and after the command. */
	CHECK(gvm_engine_stats(engine, &st2) == 0);
#define BETWEEN(v, f) do { double v_ = (v); if (!(v_ >= (double)st.f && v_ <= (double)st2.f)) { \
	fprintf(stderr, "  FAIL %s:%d: %s = %.0f, not in [%" PRIu64 ", %" PRIu64 "]\n", __FILE__, __LINE__, \
		#v, v_, st.f, st2.f); goto out; } } while (0)
	if (status != 0) {
		fprintf(stderr, "  giantvm stat --prometheus exited %d: %s\n", status, out);
		goto out;
	}
	if (promtool_check(out, "stat-one"))
		goto out;
	CHECK_EQ(value(out, "giantvm_vm_up{vm=\"" VM_NAME "\"}"), 1);
	double miss = value(out, "giantvm_vm_faults_total{vm=\"" VM_NAME "\",kind=\"missing\"}");
	double wp = value(out, "giantvm_vm_faults_total{vm=\"" VM_NAME "\",kind=\"write_protect\"}");
	CHECK(miss >= 1 && wp >= 0);
	BETWEEN(miss + wp, faults);
	BETWEEN(value(out, "giantvm_vm_fetched_pages_total{vm=\"" VM_NAME "\"}"), pages_fetched);
	BETWEEN(value(out, "giantvm_vm_sent_bytes_total{vm=\"" VM_NAME "\"}"), bytes_out);
	BETWEEN(value(out, "giantvm_vm_resident_pages{vm=\"" VM_NAME "\"}"), resident_pages);
	double lat_n = value(out, "giantvm_vm_fault_latency_seconds_count{vm=\"" VM_NAME "\"}");
	CHECK(lat_n >= 1 && lat_n <= st2.faults);
	CHECK(value(out, "giantvm_vm_fault_latency_seconds_sum{vm=\"" VM_NAME "\"}") > 0);
	snprintf(series, sizeof(series), "giantvm_vm_node_up{vm=\"%s\",node=\"127.0.0.1:%d\"}", VM_NAME, srv_port);
	CHECK_EQ(value(out, series), 1);
	CHECK(!strstr(out, "giantvm_vm_budget_bytes{")); /* no budget: absent */

	all = run_stat("--prometheus", NULL, &status);
	CHECK(all && status == 0);
	if (promtool_check(all, "stat-all"))
		goto out;
	CHECK_EQ(value(all, "giantvm_vm_up{vm=\"" VM_NAME "\"}"), 1);

	free(out);
	out = run_stat("no-such-vm", "--prometheus", &status);
	CHECK(out && status == 1 && strstr(out, "no-such-vm"));
	rc = 0;
out:
	free(out);
	free(all);
	return rc;
}

/* The exporter serves every VM; the values follow the engine. */
static int t_stat_exporter(void)
{
	char *argv[] = { giantvm_bin, "stat", "--metrics", "127.0.0.1:0", NULL };
	char addr[128], *a = NULL, *b = NULL;
	int fd = -1, rc = 1, port;
	pid_t pid;

	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	CHECK(server_up() == 0);
	CHECK(engine_up() == 0);
	CHECK(ctl_up() == 0);
	pid = spawn(argv, &fd);
	CHECK(pid > 0);
	if (wait_for(fd, "metrics of this host's VMs on http://127.0.0.1:", addr, sizeof(addr), 5000) < 0) {
		fprintf(stderr, "  the exporter did not say where it listens\n");
		goto out;
	}
	port = atoi(addr);
	a = scrape(port);
	if (!a || promtool_check(a, "exporter-1"))
		goto out;
	if (value(a, "giantvm_vm_up{vm=\"" VM_NAME "\"}") != 1) {
		fprintf(stderr, "  giantvm_vm_up is not 1:\n%.2000s\n", a);
		goto out;
	}
	volatile uint8_t sink = 0;
	for (unsigned i = 1; i < REGION_PAGES; i += 2)
		sink += ram[(size_t)i * GVM_PAGE_SIZE];
	(void)sink;
	b = scrape(port);
	if (!b || promtool_check(b, "exporter-2"))
		goto out;
	if (!(value(b, "giantvm_vm_fetched_pages_total{vm=\"" VM_NAME "\"}") >=
	      value(a, "giantvm_vm_fetched_pages_total{vm=\"" VM_NAME "\"}"))) {
		fprintf(stderr, "  fetched pages went back\n");
		goto out;
	}
	rc = 0;
out:
	free(a);
	free(b);
	if (fd >= 0)
		close(fd);
	CHECK(stop_child(pid) == 0);
	return rc;
}

/* The command itself: giantvm memserver --metrics. */
static int t_memserver_flag(void)
{
	char *argv[] = { giantvm_bin, "memserver", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", NULL };
	char addr[128], *a = NULL;
	int fd = -1, rc = 1;
	pid_t pid;

	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	pid = spawn(argv, &fd);
	CHECK(pid > 0);
	if (wait_for(fd, "metrics on http://127.0.0.1:", addr, sizeof(addr), 5000) < 0) {
		fprintf(stderr, "  the memory server did not say where its metrics are\n");
		goto out;
	}
	a = scrape(atoi(addr));
	if (!a || promtool_check(a, "memserver-cmd"))
		goto out;
	rc = value(a, "giantvm_memserver_clients") == 0 ? 0 : 1;
out:
	free(a);
	if (fd >= 0)
		close(fd);
	CHECK(stop_child(pid) == 0);
	return rc;
}

static uint64_t read_max_ns;

/* 0 if the server answers a READ within 200 ms. */
static int page_service_ok(struct gvm_node_client *nc)
{
	static uint8_t buf[GVM_PAGE_SIZE * 4];
	uint64_t t0 = gvm_now_ns();
	int r = gvm_node_client_read(nc, 0x6d657472696373ull, 0, 4, buf);

	if (r < 0) {
		fprintf(stderr, "  READ: %s\n", strerror(-r));
		return 1;
	}
	read_max_ns = GVM_MAX(read_max_ns, gvm_now_ns() - t0);
	if (gvm_now_ns() - t0 > 200000000ull) {
		fprintf(stderr, "  READ took %.1f ms\n", (double)(gvm_now_ns() - t0) / 1e6);
		return 1;
	}
	return 0;
}

/* 1 if the peer closed fd (EOF or reset) within timeout_ms, after whatever it sent. */
static int closed_within(int fd, int timeout_ms, char *got, size_t len)
{
	ssize_t n = read_all(fd, got, len, timeout_ms);
	return n >= 0;
}

/* Scrapers that send nothing, trickle, send garbage or come one too many:
 * page service goes on, each is closed, and a good scrape works after. */
static int t_hostile_scrapers(void)
{
	struct gvm_node_client *nc = NULL;
	int silent[8], garbage = -1, extra = -1, rc = 1;
	uint8_t key[GVM_REGION_KEY_SIZE] = { 7 };
	char got[512], *m = NULL;
	uint64_t t0;

	for (int i = 0; i < 8; i++)
		silent[i] = -1;
	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	CHECK(server_up() == 0);
	CHECK(engine_up() == 0); /* the pool, for a node client */
	CHECK(gvm_node_client_open(&nc, pool, 0, 2000) == 0);
	CHECK(gvm_node_client_bind(nc, 0x6d657472696373ull, key) == 0);

	/* Garbage: refused with a 400 and closed at once. */
	garbage = tcp_connect(srv_mport);
	CHECK(garbage >= 0);
	CHECK(send(garbage, "\x16\x03\x01\x02\x00garbage\r\n\r\n", 16, MSG_NOSIGNAL) == 16);
	t0 = ms_now();
	if (!closed_within(garbage, 2000, got, sizeof(got)) || strncmp(got, "HTTP/1.1 400", 12)) {
		fprintf(stderr, "  garbage: not answered 400 and closed: '%.60s'\n", got);
		goto out;
	}
	CHECK(ms_now() - t0 < 1000);

	/* Every slot taken by a scraper that sends nothing (or a request head
	 * it never finishes): page service goes on. */
	for (int i = 0; i < 8; i++) {
		silent[i] = tcp_connect(srv_mport);
		CHECK(silent[i] >= 0);
	}
	CHECK(send(silent[0], "GET /metr", 9, MSG_NOSIGNAL) == 9);
	usleep(100000);
	/* One more is over the cap: closed at once, without an answer. */
	extra = tcp_connect(srv_mport);
	CHECK(extra >= 0);
	t0 = ms_now();
	if (!closed_within(extra, 2000, got, sizeof(got)) || got[0]) {
		fprintf(stderr, "  the scraper over the cap was not closed at once\n");
		goto out;
	}
	CHECK(ms_now() - t0 < 1000);
	for (int i = 0; i < 20; i++) {
		if (page_service_ok(nc))
			goto out;
		if (send(silent[0], "i", 1, MSG_NOSIGNAL) != 1) /* a trickle */
			break;
		usleep(50000);
	}
	/* The silent ones are closed at the timeout (5 s from connecting). */
	for (int i = 0; i < 8; i++) {
		if (!closed_within(silent[i], 8000, got, sizeof(got))) {
			fprintf(stderr, "  silent scraper %d not closed within the timeout\n", i);
			goto out;
		}
	}
	CHECK(ms_now() - t0 < 8000);
	printf("  READ (4 pages) with every metrics slot held: slowest %.3f ms of 20\n", (double)read_max_ns / 1e6);
	if (page_service_ok(nc))
		goto out;
	m = scrape(srv_mport);
	CHECK(m);
	if (promtool_check(m, "memserver-after-hostile"))
		goto out;
	CHECK(value(m, "giantvm_memserver_rejected_connections_total{reason=\"metrics_scrapers\"}") >= 1);
	rc = 0;
out:
	free(m);
	for (int i = 0; i < 8; i++)
		if (silent[i] >= 0)
			close(silent[i]);
	if (garbage >= 0)
		close(garbage);
	if (extra >= 0)
		close(extra);
	gvm_node_client_close(nc);
	return rc;
}

/* Refusals and timeouts are counted under the reason that caused them. */
static int t_limits_counted(void)
{
	struct gvm_memserver_opts o = { .listen = { "127.0.0.1:0" }, .n_listen = 1, .max_peer_conns = 2,
					.hello_timeout_ms = 1000, .metrics_listen = "127.0.0.1:0" };
	struct gvm_memserver *s;
	pthread_t thr;
	int fds[3], port, mport, rc = 1;
	char got[256], *m = NULL;

	if (!have_promtool())
		SKIP("promtool not installed (Debian package prometheus)");
	CHECK(gvm_memserver_open(&s, &o) == 0);
	port = gvm_memserver_port(s, 0);
	mport = gvm_memserver_metrics_port(s);
	CHECK(pthread_create(&thr, NULL, srv_main, s) == 0);
	for (int i = 0; i < 3; i++)
		fds[i] = tcp_connect(port);
	/* The third from this address is refused; the other two never say HELLO. */
	for (int i = 0; i < 3; i++) {
		if (fds[i] < 0 || !closed_within(fds[i], 3000, got, sizeof(got))) {
			fprintf(stderr, "  connection %d not closed\n", i);
			goto out;
		}
	}
	m = scrape(mport);
	if (!m || promtool_check(m, "memserver-limits"))
		goto out;
	if (value(m, "giantvm_memserver_rejected_connections_total{reason=\"max_peer_conns\"}") != 1 ||
	    value(m, "giantvm_memserver_timed_out_connections_total{reason=\"hello_timeout\"}") != 2 ||
	    value(m, "giantvm_memserver_rejected_connections_total{reason=\"out_of_memory\"}") != 0) {
		fprintf(stderr, "  refusals and timeouts not counted by reason:\n%s\n", m);
		goto out;
	}
	rc = 0;
out:
	free(m);
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	gvm_memserver_stop(s);
	pthread_join(thr, NULL);
	gvm_memserver_close(s);
	return rc;
}

/* The text writer: label escaping, the histogram's cumulative buckets. */
static int t_writer(void)
{
	uint64_t counts[GVM_LAT_BUCKETS + 1] = { 0 };
	struct gvm_prom p;
	char l[64];

	CHECK(gvm_prom_labels(l, sizeof(l), "vm", "a\"b\\c\nd", NULL) > 0);
	CHECK(!strcmp(l, "vm=\"a\\\"b\\\\c\\nd\""));
	CHECK(gvm_prom_labels(l, 8, "vm", "too long for it", NULL) == -ENOSPC);
	CHECK_EQ(gvm_lat_bucket(0), 0);
	CHECK_EQ(gvm_lat_bucket(1000), 0);
	CHECK_EQ(gvm_lat_bucket(1001), 1);
	CHECK_EQ(gvm_lat_bucket(UINT64_MAX), GVM_LAT_BUCKETS);
	counts[gvm_lat_bucket(30000)] = 3;          /* 30 us: le 5e-05 */
	counts[GVM_LAT_BUCKETS] = 1;                /* 20 s */
	gvm_prom_init(&p, 1 << 16);
	gvm_prom_lat_histogram(&p, "x_seconds", "vm=\"v\"", counts, 20000090000ull);
	CHECK(p.err == 0);
	CHECK_EQ(value(p.buf, "x_seconds_bucket{vm=\"v\",le=\"2.5e-05\"}"), 0);
	CHECK_EQ(value(p.buf, "x_seconds_bucket{vm=\"v\",le=\"5e-05\"}"), 3);
	CHECK_EQ(value(p.buf, "x_seconds_bucket{vm=\"v\",le=\"10\"}"), 3);
	CHECK_EQ(value(p.buf, "x_seconds_bucket{vm=\"v\",le=\"+Inf\"}"), 4);
	CHECK_EQ(value(p.buf, "x_seconds_count{vm=\"v\"}"), 4);
	CHECK(value(p.buf, "x_seconds_sum{vm=\"v\"}") > 20.00008);
	gvm_prom_fini(&p);
	gvm_prom_init(&p, 100);
	for (int i = 0; i < 50; i++)
		gvm_prom_u64(&p, "a_long_metric_name", NULL, 1);
	CHECK(p.err == -E2BIG && p.len <= 100);
	gvm_prom_fini(&p);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "writer", t_writer },
	{ "memserver_values_move", t_memserver_values_move, GVM_NEEDS_UFFD },
	{ "stat_prometheus", t_stat_prometheus, GVM_NEEDS_UFFD },
	{ "stat_exporter", t_stat_exporter, GVM_NEEDS_UFFD },
	{ "memserver_flag", t_memserver_flag },
	{ "hostile_scrapers", t_hostile_scrapers, GVM_NEEDS_UFFD },
	{ "limits_counted", t_limits_counted },
};

int main(int argc, char **argv)
{
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;
	int r;

	if (n < 0)
		return 1;
	exe[n] = 0;
	/* BUILD/tests/test_metrics -> BUILD/giantvm */
	if (!(slash = strrchr(exe, '/')))
		return 1;
	*slash = 0;
	if (!(slash = strrchr(exe, '/')))
		return 1;
	*slash = 0;
	snprintf(giantvm_bin, sizeof(giantvm_bin), "%s/giantvm", exe);
	if (access(giantvm_bin, X_OK) < 0) {
		fprintf(stderr, "%s: %s\n", giantvm_bin, strerror(errno));
		return 1;
	}
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	ctl_down();
	engine_down();
	server_down();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (getenv("GIANTVM_TEST_KEEP"))  /* the .prom files, to look at */
		fprintf(stderr, "kept %s\n", tmpdir);
	else if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	return r;
}
