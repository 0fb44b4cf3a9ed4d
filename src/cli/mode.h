/* Which mode `giantvm run` uses, and the accelerator, with reasons. */
#ifndef GVM_MODE_H
#define GVM_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "qemu.h"

struct gvm_mode {
	int original;            /* GiantVM kernel module present */
	char why[4200];
	int kvm;                 /* enum gvm_kvm_state */
	char kvm_why[256];
	int uffd;                /* userfaultfd usable */
	uint64_t uffd_features;
	char uffd_why[200];
};

void gvm_mode_detect(struct gvm_mode *m);
/* enum gvm_kvm_state for this host (under $GIANTVM_SYSROOT), the reason in why. */
int gvm_kvm_detect(char *why, size_t len);

#endif
