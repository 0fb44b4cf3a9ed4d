/*
 * The control protocol between `giantvm run` / `giantvm stat` and the
 * preload library inside QEMU, defined once: the environment `giantvm run`
 * gives QEMU, its ranges, and the commands of the control socket.
 *
 * Environment (set by `giantvm run` for QEMU; read by the preload library):
 * the preload does nothing unless GVM_ENV_CTL is set. Values outside the
 * ranges below are ignored by the preload (the library default applies) and
 * refused by `giantvm run` before QEMU starts.
 *
 * Control socket: a unix stream socket at GVM_ENV_CTL, one command per line,
 * one reply per command:
 *   CANDIDATES              "C <hex addr> <len>" per RAM-like mapping, then "END"
 *   ATTACH <hva hex> <len> <region hex> <name>
 *                           register [hva, hva+len) as `region`: "OK" or "ERR why"
 *   STAT                    one line of JSON (the engine's statistics), or "ERR why"
 * Replies are at most GVM_CTL_REPLY_MAX bytes (the per-node figures of a
 * 10,000+ node pool fit).
 */
#ifndef GIANTVM_CTL_H
#define GIANTVM_CTL_H

#define GVM_ENV_CTL          "GIANTVM_CTL"          /* control socket path */
#define GVM_ENV_VM_ID        "GIANTVM_VM_ID"        /* the VM's name */
#define GVM_ENV_VM_SECRET    "GIANTVM_VM_SECRET"    /* 64 hex digits: region keys derive from it */
#define GVM_ENV_POOL_FILE    "GIANTVM_POOL_FILE"    /* cluster_uffd.conf, or ... */
#define GVM_ENV_POOL_NODES   "GIANTVM_POOL_NODES"   /* ... "HOST:PORT,..." (embedded pool) */
#define GVM_ENV_TOKEN        "GIANTVM_TOKEN"        /* pool token */
#define GVM_ENV_REPLICAS     "GIANTVM_REPLICAS"
#define GVM_ENV_PREFETCH     "GIANTVM_PREFETCH"
#define GVM_ENV_LOCAL_MEM    "GIANTVM_LOCAL_MEM"    /* a size: "512M" */
#define GVM_ENV_SEAL         "GIANTVM_SEAL"         /* "on" or "off" (unset: the pool's default) */
#define GVM_ENV_TIMEOUT_MS   "GIANTVM_TIMEOUT_MS"
#define GVM_ENV_DEADLINE_MS  "GIANTVM_DEADLINE_MS"
#define GVM_ENV_LOG_FILE     "GIANTVM_LOG_FILE"     /* the preload's messages go there ("stderr": stderr) */
#define GVM_ENV_ATTACH       "GIANTVM_ATTACH"       /* "early": attach RAM as QEMU maps it (giantvm-qemu) */
#define GVM_ENV_TEST_ATTACH_DELAY_MS "GIANTVM_TEST_ATTACH_DELAY_MS" /* tests: delay the first early attach */

#define GVM_CTL_REPLICAS_MIN    1
#define GVM_CTL_REPLICAS_MAX    8
#define GVM_CTL_PREFETCH_MIN    1          /* and a power of two */
#define GVM_CTL_PREFETCH_MAX    32
#define GVM_CTL_LOCAL_MEM_MIN   (16u << 20)
#define GVM_CTL_TIMEOUT_MS_MIN  10
#define GVM_CTL_TIMEOUT_MS_MAX  3600000    /* an hour */
#define GVM_CTL_DEADLINE_MS_MIN 10
#define GVM_CTL_DEADLINE_MS_MAX 86400000   /* a day */
#define GVM_CTL_POOL_NODES_MAX  64         /* GVM_ENV_POOL_NODES entries */

#define GVM_CTL_CMD_CANDIDATES "CANDIDATES"
#define GVM_CTL_CMD_ATTACH     "ATTACH"
#define GVM_CTL_CMD_STAT       "STAT"

#define GVM_CTL_REPLY_MAX (8u << 20)

#endif
