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
#include <unistd.h>

#include "cli.h"
#include "uffd.h"

static void sysroot_path(char *buf, size_t len, const char *p)
{
	const char *root = getenv("GIANTVM_SYSROOT");

	snprintf(buf, len, "%s%s", root && *root ? root : "", p);
}

void gvm_mode_detect(struct gvm_mode *m)
{
	static const char *const marks[] = { "/sys/module/giantvm_kvm", "/dev/giantvm" };
	char path[4096];
	int64_t f;
	int fd;

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

	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		m->kvm = 1;
		snprintf(m->kvm_why, sizeof(m->kvm_why), "/dev/kvm is usable");
		close(fd);
	} else {
		snprintf(m->kvm_why, sizeof(m->kvm_why), "/dev/kvm: %s", strerror(errno));
	}

	f = gvm_uffd_probe();
	if (f >= 0) {
		m->uffd = 1;
		m->uffd_features = (uint64_t)f;
		gvm_uffd_features_str((uint64_t)f, m->uffd_why, sizeof(m->uffd_why));
	} else {
		snprintf(m->uffd_why, sizeof(m->uffd_why), "%s", strerror((int)-f));
	}
}

static void usage(FILE *f)
{
	fputs("usage: giantvm mode [--json]\n"
	      "\n"
	      "Prints which mode `giantvm run` would use and why: ORIGINAL when the GiantVM\n"
	      "kernel module is loaded (/sys/module/giantvm_kvm or /dev/giantvm, looked up\n"
	      "under $GIANTVM_SYSROOT when set), UFFD otherwise; and the accelerator (KVM\n"
	      "when /dev/kvm is usable, TCG otherwise) and the userfaultfd features.\n", f);
}

int cmd_mode(int argc, char **argv)
{
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
		       "\"userfaultfd\":%s,\"userfaultfd_features\":\"%s\"}\n",
		       m.original ? "original" : "uffd", m.why, m.kvm ? "kvm" : "tcg", m.kvm_why,
		       m.uffd ? "true" : "false", m.uffd_why);
		return 0;
	}
	if (m.original)
		printf("[GiantVM] Detected Custom Kernel Module. Entering ORIGINAL Mode.\n");
	else
		printf("[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode.\n");
	printf("  why:         %s\n", m.why);
	if (!m.original) {
		printf("  accelerator: %s (%s)\n", m.kvm ? "KVM" : "TCG", m.kvm_why);
		printf("  userfaultfd: %s (%s)\n", m.uffd ? "available" : "UNAVAILABLE", m.uffd_why);
	}
	return 0;
}
