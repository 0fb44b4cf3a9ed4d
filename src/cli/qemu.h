/*
 * What `giantvm run` and `giantvm stat` need to know about QEMU: its command
 * line, its QMP monitor, and the client side of the preload library's
 * control socket (the protocol itself: include/giantvm_ctl.h). The parsers
 * are pure so the unit tests and fuzzers can feed them QEMU's real output.
 * Part of the CLI: the library knows nothing of QEMU. Functions that can
 * fail return >= 0 or -errno; the QMP ones also print why (they are the
 * CLI's own).
 */
#ifndef GVM_CLI_QEMU_H
#define GVM_CLI_QEMU_H

#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#define GVM_RUN_MAX_RAM 32

struct run_ram {               /* one guest RAM block */
	char name[128];        /* RAM block id = memory backend id ("pc.ram", "mem0") */
	uint64_t size;         /* max_length: the size QEMU mmap()ed */
	uint64_t hva;          /* host address (QEMU >= 8.0 reports it), else 0 */
	int shared;            /* backend has share=on */
};

struct run_cand {              /* a RAM-like mmap seen by the preload library */
	uint64_t addr;
	uint64_t len;
};

/* --- QEMU command line --- */
int gvm_qemu_has_arg(int argc, char **argv, const char *arg);
/* A vfio device (-device vfio-pci,..., driver=vfio-..., or JSON
 * {"driver":"vfio-pci",...}): it pins all guest RAM at start. */
int gvm_qemu_has_vfio(int argc, char **argv);
/* -overcommit mem-lock=on (or on-fault) or -realtime mlock=on: mlockall()
 * would fault all guest RAM in locally. */
int gvm_qemu_mem_lock(int argc, char **argv);
/* Capability probing or help, no guest to run: -machine none, -version,
 * -help, an option value "help" or "?". */
int gvm_qemu_is_probe(int argc, char **argv);
/* The VM's name: -name guest=NAME,... or -name NAME. 0 or -ENOENT. */
int gvm_qemu_vm_name(int argc, char **argv, char *out, size_t len);
/* Guest RAM that is not private anonymous memory (-mem-path, a file or memfd
 * backend, share=on): 1 with why set, else 0. */
int gvm_qemu_local_ram(int argc, char **argv, char *why, size_t len);
/* One property of an option value, JSON or key=value,... (see qemu.c). */
int gvm_qemu_opt_get(const char *v, const char *key, const char *implied, char *out, size_t len);
long gvm_qemu_smp(int argc, char **argv);
/* What the host's KVM can do (giantvm mode decides; see src/cli/mode.c). */
enum gvm_kvm_state {
	GVM_KVM_NONE = 0,     /* no /dev/kvm, or it cannot be opened */
	GVM_KVM_DOUBTFUL,     /* /dev/kvm opens but cannot run a standard guest (e.g. kvm_pvm) */
	GVM_KVM_USABLE,       /* hardware-virtualisation KVM */
};
/*
 * The accelerator to add: "kvm" (only for GVM_KVM_USABLE) or "tcg"; "" when
 * the user chose one (-accel, -enable-kvm, -machine accel=), which is passed
 * as given. NULL with msg set when the user asked for KVM only and there is
 * no /dev/kvm. Otherwise msg is "" or a warning (KVM asked for, but doubtful).
 * kvm_why: the detection's reason, quoted in msg.
 */
const char *gvm_qemu_accel(int argc, char **argv, int kvm, const char *kvm_why, char *msg, size_t msglen);

/* --- parsers (pure) --- */
/* Rows of `info ramblock` (text, already unescaped). Returns rows or -EINVAL. */
int gvm_parse_ramblocks(const char *text, struct run_ram *out, int max);
/* query-memdev's "return" array: ids, sizes, share. Returns count or -EINVAL. */
int gvm_parse_memdevs(const char *json, struct run_ram *out, int max);
/* Undo JSON string escapes of a QMP "return" string in place. */
void gvm_json_unescape(char *s);
/* Find "key": NUMBER in a flat JSON object. 0 or -ENOENT. */
int gvm_json_number(const char *json, const char *key, double *out);
/*
 * Give every guest RAM block a host address: its HVA when QEMU reported one,
 * else the unique candidate mapping of exactly its size. Errors (no
 * mapping, ambiguous) are explained in err. 0 or -errno.
 */
int gvm_run_match(struct run_ram *blocks, int nb, const struct run_cand *cands, int nc,
		  char *err, size_t errlen);

/* --- QMP --- */
/* Connect to QEMU's QMP socket (waiting for it to appear while pid lives)
 * and negotiate capabilities. fd or -errno (message printed); if QEMU exited
 * meanwhile, *reaped is set to 1 and *status to its wait status. */
int gvm_qmp_connect(const char *path, pid_t pid, int timeout_ms, int *reaped, int *status);
/* Send one command; resp gets the reply line. 0 on "return", else -errno (printed). */
int gvm_qmp_command(int fd, const char *json, char *resp, size_t len);
/* Guest RAM blocks: memory backends matched with `info ramblock`. */
int gvm_qmp_ram_blocks(int fd, struct run_ram *out, int max, char *buf, size_t len);

/* --- preload control socket --- */
int gvm_runtime_dir(char *buf, size_t len);
int gvm_ctl_connect(const char *path, int timeout_ms);
int gvm_ctl_in_use(const char *path);
/* Send a command line, read one reply line into out. 0 or -errno (why in out). */
int gvm_ctl_command(int fd, const char *cmd, char *out, size_t len);
int gvm_ctl_candidates(int fd, struct run_cand *out, int max);

struct gvm_run_stats {
	uint64_t faults, pages_fetched, zero_pages, readahead_pages, bytes_in, errors;
	double p50_us, p99_us;
};
int gvm_run_parse_stats(const char *json, struct gvm_run_stats *s);

/* --- giantvm-qemu, the emulator wrapper (qemu_wrapper.c) --- */
#define GVM_WRAPPER_CONF    "/etc/giantvm/giantvm-qemu.conf"  /* $GIANTVM_QEMU_CONF overrides */
#define GVM_WRAPPER_RUN_DIR "/run/giantvm-qemu"   /* its VMs' sockets; `giantvm stat` looks there */

struct gvm_wrapper_conf {
	char path[PATH_MAX];
	int found;                     /* the file exists */
	char qemu[PATH_MAX];           /* the real QEMU */
	char pool[PATH_MAX];           /* pool file; required to run a guest */
	char token[PATH_MAX];
	int pool_line, token_line;     /* where they were set, for errors about those files */
	char run_dir[PATH_MAX - 80];
	char log_dir[PATH_MAX - 80];   /* default: run_dir */
	char local_mem[32];
	unsigned replicas, prefetch;
	unsigned long timeout_ms, deadline_ms;
};
/* Read the config (KEY = VALUE lines, '#' comments); a missing file gives
 * the defaults. 0, or -1 with "FILE:LINE: why" in err. */
int gvm_wrapper_conf_parse(const char *path, struct gvm_wrapper_conf *c, char *err, size_t errlen);

#endif
