/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lifecycle.bpf.c: exec and exit of processes inside extension cgroups (not threads, not forks), for
 * the lineage the agent writes (ebpfguard/instance/lineage.py). With an exec, aux is the parent's pid;
 * with an exit, the exit code in the wait status layout. Both come from tracepoint fields, never from struct
 * offsets (the headers bcc compiles against may not be the running kernel's):
 *   parent_of  a fork inside an extension cgroup: the child's pid -> the forking process's pid
 *   ending     how a process is ending, as last seen: exit_group()/exit() with its status, or a
 *              signal delivered with its default, fatal action
 * Whether an exiting thread is its process's last: the tracepoint's group_dead where it has one (6.13+:
 * EG_HAVE_GROUP_DEAD, from its format file); else the task's live-thread count, where the headers are the
 * running kernel's own (EG_KERNEL_STRUCTS: do_exit has decremented it before the tracepoint, so 0 means
 * the group is dead; two threads racing to the end may both see 0, and the agent keeps one exit per pid);
 * else the leader's exit stands for the process's.
 * Their records are submitted without a wakeup: lineage is not urgent, and waking the agent for each
 * exec and exit made a fork+exec loop inside 1.34x slower than under the kernel's layers alone (1.03x
 * without). The agent takes them at its next poll (Sensor.poll consumes after waiting); violations
 * force a wakeup, since one submitted behind unconsumed records would otherwise wake nobody.
 */
#include "lib/maps.bpf.h"
#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"

#if !defined(EG_HAVE_GROUP_DEAD) && defined(EG_KERNEL_STRUCTS)
#include <linux/sched.h>
#include <linux/sched/signal.h>
#endif

#if defined(EG_HAVE_GROUP_DEAD)
#define EG_GROUP_DEAD(args, tid, tgid) ((args)->group_dead)
#else
#define EG_GROUP_DEAD(args, tid, tgid) group_dead_now(tid, tgid)
static __always_inline int group_dead_now(u32 tid, u32 tgid)
{
#if defined(EG_KERNEL_STRUCTS)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct signal_struct *sig = 0;
	int live = 1;
	bpf_probe_read_kernel(&sig, sizeof(sig), &task->signal);
	if (sig)
		bpf_probe_read_kernel(&live, sizeof(live), &sig->live.counter);
	return live == 0;
#else
	return tid == tgid;
#endif
}
#endif

BPF_TABLE("lru_hash", u32, u32, parent_of, EG_MAX_THREADS);
BPF_TABLE("lru_hash", u32, u32, ending, EG_MAX_THREADS);

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	u64 cg;
	if (!current_policy_cg(&cg))
		return 0;
	u32 child = args->child_pid;
	u32 parent = bpf_get_current_pid_tgid() >> 32;
	parent_of.update(&child, &parent);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	struct eg_event *e = new_event(pol, EG_KIND_LIFECYCLE, -1, cg);
	if (!e)
		return 0;
	e->op = EG_LIFE_EXEC;
	u32 tgid = e->tgid;
	u32 *parent = parent_of.lookup(&tgid);
	e->aux = parent ? *parent : 0; /* 0: forked before it joined the cgroup (the agent looks it up) */
	TP_DATA_LOC_READ_STR(e->path, filename, EG_PATH_MAX);
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline int ending_status(u32 status)
{
	u64 cg;
	if (!current_policy_cg(&cg))
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	ending.update(&tgid, &status);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
	return ending_status((args->error_code & 0xff) << 8);
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit)
{
	return ending_status((args->error_code & 0xff) << 8);
}

/* Signals whose default action ends the process: all but SIGCHLD, SIGCONT, the stop signals, SIGURG
 * and SIGWINCH (17-23, 28). */
TRACEPOINT_PROBE(signal, signal_deliver)
{
	int sig = args->sig;
	if (args->sa_handler != 0 || sig <= 0 || sig > 64 || (sig >= 17 && sig <= 23) || sig == 28)
		return 0;
	return ending_status(sig);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, tgid = id >> 32;
	parent_of.delete(&tid);
	if (!EG_GROUP_DEAD(args, tid, tgid))
		return 0;
	struct eg_event *e = new_event(pol, EG_KIND_LIFECYCLE, -1, cg);
	if (!e)
		return 0;
	e->op = EG_LIFE_EXIT;
	u32 *status = ending.lookup(&tgid);
	e->aux = status ? *status : 0;
	ending.delete(&tgid);
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}
