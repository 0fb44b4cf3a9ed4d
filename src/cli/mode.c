/*
 * Mode detection: ORIGINAL (the GiantVM kernel module is loaded: hand over
 * to the original GiantVM QEMU) or UFFD (ours), and the accelerator.
 */
#include "mode.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "giantvm.h"

static void sysroot_path(char *buf, size_t len, const char *p)
{
	const char *root = getenv("GIANTVM_SYSROOT");

	snprintf(buf, len, "%s%s", root && *root ? root : "", p);
}

static int sys_module(const char *name)
{
	char rel[128], path[4096];

	snprintf(rel, sizeof(rel), "/sys/module/%s", name);
	sysroot_path(path, sizeof(path), rel);
	return access(path, F_OK) == 0;
}

/*
 * Can KVM run a standard guest kernel here? Opening /dev/kvm is not enough:
 * kvm_pvm (KVM without hardware virtualisation) opens fine, runs real-mode
 * code and PVM-built kernels, and hangs a Debian kernel or aborts QEMU on an
 * MSR. The rule, in order:
 *   1. /dev/kvm must open read-write                    else NONE
 *   2. a device must answer KVM_GET_API_VERSION == 12   else DOUBTFUL
 *      (under $GIANTVM_SYSROOT a regular file stands for a device that does)
 *   3. kvm_pvm loaded                                   -> DOUBTFUL
 *   4. kvm_intel or kvm_amd loaded (hardware virt.)     -> USABLE
 *   5. otherwise                                        -> DOUBTFUL
 * Everything is looked up under $GIANTVM_SYSROOT when set (tests fake hosts).
 */
int gvm_kvm_detect(char *why, size_t len)
{
	char path[4096];
	struct stat sb;
	int fd, api;

	sysroot_path(path, sizeof(path), "/dev/kvm");
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, len, "%s: %s", path, strerror(errno));
		return GVM_KVM_NONE;
	}
	if (fstat(fd, &sb) < 0) {
		snprintf(why, len, "%s: fstat: %s", path, strerror(errno));
		close(fd);
		return GVM_KVM_DOUBTFUL;
	}
	if (S_ISCHR(sb.st_mode)) {
		api = ioctl(fd, KVM_GET_API_VERSION, 0);
		if (api != KVM_API_VERSION) {
			snprintf(why, len, "%s does not answer as KVM (KVM_GET_API_VERSION: %s)", path,
				 api < 0 ? strerror(errno) : "unexpected version");
			close(fd);
			return GVM_KVM_DOUBTFUL;
		}
	}
	close(fd);
	if (sys_module("kvm_pvm")) {
		snprintf(why, len, "/dev/kvm is kvm_pvm (KVM without hardware virtualisation: it runs only "
				   "PVM-built guest kernels)");
		return GVM_KVM_DOUBTFUL;
	}
	if (sys_module("kvm_intel") || sys_module("kvm_amd")) {
		snprintf(why, len, "/dev/kvm is usable (%s)", sys_module("kvm_intel") ? "kvm_intel" : "kvm_amd");
		return GVM_KVM_USABLE;
	}
	snprintf(why, len, "/dev/kvm opens but neither kvm_intel nor kvm_amd is loaded (no hardware "
			   "virtualisation known to run a standard guest)");
	return GVM_KVM_DOUBTFUL;
}

void gvm_mode_detect(struct gvm_mode *m)
{
	static const char *const marks[] = { "/sys/module/giantvm_kvm", "/dev/giantvm" };
	char path[4096];
	int64_t f;

	memset(m, 0, sizeof(*m));
	for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++) {
		sysroot_path(path, sizeof(path), marks[i]);
		if (access(path, F_OK) == 0) {
			m->original = 1;
			snprintf(m->why, sizeof(m->why), "%s exists (the GiantVM kernel module is loaded)", path);
			break;
		}
	}
	if (!m->original)
		snprintf(m->why, sizeof(m->why), "neither /sys/module/giantvm_kvm nor /dev/giantvm exists%s",
			 getenv("GIANTVM_SYSROOT") ? " under $GIANTVM_SYSROOT" : "");

	m->kvm = gvm_kvm_detect(m->kvm_why, sizeof(m->kvm_why));

	f = gvm_uffd_features(m->uffd_why, sizeof(m->uffd_why));
	if (f >= 0) {
		m->uffd = 1;
		m->uffd_features = (uint64_t)f;
	}
}

static void usage(FILE *f)
{
	fputs("usage: giantvm mode [--json]\n"
	      "\n"
	      "Prints which mode `giantvm run` would use and why: ORIGINAL when the GiantVM\n"
	      "kernel module is loaded (/sys/module/giantvm_kvm or /dev/giantvm, looked up\n"
	      "under $GIANTVM_SYSROOT when set), UFFD otherwise; the accelerator `giantvm run`\n"
	      "adds when QEMU's command line names none (KVM only where it can run a standard\n"
	      "guest kernel: /dev/kvm opens, answers as KVM, and kvm_intel or kvm_amd is\n"
	      "loaded; not kvm_pvm, which runs only PVM-built kernels; TCG otherwise), with\n"
	      "the reason; and the userfaultfd features.\n"
	      "\n"
	      "  --json   one JSON object: mode, why, accel, accel_why, kvm (none|doubtful|usable),\n"
	      "           userfaultfd, userfaultfd_features\n", f);
}

int cmd_mode(int argc, char **argv)
{
	static const char *const kvm_names[] = { "none", "doubtful", "usable" };
	struct gvm_mode m;
	int json = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "giantvm mode: unknown option '%s'\n", argv[i]);
			usage(stderr);
			return GVM_EXIT_USAGE;
		}
	}
	gvm_mode_detect(&m);
	if (json) {
		printf("{\"mode\":\"%s\",\"why\":\"%s\",\"accel\":\"%s\",\"accel_why\":\"%s\","
		       "\"kvm\":\"%s\",\"userfaultfd\":%s,\"userfaultfd_features\":\"%s\"}\n",
		       m.original ? "original" : "uffd", m.why, m.kvm == GVM_KVM_USABLE ? "kvm" : "tcg",
		       m.kvm_why, kvm_names[m.kvm],
		       m.uffd ? "true" : "false", m.uffd_why);
		return 0;
	}
	if (m.original)
		printf("[GiantVM] Detected Custom Kernel Module. Entering ORIGINAL Mode.\n");
	else
		printf("[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode.\n");
	printf("  why:         %s\n", m.why);
	if (!m.original) {
		printf("  accelerator: %s (%s)\n", m.kvm == GVM_KVM_USABLE ? "KVM" : "TCG", m.kvm_why);
		printf("  userfaultfd: %s (%s)\n", m.uffd ? "available" : "UNAVAILABLE", m.uffd_why);
	}
	return 0;
}
