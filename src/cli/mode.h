/* Which mode `giantvm run` uses, and the accelerator, with reasons. */
#ifndef GVM_MODE_H
#define GVM_MODE_H

#include <stdint.h>

struct gvm_mode {
	int original;            /* GiantVM kernel module present */
	char why[4200];
	int kvm;                 /* /dev/kvm usable */
	char kvm_why[128];
	int uffd;                /* userfaultfd usable */
	uint64_t uffd_features;
	char uffd_why[200];
};

void gvm_mode_detect(struct gvm_mode *m);

#endif
