/* SPDX-License-Identifier: GPL-2.0 */
/* files.bpf.c: opens, path-changing calls and execs, matched against the extension's path tries. */

#define EG_AT_FDCWD -100

/* Where the BPF-LSM backend runs (lsm.bpf.c), it decides opens and execs on resolved objects and these
 * tracepoints stand down, so that nothing is recorded twice; except for a launched instance under
 * Landlock (the `landlocked` map): Landlock decides its files on the objects, in whatever place the
 * kernel's LSM order gives it, and it may run before BPF-LSM and refuse what BPF-LSM then never sees.
 * For those cgroups the LSM file hooks stand down instead (lsm_defers) and these tracepoints record as
 * they do without BPF-LSM: Landlock's own reports where it has them, the string and its resolution
 * otherwise, and the read-only mount's EROFS, which no LSM hook sees. */
#ifdef EG_LSM
static __always_inline int lsm_defers(void)
{
	u64 cg = bpf_get_current_cgroup_id();
	return landlocked.lookup(&cg) != 0;
}
#define EG_LSM_DECIDES() if (!lsm_defers()) return 0
#else
#define EG_LSM_DECIDES() do { } while (0)
#endif

/* O_WRONLY/O_RDWR, O_CREAT or O_TRUNC need a write tree; anything else a read (or write) tree. */
static __always_inline u32 open_access(u64 flags)
{
	if ((flags & 3) || (flags & (00100 | 01000)))
		return EG_ACC_WRITE;
	return EG_ACC_READ;
}

/*
 * The kernel side decides absolute, ".."-free paths on its own. A relative path, a ".." component
 * or a user page that was not resident cannot be decided here without reading kernel structs by
 * offset, so the record goes to user space marked EG_V_PENDING, which resolves it through /proc.
 * In enforce mode the process is also stopped (SIGSTOP, delivered before the syscall returns to user
 * space), so its cwd, fds and memory still hold the answer when user space looks; user space then
 * resumes or kills it. Under Landlock (the `landlocked` map) a plain relative name (no "..": what tree
 * walkers, archivers and build tools open, relative to their cwd or a dirfd) is left to Landlock, which
 * decides on the resolved object: no event, no hold. Holding every open of a walk would cost a round
 * trip each, and resolving it later, unheld, races with the process. The price: a refused open of a
 * plain relative name is refused but not recorded. A ".." path, an unreadable one or an fd exec is
 * still held and recorded, so that its record names what it reached. Only a record that was reserved stops anyone: a dropped one cannot be answered.
 * A path too long for the trie is a violation: refusing to guess is the safe side.
 */
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

static __always_inline void submit_path_event(struct eg_event *e, u16 verdict, u32 flags, int dirfd, u32 access,
					      const char *upath, u64 oflags, struct eg_path_key *k)
{
	e->verdict = verdict;
	e->flags = flags;
	e->dirfd = dirfd;
	e->op = access;
	e->uptr = (u64)upath;
	e->aux = oflags;
	__builtin_memcpy(e->path, k->path, EG_PATH_MAX);
	events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/* The enforced version allowed k->path. EG_V_SHADOW: would its shadow version? If not, a record of what the shadow
 * would have refused, and nothing done to the call. EG_V_ACTIVITY: someone traces the instance, a correlation
 * rule watches the path or a baseline wants it: an event of what it did (never a record by itself). */
static __always_inline void allowed_path_event(struct eg_ext_policy *pol, struct eg_path_key *k, u32 access,
					       u16 kind, s32 nr, u64 cg, int dirfd, const char *upath, u64 oflags,
					       u16 verdict)
{
	if (verdict == EG_V_SHADOW && path_granted(pol->shadow - 1, k, access, 0))
		return;
	u64 h = hash_path(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), (u32)nr), k->path);
	struct eg_event *e = new_violation(pol, kind, nr, verdict, EG_FNV(h, verdict), cg);
	if (e)
		submit_path_event(e, verdict, 0, dirfd, access, upath, oflags, k);
}

