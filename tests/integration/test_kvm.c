/*
 * The KVM fault path: a guest running straight on /dev/kvm (no QEMU) whose
 * RAM is a region attached to the fault engine, over real memory servers.
 *
 * Under TCG a missing guest page is touched by a user-space access; under
 * KVM the kernel resolves the guest page for the vCPU (get_user_pages ->
 * handle_userfault), so the fault is raised inside KVM_RUN and the vCPU
 * thread sleeps in the kernel until the engine thread installs the page.
 * This test proves that path end to end: a 16-bit real-mode guest stores
 * and compares every word of a region 4x the local memory budget, so pages
 * are fetched, written back, evicted (their KVM mappings invalidated) and
 * fetched again while the vCPU runs; every guest read-back and a final host
 * read-back must see exactly what the guest wrote. Both drop paths run
 * (UFFDIO_MOVE and MADV_DONTNEED), as in test_evict.
 *
 * Exit 77 (SKIP) when the host has no usable KVM: /dev/kvm missing or not
 * openable, KVM_CREATE_VM failing, or a one-instruction guest (hlt) on
 * plain memory not reaching KVM_EXIT_HLT. Anything that goes wrong after
 * that is a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "giantvm.h"
#include "servers.h"
#include "test.h"
#include "util.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid /* glibc < 2.35 does not name it */
#endif

#define SKIP_EXIT 77

#define PAGE        4096ul
#define REGION_SIZE (16ul << 20)            /* 4096 pages ... */
#define BUDGET      (4ul << 20)             /* ... 4x the smallest budget evict.c accepts */
#define CHUNK       (64ul << 10)            /* what one run covers through es:[di] */
#define FIRST_CHUNK 1                       /* chunk 0 holds the code page */
#define N_CHUNKS    (REGION_SIZE / CHUNK)
#define RUN_TIMEOUT_S 60                    /* one KVM_RUN that long: the guest is stuck */

/*
 * The guest, hand-assembled 16-bit code at guest physical 0 (CS base 0).
 * One run covers one 64 KiB chunk: the host sets ES's base to the chunk
 * with KVM_SET_SREGS (real-mode selectors reach only the first 1 MiB + 64
 * KiB, the region is 16 MiB), AX to the value of the chunk's first page and
 * DX to 16; page k of the chunk holds value + k in every word.
 * String instructions, not a store loop: kvm_pvm emulates real mode at about
 * 1 us per instruction, and rep stosw / repe scasw cover 64 KiB in ~10 ms
 * where a mov/inc/jnz loop takes ~200 ms.
 */
#define WRITE_ENTRY 0x00
#define WRITE_HLT   0x0c   /* RIP after the hlt is WRITE_HLT + 1 */
#define READ_ENTRY  0x10
#define READ_HLT    0x25
#define PAGES_PER_RUN (CHUNK / PAGE)
static const uint8_t guest_code[] = {
	/* 0x00 write: */
	0x31, 0xff,             /* xor di,di                                   */
	0xfc,                   /* cld                                         */
	0xb9, 0x00, 0x08,       /* 0x03: mov cx,0x800   (words in a page)      */
	0xf3, 0xab,             /* rep stosw            (es:[di++] = ax)       */
	0x40,                   /* inc ax               (next page's value)    */
	0x4a,                   /* dec dx                                      */
	0x75, 0xf7,             /* 0x0a: jnz 0x03                              */
	0xf4,                   /* 0x0c: hlt                                   */
	0x90, 0x90, 0x90,
	/* 0x10 read: BX = pages with a word that is not their value */
	0x31, 0xff,             /* xor di,di                                   */
	0x31, 0xdb,             /* xor bx,bx                                   */
	0xfc,                   /* cld                                         */
	0xb9, 0x00, 0x08,       /* 0x15: mov cx,0x800                          */
	0xf3, 0xaf,             /* repe scasw           (stops at a mismatch)  */
	0x74, 0x01,             /* je 0x1d              (ZF: the last compared word matched) */
	0x43,                   /* inc bx                                      */
	0x01, 0xcf,             /* 0x1d: add di,cx      (skip the words left   */
	0x01, 0xcf,             /* add di,cx             after a mismatch)     */
	0x40,                   /* inc ax                                      */
	0x4a,                   /* dec dx                                      */
	0x75, 0xf0,             /* 0x23: jnz 0x15                              */
	0xf4,                   /* 0x25: hlt                                   */
};

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	size_t run_size;
	timer_t watchdog;
	int have_watchdog;
};

