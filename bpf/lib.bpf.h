/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib.bpf.h: maps and helpers shared by every hook family. The loader (ebpfguard/kernel/loader.py)
 * compiles this file first, then each *.bpf.c family, as one bcc program, so that all of them share
 * one set of maps. Every hook starts with current_policy_cg(): for a task outside every extension cgroup
 * that is a cgroup-id read and one inlined array load, and the hook returns.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/socket.h>
#include "events.h"

BPF_ARRAY(cgroup_filter, u64, EG_FILTER_SLOTS);
BPF_HASH(cgroup_slot, u64, u32, EG_MAX_CGROUPS);
BPF_HASH(quarantined, u64, u8, EG_MAX_CGROUPS);  /* network quarantine: deny every address */
BPF_HASH(landlocked, u64, u8, EG_MAX_CGROUPS);
BPF_HASH(seccomp_reports, u64, u8, EG_MAX_CGROUPS); /* its seccomp filter reports refusals: see syscalls.bpf.c */
BPF_ARRAY(activity_on, u32, 1);                    /* [0]: how many cgroups someone traces; 0 costs one load */
BPF_HASH(activity, u64, u8, EG_MAX_CGROUPS);      /* cgroups whose allowed actions stream (trace --activity) */
BPF_HASH(armed, u64, u64, EG_MAX_CGROUPS);         /* cgroup -> until (ktime ns): a correlation rule's window */
BPF_HASH(mountns, u64, u8, EG_MAX_CGROUPS);       /* launched in its own mount namespace: see unix_check */
BPF_TABLE("lru_hash", u64, struct eg_last, last_event, 16384);
BPF_HASH(suppressed, u64, u64, EG_MAX_CGROUPS);
BPF_HASH(share, u64, struct eg_share, EG_MAX_CGROUPS);
BPF_HASH(consumed, u64, u64, EG_MAX_CGROUPS);
BPF_ARRAY(ext_policy, struct eg_ext_policy, EG_MAX_SLOTS);
BPF_LPM_TRIE(path_rules, struct eg_path_key, u8, 65536);
BPF_LPM_TRIE(net_rules, struct eg_net_key, struct eg_net_value, 4096);
BPF_PERCPU_ARRAY(path_scratch, struct eg_path_key, 1);
BPF_PERCPU_ARRAY(counters, u64, EG_CTR_MAX);
BPF_RINGBUF_OUTPUT(events, EG_RINGBUF_PAGES);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		*c += 1;
}

/* The policy of the current task's extension, or 0; *cgp gets the cgroup id (read once per hook). */
/* Does a rule of ``access`` (or of ``alt``, if not 0) cover the absolute path in k->path? An exact-length
 * LPM lookup in the policy's scope: the trie holds files and folders ("/dir/" covers what is under it). */
static __always_inline int path_granted(u32 slot, struct eg_path_key *k, u32 access, u32 alt)
{
	k->prefixlen = 32 + EG_PATH_MAX * 8;
	k->scope = (slot << 8) | access;
	if (path_rules.lookup(k))
		return 1;
	if (!alt)
		return 0;
	k->scope = (slot << 8) | alt;
	return path_rules.lookup(k) != 0;
}

static __always_inline struct eg_ext_policy *current_policy_cg(u64 *cgp)
{
	u64 cg = bpf_get_current_cgroup_id();
	*cgp = cg;
	u32 idx = cg & (EG_FILTER_SLOTS - 1);
	u64 *f = cgroup_filter.lookup(&idx);
	if (!f || (*f != cg && *f != EG_FILTER_SHARED))
		return 0;
	u32 *slot = cgroup_slot.lookup(&cg);
	if (!slot)
		return 0;
	return ext_policy.lookup(slot);
}


/* Does someone trace this cgroup's activity? One array load when no one traces anything. */
static __always_inline int watched(u64 cg)
{
	u32 zero = 0;
	u32 *n = activity_on.lookup(&zero);
	if (!n || !*n)
		return 0;
	return activity.lookup(&cg) != 0;
}

/* Is the cgroup inside a correlation rule's window (a watched path was used)? Its allowed actions are reported. */
static __always_inline int armed_now(struct eg_ext_policy *pol, u64 cg)
{
	if (!(pol->flags & EG_POL_WATCH))
		return 0;
	u64 *until = armed.lookup(&cg);
	return until && *until > bpf_ktime_get_ns();
}

/* An allowed open of ``k->path``: does a correlation rule start on it? Then the cgroup is armed for the rule's
 * window. Returns 1 when the open is to be reported (watched, or inside a window). */
static __always_inline int watch_path(struct eg_ext_policy *pol, struct eg_path_key *k, u32 access, u64 cg)
{
	if (!(pol->flags & (EG_POL_WATCH_READ << access)))
		return armed_now(pol, cg);
	if (path_granted(pol->slot, k, EG_ACC_WATCH + access, 0)) {
		u64 until = bpf_ktime_get_ns() + (u64)pol->arm_ms * 1000000ULL;
		armed.update(&cg, &until);
		return 1;
	}
	return armed_now(pol, cg);
}

/* Is a violation of this kind refused where the hook can refuse? Not in audit mode, not for "alert". */
static __always_inline int deny_in_mode(struct eg_ext_policy *pol, u32 kind)
{
	if (!(pol->flags & EG_POL_ENFORCE) || kind >= EG_KIND_MAX)
		return 0;
	return pol->response[kind] != EG_RESP_ALERT;
}

static __always_inline int should_kill(struct eg_ext_policy *pol, u32 kind)
{
	if (!(pol->flags & EG_POL_ENFORCE) || kind >= EG_KIND_MAX)
		return 0;
	return pol->response[kind] == EG_RESP_KILL;
}

