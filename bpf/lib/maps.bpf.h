/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/maps.bpf.h: the maps every hook family shares (their layout and who writes them: include/maps.h).
 *
 * How the program is built: the loader (ebpfguard/kernel/loader.py) compiles every *.bpf.c family as one
 * bcc program, so that all of them share one set of maps, and writes the files this one includes into
 * that text itself, each once: bcc rewrites map calls (`counters.lookup(...)`) only in the text it is
 * given, not in a header it finds through #include.
 */
#ifndef EBPFGUARD_LIB_MAPS_BPF_H
#define EBPFGUARD_LIB_MAPS_BPF_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/socket.h>
#include "include/maps.h"

/* the policy, and what the agent tells the hooks about each cgroup */
BPF_ARRAY(cgroup_filter, u64, EG_FILTER_SLOTS);
BPF_HASH(cgroup_slot, u64, u32, EG_MAX_CGROUPS);
BPF_ARRAY(ext_policy, struct eg_ext_policy, EG_MAX_SLOTS);
BPF_LPM_TRIE(path_rules, struct eg_path_key, u8, EG_MAX_PATH_RULES);
BPF_LPM_TRIE(net_rules, struct eg_net_key, struct eg_net_value, EG_MAX_NET_RULES);
BPF_HASH(mountns, u64, u8, EG_MAX_CGROUPS);
BPF_HASH(landlocked, u64, u8, EG_MAX_CGROUPS);
BPF_HASH(seccomp_reports, u64, u8, EG_MAX_CGROUPS);
BPF_ARRAY(activity_on, u32, 1);
BPF_HASH(activity, u64, u8, EG_MAX_CGROUPS);
BPF_HASH(armed, u64, u64, EG_MAX_CGROUPS);

/* records and their accounting */
BPF_RINGBUF_OUTPUT(events, EG_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, EG_CTR_MAX);
BPF_HASH(share, u64, struct eg_share, EG_MAX_CGROUPS);
BPF_HASH(consumed, u64, u64, EG_MAX_CGROUPS);
BPF_TABLE("lru_hash", u64, struct eg_last, last_event, EG_MAX_LAST_EVENTS);
BPF_HASH(suppressed, u64, u64, EG_MAX_CGROUPS);

/* working state */
BPF_PERCPU_ARRAY(path_scratch, struct eg_path_key, 1);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		*c += 1;
}

/* The path being decided: per CPU, as a path is too big for the BPF stack. */
static __always_inline struct eg_path_key *scratch_key(void)
{
	u32 zero = 0;
	return path_scratch.lookup(&zero);
}

#endif