static void on_kick(int sig)
{
	(void)sig; /* only there to make KVM_RUN return EINTR */
}

/* A periodic signal to this thread while it is in KVM_RUN, so that a guest
 * that never halts (or a fault never served) cannot hang the test: each
 * kick makes KVM_RUN return EINTR and vcpu_run() checks its deadline. */
static int watchdog_init(struct vm *v)
{
	struct sigaction sa = { .sa_handler = on_kick }; /* no SA_RESTART */
	struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGUSR1 };

	sev.sigev_notify_thread_id = gettid();
	CHECK(sigemptyset(&sa.sa_mask) == 0);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
	CHECK(timer_create(CLOCK_MONOTONIC, &sev, &v->watchdog) == 0);
	v->have_watchdog = 1;
	return 0;
}

static int watchdog_arm(struct vm *v, int on)
{
	struct itimerspec its = { 0 };

	if (on)
		its.it_value = its.it_interval = (struct timespec){ .tv_sec = 1 };
	CHECK(timer_settime(v->watchdog, 0, &its, NULL) == 0);
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void vm_close(struct vm *v)
{
	if (v->have_watchdog)
		timer_delete(v->watchdog);
	if (v->run && v->run != MAP_FAILED)
		munmap(v->run, v->run_size);
	if (v->vcpu >= 0)
		close(v->vcpu);
	if (v->vm >= 0)
		close(v->vm);
	if (v->kvm >= 0)
		close(v->kvm);
	*v = (struct vm){ .kvm = -1, .vm = -1, .vcpu = -1 };
}

/*
 * A VM with guest physical [0, len) backed by mem, and one vCPU in real
 * mode. Returns 0, or 1 with *why set when the step that failed says the
 * host has no usable KVM (why is NULL for failures that are ours).
 */
static int vm_open(struct vm *v, void *mem, size_t len, const char **why)
{
	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = len, .userspace_addr = (uintptr_t)mem,
	};
	static char reason[96];
	int r;

	*v = (struct vm){ .kvm = -1, .vm = -1, .vcpu = -1 };
	*why = NULL;
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v->kvm < 0) {
		if (errno == ENOENT)
			snprintf(reason, sizeof(reason), "/dev/kvm does not exist");
		else
			snprintf(reason, sizeof(reason), "/dev/kvm cannot be opened: %s", strerror(errno));
		*why = reason;
		return 1;
	}
	r = ioctl(v->kvm, KVM_GET_API_VERSION, 0);
	if (r != KVM_API_VERSION) {
		*why = "/dev/kvm speaks another KVM API version";
		return 1;
	}
	v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
	if (v->vm < 0) {
		snprintf(reason, sizeof(reason), "KVM_CREATE_VM fails: %s", strerror(errno));
		*why = reason;
		return 1;
	}
	/* VMX without unrestricted guest runs real mode through vm86 and
	 * needs a TSS out of the guest's RAM; harmless elsewhere. */
	if (ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
		CHECK(ioctl(v->vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) == 0);
	CHECK(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &slot) == 0);
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	CHECK(v->vcpu >= 0);
	r = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	CHECK(r >= (int)sizeof(struct kvm_run));
	v->run_size = (size_t)r;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	CHECK(v->run != MAP_FAILED);
	return watchdog_init(v);
}

/*
 * Run the guest from `entry` with AX = ax, DX = PAGES_PER_RUN and ES based
 * at `es_base` until it halts. Returns 0 with the registers after the halt
 * in *out, or 1:
 * exit_reason (when not NULL) then holds the unexpected exit reason, or -1
 * if KVM_RUN itself failed.
 */