/* SIGKILL the current task; it is delivered before the syscall returns to user space. Counted. */
static __always_inline void kill_current(void)
{
	bpf_send_signal(EG_SIGKILL);
	count(EG_CTR_KILLS);
}

/* The kind of violation syscall ``nr`` is for this policy (EG_KIND_SYSCALL, or EG_KIND_PRIVILEGE for
 * those that escalate privilege), 0 when the policy allows it. */
static __always_inline u16 syscall_kind(struct eg_ext_policy *pol, s32 nr)
{
	if (nr < 0 || nr >= EG_SYSCALL_WORDS * 64)
		return 0;
	u32 w = ((u32)nr >> 6) & (EG_SYSCALL_WORDS - 1);
	u64 bit = 1ULL << (nr & 63);
	if (!(pol->sys_deny[w] & bit))
		return 0;
	return (pol->sys_priv[w] & bit) ? EG_KIND_PRIVILEGE : EG_KIND_SYSCALL;
}

/*
 * Reserve a record for the task in cgroup ``cg`` (read once by the hook); a failed reservation is
 * counted, never silent. Violations reserve through new_violation(), lifecycle events here. With
 * ``shared``, the cgroup's share of the ring buffer applies: a cgroup that already holds EG_CG_SHARE
 * records there (reserved, not yet consumed by the agent) gets none, counted for it and globally. The
 * count is read without a lock, so a cgroup may pass its share by the records being reserved on other
 * CPUs at that instant: a few, not a ring buffer's worth.
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

static __always_inline struct eg_event *new_event(struct eg_ext_policy *pol, u16 kind, s32 nr, u64 cg)
{
	return reserve_event(pol, kind, nr, cg, 1);
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

/*
 * A ".." component within the first ``len`` bytes of the socket path ``p`` (8-byte aligned; p[len]
 * readable: the NUL or the next byte). A path with one cannot be decided on its string: ".." resolves
 * against what the link or mount under it really is. Eight bytes at a time, looking byte by byte only
 * at a word that holds a '.' (most paths have one dot, in the file name): a few ns for a 100-byte path.
 * check_path (files.bpf.c) scans 4 KiB paths with a plain loop instead, as this nested one over 4 KiB
 * is more than the verifier will walk.
 */
#define EG_DOTS 0x2e2e2e2e2e2e2e2eULL
#define EG_ONES 0x0101010101010101ULL
#define EG_HIGHS 0x8080808080808080ULL
static __always_inline int unix_has_dotdot(const char *p, long len)
{
	for (int w = 0; w < (EG_UNIX_PATH_MAX + 7) / 8; w++) {
		if (w * 8 > len)
			break;
		u64 x = *(const u64 *)(p + w * 8) ^ EG_DOTS;
		if (!((x - EG_ONES) & ~x & EG_HIGHS))
			continue; /* no '.' in these eight bytes */
		for (int j = 0; j < 8; j++) {
			int i = w * 8 + j;
			if (i >= len - 1)
				break;
			if (p[i] == '.' && p[i + 1] == '.' && (i == 0 || p[i - 1] == '/') &&
			    (p[i + 2] == '/' || p[i + 2] == 0))
				return 1;
		}
	}
	return 0;
}

/*
 * Identical repeats: a thread that repeats the violation it last recorded (same hash ``h``) less than
 * EG_REPEAT_NS later is not recorded again. The repeat is counted (per cgroup in `suppressed`, and
 * globally) and -1 is returned; the caller reserves nothing. Otherwise it returns how many repeats were
 * suppressed since the previous record of the same violation, for the new record to carry. A flood of
 * one violation so costs one record a second and no ring-buffer space, and cannot fill the ring buffer
 * to hide a different violation behind it. Pending and killing decisions never come here.
 */
static __always_inline s64 repeat_gate(u64 h, u64 cg)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 now = bpf_ktime_get_ns();
	struct eg_last *l = last_event.lookup(&id);
	if (l && l->hash == h && now - l->ts_ns < EG_REPEAT_NS) {
		__sync_fetch_and_add(&l->suppressed, 1);
		u64 one = 1;
		u64 *n = suppressed.lookup(&cg);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			suppressed.update(&cg, &one);
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
 * Reserve the record of a violation with verdict ``verdict`` and repeat hash ``h``: NULL when it is an
 * identical repeat (counted by repeat_gate), over the cgroup's share or the ring buffer is full (counted
 * by reserve_event). Pending and killing decisions are never treated as repeats. Its caller submits it
 * with BPF_RB_FORCE_WAKEUP (see lifecycle.bpf.c for why not the default).
 */
static __always_inline struct eg_event *new_violation(struct eg_ext_policy *pol, u16 kind, s32 nr, u16 verdict,
						      u64 h, u64 cg)
{
	s64 rep = 0;
	if (verdict != EG_V_PENDING && verdict != EG_V_KILLED) {
		rep = repeat_gate(h, cg);
		if (rep < 0)
			return 0;
	}
	/* a held (pending) or killed process cannot flood: it is stopped or dead; its record is outside
	 * the share, so that a flood of its own cannot keep the agent from deciding on it */
	struct eg_event *e = reserve_event(pol, kind, nr, cg, verdict != EG_V_PENDING && verdict != EG_V_KILLED);
	if (!e) {
		repeat_forget();
		return 0;
	}
	e->repeats = rep;
	e->verdict = verdict;
	return e;
}

/* Decide the verdict of a violation a tracepoint saw, and kill in the kernel if the policy says so. */
static __always_inline u16 tracepoint_verdict(struct eg_ext_policy *pol, u32 kind)
{
	if (!deny_in_mode(pol, kind))
		return EG_V_ALLOWED;
	if (should_kill(pol, kind)) {
		kill_current();
		return EG_V_KILLED;
	}
	return EG_V_DETECTED;
}
