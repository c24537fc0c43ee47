/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lsm.bpf.c: the BPF-LSM backend, compiled in (-DEG_LSM) only where the probe could load an LSM
 * program and the kernel headers are the running kernel's own (these programs read struct file,
 * struct linux_binprm and struct task_struct fields). LSM hooks decide on resolved objects, for every
 * process of an extension cgroup, launched or adopted:
 *
 *   file_open             the opened file's real path (bpf_d_path) against the read/write tries (a
 *                         file, not a folder, may also be read under an exec grant, as with Landlock); an
 *                         exec open (FMODE_EXEC: the binary, its ELF interpreter) passes with exec or
 *                         read permission, and bprm_check_security decides the exec itself
 *   bprm_check_security   the executable's real path against the exec trie (renamed copies, memfds,
 *                         symlinks: the resolved file is what is checked)
 *   ptrace_access_check   ptrace from inside an extension, unless its manifest allows the syscall
 *   task_alloc            a clone with CLONE_NEW* flags, unless its manifest allows unshare
 *   task_kill             a signal to a process outside the instance's cgroup (Landlock's signal scoping
 *                         does the same for a launched instance from ABI 6; this covers older kernels and
 *                         adopted processes), recorded as privilege "kill" with the target
 *   socket_connect,       a pathname unix socket, where the kernel has no cgroup unix programs (before
 *   socket_sendmsg        6.7: the loader sets lsm_unix_on): the same string decision as net.bpf.c's
 *                         unix_check (lib/unix.bpf.h), refused with EPERM before the protocol looks the
 *                         path up
 *
 * Internet sockets are covered by the cgroup connect4/6, sendmsg4/6 and bind4/6 programs, which decide on
 * the socket address in the kernel for every process of the cgroup already.
 * Where these run, the open and exec tracepoints stand down (files.bpf.c), so nothing is recorded twice;
 * for a launched instance under Landlock it is the other way round (lib/policy.bpf.h: lsm_defers):
 * Landlock decides its files, and the tracepoints record them as they do without BPF-LSM.
 *
 * The project's headers are included outside #ifdef EG_LSM: the loader writes each into the program
 * text once, where it is first included, whatever the preprocessor later keeps.
 */
#include "lib/maps.bpf.h"
#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"
#include "lib/path.bpf.h"
#include "lib/unix.bpf.h"

#ifdef EG_LSM
#include <linux/fs.h>
#include <linux/binfmts.h>
#include <linux/sched.h>
#include <linux/net.h>
#include <linux/socket.h>
#include <linux/cgroup.h>

BPF_ARRAY(lsm_unix_on, u32, 1); /* [0] = 1: the cgroup unix programs are missing, the LSM hooks decide */

#define EG_FMODE_WRITE 0x2
#define EG_FMODE_EXEC_FLAG 0x20  /* __FMODE_EXEC: FMODE_EXEC carried in the open flags */

/* The verdict of a violation of this kind, acted on: deny unless audit mode or an `alert` response
 * (deny_in_mode), kill if asked. A repeat (or a full ring) has no record and is answered all the same. */
static __always_inline u16 lsm_verdict(struct eg_ext_policy *pol, u32 kind)
{
	if (!deny_in_mode(pol, kind))
		return EG_V_ALLOWED;
	count(EG_CTR_DENIALS);
	if (!should_kill(pol, kind))
		return EG_V_DENIED;
	kill_current();
	return EG_V_KILLED;
}

/* What the hook returns for that verdict. */
static __always_inline int lsm_answer(u16 verdict, int err)
{
	return verdict == EG_V_ALLOWED ? 0 : -err;
}

/* The record of a violation or an allowed event of the resolved path in k->path, sent. */
static __always_inline void lsm_path_event(struct eg_ext_policy *pol, u64 cg, struct eg_path_key *k, u32 access,
					   u16 kind, u16 verdict)
{
	struct eg_event *e = path_record(pol, cg, kind, -1, verdict, access, EG_EV_LSM, k);
	if (e)
		emit(e);
}

static __always_inline int lsm_path(struct eg_ext_policy *pol, u64 cg, struct path *p, u32 access, u32 alt,
				    u16 kind)
{
	struct eg_path_key *k = scratch_key();
	if (!k)
		return 0;
	long n = bpf_d_path(p, (char *)k->path, EG_PATH_MAX);
	if (n < 0)  /* unnamed or too long to name: refusing to guess is the safe side */
		k->path[0] = 0;
	if (n > 0 && file_granted(pol->slot, k, access, alt, cg)) {
		/* allowed: a shadow version (staged rollout) that would refuse it is recorded, nothing done */
		if (pol->shadow && !file_granted(pol->shadow - 1, k, access, alt, cg))
			lsm_path_event(pol, cg, k, access, kind, EG_V_SHADOW);
		/* activity, correlation, baseline */
		if (watch_path(pol, k, access, cg) || watched(cg) ||
		    ((pol->flags & EG_POL_BASELINE) && access != EG_ACC_READ))
			lsm_path_event(pol, cg, k, access, kind, EG_V_ACTIVITY);
		return 0;
	}
	u16 verdict = lsm_verdict(pol, kind);
	lsm_path_event(pol, cg, k, access, kind, verdict);
	return lsm_answer(verdict, EG_EACCES);
}

