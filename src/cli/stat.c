/* giantvm stat [VM] [--json] [--count N] [--prometheus] [--metrics HOST:PORT]:
 * a running VM's engine, live; the VMs of this host as Prometheus metrics. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "giantvm_ctl.h"
#include "qemu.h"
#include "giantvm.h"
#include "vm_metrics.h"

#define STAT_TIMEOUT_MS 2000   /* a VM's STAT reply, per VM and scrape */

static void usage(FILE *f)
{
	fputs("usage: giantvm stat [VM] [--json] [--count N]\n"
	      "       giantvm stat [VM] --prometheus\n"
	      "       giantvm stat --metrics HOST:PORT\n"
	      "\n"
	      "Shows the engine of a VM started by `giantvm run`, or by libvirt through the\n"
	      "giantvm-qemu wrapper (" GVM_WRAPPER_RUN_DIR "; the VM is the domain's name),\n"
	      "(the only one running when VM is not given): one line per second with faults/s, MiB/s fetched, resident\n"
	      "pages against the budget, evictions and write-backs per second, fault latency\n"
	      "p50/p99, errors, nodes connected and down, stripes waiting for re-sync\n"
	      "(under-replicated), the fetch window of a fault off any sequential run (it\n"
	      "adapts: one page under random access, up to --prefetch), and the prefetch\n"
	      "hit rate (of the prefetched pages held back as probes, the share the guest\n"
	      "touched), and sealed pages rejected (a node returned a page that failed\n"
	      "verification). --json prints the full statistics (per node too: health,\n"
	      "requests, bytes, pages rejected, RTT) once, as one JSON object.\n"
	      "\n"
	      "--prometheus prints the engine metrics of VM, or of every VM of this host,\n"
	      "once in the Prometheus text format (label vm=\"NAME\"; docs/METRICS.md).\n"
	      "--metrics HOST:PORT serves the same for every VM of this host on\n"
	      "http://HOST:PORT/metrics until SIGTERM or SIGINT (port 0: any, printed).\n", f);
}

/* VMs of `giantvm run` live in the runtime dir, those of the giantvm-qemu
 * wrapper (libvirt) in GVM_WRAPPER_RUN_DIR: stat looks in both. */
static int find_vm(const char *dir, char *name, size_t len, int n, char *vdir, size_t vlen)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d)
		return n;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		char path[PATH_MAX];
		if (l < 6 || strcmp(de->d_name + l - 5, ".sock"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (!gvm_ctl_in_use(path))
			continue;
		if (n++ == 0) {
			/* the only one, unless another follows: then it is listed too */
			snprintf(name, len, "%.*s", (int)(l - 5), de->d_name);
			snprintf(vdir, vlen, "%s", dir);
			continue;
		}
		if (n == 2)
			fprintf(stderr, "giantvm stat: several VMs are running; name one:\n  %s\n", name);
		fprintf(stderr, "  %.*s\n", (int)(l - 5), de->d_name);
	}
	closedir(d);
	return n;
}

static double num(const char *json, const char *key)
{
	double v = 0;
	gvm_json_number(json, key, &v);
	return v;
}

static volatile sig_atomic_t exporter_stop;

static void on_stop(int sig)
{
	(void)sig;
	exporter_stop = 1;
}

static int render_all(struct gvm_prom *p, void *arg)
{
	struct vm_stat *v;
	int n = vm_stats_collect(arg, STAT_TIMEOUT_MS, &v), r;

	if (n < 0)
		return n;
	r = vm_metrics_render(p, v, (unsigned)n);
	vm_stats_free(v, (unsigned)n);
	return r;
}