static int vcpu_run(struct vm *v, uint16_t entry, uint16_t ax, uint64_t es_base, struct kvm_regs *out,
		    int *exit_reason)
{
	struct kvm_sregs sr;
	struct kvm_regs regs = { .rip = entry, .rax = ax, .rdx = PAGES_PER_RUN, .rflags = 0x2 };
	double t0 = now_s();
	int r;

	if (exit_reason)
		*exit_reason = -1;
	CHECK(ioctl(v->vcpu, KVM_GET_SREGS, &sr) == 0);
	sr.cs.base = 0;
	sr.cs.selector = 0;
	sr.es.base = es_base;
	sr.es.selector = (uint16_t)(es_base >> 4); /* what real mode would say; the base is what counts */
	CHECK(ioctl(v->vcpu, KVM_SET_SREGS, &sr) == 0);
	CHECK(ioctl(v->vcpu, KVM_SET_REGS, &regs) == 0);
	if (watchdog_arm(v, 1))
		return 1;
	for (;;) {
		r = ioctl(v->vcpu, KVM_RUN, 0);
		if (r < 0 && errno == EINTR) {
			if (now_s() - t0 > RUN_TIMEOUT_S) {
				watchdog_arm(v, 0);
				fprintf(stderr, "  guest at 0x%" PRIx64 " did not halt within %d s\n",
					es_base, RUN_TIMEOUT_S);
				CHECK(!"KVM_RUN watchdog");
			}
			continue;
		}
		if (r == 0 && v->run->exit_reason == KVM_EXIT_INTR)
			continue; /* a kick that landed on the way in */
		break;
	}
	if (watchdog_arm(v, 0))
		return 1;
	CHECK(r == 0);
	if (exit_reason)
		*exit_reason = (int)v->run->exit_reason;
	if (v->run->exit_reason != KVM_EXIT_HLT) {
		if (v->run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
			fprintf(stderr, "  KVM internal error, suberror %u\n", v->run->internal.suberror);
		if (v->run->exit_reason == KVM_EXIT_FAIL_ENTRY)
			fprintf(stderr, "  entry failed, hardware reason 0x%llx\n",
				(unsigned long long)v->run->fail_entry.hardware_entry_failure_reason);
		CHECK_EQ(v->run->exit_reason, KVM_EXIT_HLT);
	}
	CHECK(ioctl(v->vcpu, KVM_GET_REGS, out) == 0);
	return 0;
}

/*
 * Can this host run a real-mode guest at all? A lone hlt on plain memory:
 * if that does not reach KVM_EXIT_HLT, the host's KVM is at fault, not the
 * engine. Returns 0 (usable) or 1 with *why set.
 */
static int kvm_usable(const char **why)
{
	static char reason[160];
	struct vm v;
	struct kvm_regs regs;
	uint8_t *mem = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int exit_reason, r;

	if (mem == MAP_FAILED) {
		*why = "cannot map 64 KiB for the probe guest";
		return 1;
	}
	mem[0] = 0xf4; /* hlt */
	r = vm_open(&v, mem, CHUNK, why);
	if (r && !*why)
		*why = "cannot set up a VM with one vCPU on /dev/kvm";
	if (!r && vcpu_run(&v, 0, 0, 0, &regs, &exit_reason)) {
		snprintf(reason, sizeof(reason),
			 exit_reason < 0 ? "KVM_RUN of a one-instruction real-mode guest fails"
					 : "a one-instruction real-mode guest (hlt) exits with reason %d, not HLT",
			 exit_reason);
		*why = reason;
		r = 1;
	}
	if (!r && regs.rip != 1) {
		*why = "a one-instruction real-mode guest halts at the wrong address";
		r = 1;
	}
	vm_close(&v);
	munmap(mem, CHUNK);
	return r;
}

/* The value of the first page of chunk c in pass `pass`: never 0 for any of
 * the chunk's pages (a page lost to zero must not pass), and 0x8000 away
 * from the other pass's (a page that missed a write-back must not pass). */
static uint16_t chunk_start(unsigned pass, uint64_t c)
{
	return (uint16_t)(1 + (gvm_mix64(c) + pass * 0x8000u) % (0x10000u - 2 * PAGES_PER_RUN));
}

/* Guest read-back of chunk c against pass `pass`: *bad = pages that differ. */
static int guest_read_chunk(struct vm *v, unsigned pass, uint64_t c, unsigned *bad)
{
	struct kvm_regs regs;

	if (vcpu_run(v, READ_ENTRY, chunk_start(pass, c), c * CHUNK, &regs, NULL))
		return 1;
	CHECK_EQ(regs.rip, READ_HLT + 1);
	CHECK_EQ(regs.rdx & 0xffff, 0);
	CHECK_EQ(regs.rdi & 0xffff, 0);
	*bad = (unsigned)(regs.rbx & 0xffff);
	return 0;
}

static int guest_read_all(struct vm *v, unsigned pass)
{
	unsigned bad;

	for (uint64_t c = FIRST_CHUNK; c < N_CHUNKS; c++) {
		if (guest_read_chunk(v, pass, c, &bad))
			return 1;
		if (bad)
			fprintf(stderr, "  pass %u chunk %" PRIu64 ": the guest found %u wrong pages\n", pass, c,
				bad);
		CHECK_EQ(bad, 0);
	}
	return 0;
}

/*
 * The guest writes every chunk with pass `pass`'s values. read_first: it
 * first reads the chunk back (previous pass), so that the pages are resident
 * and clean, write-protected, when it writes them: the write-protect faults
 * that track dirty pages are then raised in KVM too, and a write that
 * slipped past them would be lost at eviction (the read-back catches it).
 */
static int guest_write_all(struct vm *v, unsigned pass, int read_first)
{
	struct kvm_regs regs;
	unsigned bad;

	for (uint64_t c = FIRST_CHUNK; c < N_CHUNKS; c++) {
		if (read_first) {
			if (guest_read_chunk(v, pass - 1, c, &bad))
				return 1;
			CHECK_EQ(bad, 0);
		}
		if (vcpu_run(v, WRITE_ENTRY, chunk_start(pass, c), c * CHUNK, &regs, NULL))
			return 1;
		CHECK_EQ(regs.rip, WRITE_HLT + 1);
		CHECK_EQ(regs.rdx & 0xffff, 0); /* every page of the chunk */
		CHECK_EQ(regs.rdi & 0xffff, 0); /* ... to its end */
	}
	return 0;
}

/*
 * The guest's check is not vacuous, and the guest sees the host's stores:
 * the host changes one word (the last of a page, where repe scasw ends with
 * CX = 0, and one in the middle of another), the guest must count exactly
 * that page; restored, nothing.
 */
static int guest_sees_host_writes(struct vm *v, uint8_t *mem, unsigned pass)
{
	const struct { uint64_t chunk, page, off; } spots[] = {
		{ N_CHUNKS / 2, 3, PAGE - 2 },
		{ N_CHUNKS - 1, 0, 200 },
	};
	unsigned bad;

	for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
		uint8_t *w = mem + spots[i].chunk * CHUNK + spots[i].page * PAGE + spots[i].off;
		uint16_t good, wrong;

		memcpy(&good, w, 2);
		wrong = good ^ 0x0100;
		memcpy(w, &wrong, 2);
		if (guest_read_chunk(v, pass, spots[i].chunk, &bad))
			return 1;
		CHECK_EQ(bad, 1);
		memcpy(w, &good, 2);
		if (guest_read_chunk(v, pass, spots[i].chunk, &bad))
			return 1;
		CHECK_EQ(bad, 0);
	}
	return 0;
}

