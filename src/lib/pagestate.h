/*
 * Page state: one flag byte per guest page, and the count of resident
 * pages, shared by the fault engine and the evictor.
 *
 * The flag bytes are written by both threads, always with atomics:
 *   engine thread  sets RESIDENT/INFLIGHT/WANTED/LOST on fetch and install,
 *                  REF on install, DIRTY (by CAS) on a write fault;
 *   evictor        clears REF as its CLOCK hand passes, claims a page with
 *                  a CAS adding EVICTING, then DROPPING (by CAS, only if not
 *                  DIRTY), and clears them all when the page is gone.
 * Each transition that both may race on is one CAS (see evict.c, DESIGN).
 *
 * The resident count is two counters with one writer each, so neither
 * thread writes the other's memory: resident = installed - dropped.
 */
#ifndef GVM_PAGESTATE_H
#define GVM_PAGESTATE_H

#include <stdint.h>

#define PG_RESIDENT 0x01  /* installed, or present when attached */
#define PG_INFLIGHT 0x02  /* a READ covering it is outstanding */
#define PG_REF      0x04  /* touched since the evictor last looked */
#define PG_DIRTY    0x08  /* written since last written back */
#define PG_LOST     0x10  /* given up on: poisoned */
#define PG_EVICTING 0x20  /* the evictor owns it: write-back in progress */
#define PG_DROPPING 0x40  /* write-back done, being dropped: faults wait */
#define PG_WANTED   0x80  /* faulted while in flight: a thread waits for the install */

static inline uint8_t pg_get(const uint8_t *pg, uint64_t p)
{
	return __atomic_load_n(&pg[p], __ATOMIC_ACQUIRE);
}

static inline void pg_set(uint8_t *pg, uint64_t p, uint8_t f)
{
	__atomic_fetch_or(&pg[p], f, __ATOMIC_ACQ_REL);
}

static inline void pg_clear(uint8_t *pg, uint64_t p, uint8_t f)
{
	__atomic_fetch_and(&pg[p], (uint8_t)~f, __ATOMIC_ACQ_REL);
}

/* Replace *old by new if the byte still holds *old; else *old receives
 * what it holds. */
static inline int pg_cas(uint8_t *pg, uint64_t p, uint8_t *old, uint8_t new)
{
	return __atomic_compare_exchange_n(&pg[p], old, new, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

struct gvm_page_count {
	uint64_t installed;   /* the engine only: pages made resident (installs, present at attach) */
	uint64_t dropped;     /* evictor only: pages dropped; also its clock for refault distances */
	uint64_t reserved;    /* the engine only: its `reserved` (room promised to fetches in
			       * flight and held pages) as of its last look, for the evictor */
};

/* Pages resident now. `dropped` is read first: it never passes what
 * `installed` held before it, so the difference cannot wrap. */
static inline uint64_t pg_resident(const struct gvm_page_count *c)
{
	uint64_t d = __atomic_load_n(&c->dropped, __ATOMIC_ACQUIRE);

	return __atomic_load_n(&c->installed, __ATOMIC_RELAXED) - d;
}

/* Count n more pages installed; returns the pages resident now. */
static inline uint64_t pg_add_installed(struct gvm_page_count *c, uint64_t n)
{
	__atomic_fetch_add(&c->installed, n, __ATOMIC_RELAXED);
	return pg_resident(c);
}

#endif
