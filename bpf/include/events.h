/* SPDX-License-Identifier: GPL-2.0 */
/*
 * events.h: the record every kernel program sends the agent (struct eg_event, through the `events` ring
 * buffer) and every number it names. maps.h holds the maps' layout; this file, what a record says.
 *
 * Shared with Python, defined once: ebpfguard/common/abi.py reads the "#define EG_NAME integer" lines of
 * every header in bpf/include/ (Kind, Verdict, EvFlag, Access, NetOp and LifeOp are built from them; keep
 * that form: a name, an integer, an optional comment), and the agent decodes eg_event through the ctypes
 * type bcc builds from the compiled program (pipeline/events.py). Field types are the kernel's
 * u64/u32/u16/u8/s32 because bcc builds that type from their names. tests/kernel/test_abi.py checks the
 * compiled layout.
 */
#ifndef EBPFGUARD_EVENTS_H
#define EBPFGUARD_EVENTS_H

#define EG_PATH_MAX 252 /* eg_event.path and eg_path_key.path, with the NUL */

/* violation kinds (eg_event.kind; index into eg_ext_policy.response) */
#define EG_KIND_FILE 1
#define EG_KIND_EXEC 2
#define EG_KIND_NETWORK 3
#define EG_KIND_SYSCALL 4
#define EG_KIND_PRIVILEGE 5
#define EG_KIND_RESOURCE 6
#define EG_KIND_LIFECYCLE 7
#define EG_KIND_MAX 8

/* path access classes (eg_event.op of file and exec records; the low bits of a path_rules scope) */
#define EG_ACC_READ 0
#define EG_ACC_WRITE 1
#define EG_ACC_EXEC 2
#define EG_ACC_UNIX 3     /* a pathname unix socket the extension may connect or send to */
#define EG_ACC_UNIX_NS 4  /* the same, granted only inside the instance's own mount namespace */
#define EG_ACC_WATCH 8    /* + EG_ACC_READ/WRITE/EXEC: a path a correlation rule starts on (correlate.py):
                           * allowed there, it is reported and arms the cgroup for the rule's window */

/* network operations (eg_event.op of network records; part of a net_rules scope) */
#define EG_NET_CONNECT 0
#define EG_NET_SEND 1
#define EG_NET_BIND 2

/* eg_event.family of a unix-socket event (4 and 6 are IPv4 and IPv6); eg_event.proto is then the socket
 * type: SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5 */
#define EG_FAMILY_UNIX 1
#define EG_UNIX_PATH_MAX 108 /* sizeof(sockaddr_un.sun_path) */

/* lifecycle operations (eg_event.op when kind == EG_KIND_LIFECYCLE) */
#define EG_LIFE_EXEC 1
#define EG_LIFE_EXIT 2

/* verdicts the kernel reached (eg_event.verdict) */
#define EG_V_NONE 0      /* lifecycle */
#define EG_V_ALLOWED 1   /* audit mode: allowed and recorded */
#define EG_V_DETECTED 2  /* enforce mode, this hook cannot deny (tracepoint), response not kill */
#define EG_V_DENIED 3    /* the kernel returned EPERM */
#define EG_V_KILLED 4    /* SIGKILL sent before the syscall returned */
#define EG_V_PENDING 5   /* the kernel could not decide: user space resolves the path */
#define EG_V_SHADOW 6    /* allowed by the enforced version; its shadow version (rollout) would refuse it */
#define EG_V_ACTIVITY 7  /* allowed; someone traces this instance's activity (trace --activity) */

/* eg_event.flags */
#define EG_EV_RELATIVE 1    /* relative path: resolve against cwd or dirfd */
#define EG_EV_DOTDOT 2      /* path has a ".." component */
#define EG_EV_TRUNCATED 4   /* path longer than EG_PATH_MAX - 1 bytes */
#define EG_EV_UNREADABLE 8  /* the user page was not resident; read it from /proc/PID/mem */
#define EG_EV_EMPTY_PATH 16 /* execveat(fd, "", AT_EMPTY_PATH) and friends */
#define EG_EV_HELD 32       /* enforce mode: SIGSTOP sent; user space resumes (SIGCONT) or kills */
#define EG_EV_SECCOMP 64    /* the launcher's seccomp filter denied (EPERM) or killed (SIGSYS) */
#define EG_EV_AT_EXIT 128   /* seen at syscall exit: seccomp skipped the enter tracepoint */
#define EG_EV_QUARANTINE 256 /* denied because the instance is in network quarantine */
#define EG_EV_LSM 512       /* decided by a BPF-LSM hook on the resolved object (lsm.bpf.c) */

/* signals, errnos and syscall numbers (x86-64) the programs use and records carry, named once */
#define EG_SIGKILL 9
#define EG_SIGSTOP 19
#define EG_SIGSYS 31
#define EG_SYS_SECCOMP 1   /* si_code of a SIGSYS sent by a seccomp filter */
#define EG_EPERM 1
#define EG_EACCES 13
#define EG_NR_PTRACE 101
#define EG_NR_UNSHARE 272
#define EG_NR_KILL 62
/* CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME: what unshare() does, through clone() */
#define EG_CLONE_NS 2114060416

/* A thread repeating the same violation is recorded once per EG_REPEAT_NS (lib/record.bpf.h: repeat_key
 * says what "the same" is); eg_event.repeats of the record after carries how many were suppressed in
 * between, and the per-cgroup `suppressed` map (maps.h) the total. */
#define EG_REPEAT_NS 1000000000ULL

struct eg_event {
	u64 ts_ns;     /* bpf_ktime_get_ns() */
	u64 cgroup_id;
	u64 uptr;      /* user address of the path, for EG_EV_UNREADABLE */
	u64 aux;       /* open flags for opens; the return value for EG_EV_AT_EXIT; the parent (exec) or the
	                * wait status (exit) for lifecycle; the target's pid for a kill; the flags or mode of
	                * a namespace or ptrace refusal */
	u32 pid;       /* thread id */
	u32 tgid;      /* process id */
	u32 uid;
	u32 slot;
	u16 kind;
	u16 verdict;
	s32 syscall_nr;
	u32 flags;
	s32 dirfd;
	u32 op;        /* EG_ACC_* for file/exec, EG_NET_* for network, EG_LIFE_*; the signal of a kill */
	u16 family;
	u16 port;
	u8 proto;
	u8 pad[3];
	u32 repeats;   /* identical repeats by this thread suppressed since its previous record of this */
	u32 pad2;
	u8 addr[16];
	char comm[16];
	char path[EG_PATH_MAX];
};

#endif
