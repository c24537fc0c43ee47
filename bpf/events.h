/* SPDX-License-Identifier: GPL-2.0 */
/*
 * events.h: every constant and struct shared by the kernel programs and the agent.
 *
 * One definition: bpf/lib.bpf.h includes this file (the loader compiles lib.bpf.h and every *.bpf.c
 * family as one program), and ebpfguard/kernel/abi.py reads the #define lines below (so keep them
 * "#define NAME integer"; Kind, Verdict and EvFlag there are built from them). The structs are mirrored in
 * ebpfguard/manifest/compile.py with struct.pack formats; tests/kernel/test_abi.py compares
 * those sizes with the compiled program's own map key/value types. Field types are the kernel's
 * u64/u32/u16/u8/s32 because bcc builds the Python event type from those names.
 *
 * Map byte layout (all integers little-endian, as on x86-64):
 *
 *   cgroup_filter ARRAY     u32 (cgroup id & (EG_FILTER_SLOTS - 1)) -> u64: the one extension cgroup id
 *                           with those low bits, EG_FILTER_SHARED when several have them, 0 when none.
 *                           An array lookup is inlined by the verifier (no call), so a task outside
 *                           every extension costs a cgroup-id read and one load, not a hash lookup.
 *   cgroup_slot   HASH      u64 cgroup id (inode of the v2 cgroup dir) -> u32 policy slot
 *   quarantined   HASH      u64 cgroup id -> u8: this instance's network is denied whatever its rules
 *   last_event    LRU_HASH  u64 pid_tgid -> struct eg_last: the thread's last recorded violation (repeats)
 *   suppressed    HASH      u64 cgroup id -> u64: repeats suppressed in this cgroup, in total
 *   mountns       HASH      u64 cgroup id -> u8: its processes run in the instance's own mount namespace,
 *                           where the EG_ACC_UNIX_NS grants (the D-Bus proxy's socket) lead to the
 *                           proxy and not to the real bus (net.bpf.c: unix_check)
 *   landlocked    HASH      u64 cgroup id -> u8: its processes run under a Landlock ruleset, which decides
 *                           every file access on the resolved object, so a plain relative path is
 *                           left to it: no event, no hold (files.bpf.c). EG_LL_REPORTS: Landlock also
 *                           reports its denials to the agent (audit, kernel/laudit.py), so reads and
 *                           execs are left to it entirely, unless the response must kill first
 *   seccomp_reports HASH    u64 cgroup id -> u8: its seccomp filter reports each refusal to audit, where
 *                           the agent records it: the sys_exit gate does not record those again
 *   share         HASH      u64 cgroup id -> struct eg_share: records this cgroup reserved, and those it could
 *                           not because its share of the ring buffer was in use (new_event in lib.bpf.h)
 *   consumed      HASH      u64 cgroup id -> u64: records of this cgroup the agent has taken from the ring
 *                           buffer (written by the agent only, after each poll); reserved - consumed is
 *                           what the cgroup holds in the ring buffer now
 *   cg_local      CGROUP_STORAGE  u64 cgroup id -> struct eg_cg_local: the cgroup sock_addr programs'
 *                 view of the cgroup they are attached to (its slot, mount namespace and quarantine),
 *                 one value shared by every program attached there. bpf_get_local_storage() returns it
 *                 from the program's run context: no cgroup-id read and no hash lookup on every
 *                 connect. The kernel creates it zeroed at attach; the loader creates the map before
 *                 compiling (bcc declares no such table) and writes each value after attaching.
 *   ext_policy    ARRAY     u32 slot -> struct eg_ext_policy
 *   path_rules    LPM_TRIE  struct eg_path_key -> u8 (unused, 1)
 *                 data = u32 scope (slot << 8 | EG_ACC_*) then the path bytes; EG_ACC_UNIX(_NS) scopes hold
 *                 socket paths (spec.ipc.unix), matched against the kernel's copy of sun_path.
 *                 A tree "/usr/" is stored without its NUL, so it is a prefix of "/usr/bin/x";
 *                 an exact file "/etc/hosts" is stored with its NUL, so only that path matches.
 *                 prefixlen counts bits of scope + path: 32 + 8 * len(bytes).
 *   net_rules     LPM_TRIE  struct eg_net_key -> struct eg_net_value
 *                 data = u32 scope (slot << 8 | op << 4 | family 4|6) then 16 address bytes
 *                 (IPv4 in the first 4). The value lists the port ranges of this CIDR *and of
 *                 every shorter CIDR that contains it*, so the longest-prefix match is enough.
 */
#ifndef EBPFGUARD_EVENTS_H
#define EBPFGUARD_EVENTS_H

#define EG_MAX_SLOTS 64
#define EG_MAX_CGROUPS 4096
#define EG_MAX_THREADS 16384 /* gate_seen: threads between a syscall's enter and exit */
#define EG_FILTER_SLOTS 65536
#define EG_FILTER_SHARED 1 /* id 1 is the root cgroup, never an extension's */
#define EG_PATH_MAX 252
#define EG_SYSCALL_WORDS 8
#define EG_NET_RANGES 16
#define EG_RINGBUF_PAGES 1024 /* 4 MiB: about 11 000 records */
/* Records one cgroup may hold in the ring buffer at once (a fifth of it): one extension's flood cannot
 * fill it and drop another extension's records; what is over its share is counted for that cgroup. */
