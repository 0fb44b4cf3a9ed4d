/* Subcommands of the `giantvm` command. Each returns the process exit status. */
#ifndef GVM_CLI_H
#define GVM_CLI_H

int cmd_run(int argc, char **argv);
int cmd_mode(int argc, char **argv);
int cmd_stat(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* Exit status for bad usage (distinct from runtime failure 1). */
#define GVM_EXIT_USAGE 2

#endif
