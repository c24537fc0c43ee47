/* SPDX-License-Identifier: GPL-2.0 */
/*
 * syscalls.bpf.c: the per-extension syscall deny bitmap. One program, attached by the loader to
 * sys_enter_<name> of every syscall that any loaded policy denies, so that other syscalls pay nothing.
 */

/* the common layout of every syscalls:sys_enter_* record */
struct eg_sys_enter_ctx {
	u64 common;
	s32 nr;
	u32 pad;
	u64 args[6];
};

int syscall_gate(struct eg_sys_enter_ctx *ctx)
{
	struct eg_ext_policy *pol = current_policy();
	if (!pol)
		return 0;
	s32 nr = ctx->nr;
	if (nr < 0 || nr >= EG_SYSCALL_WORDS * 64)
		return 0;
	u32 w = (u32)nr >> 6;
	u64 bit = 1ULL << (nr & 63);
	if (w >= EG_SYSCALL_WORDS || !(pol->sys_deny[w] & bit))
		return 0;
	u16 kind = (pol->sys_priv[w] & bit) ? EG_KIND_PRIVILEGE : EG_KIND_SYSCALL;
	u16 verdict = tracepoint_verdict(pol, kind);
	struct eg_event *e = new_event(pol, kind, nr);
	if (!e)
		return 0;
	e->verdict = verdict;
	events.ringbuf_submit(e, 0);
	return 0;
}
