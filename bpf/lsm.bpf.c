/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lsm.bpf.c: the BPF-LSM backend, compiled in (-DEG_LSM) only where the probe could load an LSM
 * program and the kernel headers are the running kernel's own (these programs read struct file,
 * struct linux_binprm and struct task_struct fields). LSM hooks decide on resolved objects, for every
 * process of an extension cgroup, launched or adopted:
 *
 *   file_open             the opened file's real path (bpf_d_path) against the read/write tries; an
 *                         exec open (FMODE_EXEC: the binary, its ELF interpreter) passes with exec or
 *                         read permission, and bprm_check_security decides the exec itself
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

#define EG_FMODE_WRITE 0x2
#define EG_FMODE_EXEC_FLAG 0x20  /* __FMODE_EXEC: FMODE_EXEC carried in the open flags */

/* The LSM answer for a violation: deny unless audit mode or an `alert` response (deny_in_mode); kill
 * if asked. A repeat (or a full ring) has no record and is answered all the same. */
static __always_inline int lsm_answer(struct eg_ext_policy *pol, u32 kind, struct eg_event *e, int err)
{
	int deny = deny_in_mode(pol, kind);
	int killing = deny && should_kill(pol, kind);
	if (killing)
		kill_current();
	if (e) {
		e->verdict = killing ? EG_V_KILLED : deny ? EG_V_DENIED : EG_V_ALLOWED;
		e->flags |= EG_EV_LSM;
		events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	return deny ? -err : 0;
}

/* The verdict a violation of this kind will get, for new_violation's repeat gate (a kill is never a repeat). */
static __always_inline u16 lsm_verdict(struct eg_ext_policy *pol, u32 kind)
{
	if (!deny_in_mode(pol, kind))
		return EG_V_ALLOWED;
	return should_kill(pol, kind) ? EG_V_KILLED : EG_V_DENIED;
}

/* Is access (or alt, if not 0) granted to this path? k->path holds it. */
static __always_inline int path_granted(struct eg_ext_policy *pol, struct eg_path_key *k, u32 access, u32 alt)
{
	k->scope = (pol->slot << 8) | access;
	if (path_rules.lookup(k))
		return 1;
	if (!alt)
		return 0;
	k->scope = (pol->slot << 8) | alt;
	return path_rules.lookup(k) != 0;
}

static __always_inline int lsm_path(struct eg_ext_policy *pol, u64 cg, struct path *p, u32 access, u32 alt,
				    u16 kind)
{
	u32 zero = 0;
	struct eg_path_key *k = path_scratch.lookup(&zero);
	if (!k)
		return 0;
	long n = bpf_d_path(p, (char *)k->path, EG_PATH_MAX);
	if (n < 0)  /* unnamed or too long to name: refusing to guess is the safe side */
		k->path[0] = 0;
	k->prefixlen = 32 + EG_PATH_MAX * 8;
	if (n > 0 && path_granted(pol, k, access, alt))
		return 0;
	u64 h = hash_path(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), k->path);
	struct eg_event *e = new_violation(pol, kind, -1, lsm_verdict(pol, kind), h, cg);
	if (e) {
		e->op = access;
		__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	}
	return lsm_answer(pol, kind, e, EG_EACCES);
}

LSM_PROBE(file_open, struct file *file)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	if ((file->f_mode & FMODE_EXEC) || (file->f_flags & EG_FMODE_EXEC_FLAG))
		/* execve and the ELF loader open the binary and its interpreter with FMODE_EXEC (6.1 sets it
		 * in f_flags as __FMODE_EXEC by the time this hook runs, not yet in f_mode) */
		return lsm_path(pol, cg, &file->f_path, EG_ACC_EXEC, EG_ACC_READ, EG_KIND_EXEC);
	u32 access = (file->f_mode & EG_FMODE_WRITE) ? EG_ACC_WRITE : EG_ACC_READ;
	return lsm_path(pol, cg, &file->f_path, access, 0, EG_KIND_FILE);
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	return lsm_path(pol, cg, &bprm->file->f_path, EG_ACC_EXEC, 0, EG_KIND_EXEC);
}

/* A syscall-level refusal decided on the object (ptrace, namespaces): recorded as syscall nr. */
static __always_inline int lsm_syscall(struct eg_ext_policy *pol, u64 cg, s32 nr, u64 aux)
{
	u16 kind = syscall_kind(pol, nr);
	if (!kind)
		return 0;
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), (u32)nr), aux);
	struct eg_event *e = new_violation(pol, kind, nr, lsm_verdict(pol, kind), h, cg);
	if (e)
		e->aux = aux;
	return lsm_answer(pol, kind, e, EG_EPERM);
}

LSM_PROBE(ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	return lsm_syscall(pol, cg, EG_NR_PTRACE, mode);
}

LSM_PROBE(task_alloc, struct task_struct *task, unsigned long clone_flags)
{
	if (!(clone_flags & EG_CLONE_NS))
		return 0;
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	return lsm_syscall(pol, cg, EG_NR_UNSHARE, clone_flags);
}

#endif /* EG_LSM */