LSM_PROBE(file_open, struct file *file)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol || lsm_defers())
		return 0;
	if ((file->f_mode & FMODE_EXEC) || (file->f_flags & EG_FMODE_EXEC_FLAG))
		/* execve and the ELF loader open the binary and its interpreter with FMODE_EXEC (6.1 sets it
		 * in f_flags as __FMODE_EXEC by the time this hook runs, not yet in f_mode) */
		return lsm_path(pol, cg, &file->f_path, EG_ACC_EXEC, EG_ACC_READ, EG_KIND_EXEC);
	if (file->f_mode & EG_FMODE_WRITE)
		return lsm_path(pol, cg, &file->f_path, EG_ACC_WRITE, 0, EG_KIND_FILE);
	/* an exec grant lets a file be read too, as Landlock's execute grant does (sandbox/landlock.py):
	 * the loader maps the shared libraries of the programs it may run */
	umode_t mode = 0;
	struct inode *inode = 0;
	bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode);
	if (inode)
		bpf_probe_read_kernel(&mode, sizeof(mode), &inode->i_mode);
	return lsm_path(pol, cg, &file->f_path, EG_ACC_READ, S_ISDIR(mode) ? 0 : EG_ACC_EXEC, EG_KIND_FILE);
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol || lsm_defers())
		return 0;
	return lsm_path(pol, cg, &bprm->file->f_path, EG_ACC_EXEC, 0, EG_KIND_EXEC);
}

/* A syscall-level refusal decided on the object (ptrace, namespaces, signals): recorded as syscall nr, with
 * ``aux`` naming what it was done to (the ptrace mode, the clone flags, the target's pid). */
static __always_inline int lsm_syscall(struct eg_ext_policy *pol, u64 cg, u16 kind, s32 nr, u32 op, u64 aux)
{
	u16 verdict = lsm_verdict(pol, kind);
	struct eg_event *e = new_violation(pol, cg, kind, nr, verdict, op, EG_EV_LSM, aux);
	if (e) {
		e->aux = aux;
		emit(e);
	}
	return lsm_answer(verdict, EG_EPERM);
}

LSM_PROBE(ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	u16 kind = syscall_kind(pol, EG_NR_PTRACE);
	return kind ? lsm_syscall(pol, cg, kind, EG_NR_PTRACE, 0, mode) : 0;
}

LSM_PROBE(task_alloc, struct task_struct *task, unsigned long clone_flags)
{
	if (!(clone_flags & EG_CLONE_NS))
		return 0;
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	u16 kind = syscall_kind(pol, EG_NR_UNSHARE);
	return kind ? lsm_syscall(pol, cg, kind, EG_NR_UNSHARE, 0, clone_flags) : 0;
}

/* The v2 cgroup id of a task (what bpf_get_current_cgroup_id gives for current). */
static __always_inline u64 task_cgroup_id(struct task_struct *p)
{
	struct css_set *cset = 0;
	struct cgroup *cgrp = 0;
	struct kernfs_node *kn = 0;
	u64 id = 0;
	bpf_probe_read_kernel(&cset, sizeof(cset), &p->cgroups);
	if (cset)
		bpf_probe_read_kernel(&cgrp, sizeof(cgrp), &cset->dfl_cgrp);
	if (cgrp)
		bpf_probe_read_kernel(&kn, sizeof(kn), &cgrp->kn);
	if (kn)
		bpf_probe_read_kernel(&id, sizeof(id), &kn->id);
	return id;
}

LSM_PROBE(task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol || task_cgroup_id(p) == cg)
		return 0;
	u32 tgid = 0;
	bpf_probe_read_kernel(&tgid, sizeof(tgid), &p->tgid);
	return lsm_syscall(pol, cg, EG_KIND_PRIVILEGE, EG_NR_KILL, sig, tgid);
}

/* A pathname unix socket address (kernel memory: the kernel's own copy of the user's) against the
 * extension's grants, as unix_check (net.bpf.c) decides it: lib/unix.bpf.h. */
static __always_inline int lsm_unix(struct socket *sock, void *addr, int addrlen, u32 op)
{
	u32 zero = 0;
	u32 *on = lsm_unix_on.lookup(&zero);
	if (!on || !*on || !addr || addrlen <= 2)
		return 0;
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	u16 family = 0;
	bpf_probe_read_kernel(&family, sizeof(family), addr);
	if (family != AF_UNIX)
		return 0;
	struct eg_path_key *k = scratch_key();
	if (!k)
		return 0;
	s32 flags = read_sun_path(k, addr, (u32)addrlen);
	if (flags < 0)
		return 0; /* abstract: Landlock's scoping, where the kernel has it */
	short type = 0;
	bpf_probe_read_kernel(&type, sizeof(type), &sock->type);
	if (unix_granted(pol, cg, k, op, (u8)type, flags, mountns.lookup(&cg) != 0, EG_EV_LSM))
		return 0;
	u16 verdict = lsm_verdict(pol, EG_KIND_NETWORK);
	unix_event(pol, cg, k, op, (u8)type, verdict, flags | EG_EV_LSM);
	return lsm_answer(verdict, EG_EPERM);
}

LSM_PROBE(socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	return lsm_unix(sock, address, addrlen, EG_NET_CONNECT);
}

LSM_PROBE(socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
{
	void *name = 0;
	int len = 0;
	bpf_probe_read_kernel(&name, sizeof(name), &msg->msg_name);
	bpf_probe_read_kernel(&len, sizeof(len), &msg->msg_namelen);
	return lsm_unix(sock, name, len, EG_NET_SEND); /* no name: a connected socket, decided at connect */
}

#endif /* EG_LSM */
