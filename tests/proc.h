/* What a (server) process holds, read from /proc: for tests that bound it. */
#ifndef GVM_TEST_PROC_H
#define GVM_TEST_PROC_H

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <sys/types.h>

/* VmRSS of pid in KiB, or -1. */
static inline long rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Open descriptors of pid, or -errno. */
static inline int fd_count(pid_t pid)
{
	char path[64];
	struct dirent *d;
	int n = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((d = readdir(dir)))
		n += d->d_name[0] != '.';
	closedir(dir);
	return n;
}

#endif
