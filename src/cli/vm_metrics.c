/*
 * VM engine metrics in the Prometheus text format, from the STAT replies of
 * the preload libraries' control sockets (the JSON of gvm_stats_json). The
 * text format wants each family once, so the replies of every VM are read
 * first and the families written one by one, a sample per VM in each.
 */
#include "vm_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "giantvm_ctl.h"
#include "qemu.h"

/* The value after "key": in [json, end), or NULL. */
static const char *jkey(const char *json, const char *end, const char *key)
{
	char pat[80];
	size_t n = (size_t)snprintf(pat, sizeof(pat), "\"%s\":", key);

	for (const char *p = json; (p = strstr(p, pat)) && p < end; p += n)
		if (p + n < end)
			return p + n;
	return NULL;
}

static int jnum(const char *json, const char *end, const char *key, double *out)
{
	const char *v = jkey(json, end, key);
	char *e;

	if (!v)
		return -ENOENT;
	*out = strtod(v, &e);
	return e == v ? -EINVAL : 0;
}

/* An array of non-negative integers; returns how many (at most max), or -errno. */
static int jarray(const char *json, const char *end, const char *key, uint64_t *out, unsigned max)
{
	const char *v = jkey(json, end, key);
	unsigned n = 0;
	char *e;

	if (!v || *v != '[')
		return -ENOENT;
	v++;
	while (*v && *v != ']' && v < end) {
		if (n == max)
			return -E2BIG;
		out[n++] = strtoull(v, &e, 10);
		if (e == v)
			return -EINVAL;
		v = e;
		if (*v == ',')
			v++;
	}
	return *v == ']' ? (int)n : -EINVAL;
}

/* A string value (no escapes in what the engine writes) into buf. */
static int jstr(const char *json, const char *end, const char *key, char *buf, size_t len)
{
	const char *v = jkey(json, end, key), *q;

	if (!v || *v != '"' || !(q = strchr(v + 1, '"')) || q > end || (size_t)(q - v - 1) >= len)
		return -ENOENT;
	memcpy(buf, v + 1, (size_t)(q - v - 1));
	buf[q - v - 1] = 0;
	return 0;
}

/* Where the top-level figures end (the per-node array comes last). */
static const char *top_end(const char *json)
{
	const char *pn = strstr(json, "\"per_node\":");

	return pn ? pn : json + strlen(json);
}

static int vm_ok(const struct vm_stat *v)
{
	double f;

	return v->json && v->json[0] == '{' && jnum(v->json, top_end(v->json), "faults", &f) == 0;
}

/* One number family: a sample per readable VM of top-level `key` x scale. */
struct simple {
	const char *name, *type, *key, *help;
	double scale;
	int skip_zero;             /* absent for a VM whose value is 0 (e.g. no budget) */
};