/* The host's own read-back of every word (these reads fault through the
 * engine too, in user space). */
static int host_verify(const uint8_t *mem, unsigned pass)
{
	CHECK(memcmp(mem, guest_code, sizeof(guest_code)) == 0);
	for (uint64_t c = FIRST_CHUNK; c < N_CHUNKS; c++) {
		for (uint64_t k = 0; k < PAGES_PER_RUN; k++) {
			uint16_t want = (uint16_t)(chunk_start(pass, c) + k);
			uint64_t gpa = c * CHUNK + k * PAGE;
			for (uint64_t off = 0; off < PAGE; off += 2) {
				uint16_t got;
				memcpy(&got, mem + gpa + off, 2);
				if (got != want) {
					fprintf(stderr, "  pass %u: guest physical 0x%" PRIx64
						" holds 0x%04x, not 0x%04x\n", pass, gpa + off, got, want);
					CHECK_EQ(got, want);
				}
			}
		}
	}
	return 0;
}

static void print_delta(const char *what, const struct gvm_stats *a, const struct gvm_stats *b, double secs)
{
	printf("  %-23s %6.2f s: faults %6" PRIu64 " (wp %5" PRIu64 "), fetched %6" PRIu64
	       ", write-backs %6" PRIu64 ", evictions %6" PRIu64 ", resident %" PRIu64 "\n",
	       what, secs, b->faults - a->faults, b->wp_faults - a->wp_faults,
	       b->pages_fetched - a->pages_fetched, b->writebacks - a->writebacks,
	       b->evictions - a->evictions, b->resident_pages);
}