static __always_inline int check_path(const char *upath, int dirfd, u32 access, u16 kind, s32 nr,
				      u64 oflags)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	u8 *ll = landlocked.lookup(&cg);
	/* Landlock decides reads and execs on the object and reports what it refuses: nothing to copy, scan
	 * or match here, unless the response must kill before the syscall returns, or a shadow version must
	 * see what the enforced one allows */
	int ll_reports = ll && *ll == EG_LL_REPORTS && (access == EG_ACC_READ || kind == EG_KIND_EXEC) &&
			 !should_kill(pol, kind);
	int traced = watched(cg);
	int baseline = (pol->flags & EG_POL_BASELINE) && access != EG_ACC_READ;
	if (ll_reports && !pol->shadow && !traced && !baseline && !(pol->flags & (EG_POL_WATCH_READ << access)))
		return 0;
	u32 zero = 0;
	struct eg_path_key *k = path_scratch.lookup(&zero);
	if (!k)
		return 0;

	u32 flags = 0;
	long n = bpf_probe_read_user_str(k->path, EG_PATH_MAX, upath);
	if (n < 0) {
		flags |= EG_EV_UNREADABLE;
		k->path[0] = 0;
	} else if (n <= 1) {
		flags |= EG_EV_EMPTY_PATH;
	} else {
		if (n >= EG_PATH_MAX)
			flags |= EG_EV_TRUNCATED;
		if (k->path[0] != '/')
			flags |= EG_EV_RELATIVE;
		if (path_has_dotdot(k->path, n))
			flags |= EG_EV_DOTDOT;
	}

	if (!flags && path_granted(pol->slot, k, access, 0)) {
		if (pol->shadow)
			allowed_path_event(pol, k, access, kind, nr, cg, dirfd, upath, oflags, EG_V_SHADOW);
		if (watch_path(pol, k, access, cg) || traced || baseline)
			allowed_path_event(pol, k, access, kind, nr, cg, dirfd, upath, oflags, EG_V_ACTIVITY);
		return 0;
	}
	if (ll_reports)
		return 0; /* Landlock refuses it and reports it */

	u32 pending = flags & (EG_EV_RELATIVE | EG_EV_DOTDOT | EG_EV_UNREADABLE);
	/* fexecve of an fd (memfd, deleted file) is never on an exec allowlist of paths */
	if ((flags & EG_EV_EMPTY_PATH) && kind != EG_KIND_EXEC)
		pending = 1;
	u32 suspicious = flags & (EG_EV_DOTDOT | EG_EV_UNREADABLE | EG_EV_EMPTY_PATH);
	if (pending && !suspicious && ll)
		return 0;
	u16 verdict = pending ? EG_V_PENDING : tracepoint_verdict(pol, kind);
	u64 h = hash_path(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, kind), access), (u32)nr), k->path);
	struct eg_event *e = new_violation(pol, kind, nr, verdict, h, cg);
	if (!e)
		return 0;
	if (pending && (pol->flags & EG_POL_ENFORCE)) {
		bpf_send_signal(EG_SIGSTOP);
		flags |= EG_EV_HELD;
	}
	submit_path_event(e, verdict, flags, dirfd, access, upath, oflags, k);
	return 0;
}

#define NR (args->__syscall_nr)

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
	EG_LSM_DECIDES();
	return check_path(args->filename, EG_AT_FDCWD, open_access(args->flags), EG_KIND_FILE, NR,
			  args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
	EG_LSM_DECIDES();
	return check_path(args->filename, args->dfd, open_access(args->flags), EG_KIND_FILE, NR,
			  args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
	EG_LSM_DECIDES();
	u64 fl = 0;
	bpf_probe_read_user(&fl, sizeof(fl), args->how); /* open_how.flags is the first member */
	return check_path(args->filename, args->dfd, open_access(fl), EG_KIND_FILE, NR, fl);
}

TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
	EG_LSM_DECIDES();
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
	return check_path(args->path, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
	return check_path(args->pathname, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

/* rename and link touch both names: a hardlink is a way to read a file under another name */
TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
	check_path(args->oldname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
	return check_path(args->newname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
	check_path(args->oldname, args->olddfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
	return check_path(args->newname, args->newdfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
	check_path(args->oldname, args->olddfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
	return check_path(args->newname, args->newdfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_link)
{
	check_path(args->oldname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
	return check_path(args->newname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_linkat)
{
	check_path(args->oldname, args->olddfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
	return check_path(args->newname, args->newdfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

/* a folder, fifo or device node made outside the write trees (EROFS on the read-only mount before
 * Landlock is asked, or Landlock's make_* refusal in a writable mask such as the private /tmp) */
TRACEPOINT_PROBE(syscalls, sys_enter_mkdir)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mkdirat)
{
	return check_path(args->pathname, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mknod)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mknodat)
{
	return check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

/* a symlink's target is only a string; the link it creates is the write */
TRACEPOINT_PROBE(syscalls, sys_enter_symlink)
{
	return check_path(args->newname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat)
{
	return check_path(args->newname, args->newdfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_chmod)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat)
{
	return check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}

#ifdef EG_HAVE_FCHMODAT2
TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat2)
{
	return check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
#endif

/* owner, times and extended attributes: Landlock does not govern them; the instance's read-only mount
 * namespace refuses them outside the write trees (EROFS), and these record the attempt. A NULL name
 * (futimens) acts on an fd, and is left to the mount. */
TRACEPOINT_PROBE(syscalls, sys_enter_chown)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_lchown)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_fchownat)
{
	return check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_utime)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_utimes)
{
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_futimesat)
{
	return args->filename ? check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0) : 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_utimensat)
{
	return args->filename ? check_path(args->filename, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0) : 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_setxattr)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_lsetxattr)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_removexattr)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
TRACEPOINT_PROBE(syscalls, sys_enter_lremovexattr)
{
	return check_path(args->pathname, EG_AT_FDCWD, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);
}
#ifdef EG_HAVE_SETXATTRAT
TRACEPOINT_PROBE(syscalls, sys_enter_setxattrat)
{
	return args->pathname ? check_path(args->pathname, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0) : 0;
}
#endif
#ifdef EG_HAVE_REMOVEXATTRAT
TRACEPOINT_PROBE(syscalls, sys_enter_removexattrat)
{
	return args->pathname ? check_path(args->pathname, args->dfd, EG_ACC_WRITE, EG_KIND_FILE, NR, 0) : 0;
}
#endif
TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	EG_LSM_DECIDES();
	return check_path(args->filename, EG_AT_FDCWD, EG_ACC_EXEC, EG_KIND_EXEC, NR, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
	EG_LSM_DECIDES();
	return check_path(args->filename, args->fd, EG_ACC_EXEC, EG_KIND_EXEC, NR, 0);
}
