#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int log_level = -1;
static int log_fd = 2;

static int level_from_env(void)
{
	const char *s = getenv("GIANTVM_LOG");

	if (!s) return GVM_LOG_INFO;
	if (!strcmp(s, "error")) return GVM_LOG_ERROR;
	if (!strcmp(s, "warn")) return GVM_LOG_WARN;
	if (!strcmp(s, "debug")) return GVM_LOG_DEBUG;
	return GVM_LOG_INFO;
}

void gvm_log_set_level(int level) { log_level = level; }
int gvm_log_get_level(void) { if (log_level < 0) log_level = level_from_env(); return log_level; }
void gvm_log_set_fd(int fd) { log_fd = fd; }

void gvm_log(int level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	if (level > gvm_log_get_level())
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* A failed log write has nowhere better to be reported. */
	if (write(log_fd, buf, (size_t)n) < 0)
		return;
}
