/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/policy.bpf.h: what the extension's policy says. Which policy the current task is under, whether a
 * rule grants a path, whether the policy denies or kills a kind of violation, and the verdict a hook
 * reaches. Every hook starts with current_policy_cg(): for a task outside every extension cgroup that is
 * a cgroup-id read and one inlined array load, and the hook returns.
 */
#ifndef EBPFGUARD_LIB_POLICY_BPF_H
#define EBPFGUARD_LIB_POLICY_BPF_H

#include "lib/maps.bpf.h"

/* The policy of the current task's extension, or 0; *cgp gets the cgroup id (read once per hook). */
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

/* Is a read or write of k->path inside the private /tmp or /var/tmp of an instance that runs in its own mount
 * namespace (the `mountns` map)? There "/tmp/x" names its own tmpfs, thrown away with it, never the host's. */
static __always_inline int private_granted(u32 slot, struct eg_path_key *k, u32 access, u64 cg)
{
	if (access != EG_ACC_READ && access != EG_ACC_WRITE)
		return 0;
	if (!mountns.lookup(&cg))
		return 0;
	k->prefixlen = 32 + EG_PATH_MAX * 8;
	k->scope = (slot << 8) | EG_PATH_PRIVATE;
	u8 *v = path_rules.lookup(k);
	return v && *v;
}

/* A rule of ``access`` (or ``alt``), or the private /tmp, covers k->path for this cgroup. */
static __always_inline int file_granted(u32 slot, struct eg_path_key *k, u32 access, u32 alt, u64 cg)
{
	return path_granted(slot, k, access, alt) || private_granted(slot, k, access, cg);
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

/*
 * Where the BPF-LSM backend runs (lsm.bpf.c), it decides opens and execs on resolved objects and the open
 * and exec tracepoints stand down (files.bpf.c), so that nothing is recorded twice; except for a launched
 * instance under Landlock (the `landlocked` map): Landlock decides its files on the objects, in whatever
 * place the kernel's LSM order gives it, and it may run before BPF-LSM and refuse what BPF-LSM then never
 * sees. For those cgroups the LSM file hooks stand down instead and the tracepoints record as they do
 * without BPF-LSM: Landlock's own reports where it has them, the string and its resolution otherwise,
 * and the read-only mount's EROFS, which no LSM hook sees.
 */
static __always_inline int lsm_defers(void)
{
	u64 cg = bpf_get_current_cgroup_id();
	return landlocked.lookup(&cg) != 0;
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

#endif