static const struct simple simples[] = {
	{ "giantvm_vm_uptime_seconds", "gauge", "uptime_s", "Seconds since the VM's engine started.", 1, 0 },
	{ "giantvm_vm_fetched_pages_total", "counter", "pages_fetched",
	  "Pages installed from the pool (zero pages included).", 1, 0 },
	{ "giantvm_vm_fetched_zero_pages_total", "counter", "zero_pages",
	  "Of the fetched pages, those the pool holds as zero (no page bytes sent).", 1, 0 },
	{ "giantvm_vm_local_zero_pages_total", "counter", "local_zero_pages",
	  "Pages zero-filled locally, without asking the pool (a fresh region's, discarded ones).", 1, 0 },
	{ "giantvm_vm_discarded_pages_total", "counter", "discarded_pages",
	  "Pages the VM's owner discarded (balloon, free page reporting): zero from then on, never fetched.", 1, 0 },
	{ "giantvm_vm_prefetched_pages_total", "counter", "readahead_pages",
	  "Pages fetched ahead of any fault (readahead of sequential runs).", 1, 0 },
	{ "giantvm_vm_prefetch_hits_total", "counter", "prefetch_hits",
	  "Prefetched pages held back as probes that the guest then touched.", 1, 0 },
	{ "giantvm_vm_prefetch_misses_total", "counter", "prefetch_misses",
	  "Prefetched pages held back as probes that the guest never touched.", 1, 0 },
	{ "giantvm_vm_fetch_window_pages", "gauge", "window_pages",
	  "Pages a fault off any sequential run fetches now (adapts).", 1, 0 },
	{ "giantvm_vm_read_then_write_installs_total", "counter", "rmw_installs",
	  "Read faults installed writable because a write was expected next.", 1, 0 },
	{ "giantvm_vm_evicted_pages_total", "counter", "evictions",
	  "Pages dropped from local memory to stay under the budget.", 1, 0 },
	{ "giantvm_vm_written_back_pages_total", "counter", "writebacks",
	  "Dirty pages written back to the pool.", 1, 0 },
	{ "giantvm_vm_clean_dropped_pages_total", "counter", "clean_drops",
	  "Evicted pages dropped without a write (the pool had them).", 1, 0 },
	{ "giantvm_vm_room_waits_total", "counter", "room_waits",
	  "Faults that waited for the evictor to make room under the budget.", 1, 0 },
	{ "giantvm_vm_poll_cpu_seconds_total", "counter", "poll_ms",
	  "CPU time the poller spent keeping a CPU awake through fault bursts (SCHED_IDLE).", 0.001, 0 },
	{ "giantvm_vm_received_bytes_total", "counter", "bytes_in", "Page bytes received from the pool.", 1, 0 },
	{ "giantvm_vm_sent_bytes_total", "counter", "bytes_out", "Page bytes written to the pool.", 1, 0 },
	{ "giantvm_vm_errors_total", "counter", "errors", "Failed requests and lost connections.", 1, 0 },
	{ "giantvm_vm_lost_pages_total", "counter", "lost_pages",
	  "Pages given up on (no replica within the deadline): poisoned or fatal.", 1, 0 },
	{ "giantvm_vm_resident_pages", "gauge", "resident_pages", "Guest pages resident in local memory.", 1, 0 },
	{ "giantvm_vm_resident_bytes", "gauge", "resident_pages", "Bytes of the resident guest pages.",
	  GVM_PAGE_SIZE, 0 },
	{ "giantvm_vm_budget_bytes", "gauge", "budget_pages",
	  "The local memory budget (--local-mem); absent when unlimited.", GVM_PAGE_SIZE, 1 },
	{ "giantvm_vm_nodes", "gauge", "nodes", "Memory nodes in the VM's pool.", 1, 0 },
	{ "giantvm_vm_nodes_connected", "gauge", "nodes_connected", "Nodes with an open connection.", 1, 0 },
	{ "giantvm_vm_nodes_down", "gauge", "nodes_down", "Nodes whose connection failed (down).", 1, 0 },
	{ "giantvm_vm_under_replicated_stripes", "gauge", "under_replicated_stripes",
	  "Stripes some replica may lack (re-sync pending).", 1, 0 },
	{ "giantvm_vm_resynced_stripes_total", "counter", "resynced_stripes",
	  "Stripes copied to a replica that came back.", 1, 0 },
	{ "giantvm_vm_rejected_pages_total", "counter", "pages_rejected",
	  "Sealed pages a node returned that failed verification (never installed).", 1, 0 },
	{ "giantvm_vm_seal_version_bytes", "gauge", "seal_version_bytes",
	  "Engine memory for sealed pages' versions; absent when pages are not sealed.", 1, 1 },
};

/* Per-node figures: from the objects of "per_node". */
struct per_node {
	const char *name, *type, *key, *help;
	double scale;
};

static const struct per_node per_nodes[] = {
	{ "giantvm_vm_node_requests_total", "counter", "requests", "Requests sent to the node.", 1 },
	{ "giantvm_vm_node_received_bytes_total", "counter", "bytes_in", "Bytes received from the node.", 1 },
	{ "giantvm_vm_node_sent_bytes_total", "counter", "bytes_out", "Bytes sent to the node.", 1 },
	{ "giantvm_vm_node_errors_total", "counter", "errors", "Failed requests and connection losses.", 1 },
	{ "giantvm_vm_node_rtt_seconds", "gauge", "rtt_us", "Smoothed round-trip time to the node.", 1e-6 },
	{ "giantvm_vm_node_rejected_pages_total", "counter", "pages_rejected",
	  "Sealed pages this node returned that failed verification.", 1 },
};

/* Calls fn for each per-node object of a reply: [obj, end) and its name. */
static void each_node(const struct vm_stat *v, void (*fn)(struct gvm_prom *, const struct vm_stat *,
							   const char *, const char *, const char *,
							   const void *),
		      struct gvm_prom *p, const void *arg)
{
	const char *s = strstr(v->json, "\"per_node\":[");

	if (!s)
		return;
	s += strlen("\"per_node\":[");
	while (*s == '{') {
		const char *e = strchr(s, '}');
		char node[300];
		if (!e)
			return;
		if (jstr(s, e, "node", node, sizeof(node)) == 0)
			fn(p, v, s, e, node, arg);
		s = e + 1;
		if (*s == ',')
			s++;
	}
}

static void node_up(struct gvm_prom *p, const struct vm_stat *v, const char *obj, const char *end,
		    const char *node, const void *arg)
{
	char state[32], l[512];

	(void)arg;
	if (jstr(obj, end, "state", state, sizeof(state)) < 0 ||
	    gvm_prom_labels(l, sizeof(l), "vm", v->name, "node", node, NULL) < 0)
		return;
	gvm_prom_u64(p, "giantvm_vm_node_up", l, strcmp(state, "down") != 0);
}