static int print_prometheus(const char *name)
{
	struct gvm_prom p;
	struct vm_stat *v;
	int n = vm_stats_collect(name, STAT_TIMEOUT_MS, &v), rc = 1;

	if (n < 0) {
		fprintf(stderr, "giantvm stat: the runtime directory: %s\n", strerror(-n));
		return 1;
	}
	if (name && n == 0) {
		fprintf(stderr, "giantvm stat: VM '%s' is not running\n", name);
		return 1;
	}
	if (name && !v[0].json) {
		fprintf(stderr, "giantvm stat: VM '%s' did not answer STAT within %d ms\n", name, STAT_TIMEOUT_MS);
		vm_stats_free(v, (unsigned)n);
		return 1;
	}
	gvm_prom_init(&p, 64u << 20);
	if (vm_metrics_render(&p, v, (unsigned)n) < 0) {
		fprintf(stderr, "giantvm stat: %s\n", strerror(-p.err));
	} else if (fwrite(p.buf, 1, p.len, stdout) != p.len || fflush(stdout)) {
		fprintf(stderr, "giantvm stat: stdout: %s\n", strerror(errno));
	} else {
		rc = 0;
	}
	gvm_prom_fini(&p);
	vm_stats_free(v, (unsigned)n);
	return rc;
}

/* The exporter: every VM of this host, on every GET /metrics. */
static int serve_metrics(const char *listen)
{
	struct gvm_http_opts ho = { .listen = listen, .render = render_all, .timeout_ms = 30000,
				    .max_body = 64u << 20 };
	struct sigaction sa = { .sa_handler = on_stop };
	struct gvm_http *h;
	char err[256];
	int r;

	r = gvm_http_open(&h, &ho, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "giantvm stat: %s\n", err);
		/* -EINVAL: an address that is none (bad usage); else it could not
		 * be had here (in use, no permission, ...) */
		return r == -EINVAL ? GVM_EXIT_USAGE : 1;
	}
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
		fprintf(stderr, "giantvm stat: sigaction: %s\n", strerror(errno));
		gvm_http_close(h);
		return 1;
	}
	printf("giantvm stat: metrics of this host's VMs on http://%s/metrics\n", gvm_http_name(h));
	fflush(stdout);
	while (!exporter_stop) {
		/* Bounded waits: a signal between the check and the wait is seen within a second. */
		r = gvm_http_service(h, 1000);
		if (r < -1) {
			fprintf(stderr, "giantvm stat: metrics: %s\n", strerror(-r));
			break;
		}
	}
	gvm_http_close(h);
	return r < -1;
}

