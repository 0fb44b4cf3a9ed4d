/*
 * userfaultfd helpers and the definitions newer than the build machine's
 * kernel headers (Debian 12 ships 6.1 headers; the running kernel may be
 * 5.15 or 6.18). Everything is detected at run time with UFFDIO_API.
 */
#ifndef GVM_UFFD_H
#define GVM_UFFD_H

#include <linux/userfaultfd.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
	uint64_t dst, src, len, mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#define UFFDIO_MOVE_MODE_DONTWAKE ((uint64_t)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((uint64_t)1 << 1)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
	struct uffdio_range range;
	uint64_t mode;
	int64_t updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

/*
 * Open a userfaultfd (O_CLOEXEC | O_NONBLOCK): the syscall first, then
 * /dev/userfaultfd (which works for users without CAP_SYS_PTRACE when
 * vm.unprivileged_userfaultfd is 0). Negotiates UFFD_API asking for
 * `wanted` features, dropping any the kernel lacks; *got receives what was
 * enabled and *avail what the kernel offers. Returns the fd or -errno.
 */
int gvm_uffd_open(uint64_t wanted, uint64_t *got, uint64_t *avail);
/* Features the kernel offers (opens and closes a probe fd), or -errno. */
int64_t gvm_uffd_probe(void);
/*
 * Install [dst, dst+len) from src (zero pages when src is NULL), write-
 * protected when `flags` has GVM_FILL_WP, without waking the threads that
 * wait on it when GVM_FILL_DONTWAKE (the caller wakes them). A page that already exists stops the kernel's
 * copy (EEXIST): its waiters are woken and the copy resumes after it; EAGAIN
 * (the mm is changing) is retried, boundedly. Returns 0 (all installed), 1
 * (some page was there already), or -errno (-ENOENT / -ESRCH quietly: the
 * range is gone, its owner unmapped it or is exiting).
 */
#define GVM_FILL_WP       1
#define GVM_FILL_DONTWAKE 2
int gvm_uffd_fill(int uffd, uintptr_t dst, const void *src, size_t len, int flags);
/* "WP WP_ASYNC MOVE POISON ..." for a feature mask. */
const char *gvm_uffd_features_str(uint64_t f, char *buf, size_t len);

#endif
