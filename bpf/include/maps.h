/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h: every map of the program, its key and value, and who writes it; the structs and numbers the
 * agent writes into them. lib/maps.bpf.h declares the maps every hook family shares; a map only one
 * family uses is declared in that family's file (named below). The agent's side of the policy maps is
 * ebpfguard/manifest/compile.py (struct.pack formats) and ebpfguard/kernel/loader.py; abi.py reads the
 * #define lines here as it does those of events.h. tests/kernel/test_abi.py checks every struct of
 * bpf/include/ against the compiled program, and the agent's formats against it field by field;
 * tests/unit/test_abi_enums.py, that every map declared in bpf/ is listed below.
 *
 * Byte layout: all integers little-endian, as on x86-64. "agent" writes, "kernel" writes.
 *
 * The policy and what the agent tells the hooks about each cgroup:
 *
 *   cgroup_filter   ARRAY     u32 (cgroup id & (EG_FILTER_SLOTS - 1)) -> u64: the one extension cgroup id
 *                             with those low bits, EG_FILTER_SHARED when several have them, 0 when none.
 *                             An array lookup is inlined by the verifier (no call), so a task outside
 *                             every extension costs a cgroup-id read and one load, not a hash lookup. agent
 *   cgroup_slot     HASH      u64 cgroup id (inode of the v2 cgroup dir) -> u32 policy slot. agent
 *   ext_policy      ARRAY     u32 slot -> struct eg_ext_policy. agent
 *   path_rules      LPM_TRIE  struct eg_path_key -> u8 (unused, 1). agent
 *                             data = u32 scope (slot << 8 | EG_ACC_*) then the path bytes; EG_ACC_UNIX(_NS)
 *                             scopes hold socket paths (spec.ipc.unix), matched against the kernel's copy
 *                             of sun_path. A tree "/usr/" is stored without its NUL, so it is a prefix of
 *                             "/usr/bin/x"; an exact file "/etc/hosts" is stored with its NUL, so only that
 *                             path matches. prefixlen counts bits of scope + path: 32 + 8 * len(bytes).
 *                             The EG_PATH_PRIVATE scope holds the private /tmp and /var/tmp of a launched
 *                             instance (value 1: read and written there) and the host paths carried into
 *                             them read-only (value 0: the longer prefix takes them back out); it counts
 *                             only for a cgroup in the `mountns` map, whose "/tmp/x" is its own tmpfs.
 *   net_rules       LPM_TRIE  struct eg_net_key -> struct eg_net_value. agent
 *                             data = u32 scope (slot << 8 | op << 4 | family 4|6) then 16 address bytes
 *                             (IPv4 in the first 4). The value lists the port ranges of this CIDR *and of
 *                             every shorter CIDR that contains it*, so the longest-prefix match is enough.
 *   cg_local        CGROUP_STORAGE  u64 cgroup id -> struct eg_cg_local: the cgroup sock_addr programs'
 *                             view of the cgroup they are attached to (its slot, mount namespace and
 *                             quarantine), one value shared by every program attached there.
 *                             bpf_get_local_storage() returns it from the program's run context: no
 *                             cgroup-id read and no hash lookup on every connect. The kernel creates it
 *                             zeroed at attach; the loader creates the map before compiling (bcc declares no
 *                             such table: the programs reach it by the fd EG_CG_LOCAL_FD) and writes each
 *                             value after attaching. agent
 *   mountns         HASH      u64 cgroup id -> u8: its processes run in the instance's own mount namespace,
 *                             where the EG_ACC_UNIX_NS grants (the D-Bus proxy's socket) lead to the proxy
 *                             and not to the real bus. Read by the hooks that have no cg_local: the network
 *                             kill tracepoints and the BPF-LSM socket hooks. agent
 *   landlocked      HASH      u64 cgroup id -> u8: its processes run under a Landlock ruleset, which decides
 *                             every file access on the resolved object, so a plain relative path is left
 *                             to it: no event, no hold (files.bpf.c). EG_LL_REPORTS: Landlock also reports
 *                             its denials to the agent (audit, kernel/laudit.py), so reads and execs are
 *                             left to it entirely, unless the response must kill first. agent
 *   seccomp_reports HASH      u64 cgroup id -> u8: its seccomp filter reports each refusal to audit, where
 *                             the agent records it: the sys_exit gate does not record those again. agent
 *   activity_on     ARRAY     u32 0 -> u32: how many cgroups someone traces (trace --activity); while 0, a
 *                             hook pays one load and never looks at `activity`. agent
 *   activity        HASH      u64 cgroup id -> u8: someone traces this cgroup: its allowed actions are
 *                             sent as EG_V_ACTIVITY events. agent
 *   armed           HASH      u64 cgroup id -> u64 ktime ns: until then the cgroup is inside a correlation
 *                             rule's window (an allowed use of an EG_ACC_WATCH path armed it, for
 *                             eg_ext_policy.arm_ms): its allowed actions are sent as EG_V_ACTIVITY. kernel
 *   lsm_unix_on     ARRAY     u32 0 -> u32: 1 when the kernel refused the cgroup unix-socket programs (before
 *                             6.7) and the BPF-LSM socket hooks decide pathname sockets instead. Declared
 *                             in lsm.bpf.c. agent
 *
 * Records and their accounting:
 *
 *   events          RINGBUF   struct eg_event records (events.h), EG_RINGBUF_PAGES pages. kernel
 *   counters        PERCPU_ARRAY  u32 EG_CTR_* -> u64: global counts, summed over the CPUs by the agent
 *                             (metrics, bench). kernel
 *   share           HASH      u64 cgroup id -> struct eg_share: records this cgroup reserved, and those it
 *                             could not because its share of the ring buffer was in use (lib/record.bpf.h:
 *                             reserve_event). The agent creates it zeroed at bind; the kernel counts
 *   consumed        HASH      u64 cgroup id -> u64: records of this cgroup the agent has taken from the ring
 *                             buffer (after each poll); reserved - consumed is what the cgroup holds in the
 *                             ring buffer now. agent
 *   last_event      LRU_HASH  u64 pid_tgid -> struct eg_last: the thread's last recorded violation and the
 *                             repeats of it suppressed since (lib/record.bpf.h: repeat_gate). kernel
 *   suppressed      HASH      u64 cgroup id -> u64: repeats of violations suppressed in this cgroup; the agent
 *                             counts them toward the escalation window. kernel (the agent deletes it)
 *
 * Working state of one hook family:
 *
 *   path_scratch    PERCPU_ARRAY  u32 0 -> struct eg_path_key: the path being decided (too big for the
 *                             BPF stack). kernel
 *   gate_seen       LRU_HASH  u64 pid_tgid -> u32 syscall nr: the enter gate recorded this call, the exit
 *                             gate must not again. Declared in syscalls.bpf.c. kernel
 *   parent_of       LRU_HASH  u32 child pid -> u32 the forking process's pid, for the exec record's aux.
 *                             Declared in lifecycle.bpf.c. kernel
 *   ending          LRU_HASH  u32 tgid -> u32 wait status: how a process is ending, as last seen (its
 *                             exit_group() status or a fatal signal), for the exit record's aux. Declared in
 *                             lifecycle.bpf.c. kernel
 */