/*
 * Two passes of: the guest writes every chunk (in pass 1 each chunk right
 * after reading it), the guest reads every chunk back, the host reads every
 * word back. Every phase runs over 4x the budget, so each one must evict,
 * and each guest phase must fault.
 */
static int passes(struct vm *v, struct gvm_engine *e, uint8_t *mem)
{
	struct gvm_stats st0, st1, st_begin;
	double t0, t_begin = now_s();
	char what[32];

	CHECK(gvm_engine_stats(e, &st_begin) == 0);
	st0 = st_begin;
	for (unsigned pass = 0; pass < 2; pass++) {
		t0 = now_s();
		if (guest_write_all(v, pass, pass > 0))
			return 1;
		CHECK(gvm_engine_stats(e, &st1) == 0);
		snprintf(what, sizeof(what), "pass %u guest %s", pass, pass ? "read+write" : "write");
		print_delta(what, &st0, &st1, now_s() - t0);
		/* The host did nothing but KVM ioctls: these came through KVM. */
		CHECK(st1.faults > st0.faults);
		if (pass > 0)
			CHECK(st1.wp_faults > st0.wp_faults);
		CHECK(st1.pages_fetched > st0.pages_fetched);
		CHECK(st1.evictions > st0.evictions && st1.writebacks > st0.writebacks);
		st0 = st1;

		t0 = now_s();
		if (guest_read_all(v, pass))
			return 1;
		CHECK(gvm_engine_stats(e, &st1) == 0);
		snprintf(what, sizeof(what), "pass %u guest read", pass);
		print_delta(what, &st0, &st1, now_s() - t0);
		/* Pages written back during the write phase come back from the pool. */
		CHECK(st1.faults > st0.faults);
		CHECK(st1.pages_fetched - st1.zero_pages > st0.pages_fetched - st0.zero_pages);
		CHECK(st1.evictions > st0.evictions);
		st0 = st1;

		t0 = now_s();
		if (host_verify(mem, pass))
			return 1;
		CHECK(gvm_engine_stats(e, &st1) == 0);
		snprintf(what, sizeof(what), "pass %u host read", pass);
		print_delta(what, &st0, &st1, now_s() - t0);
		st0 = st1;
	}
	if (guest_sees_host_writes(v, mem, 1))
		return 1;
	CHECK(gvm_engine_stats(e, &st0) == 0);
	print_delta("all passes", &st_begin, &st0, now_s() - t_begin);
	printf("  totals since open: faults %" PRIu64 ", pages fetched %" PRIu64 " (zero %" PRIu64
	       "), write-backs %" PRIu64 ", evictions %" PRIu64 ", clean drops %" PRIu64
	       ", wp faults %" PRIu64 ", budget %" PRIu64 " pages, fault p50 %" PRIu64 " us p99 %" PRIu64
	       " us\n",
	       st0.faults, st0.pages_fetched, st0.zero_pages, st0.writebacks, st0.evictions,
	       st0.clean_drops, st0.wp_faults, st0.budget_pages, st0.fault_p50_ns / 1000,
	       st0.fault_p99_ns / 1000);
	CHECK(st0.faults > 0 && st0.pages_fetched > 0 && st0.writebacks > 0 && st0.evictions > 0);
	CHECK_EQ(st0.errors, 0);
	CHECK_EQ(st0.lost_pages, 0);
	return 0;
}

/* Pool, engine, a region of REGION_SIZE attached to it, a VM on the region;
 * then the passes. single_page: no prefetch and no readahead, so that every
 * page the guest touches is a fault of its own raised in KVM. sealed:
 * pages sealed (docs/SECURITY.md), replies opened on the opener thread. */