int cmd_stat(int argc, char **argv)
{
	char dir[PATH_MAX - 64], vdir[PATH_MAX - 64], path[PATH_MAX], vm[128] = "", *buf;
	const char *name = NULL, *metrics = NULL;
	int json = 0, prom = 0, fd, rc = 1;
	long count = -1;

	for (int i = 1; i < argc; i++) {
		const char *v;
		uint64_t n;
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "--prometheus")) {
			prom = 1;
		} else if ((v = cli_optval(argc, argv, &i, "--metrics"))) {
			metrics = v;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if ((v = cli_optval(argc, argv, &i, "--count"))) {
			if (gvm_parse_u64(v, 1, LONG_MAX, &n)) {
				fprintf(stderr, "giantvm stat: --count '%s': a positive whole number\n", v);
				return GVM_EXIT_USAGE;
			}
			count = (long)n;
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "giantvm stat: unknown option '%s'\n", argv[i]);
			usage(stderr);
			return GVM_EXIT_USAGE;
		} else if (!name) {
			name = argv[i];
		} else {
			fprintf(stderr, "giantvm stat: one VM at a time ('%s', then '%s')\n", name, argv[i]);
			usage(stderr);
			return GVM_EXIT_USAGE;
		}
	}
	if (metrics && (name || json || prom || count >= 0)) {
		fprintf(stderr, "giantvm stat: --metrics serves every VM of this host; it takes no VM, "
				"--json, --prometheus or --count\n");
		return GVM_EXIT_USAGE;
	}
	if (prom && (json || count >= 0)) {
		fprintf(stderr, "giantvm stat: --prometheus prints once; it takes no --json or --count\n");
		return GVM_EXIT_USAGE;
	}
	if (metrics)
		return serve_metrics(metrics);
	if (prom)
		return print_prometheus(name);
	if (gvm_runtime_dir(dir, sizeof(dir))) {
		fprintf(stderr, "giantvm stat: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	snprintf(vdir, sizeof(vdir), "%s", dir);
	if (!name) {
		int n = find_vm(dir, vm, sizeof(vm), 0, vdir, sizeof(vdir));
		if (strcmp(dir, GVM_WRAPPER_RUN_DIR))
			n = find_vm(GVM_WRAPPER_RUN_DIR, vm, sizeof(vm), n, vdir, sizeof(vdir));
		if (n == 0) {
			fprintf(stderr, "giantvm stat: no VM started by `giantvm run` or giantvm-qemu is running "
					"(%s, %s)\n", dir, GVM_WRAPPER_RUN_DIR);
			return 1;
		}
		if (n > 1)
			return 1;
		name = vm;
	} else {
		snprintf(path, sizeof(path), "%s/%s.sock", dir, name);
		if (!gvm_ctl_in_use(path)) {
			snprintf(path, sizeof(path), "%s/%s.sock", GVM_WRAPPER_RUN_DIR, name);
			if (gvm_ctl_in_use(path))
				snprintf(vdir, sizeof(vdir), "%s", GVM_WRAPPER_RUN_DIR);
		}
	}
	snprintf(path, sizeof(path), "%s/%s.sock", vdir, name);
	fd = gvm_ctl_connect(path, 0);
	if (fd < 0) {
		fprintf(stderr, "giantvm stat: VM '%s' is not running (%s: %s)\n", name, path, strerror(-fd));
		return 1;
	}
	buf = malloc(GVM_CTL_REPLY_MAX);
	if (!buf)
		goto out;
	if (json) {
		if (gvm_ctl_command(fd, GVM_CTL_CMD_STAT "\n", buf, GVM_CTL_REPLY_MAX) || strncmp(buf, "{", 1)) {
			fprintf(stderr, "giantvm stat: %s\n", buf);
			goto out;
		}
		printf("%s\n", buf);
		rc = 0;
		goto out;
	}
	double prev_f = 0, prev_b = 0, prev_e = 0, prev_w = 0;
	for (long k = 0; count < 0 || k <= count; k++) {
		if (gvm_ctl_command(fd, GVM_CTL_CMD_STAT "\n", buf, GVM_CTL_REPLY_MAX) || strncmp(buf, "{", 1)) {
			if (k)
				rc = 0; /* the VM went away */
			else
				fprintf(stderr, "giantvm stat: %s\n", buf);
			goto out;
		}
		double f = num(buf, "faults"), b = num(buf, "bytes_in"), e = num(buf, "evictions"),
		       w = num(buf, "writebacks");
		if (k % 20 == 0)
			printf("%8s %9s %9s %12s %10s %8s %8s %9s %9s %6s %7s %5s %8s %6s %7s %8s\n", "uptime",
			       "faults/s", "MiB/s in", "resident", "budget", "evict/s", "wback/s", "p50 us",
			       "p99 us", "errors", "nodes", "down", "underrep", "window", "pf hit", "rejected");
		if (k > 0 || count == 0)
			printf("%8.0f %9.0f %9.1f %12.0f %10.0f %8.0f %8.0f %9.1f %9.1f %6.0f %3.0f/%-3.0f %5.0f %8.0f "
			       "%6.0f %6.0f%% %8.0f\n",
			       num(buf, "uptime_s"), f - prev_f, (b - prev_b) / 1048576.0,
			       num(buf, "resident_pages"), num(buf, "budget_pages"), e - prev_e, w - prev_w,
			       num(buf, "fault_p50_us"), num(buf, "fault_p99_us"), num(buf, "errors"),
			       num(buf, "nodes_connected"), num(buf, "nodes"), num(buf, "nodes_down"),
			       num(buf, "under_replicated_stripes"), num(buf, "window_pages"),
			       100.0 * num(buf, "prefetch_hit_rate"), num(buf, "pages_rejected"));
		fflush(stdout);
		prev_f = f, prev_b = b, prev_e = e, prev_w = w;
		if (count >= 0 && k == count)
			break;
		sleep(1);
	}
	rc = 0;
out:
	free(buf);
	close(fd);
	return rc;
}