static void node_num(struct gvm_prom *p, const struct vm_stat *v, const char *obj, const char *end,
		     const char *node, const void *arg)
{
	const struct per_node *pn = arg;
	char l[512];
	double d;

	if (jnum(obj, end, pn->key, &d) < 0 || gvm_prom_labels(l, sizeof(l), "vm", v->name, "node", node, NULL) < 0)
		return;
	if (pn->scale == 1)
		gvm_prom_u64(p, pn->name, l, d >= 0 ? (uint64_t)d : 0);
	else
		gvm_prom_f64(p, pn->name, l, d * pn->scale);
}

int vm_metrics_render(struct gvm_prom *p, const struct vm_stat *vms, unsigned n)
{
	char l[256];

	gvm_prom_family(p, "giantvm_vm_up", "gauge",
			"1 if the VM's engine answered this scrape's STAT, else 0 (its other figures are then absent).");
	for (unsigned i = 0; i < n; i++) {
		gvm_prom_labels(l, sizeof(l), "vm", vms[i].name, NULL);
		gvm_prom_u64(p, "giantvm_vm_up", l, vm_ok(&vms[i]));
	}
	gvm_prom_family(p, "giantvm_vm_faults_total", "counter",
			"userfaultfd faults handled, by kind: missing (page not resident) or "
			"write_protect (first write to a clean page, for dirty tracking).");
	for (unsigned i = 0; i < n; i++) {
		double f = 0, wp = 0, miss;
		if (!vm_ok(&vms[i]))
			continue;
		const char *end = top_end(vms[i].json);
		jnum(vms[i].json, end, "faults", &f);
		jnum(vms[i].json, end, "wp_faults", &wp);
		if (jnum(vms[i].json, end, "missing_faults", &miss) < 0)
			miss = f - wp;
		gvm_prom_labels(l, sizeof(l), "vm", vms[i].name, "kind", "missing", NULL);
		gvm_prom_u64(p, "giantvm_vm_faults_total", l, miss > 0 ? (uint64_t)miss : 0);
		gvm_prom_labels(l, sizeof(l), "vm", vms[i].name, "kind", "write_protect", NULL);
		gvm_prom_u64(p, "giantvm_vm_faults_total", l, wp > 0 ? (uint64_t)wp : 0);
	}
	gvm_prom_family(p, "giantvm_vm_fault_latency_seconds", "histogram",
			"Time from a fault being read to its page being installed (the thread woken).");
	for (unsigned i = 0; i < n; i++) {
		uint64_t le[GVM_LAT_BUCKETS], counts[GVM_LAT_BUCKETS + 1] = { 0 };
		double sum = 0;
		int ok = 1;
		if (!vm_ok(&vms[i]))
			continue;
		const char *end = top_end(vms[i].json);
		/* Bounds other than this build's (another version's preload): skip it. */
		if (jarray(vms[i].json, end, "fault_latency_le_ns", le, GVM_LAT_BUCKETS) != (int)GVM_LAT_BUCKETS ||
		    jarray(vms[i].json, end, "fault_latency_counts", counts, GVM_LAT_BUCKETS + 1) !=
			    (int)GVM_LAT_BUCKETS + 1 ||
		    jnum(vms[i].json, end, "fault_latency_sum_ns", &sum) < 0)
			continue;
		for (unsigned k = 0; k < GVM_LAT_BUCKETS; k++)
			ok &= le[k] == gvm_lat_bound_ns(k);
		if (!ok)
			continue;
		gvm_prom_labels(l, sizeof(l), "vm", vms[i].name, NULL);
		gvm_prom_lat_histogram(p, "giantvm_vm_fault_latency_seconds", l, counts, (uint64_t)sum);
	}
	for (size_t k = 0; k < sizeof(simples) / sizeof(simples[0]); k++) {
		const struct simple *sm = &simples[k];
		int head = 0;
		for (unsigned i = 0; i < n; i++) {
			double d;
			if (!vm_ok(&vms[i]) || jnum(vms[i].json, top_end(vms[i].json), sm->key, &d) < 0 ||
			    (sm->skip_zero && d == 0))
				continue;
			if (!head++)
				gvm_prom_family(p, sm->name, sm->type, sm->help);
			gvm_prom_labels(l, sizeof(l), "vm", vms[i].name, NULL);
			if (sm->scale == 1 && d == (double)(uint64_t)d)
				gvm_prom_u64(p, sm->name, l, (uint64_t)d);
			else
				gvm_prom_f64(p, sm->name, l, d * sm->scale);
		}
	}
	gvm_prom_family(p, "giantvm_vm_node_up", "gauge",
			"Per node the VM has talked to: 0 if its connection is down (failed), else 1.");
	for (unsigned i = 0; i < n; i++)
		if (vm_ok(&vms[i]))
			each_node(&vms[i], node_up, p, NULL);
	for (size_t k = 0; k < sizeof(per_nodes) / sizeof(per_nodes[0]); k++) {
		gvm_prom_family(p, per_nodes[k].name, per_nodes[k].type, per_nodes[k].help);
		for (unsigned i = 0; i < n; i++)
			if (vm_ok(&vms[i]))
				each_node(&vms[i], node_num, p, &per_nodes[k]);
	}
	gvm_prom_family(p, "giantvm_stat_build_info", "gauge", "Always 1; the version of the giantvm reporting.");
	gvm_prom_labels(l, sizeof(l), "version", gvm_version(), NULL);
	gvm_prom_u64(p, "giantvm_stat_build_info", l, 1);
	return p->err;
}

