/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/record.bpf.h: records for the agent. Reserving one in the ring buffer (within the cgroup's share,
 * every failure counted), the identical-repeat gate and what "the same violation" is (repeat_key), and
 * the one way a violation is recorded (new_violation), used by every hook of every backend.
 */
#ifndef EBPFGUARD_LIB_RECORD_BPF_H
#define EBPFGUARD_LIB_RECORD_BPF_H

#include "lib/maps.bpf.h"

/*
 * Reserve a record for the task in cgroup ``cg`` (read once by the hook); a failed reservation is
 * counted, never silent. Violations reserve through new_violation(), lifecycle events through
 * new_event(). With ``shared``, the cgroup's share of the ring buffer applies: a cgroup that already
 * holds EG_CG_SHARE records there (reserved, not yet consumed by the agent) gets none, counted for it and
 * globally. The count is read without a lock, so a cgroup may pass its share by the records being
 * reserved on other CPUs at that instant: a few, not a ring buffer's worth.
 */
static __always_inline struct eg_event *reserve_event(struct eg_ext_policy *pol, u16 kind, s32 nr, u64 cg,
						      int shared)
{
	struct eg_share *sh = share.lookup(&cg);
	if (sh && shared) {
		u64 *done = consumed.lookup(&cg);
		if (sh->reserved - (done ? *done : 0) >= EG_CG_SHARE) {
			__sync_fetch_and_add(&sh->over, 1);
			count(EG_CTR_OVER_SHARE);
			return 0;
		}
	}
	struct eg_event *e = events.ringbuf_reserve(sizeof(struct eg_event));
	if (!e) {
		count(EG_CTR_DROPS);
		return 0;
	}
	if (sh)
		__sync_fetch_and_add(&sh->reserved, 1);
	u64 id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cg;
	e->uptr = 0;
	e->aux = 0;
	e->pid = (u32)id;
	e->tgid = id >> 32;
	e->uid = (u32)bpf_get_current_uid_gid();
	e->slot = pol ? pol->slot : 0;
	e->kind = kind;
	e->verdict = EG_V_NONE;
	e->syscall_nr = nr;
	e->flags = 0;
	e->dirfd = 0;
	e->op = 0;
	e->family = 0;
	e->port = 0;
	e->proto = 0;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	e->repeats = 0;
	e->pad2 = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->path[0] = 0;
	count(EG_CTR_EVENTS);
	return e;
}

/* A lifecycle record (exec, exit), within the cgroup's share; its caller submits it without a wakeup
 * (lifecycle.bpf.c says why). */
static __always_inline struct eg_event *new_event(struct eg_ext_policy *pol, u16 kind, s32 nr, u64 cg)
{
	return reserve_event(pol, kind, nr, cg, 1);
}

/* Send a violation record. A violation wakes the agent: one submitted behind records that were submitted
 * without a wakeup (lifecycle) would otherwise wake nobody. */
static __always_inline void emit(struct eg_event *e)
{
	events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

#define EG_FNV(h, v) (((h) ^ (u64)(v)) * 1099511628211ULL)
#define EG_FNV_BASIS 14695981039346656037ULL

static __always_inline u64 hash_path(u64 h, const u8 *p)
{
	for (int i = 0; i < EG_PATH_MAX; i++) {
		u8 ch = p[i];
		if (!ch)
			break;
		h = EG_FNV(h, ch);
	}
	return h;
}

/* The object of a violation, for repeat_key: a path (files, execs); a socket address; a socket path and
 * its type. Syscall refusals name theirs by a number (the target's pid, the clone flags, the ptrace mode). */
static __always_inline u64 path_object(const u8 *path)
{
	return hash_path(EG_FNV_BASIS, path);
}

static __always_inline u64 addr_object(u16 family, u16 port, u8 proto, const u8 *addr)
{
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, family), port), proto);
	for (int i = 0; i < 16; i++)
		h = EG_FNV(h, addr[i]);
	return h;
}

static __always_inline u64 unix_object(u8 type, const u8 *path)
{
	return hash_path(EG_FNV(EG_FNV(EG_FNV_BASIS, EG_FAMILY_UNIX), type), path);
}

