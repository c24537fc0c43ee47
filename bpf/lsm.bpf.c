/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lsm.bpf.c: the BPF-LSM backend, compiled in (-DEG_LSM) only where the probe could load an LSM
 * program and the kernel headers are the running kernel's own (these programs read struct file,
 * struct linux_binprm and struct task_struct fields). LSM hooks decide on resolved objects, for every
 * process of an extension cgroup, launched or adopted:
 *
 *   file_open             the opened file's real path (bpf_d_path) against the read/write tries
 *   bprm_check_security   the executable's real path against the exec trie (renamed copies, memfds,
 *                         symlinks: the resolved file is what is checked)
 *   ptrace_access_check   ptrace from inside an extension, unless its manifest allows the syscall
 *   task_alloc            a clone with CLONE_NEW* flags, unless its manifest allows unshare
 *
 * socket_connect and socket_bind are covered by the cgroup connect4/6, sendmsg4/6 and bind4/6
 * programs, which decide on the socket address in the kernel for every process of the cgroup already.
 * Where these run, the open and exec tracepoints stand down (files.bpf.c), so nothing is recorded twice.
 */
#ifdef EG_LSM
#include <linux/fs.h>
#include <linux/binfmts.h>
#include <linux/sched.h>

#define EG_EACCES 13
#define EG_EPERM 1
#define EG_FMODE_WRITE 0x2
#define EG_CLONE_NS (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80)

/* The LSM answer for a violation: deny unless audit mode or an `alert` response; kill if asked. */
static __always_inline int lsm_answer(struct eg_ext_policy *pol, u32 kind, struct eg_event *e, int err)
{
	int deny = (pol->flags & EG_POL_ENFORCE) && kind < EG_KIND_MAX && pol->response[kind] != EG_RESP_ALERT;
	if (e) {
		e->verdict = deny ? EG_V_DENIED : EG_V_ALLOWED;
		if (deny && should_kill(pol, kind)) {
			bpf_send_signal(9);
			count(EG_CTR_KILLS);
			e->verdict = EG_V_KILLED;
		}
		e->flags |= EG_EV_LSM;
		events.ringbuf_submit(e, 0);
	}
	return deny ? -err : 0;
}

static __always_inline int lsm_path(struct eg_ext_policy *pol, struct path *p, u32 access, u16 kind, s32 nr)
{
	u32 zero = 0;
	struct eg_path_key *k = path_scratch.lookup(&zero);
	if (!k)
		return 0;
	long n = bpf_d_path(p, (char *)k->path, EG_PATH_MAX);
	if (n < 0)  /* unnamed or too long to name: refusing to guess is the safe side */
		k->path[0] = 0;
	k->prefixlen = 32 + EG_PATH_MAX * 8;
	k->scope = (pol->slot << 8) | access;
	if (n > 0 && path_rules.lookup(k))
		return 0;
	/* a repeat (or a full ring) yields no record, and is denied all the same */
	u16 verdict = should_kill(pol, kind) ? EG_V_KILLED : EG_V_DENIED;  /* lsm_answer settles it */
	u64 h = hash_path(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), k->path);
	struct eg_event *e = new_violation(pol, kind, nr, verdict, h, bpf_get_current_cgroup_id());
	if (e) {
		e->op = access;
		__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	}
	return lsm_answer(pol, kind, e, EG_EACCES);
}

LSM_PROBE(file_open, struct file *file)
{
	struct eg_ext_policy *pol = current_policy();
	if (!pol)
		return 0;
	u32 access = (file->f_mode & EG_FMODE_WRITE) ? EG_ACC_WRITE : EG_ACC_READ;
	return lsm_path(pol, &file->f_path, access, EG_KIND_FILE, -1);
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
	struct eg_ext_policy *pol = current_policy();
	if (!pol)
		return 0;
	return lsm_path(pol, &bprm->file->f_path, EG_ACC_EXEC, EG_KIND_EXEC, -1);
}

static __always_inline int syscall_allowed(struct eg_ext_policy *pol, u32 nr)
{
	u32 w = (nr / 64) & (EG_SYSCALL_WORDS - 1);
	return !(pol->sys_deny[w] & (1ULL << (nr % 64)));
}

static __always_inline u16 syscall_kind(struct eg_ext_policy *pol, u32 nr)
{
	u32 w = (nr / 64) & (EG_SYSCALL_WORDS - 1);
	return (pol->sys_priv[w] & (1ULL << (nr % 64))) ? EG_KIND_PRIVILEGE : EG_KIND_SYSCALL;
}

LSM_PROBE(ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	struct eg_ext_policy *pol = current_policy();
	if (!pol || syscall_allowed(pol, 101 /* ptrace */))
		return 0;
	u16 kind = syscall_kind(pol, 101);
	struct eg_event *e = new_event(pol, kind, 101);
	return lsm_answer(pol, kind, e, EG_EPERM);
}

LSM_PROBE(task_alloc, struct task_struct *task, unsigned long clone_flags)
{
	if (!(clone_flags & EG_CLONE_NS))
		return 0;
	struct eg_ext_policy *pol = current_policy();
	if (!pol || syscall_allowed(pol, 272 /* unshare */))
		return 0;
	u16 kind = syscall_kind(pol, 272);
	struct eg_event *e = new_event(pol, kind, 272);
	if (e)
		e->aux = clone_flags;
	return lsm_answer(pol, kind, e, EG_EPERM);
}

#endif /* EG_LSM */