/* ---------------------------------------------------------------- collecting */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* STAT on the VM's control socket: the reply line (malloc'd), or NULL. */
static char *vm_stat_one(const char *path, int timeout_ms)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	size_t len = 0, cap = 65536;
	char *buf = NULL;
	int fd = gvm_ctl_connect(path, 0);

	if (fd < 0)
		return NULL;
	if (send(fd, GVM_CTL_CMD_STAT "\n", strlen(GVM_CTL_CMD_STAT "\n"), MSG_NOSIGNAL) !=
	    (ssize_t)strlen(GVM_CTL_CMD_STAT "\n"))
		goto fail;
	buf = malloc(cap);
	if (!buf)
		goto fail;
	for (;;) {
		uint64_t now = now_ms();
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int r;

		if (now >= end)
			goto fail;
		r = poll(&pf, 1, (int)(end - now));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			goto fail;
		if (len + 1 >= cap) {
			if (cap >= GVM_CTL_REPLY_MAX)
				goto fail;
			char *b = realloc(buf, cap * 2);
			if (!b)
				goto fail;
			buf = b;
			cap *= 2;
		}
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		len += (size_t)n;
		buf[len] = 0;
		char *nl = memchr(buf + len - (size_t)n, '\n', (size_t)n);
		if (nl) {
			*nl = 0;
			close(fd);
			return buf;
		}
	}
fail:
	free(buf);
	close(fd);
	return NULL;
}

static int cmp_vm(const void *a, const void *b)
{
	return strcmp(((const struct vm_stat *)a)->name, ((const struct vm_stat *)b)->name);
}

/* Adds the VMs whose control sockets are in dir. Returns 0 or -errno. */
static int collect_dir(const char *dir, const char *only, int timeout_ms, struct vm_stat **v,
		       unsigned *n, unsigned *cap)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 6 || l - 5 >= sizeof((*v)->name) || strcmp(de->d_name + l - 5, ".sock"))
			continue;
		if (only && (strncmp(de->d_name, only, l - 5) || only[l - 5]))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (!only && !gvm_ctl_in_use(path))
			continue; /* left behind by a VM that is gone */
		if (*n == *cap) {
			unsigned nc = *cap ? *cap * 2 : 8;
			struct vm_stat *nv = realloc(*v, nc * sizeof(**v));
			if (!nv) {
				closedir(d);
				return -ENOMEM;
			}
			*v = nv;
			*cap = nc;
		}
		memcpy((*v)[*n].name, de->d_name, l - 5);
		(*v)[*n].name[l - 5] = 0;
		(*v)[*n].json = vm_stat_one(path, timeout_ms);
		(*n)++;
	}
	closedir(d);
	return 0;
}

/* The VMs of `giantvm run` (runtime dir) and of the giantvm-qemu wrapper
 * (libvirt domains, GVM_WRAPPER_RUN_DIR), as `giantvm stat` finds them. */
int vm_stats_collect(const char *only, int timeout_ms, struct vm_stat **out)
{
	char dir[PATH_MAX - 160];
	struct vm_stat *v = NULL;
	unsigned n = 0, cap = 0;
	int r;

	*out = NULL;
	if (gvm_runtime_dir(dir, sizeof(dir)))
		return -errno;
	r = collect_dir(dir, only, timeout_ms, &v, &n, &cap);
	if (r == 0 && strcmp(dir, GVM_WRAPPER_RUN_DIR)) {
		r = collect_dir(GVM_WRAPPER_RUN_DIR, only, timeout_ms, &v, &n, &cap);
		if (r == -ENOENT || r == -EACCES)
			r = 0; /* no libvirt VMs here, or not ours to see */
	}
	if (r < 0) {
		vm_stats_free(v, n);
		return r;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_vm);
	*out = v;
	return (int)n;
}

void vm_stats_free(struct vm_stat *v, unsigned n)
{
	for (unsigned i = 0; v && i < n; i++)
		free(v[i].json);
	free(v);
}
