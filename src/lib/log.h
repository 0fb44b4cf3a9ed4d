/*
 * Logging for the library, the memory server and the CLI. The library never
 * writes to stdout; everything goes to stderr (or the fd set by
 * gvm_log_set_fd) as one line per call, written with a single write(2) so
 * lines from several threads do not interleave.
 *
 * Each file defines LOG_PREFIX before including this header.
 */
#ifndef GVM_LOG_H
#define GVM_LOG_H

#include <errno.h>
#include <string.h>

enum gvm_log_level { GVM_LOG_ERROR = 0, GVM_LOG_WARN, GVM_LOG_INFO, GVM_LOG_DEBUG };

#ifndef LOG_PREFIX
#define LOG_PREFIX ""
#endif

void gvm_log_set_level(int level);
int gvm_log_get_level(void);
void gvm_log_set_fd(int fd);
void gvm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pr_err(fmt, ...)   gvm_log(GVM_LOG_ERROR, "giantvm: " LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...)  gvm_log(GVM_LOG_WARN, "giantvm: " LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...)  gvm_log(GVM_LOG_INFO, "giantvm: " LOG_PREFIX fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...) gvm_log(GVM_LOG_DEBUG, "giantvm: " LOG_PREFIX fmt, ##__VA_ARGS__)
/* Appends strerror(errno); errno is preserved. */
#define pr_perror(fmt, ...) do { int e__ = errno; \
	gvm_log(GVM_LOG_ERROR, "giantvm: " LOG_PREFIX fmt ": %s", ##__VA_ARGS__, strerror(e__)); \
	errno = e__; } while (0)

#endif
