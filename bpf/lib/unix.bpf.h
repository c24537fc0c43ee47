/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/unix.bpf.h: pathname unix sockets, decided on the socket path against the extension's EG_ACC_UNIX
 * grants (spec.ipc.unix). One implementation for the two backends that decide them: the cgroup unix
 * programs (net.bpf.c: kernel >= 6.7) and, on older kernels with BPF-LSM, the LSM socket hooks
 * (lsm.bpf.c). The network kill tracepoints (net.bpf.c) check the same grants on the user's copy.
 */
#ifndef EBPFGUARD_LIB_UNIX_BPF_H
#define EBPFGUARD_LIB_UNIX_BPF_H

#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"

/*
 * A ".." component within the first ``len`` bytes of the socket path ``p`` (8-byte aligned; p[len]
 * readable: the NUL or the next byte). A path with one cannot be decided on its string: ".." resolves
 * against what the link or mount under it really is. Eight bytes at a time, looking byte by byte only
 * at a word that holds a '.' (most paths have one dot, in the file name): a few ns for a 100-byte path.
 * File paths (lib/path.bpf.h: path_has_dotdot) are scanned differently, as this nested loop over
 * EG_PATH_MAX bytes is more than the verifier will walk.
 */
#define EG_DOTS 0x2e2e2e2e2e2e2e2eULL
#define EG_ONES 0x0101010101010101ULL
#define EG_HIGHS 0x8080808080808080ULL
static __always_inline int unix_has_dotdot(const char *p, long len)
{
	for (int w = 0; w < (EG_UNIX_PATH_MAX + 7) / 8; w++) {
		if (w * 8 > len)
			break;
		u64 x = *(const u64 *)(p + w * 8) ^ EG_DOTS;
		if (!((x - EG_ONES) & ~x & EG_HIGHS))
			continue; /* no '.' in these eight bytes */
		for (int j = 0; j < 8; j++) {
			int i = w * 8 + j;
			if (i >= len - 1)
				break;
			if (p[i] == '.' && p[i + 1] == '.' && (i == 0 || p[i - 1] == '/') &&
			    (p[i + 2] == '/' || p[i + 2] == 0))
				return 1;
		}
	}
	return 0;
}

/* EG_EV_RELATIVE / EG_EV_DOTDOT for a socket path of ``n`` bytes: neither can be decided on the string,
 * so both are refused (a relative name resolves against a cwd the string does not show). */
static __always_inline u32 unix_path_flags(struct eg_path_key *k, u32 n)
{
	if (k->path[0] != '/')
		return EG_EV_RELATIVE;
	return unix_has_dotdot((const char *)k->path, n) ? EG_EV_DOTDOT : 0;
}

/*
 * Copy the path of the socket address at ``addr`` into k->path: the kernel's own copy of the caller's
 * sockaddr_un (move_addr_to_kernel, into a sockaddr_storage), ``addrlen`` bytes long, so what is decided is
 * what the protocol will look up. Returns -1 when there is no path to decide: unnamed, or abstract
 * (Landlock's abstract-unix scoping decides those, where the kernel has it). Else the EG_EV_* flags of what
 * the string cannot settle (unix_path_flags), or EG_EV_UNREADABLE with k->path empty. sun_path is not
 * NUL-terminated there yet: the whole of it is read (it is inside the sockaddr_storage) and cut at the
 * length given; the volatile keeps the mask the verifier needs from being folded away.
 */
static __always_inline s32 read_sun_path(struct eg_path_key *k, const void *addr, u32 addrlen)
{
	if (addrlen <= 2)
		return -1; /* unnamed: nothing to reach */
	u32 n = addrlen - 2;
	if (n > EG_UNIX_PATH_MAX)
		n = EG_UNIX_PATH_MAX;
	volatile u32 end = n;
	if (bpf_probe_read_kernel(k->path, EG_UNIX_PATH_MAX, (const char *)addr + 2) < 0) {
		k->path[0] = 0;
		return EG_EV_UNREADABLE;
	}
	if (k->path[0] == 0)
		return -1; /* abstract */
	k->path[end & 127] = 0;
	return unix_path_flags(k, n);
}

/* Is ``k->path`` (absolute, ".."-free) a socket this extension may reach? The _NS grants (the D-Bus
 * proxy's socket, at the real bus's path) only hold inside the instance's own mount namespace. */
static __always_inline int unix_allows(struct eg_ext_policy *pol, struct eg_path_key *k, int own_mountns)
{
	return path_granted(pol->slot, k, EG_ACC_UNIX, own_mountns ? EG_ACC_UNIX_NS : 0);
}

/* Send the record of a socket path (socket type ``type``): a violation, or an activity event. */
static __always_inline void unix_event(struct eg_ext_policy *pol, u64 cg, struct eg_path_key *k, u32 op, u8 type,
				       u16 verdict, u32 flags)
{
	struct eg_event *e = new_violation(pol, cg, EG_KIND_NETWORK, -1, verdict, op, flags, unix_object(type, k->path));
	if (!e)
		return;
	e->family = EG_FAMILY_UNIX;
	e->proto = type;
	__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	emit(e);
}

/* The decision both backends share: is the socket path (read_sun_path gave its ``flags``) granted? Then
 * its activity event is sent when someone traces the instance or a correlation window is open
 * (``evflags``: what the backend adds to its records). A violation is the backend's to answer. */
static __always_inline int unix_granted(struct eg_ext_policy *pol, u64 cg, struct eg_path_key *k, u32 op, u8 type,
					u32 flags, int own_mountns, u32 evflags)
{
	if (flags || !unix_allows(pol, k, own_mountns))
		return 0;
	if (watched(cg) || armed_now(pol, cg))
		unix_event(pol, cg, k, op, type, EG_V_ACTIVITY, evflags);
	return 1;
}

#endif