/*
 * What makes two violations "the same" for the repeat gate: the same kind, verdict, syscall, operation
 * (the access class of a path, the network operation), record flags and object. Computed here only, for
 * every hook of every backend, so that a flood is suppressed alike whichever kernel decides it.
 *
 * The verdict is part of it, because of how the agent reads repeats: a record's repeats_suppressed stands
 * for that many more events like that record (learn counts each record as 1 + its repeats), and the
 * per-cgroup `suppressed` total enters the escalation window as violations (decide.repeats). A repeat
 * must therefore be what the record before it says, verdict included. Without it, one allowed call that
 * makes two records of the same object (its EG_V_SHADOW record, then its EG_V_ACTIVITY event) would lose
 * the second as a repeat of the first; and the first denial after a switch from audit to enforce would be
 * suppressed as a repeat of the "allowed" record before it, recorded by nobody until the window passed.
 * Before this helper each site wrote its key by hand and they disagreed: the unix-socket key had the
 * verdict in net.bpf.c (the cgroup programs) but not in lsm.bpf.c (the BPF-LSM socket hooks), so a
 * connect flood was suppressed differently on kernels with and without BPF-LSM.
 */
static __always_inline u64 repeat_key(u16 kind, u16 verdict, s32 nr, u32 op, u32 flags, u64 object)
{
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), verdict), (u32)nr);
	h = EG_FNV(EG_FNV(h, op), flags);
	return EG_FNV(h, object);
}

/*
 * Identical repeats: a thread that repeats the violation it last recorded (same key ``h``) less than
 * EG_REPEAT_NS later is not recorded again. The repeat is counted (globally, and per cgroup in
 * `suppressed` when it is a violation's) and -1 is returned; the caller reserves nothing. Otherwise it returns how many repeats were
 * suppressed since the previous record of the same violation, for the new record to carry. A flood of
 * one violation so costs one record a second and no ring-buffer space, and cannot fill the ring buffer
 * to hide a different violation behind it. Pending and killing decisions never come here.
 */
static __always_inline s64 repeat_gate(u64 h, u64 cg, int violation)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 now = bpf_ktime_get_ns();
	struct eg_last *l = last_event.lookup(&id);
	if (l && l->hash == h && now - l->ts_ns < EG_REPEAT_NS) {
		__sync_fetch_and_add(&l->suppressed, 1);
		/* the cgroup's total enters its escalation window (decide.repeats): only a violation's repeats
		 * count there, never those of an allowed action a tracer, a baseline or a shadow version watches */
		if (violation) {
			u64 one = 1;
			u64 *n = suppressed.lookup(&cg);
			if (n)
				__sync_fetch_and_add(n, 1);
			else
				suppressed.update(&cg, &one);
		}
		count(EG_CTR_SUPPRESSED);
		return -1;
	}
	u32 rep = (l && l->hash == h) ? l->suppressed : 0;
	struct eg_last fresh = {.hash = h, .ts_ns = now, .suppressed = 0, .pad = 0};
	last_event.update(&id, &fresh);
	return rep;
}

/* The record could not be reserved (a counted drop): let the next repeat try again. */
static __always_inline void repeat_forget(void)
{
	u64 id = bpf_get_current_pid_tgid();
	last_event.delete(&id);
}

/*
 * Reserve the record of a violation: its kind, syscall (-1: none, as for an LSM hook or a cgroup
 * program), verdict, operation and flags are filled in, and ``object`` (path_object and friends) names
 * what it was done to, for the repeat key. The caller fills in the object's fields (path, address, aux)
 * and sends it with emit(). NULL when it is an identical repeat (counted by repeat_gate), over the
 * cgroup's share or the ring buffer is full (counted by reserve_event). Pending and killing decisions are
 * never treated as repeats, nor held to the share: a held or killed process cannot flood (it is stopped or
 * dead), and a flood of its own must not keep the agent from deciding on it.
 */
static __always_inline struct eg_event *new_violation(struct eg_ext_policy *pol, u64 cg, u16 kind, s32 nr,
						      u16 verdict, u32 op, u32 flags, u64 object)
{
	int ordinary = verdict != EG_V_PENDING && verdict != EG_V_KILLED;
	s64 rep = 0;
	if (ordinary) {
		rep = repeat_gate(repeat_key(kind, verdict, nr, op, flags, object), cg,
				  verdict != EG_V_ACTIVITY && verdict != EG_V_SHADOW);
		if (rep < 0)
			return 0;
	}
	struct eg_event *e = reserve_event(pol, kind, nr, cg, ordinary);
	if (!e) {
		repeat_forget();
		return 0;
	}
	e->repeats = rep;
	e->verdict = verdict;
	e->op = op;
	e->flags = flags;
	return e;
}

#endif
