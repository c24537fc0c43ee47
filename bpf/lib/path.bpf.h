/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/path.bpf.h: a path as a hook sees it. Reading a path from user memory with what the string alone
 * cannot settle (relative, "..", unreadable, empty, truncated), and the record of a path violation, for
 * the tracepoints (files.bpf.c) and the BPF-LSM file hooks (lsm.bpf.c) alike.
 */
#ifndef EBPFGUARD_LIB_PATH_BPF_H
#define EBPFGUARD_LIB_PATH_BPF_H

#include "lib/record.bpf.h"

/* 0x80 in each byte of x equal to the byte b (b in every byte of bb), 0 in the others: exact, no carry
 * from one byte to the next (Hacker's Delight, "find the first 0-byte"). */
#define EG_LOW7 0x7f7f7f7f7f7f7f7fULL
static __always_inline u64 eg_bytes_eq(u64 x, u64 bb)
{
	u64 t = x ^ bb;
	return ~(((t & EG_LOW7) + EG_LOW7) | t | EG_LOW7);
}

/*
 * A ".." component in the NUL-terminated path p (n bytes with its NUL, as bpf_probe_read_user_str
 * says). Eight bytes at a time, stepping four: any four-byte pattern "/../" or "/..\0" lies inside one
 * such window, and a leading "../" or "..\0" is checked apart. Bytes after the NUL (left from an
 * earlier path) are masked off. Branch-free within a window: the verifier walks ~62 windows once
 * each instead of 250 branching steps (it took ~85 % of the programs' load time), and at run time a
 * 40-byte path costs ten windows.
 */
static __always_inline int path_has_dotdot(const u8 *p, long n)
{
	if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == 0))
		return 1;
	for (int i = 0; i < (EG_PATH_MAX - 8) / 4 + 1; i++) {
		if (i * 4 >= n)
			break;
		u64 x = *(const u64 *)(p + i * 4);
		u64 nul = eg_bytes_eq(x, 0);
		u64 sep = eg_bytes_eq(x, 0x2f2f2f2f2f2f2f2fULL) | nul;
		u64 dot = eg_bytes_eq(x, 0x2e2e2e2e2e2e2e2eULL);
		u64 hit = (sep << 8) & dot & (dot >> 8) & (sep >> 16);
		if (nul) {
			u64 first = nul & -nul;
			hit &= (first << 1) - 1; /* nothing past the first NUL */
		}
		if (hit)
			return 1;
		if (nul)
			break;
	}
	return 0;
}

/* Copy the path at ``upath`` (user memory) into k->path; returns the EG_EV_* flags of what its string
 * cannot settle: unreadable (k->path is then empty), empty, truncated, relative, with a ".." component.
 * 0: an absolute, ".."-free path the kernel side can decide on its own. */
static __always_inline u32 read_user_path(struct eg_path_key *k, const char *upath)
{
	long n = bpf_probe_read_user_str(k->path, EG_PATH_MAX, upath);
	if (n < 0) {
		k->path[0] = 0;
		return EG_EV_UNREADABLE;
	}
	if (n <= 1)
		return EG_EV_EMPTY_PATH;
	u32 flags = 0;
	if (n >= EG_PATH_MAX)
		flags |= EG_EV_TRUNCATED;
	if (k->path[0] != '/')
		flags |= EG_EV_RELATIVE;
	if (path_has_dotdot(k->path, n))
		flags |= EG_EV_DOTDOT;
	return flags;
}

/* Reserve the record of a path violation (or of a shadow or activity event) of k->path: new_violation
 * with the path as its object, the path copied in. The caller adds what its hook knows and emit()s it. */
static __always_inline struct eg_event *path_record(struct eg_ext_policy *pol, u64 cg, u16 kind, s32 nr,
						    u16 verdict, u32 access, u32 flags, struct eg_path_key *k)
{
	struct eg_event *e = new_violation(pol, cg, kind, nr, verdict, access, flags, path_object(k->path));
	if (e)
		__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	return e;
}

#endif
