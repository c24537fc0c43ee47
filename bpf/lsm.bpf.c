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
 *                         unix_check, refused with EPERM before the protocol looks the path up
 *
 * Internet sockets are covered by the cgroup connect4/6, sendmsg4/6 and bind4/6 programs, which decide on the socket address in the kernel for every process of the cgroup already.
 * Where these run, the open and exec tracepoints stand down (files.bpf.c), so nothing is recorded twice;
 * for a launched instance under Landlock it is the other way round (lsm_defers): Landlock decides its
 * files, and the tracepoints record them as they do without BPF-LSM.
 */
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

/* The LSM answer for a violation: deny unless audit mode or an `alert` response (deny_in_mode); kill
 * if asked. A repeat (or a full ring) has no record and is answered all the same. */
static __always_inline int lsm_answer(struct eg_ext_policy *pol, u32 kind, struct eg_event *e, int err)
{
	int deny = deny_in_mode(pol, kind);
	int killing = deny && should_kill(pol, kind);
	if (deny)
		count(EG_CTR_DENIALS);
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
	if (n > 0 && path_granted(pol->slot, k, access, alt)) {
		/* allowed: a shadow version (staged rollout) that would refuse it is recorded, nothing done */
		if (pol->shadow && !path_granted(pol->shadow - 1, k, access, alt)) {
			u64 sh = hash_path(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), EG_V_SHADOW), k->path);
			struct eg_event *se = new_violation(pol, kind, -1, EG_V_SHADOW, sh, cg);
			if (se) {
				se->verdict = EG_V_SHADOW;
				se->flags |= EG_EV_LSM;
				se->op = access;
				__builtin_memcpy(se->path, k->path, EG_PATH_MAX);
				events.ringbuf_submit(se, BPF_RB_FORCE_WAKEUP);
			}
		}
		if ((n > 0 && watch_path(pol, k, access, cg)) || watched(cg) ||
		    ((pol->flags & EG_POL_BASELINE) && access != EG_ACC_READ)) { /* activity, correlation, baseline */
			u64 ah = hash_path(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), EG_V_ACTIVITY), k->path);
			struct eg_event *ae = new_violation(pol, kind, -1, EG_V_ACTIVITY, ah, cg);
			if (ae) {
				ae->flags |= EG_EV_LSM;
				ae->op = access;
				__builtin_memcpy(ae->path, k->path, EG_PATH_MAX);
				events.ringbuf_submit(ae, BPF_RB_FORCE_WAKEUP);
			}
		}
		return 0;
	}
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
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, EG_KIND_PRIVILEGE), EG_NR_KILL), tgid);
	struct eg_event *e = new_violation(pol, EG_KIND_PRIVILEGE, EG_NR_KILL, lsm_verdict(pol, EG_KIND_PRIVILEGE), h, cg);
	if (e) {
		e->aux = tgid;
		e->op = sig;
	}
	return lsm_answer(pol, EG_KIND_PRIVILEGE, e, EG_EPERM);
}

/* A pathname unix socket address (kernel memory: the kernel's own copy of the user's) against the
 * extension's grants, as unix_check (net.bpf.c) decides it: relative or ".." names are refused. */
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
	struct eg_path_key *k = path_scratch.lookup(&zero);
	if (!k)
		return 0;
	u32 n = (u32)addrlen - 2;
	if (n > EG_UNIX_PATH_MAX)
		n = EG_UNIX_PATH_MAX;
	/* the kernel's copy of an address is a sockaddr_storage (128 bytes): sun_path can be read whole, and
	 * cut at the length given; the volatile keeps the mask the verifier needs from being folded away */
	volatile u32 end = n;
	u32 flags = 0;
	if (bpf_probe_read_kernel(k->path, EG_UNIX_PATH_MAX, (char *)addr + 2) < 0) {
		flags = EG_EV_UNREADABLE;
		k->path[0] = 0;
	} else {
		if (k->path[0] == 0)
			return 0; /* abstract: Landlock's scoping, where the kernel has it */
		k->path[end & 127] = 0;
		flags = unix_path_flags(k, n);
	}
	short type = 0;
	bpf_probe_read_kernel(&type, sizeof(type), &sock->type);
	if (!flags && unix_allows(pol, k, mountns.lookup(&cg) != 0)) {
		if (watched(cg) || armed_now(pol, cg))  /* activity (net.bpf.c's unix_event) */
			unix_event(pol, k, op, (u8)type, EG_V_ACTIVITY, EG_EV_LSM, cg);
		return 0;
	}
	u64 h = hash_path(EG_FNV(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, EG_KIND_NETWORK), op), EG_FAMILY_UNIX), (u8)type),
			  k->path);
	struct eg_event *e = new_violation(pol, EG_KIND_NETWORK, -1, lsm_verdict(pol, EG_KIND_NETWORK), h, cg);
	if (e) {
		e->flags = flags;
		e->op = op;
		e->family = EG_FAMILY_UNIX;
		e->proto = (u8)type;
		__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	}
	return lsm_answer(pol, EG_KIND_NETWORK, e, EG_EPERM);
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