static int guest_over_budget(int drop, int single_page, int sealed)
{
	struct gvm_pool_opts po = { .nodes = test_nodes, .n_nodes = 3, .replicas = 2 };
	struct gvm_engine_opts eo = { .local_mem = BUDGET, .seal = sealed ? GVM_SEAL_ON : GVM_SEAL_OFF };
	struct gvm_pool *pool;
	struct gvm_engine *e;
	struct vm v;
	const char *why;
	uint8_t *mem, key[GVM_REGION_KEY_SIZE];
	char err[256], name[32];
	int r = 1, rc;

	gvm_test_set_drop(drop);
	if (single_page) {
		eo.prefetch = 1;
		eo.readahead = -1u;
	}
	CHECK(test_servers_up(3) == 0);
	CHECK(gvm_random(key, sizeof(key)) == 0);
	mem = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED);
	if (gvm_pool_open(&pool, &po, err, sizeof(err))) {
		fprintf(stderr, "  FAIL %s:%d: gvm_pool_open: %s\n", __FILE__, __LINE__, err);
		goto unmap_mem;
	}
	rc = gvm_engine_open(&e, pool, &eo);
	if (rc) {
		fprintf(stderr, "  FAIL %s:%d: gvm_engine_open: %s\n", __FILE__, __LINE__, strerror(-rc));
		goto close_pool;
	}
	printf("  engine: %s\n", gvm_engine_features(e));
	snprintf(name, sizeof(name), "ram-%s%s%s", gvm_drop_name[drop], single_page ? "-single" : "",
		 sealed ? "-sealed" : "");
	rc = gvm_engine_attach(e, gvm_region_id("test-kvm", name), key, mem, REGION_SIZE);
	if (rc) {
		fprintf(stderr, "  FAIL %s:%d: gvm_engine_attach: %s\n", __FILE__, __LINE__, strerror(-rc));
		goto close_engine;
	}
	/* Before any KVM: this store faults in user space and is served by
	 * the engine; from here on the guest's own accesses fault in KVM. */
	memcpy(mem, guest_code, sizeof(guest_code));
	if (vm_open(&v, mem, REGION_SIZE, &why)) {
		fprintf(stderr, "  FAIL %s:%d: VM on the engine's region: %s\n", __FILE__, __LINE__,
			why ? why : "see above");
		goto close_vm;
	}
	r = passes(&v, e, mem);
close_vm:
	vm_close(&v);
close_engine:
	gvm_engine_close(e);
close_pool:
	gvm_pool_close(pool);
unmap_mem:
	/* Last: the engine may be installing pages into the range until closed. */
	munmap(mem, REGION_SIZE);
	return r;
}

static int test_guest_over_budget_batch(void) { return guest_over_budget(GVM_DROP_BATCH, 0, 0); }
static int test_guest_over_budget_move(void) { return guest_over_budget(GVM_DROP_MOVE, 0, 0); }
static int test_guest_over_budget_dontneed(void) { return guest_over_budget(GVM_DROP_DONTNEED, 0, 0); }
static int test_guest_single_page_batch(void) { return guest_over_budget(GVM_DROP_BATCH, 1, 0); }
static int test_guest_single_page_move(void) { return guest_over_budget(GVM_DROP_MOVE, 1, 0); }
static int test_guest_single_page_dontneed(void) { return guest_over_budget(GVM_DROP_DONTNEED, 1, 0); }
static int test_guest_over_budget_sealed(void) { return guest_over_budget(GVM_DROP_BATCH, 0, 1); }

/* A drop path the kernel lacks would silently fall back to the next one,
 * and the case would test that path twice. */
#define WP    (GVM_NEEDS_UFFD | UFFD_FEATURE_PAGEFAULT_FLAG_WP)
#define MOVE  (WP | UFFD_FEATURE_MOVE)
#define BATCH (WP | GVM_NEEDS_SELF_MADVISE)
static const struct gvm_test tests[] = {
	{ "guest_4x_budget_batch", test_guest_over_budget_batch, BATCH },
	{ "guest_4x_budget_move", test_guest_over_budget_move, MOVE },
	{ "guest_4x_budget_dontneed", test_guest_over_budget_dontneed, WP },
	{ "guest_4x_budget_single_page_faults_batch", test_guest_single_page_batch, BATCH },
	{ "guest_4x_budget_single_page_faults_move", test_guest_single_page_move, MOVE },
	{ "guest_4x_budget_single_page_faults_dontneed", test_guest_single_page_dontneed, WP },
	{ "guest_4x_budget_sealed", test_guest_over_budget_sealed, WP },
};

int main(int argc, char **argv)
{
	const char *why;
	int r;

	setvbuf(stdout, NULL, _IOLBF, 0); /* counters and FAIL lines in the order they happen */
	/* -l only lists the cases: no need for KVM. */
	if ((argc < 2 || strcmp(argv[1], "-l")) && kvm_usable(&why)) {
		printf("SKIP test_kvm: %s\n", why);
		return SKIP_EXIT;
	}
	r = gvm_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]));
	test_servers_down();
	return r;
}
