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
 * from recording the same call twice when no seccomp filter is in force (an adopted process). Where
 * the filter reports its refusals to audit (seccomp_reports), the agent records them from there and
 * syscall_exit_gate leaves them alone; the gates are then attached only for another instance's sake.
 */
#include "lib/maps.bpf.h"
#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"

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

/* The kind of violation syscall nr is for the current task, 0 when none; sets *polp and *cgp. */
static __always_inline u16 gated(s32 nr, struct eg_ext_policy **polp, u64 *cgp)
{
	struct eg_ext_policy *pol = current_policy_cg(cgp);
	*polp = pol;
	return pol ? syscall_kind(pol, nr) : 0;
}

int syscall_gate(struct eg_sys_enter_ctx *ctx)
{
	struct eg_ext_policy *pol;
	u64 cg;
	s32 nr = ctx->nr;
	u16 kind = gated(nr, &pol, &cg);
	if (!kind || !pol)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 n = nr;
	gate_seen.update(&id, &n);
	struct eg_event *e = new_violation(pol, cg, kind, nr, tracepoint_verdict(pol, kind), 0, 0, 0);
	if (e)
		emit(e);
	return 0;
}

int syscall_exit_gate(struct eg_sys_exit_ctx *ctx)
{
	struct eg_ext_policy *pol;
	u64 cg;
	s32 nr = ctx->nr;
	u16 kind = gated(nr, &pol, &cg);
	if (!kind || !pol)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 *seen = gate_seen.lookup(&id);
	if (seen && *seen == (u32)nr) {
		gate_seen.delete(&id);
		return 0;
	}
	if (ctx->ret != -EG_EPERM || seccomp_reports.lookup(&cg))
		return 0;
	u16 verdict = EG_V_DENIED;
	if (should_kill(pol, kind)) {
		kill_current();
		verdict = EG_V_KILLED;
	}
	struct eg_event *e = new_violation(pol, cg, kind, nr, verdict, 0, EG_EV_SECCOMP | EG_EV_AT_EXIT, 0);
	if (!e)
		return 0;
	e->aux = (u64)ctx->ret;
	emit(e);
	return 0;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
	if (args->sig != EG_SIGSYS || args->code != EG_SYS_SECCOMP)
		return 0;
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	s32 nr = args->errno;
	u16 kind = syscall_kind(pol, nr);
	if (!kind)
		kind = EG_KIND_PRIVILEGE;  /* the filter's built-in kills are privilege syscalls */
	struct eg_event *e = new_violation(pol, cg, kind, nr, EG_V_KILLED, 0, EG_EV_SECCOMP, 0);
	if (e)
		emit(e);
	return 0;
}
