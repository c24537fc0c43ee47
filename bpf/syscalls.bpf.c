/* SPDX-License-Identifier: GPL-2.0 */
/*
 * syscalls.bpf.c: the per-extension syscall deny bitmap. The loader attaches these programs only to
 * the syscalls some loaded policy denies, so other syscalls pay nothing.
 *
 * A launched extension also runs under the launcher's seccomp filter, which acts *before* the
 * sys_enter tracepoints: a syscall it denies (EPERM) never reaches syscall_gate, and one it kills
 * never returns. So that such attempts are still recorded, syscall_exit_gate sees the denied ones at
 * sys_exit (where the return value is -EPERM), and seccomp_kill sees the SIGSYS of a killed one (the
 * filter puts the syscall number in the signal's errno). gate_seen keeps the enter and exit gates
 * from recording the same call twice when no seccomp filter is in force (an adopted process).
 */

#define EG_EPERM 1
#define EG_SIGSYS 31
#define EG_SYS_SECCOMP 1

BPF_TABLE("lru_hash", u64, u32, gate_seen, EG_MAX_THREADS);

/* the common layout of every syscalls:sys_enter_* and sys_exit_* record */
struct eg_sys_enter_ctx {
	u64 common;
	s32 nr;
	u32 pad;
	u64 args[6];
};

struct eg_sys_exit_ctx {
	u64 common;
	s32 nr;
	u32 pad;
	s64 ret;
};

static __always_inline int denied_kind(struct eg_ext_policy *pol, s32 nr)
{
	if (nr < 0 || nr >= EG_SYSCALL_WORDS * 64)
		return 0;
	u32 w = (u32)nr >> 6;
	u64 bit = 1ULL << (nr & 63);
	if (w >= EG_SYSCALL_WORDS || !(pol->sys_deny[w] & bit))
		return 0;
	return (pol->sys_priv[w] & bit) ? EG_KIND_PRIVILEGE : EG_KIND_SYSCALL;
}

/* The kind of violation syscall nr is for the current task, 0 when none; sets *polp. */
static __always_inline int gated(s32 nr, struct eg_ext_policy **polp)
{
	struct eg_ext_policy *pol = current_policy();
	*polp = pol;
	return pol ? denied_kind(pol, nr) : 0;
}

int syscall_gate(struct eg_sys_enter_ctx *ctx)
{
	struct eg_ext_policy *pol;
	s32 nr = ctx->nr;
	int kind = gated(nr, &pol);
	if (!kind || !pol)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 n = nr;
	gate_seen.update(&id, &n);
	u16 verdict = tracepoint_verdict(pol, kind);
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), (u32)nr), verdict);
	struct eg_event *e = new_violation(pol, kind, nr, verdict, h, bpf_get_current_cgroup_id());
	if (!e)
		return 0;
	events.ringbuf_submit(e, 0);
	return 0;
}

int syscall_exit_gate(struct eg_sys_exit_ctx *ctx)
{
	struct eg_ext_policy *pol;
	s32 nr = ctx->nr;
	int kind = gated(nr, &pol);
	if (!kind || !pol)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 *seen = gate_seen.lookup(&id);
	if (seen && *seen == (u32)nr) {
		gate_seen.delete(&id);
		return 0;
	}
	if (ctx->ret != -EG_EPERM)
		return 0;
	u16 verdict = EG_V_DENIED;
	if (should_kill(pol, kind)) {
		bpf_send_signal(9);
		count(EG_CTR_KILLS);
		verdict = EG_V_KILLED;
	}
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), (u32)nr), verdict), EG_EV_AT_EXIT);
	struct eg_event *e = new_violation(pol, kind, nr, verdict, h, bpf_get_current_cgroup_id());
	if (!e)
		return 0;
	e->flags = EG_EV_SECCOMP | EG_EV_AT_EXIT;
	e->aux = (u64)ctx->ret;
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
	if (args->sig != EG_SIGSYS || args->code != EG_SYS_SECCOMP)
		return 0;
	struct eg_ext_policy *pol = current_policy();
	if (!pol)
		return 0;
	s32 nr = args->errno;
	int kind = denied_kind(pol, nr);
	struct eg_event *e = new_event(pol, kind ? kind : EG_KIND_PRIVILEGE, nr);
	if (!e)
		return 0;
	e->verdict = EG_V_KILLED;
	e->flags = EG_EV_SECCOMP;
	events.ringbuf_submit(e, 0);
	return 0;
}