#ifndef EBPFGUARD_MAPS_H
#define EBPFGUARD_MAPS_H

#include "events.h"

#define EG_MAX_SLOTS 64
#define EG_MAX_CGROUPS 4096
#define EG_MAX_THREADS 16384 /* gate_seen, parent_of, ending: threads between two of their hooks */
#define EG_MAX_LAST_EVENTS 16384 /* last_event: threads whose last violation is remembered */
#define EG_FILTER_SLOTS 65536
#define EG_FILTER_SHARED 1 /* id 1 is the root cgroup, never an extension's */
#define EG_MAX_PATH_RULES 65536
#define EG_PATH_PRIVATE 5 /* the path_rules scope of the private /tmp (beside the EG_ACC_* classes) */
#define EG_MAX_NET_RULES 4096
#define EG_SYSCALL_WORDS 8
#define EG_NET_RANGES 16
#define EG_RINGBUF_PAGES 1024 /* 4 MiB: about 11 000 records */
/* Records one cgroup may hold in the ring buffer at once (a fifth of it): one extension's flood cannot
 * fill it and drop another extension's records; what is over its share is counted for that cgroup. */
#define EG_CG_SHARE 2048

/* responses, per kind (eg_ext_policy.response) */
#define EG_RESP_ALERT 0
#define EG_RESP_BLOCK 1
#define EG_RESP_FREEZE 2
#define EG_RESP_KILL 3

/* eg_ext_policy.flags */
#define EG_POL_ENFORCE 1
#define EG_POL_WATCH 2    /* the slot holds EG_ACC_WATCH paths: allowed opens are checked against them */
#define EG_POL_WATCH_READ 4 /* ... for reads; << EG_ACC_WRITE for writes, << EG_ACC_EXEC for execs */
#define EG_POL_BASELINE 32 /* a baseline (baseline.py): allowed execs, opens for writing, connects, sends and
                           * binds are reported, for the agent to compare with normal activity */
/* landlocked values */
#define EG_LL_DECIDES 1     /* Landlock decides file access on the object */
#define EG_LL_REPORTS 2     /* ... and reports each denial (audit): records come from it */
/* eg_cg_local.flags */
#define EG_CG_MOUNTNS 1     /* launched in the instance's own mount namespace */
#define EG_CG_QUARANTINE 2  /* the instance's network is quarantined: every address is denied */

/* counters (per-CPU array index) */
#define EG_CTR_EVENTS 0
#define EG_CTR_DROPS 1
#define EG_CTR_KILLS 2
#define EG_CTR_DENIALS 3
#define EG_CTR_SUPPRESSED 4 /* identical repeats within EG_REPEAT_NS, not recorded (lib/record.bpf.h) */
#define EG_CTR_OVER_SHARE 5 /* records a cgroup could not reserve: its share of the ring buffer was in use */
#define EG_CTR_MAX 6

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

struct eg_cg_local {
	u32 slot1;  /* policy slot + 1; 0: no policy (not bound yet, or unbound) */
	u32 flags;  /* EG_CG_* */
};

struct eg_share {
	u64 reserved;
	u64 over; /* not reserved: the cgroup held EG_CG_SHARE records in the ring buffer already */
};

struct eg_last {
	u64 hash;  /* the repeat key (lib/record.bpf.h: repeat_key) */
	u64 ts_ns;
	u32 suppressed;
	u32 pad;
};

#endif