#define EG_CG_SHARE 2048

/* violation kinds (index into eg_ext_policy.response) */
#define EG_KIND_FILE 1
#define EG_KIND_EXEC 2
#define EG_KIND_NETWORK 3
#define EG_KIND_SYSCALL 4
#define EG_KIND_PRIVILEGE 5
#define EG_KIND_RESOURCE 6
#define EG_KIND_LIFECYCLE 7
#define EG_KIND_MAX 8

/* path access classes */
#define EG_ACC_READ 0
#define EG_ACC_WRITE 1
#define EG_ACC_EXEC 2
#define EG_ACC_UNIX 3     /* a pathname unix socket the extension may connect or send to */
#define EG_ACC_UNIX_NS 4  /* the same, granted only inside the instance's own mount namespace */
#define EG_ACC_WATCH 8    /* + EG_ACC_READ/WRITE/EXEC: a path a correlation rule starts on (correlate.py):
                           * allowed there, it is reported and arms the cgroup for the rule's window */

/* network operations */
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

/* responses, per kind */
#define EG_RESP_ALERT 0
#define EG_RESP_BLOCK 1
#define EG_RESP_FREEZE 2
#define EG_RESP_KILL 3

/* eg_ext_policy.flags */
#define EG_LL_DECIDES 1     /* landlocked value: Landlock decides file access on the object */
#define EG_LL_REPORTS 2     /* landlocked value: ... and reports each denial (audit): records come from it */
#define EG_CG_MOUNTNS 1     /* eg_cg_local.flags: launched in the instance's own mount namespace */
#define EG_CG_QUARANTINE 2  /* eg_cg_local.flags: the instance's network is quarantined */
#define EG_POL_ENFORCE 1
#define EG_POL_WATCH 2    /* the slot holds EG_ACC_WATCH paths: allowed opens are checked against them */
#define EG_POL_WATCH_READ 4 /* ... for reads; << EG_ACC_WRITE for writes, << EG_ACC_EXEC for execs */
#define EG_POL_BASELINE 32 /* a baseline (baseline.py): allowed execs, opens for writing, connects, sends and
                           * binds are reported, for the agent to compare with normal activity */

/* verdicts the kernel reached */
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

/* signals, errnos and syscall numbers (x86-64) the programs use, named once */
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

/* counters (per-CPU array index) */
#define EG_CTR_EVENTS 0
#define EG_CTR_DROPS 1
#define EG_CTR_KILLS 2
#define EG_CTR_DENIALS 3
#define EG_CTR_SUPPRESSED 4 /* identical repeats within EG_REPEAT_NS, not recorded (lib.bpf.h: repeat_gate) */
#define EG_CTR_OVER_SHARE 5 /* records a cgroup could not reserve: its share of the ring buffer was in use */
#define EG_CTR_MAX 6

/* A thread repeating the same violation is recorded once per EG_REPEAT_NS; the record after carries how
 * many were suppressed in between, and the per-cgroup `suppressed` map the total. */
#define EG_REPEAT_NS 1000000000ULL

struct eg_ext_policy {
	u32 flags;
	u32 slot;
	u8 response[EG_KIND_MAX];
	u64 sys_deny[EG_SYSCALL_WORDS];
	u64 sys_priv[EG_SYSCALL_WORDS];
	u32 shadow; /* 1 + the slot of a shadow version that decides the same events without acting; 0: none */
	u32 arm_ms; /* a watched path armed the cgroup: its allowed actions are reported for this long */
};

struct eg_path_key {
	u32 prefixlen;
	u32 scope;
	u8 path[EG_PATH_MAX];
};

struct eg_net_key {
	u32 prefixlen;
	u32 scope;
	u8 addr[16];
};

struct eg_port_range {
	u16 lo;
	u16 hi;
	u8 proto; /* 0 any, 6 tcp, 17 udp */
	u8 pad[3];
};

struct eg_net_value {
	u32 count;
	u32 pad;
	struct eg_port_range r[EG_NET_RANGES];
};

struct eg_event {
	u64 ts_ns;     /* bpf_ktime_get_ns() */
	u64 cgroup_id;
	u64 uptr;      /* user address of the path, for EG_EV_UNREADABLE */
	u64 aux;       /* open flags for opens; the return value for EG_EV_AT_EXIT */
	u32 pid;       /* thread id */
	u32 tgid;      /* process id */
	u32 uid;
	u32 slot;
	u16 kind;
	u16 verdict;
	s32 syscall_nr;
	u32 flags;
	s32 dirfd;
	u32 op;        /* EG_ACC_* for file/exec, EG_NET_* for network, EG_LIFE_* */
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

struct eg_cg_local {
	u32 slot1;  /* policy slot + 1; 0: no policy (not bound yet, or unbound) */
	u32 flags;  /* EG_CG_* */
};

struct eg_share {
	u64 reserved;
	u64 over; /* not reserved: the cgroup held EG_CG_SHARE records in the ring buffer already */
};

struct eg_last {
	u64 hash;
	u64 ts_ns;
	u32 suppressed;
	u32 pad;
};

#endif
