/* giantvm: one command, several subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "giantvm.h"
#include "common.h"
#include "giantvm_memserver.h"


static const char usage[] =
	"usage: giantvm COMMAND [OPTIONS]\n"
	"\n"
	"Run virtual machines whose RAM lives in a pool of memory servers.\n"
	"\n"
	"commands:\n"
	"  run [OPTIONS] -- QEMU [ARGS...]   boot a VM with its RAM in the pool\n"
	"  memserver [OPTIONS]               serve pages to VMs (one node of a pool)\n"
	"  mode [--json]                     which mode `run` would use, and why\n"
	"  stat [VM] [--json]                live statistics of a running VM\n"
	"  stat [VM] --prometheus            the VMs' engines as Prometheus metrics\n"
	"  stat --metrics HOST:PORT          serve them on http://HOST:PORT/metrics\n"
	"  bench [OPTIONS]                   measure the pool: RTT, fault latency, throughput\n"
	"\n"
	"The pool is read from --pool FILE, else $GIANTVM_POOL, else ./cluster_uffd.conf;\n"
	"with none of them, run and bench start an embedded memory server on 127.0.0.1.\n"
	"`giantvm COMMAND --help` describes each command; `giantvm --version` prints the version.\n";

int main(int argc, char **argv)
{
	static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
		{ "run", cmd_run }, { "memserver", gvm_memserver_main }, { "mode", cmd_mode },
		{ "stat", cmd_stat }, { "bench", cmd_bench },
	};

	const char *base = strrchr(argv[0], '/');

	/* the `giantvm-qemu` symlink: the emulator wrapper for libvirt */
	if (!strcmp(base ? base + 1 : argv[0], "giantvm-qemu"))
		return cmd_qemu_wrapper(argc, argv);
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? GVM_EXIT_USAGE : 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("giantvm %s\n", GVM_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "giantvm: unknown command '%s'\n%s", argv[1], usage);
	return GVM_EXIT_USAGE;
}
