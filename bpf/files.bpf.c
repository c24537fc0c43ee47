/* SPDX-License-Identifier: GPL-2.0 */
/* files.bpf.c: opens, path-changing calls and execs, matched against the extension's path tries. */
#include "lib/maps.bpf.h"
#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"
#include "lib/path.bpf.h"

#define EG_AT_FDCWD -100

/* O_WRONLY/O_RDWR, O_CREAT or O_TRUNC need a write tree; anything else a read (or write) tree. */
static __always_inline u32 open_access(u64 flags)
{
	if ((flags & 3) || (flags & (00100 | 01000)))
		return EG_ACC_WRITE;
	return EG_ACC_READ;
}

/* The enforced version allowed k->path. EG_V_SHADOW: would its shadow version? If not, a record of what the shadow
 * would have refused, and nothing done to the call. EG_V_ACTIVITY: someone traces the instance, a correlation
 * rule watches the path or a baseline wants it: an event of what it did (never a record by itself). */
static __always_inline void allowed_path_event(struct eg_ext_policy *pol, struct eg_path_key *k, u32 access,
					       u16 kind, s32 nr, u64 cg, int dirfd, const char *upath, u64 oflags,
					       u16 verdict)
{
	if (verdict == EG_V_SHADOW && file_granted(pol->shadow - 1, k, access, 0, cg))
		return;
	struct eg_event *e = path_record(pol, cg, kind, nr, verdict, access, 0, k);
	if (!e)
		return;
	e->dirfd = dirfd;
	e->uptr = (u64)upath;
	e->aux = oflags;
	emit(e);
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
 * still held and recorded, so that its record names what it reached. Only a record that was reserved
 * stops anyone: a dropped one cannot be answered. A path too long for the trie is a violation: refusing
 * to guess is the safe side.
 */
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
	struct eg_path_key *k = scratch_key();
	if (!k)
		return 0;

	u32 flags = read_user_path(k, upath);
	if (!flags && file_granted(pol->slot, k, access, 0, cg)) {
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
	struct eg_event *e = path_record(pol, cg, kind, nr, verdict, access, flags, k);
	if (!e)
		return 0;
	if (pending && (pol->flags & EG_POL_ENFORCE)) {
		bpf_send_signal(EG_SIGSTOP);
		e->flags |= EG_EV_HELD;
	}
	e->dirfd = dirfd;
	e->uptr = (u64)upath;
	e->aux = oflags;
	emit(e);
	return 0;
}

/*
 * The path tracepoints, one row each: the syscall; the field that holds the name; its directory (AT(the
 * dirfd field), or CWD); the access it needs (OPEN: read or write by its flags, which the record carries);
 * the kind of violation; and when the tracepoint checks it:
 *   ALWAYS      every call
 *   NAMED       unless the name is NULL: the call then acts on an fd (futimens), which is left to the mount
 *   UNLESS_LSM  unless BPF-LSM decides it on the resolved object (lsm.bpf.c), which it does wherever it runs
 *               and the cgroup's files are not Landlock's (lib/policy.bpf.h: lsm_defers)
 * A call that names two paths (rename, link) is an EG_TWO_PATH_CALL: both names are checked, as a hardlink
 * is a way to read a file under another name. A syscall newer than the oldest kernel supported is a row
 * only where the running kernel has its tracepoint (the loader defines EG_HAVE_<NAME>). openat2 is written
 * out at the end: its flags are behind a pointer.
 *
 * Why these calls: an open or an exec is the access itself. A folder, fifo or device node made outside the
 * write trees (mkdir, mknod), a symlink (the link it creates is the write; its target is only a string),
 * truncate and unlink: EROFS on the read-only mount before Landlock is asked, or Landlock's refusal in a
 * writable mask such as the private /tmp. Mode, owner, times and extended attributes: Landlock does not
 * govern them; the instance's read-only mount namespace refuses them outside the write trees (EROFS), and
 * these record the attempt.
 *
 * The rows are macro calls at file scope, not an X-macro list: bcc writes each tracepoint's argument struct
 * (read from tracefs) into the program text just before the line its probe comes from, so every probe
 * needs a line of its own.
 */
#define EG_CWD EG_AT_FDCWD
#define EG_AT(field) (args->field)
#define EG_ACCESS_OPEN open_access(args->flags)
#define EG_ACCESS_WRITE EG_ACC_WRITE
#define EG_ACCESS_EXEC EG_ACC_EXEC
#define EG_OFLAGS_OPEN (args->flags)
#define EG_OFLAGS_WRITE 0
#define EG_OFLAGS_EXEC 0
#define EG_WHEN_ALWAYS(name) 1
#define EG_WHEN_NAMED(name) ((name) != 0)
#ifdef EG_LSM
#define EG_WHEN_UNLESS_LSM(name) lsm_defers()
#else
#define EG_WHEN_UNLESS_LSM(name) 1
#endif
#define NR (args->__syscall_nr)

#define EG_PATH_CALL(call, name, dirfd, access, kind, when)                                               \
	TRACEPOINT_PROBE(syscalls, sys_enter_##call)                                                      \
	{                                                                                                 \
		if (!EG_WHEN_##when(args->name))                                                          \
			return 0;                                                                         \
		return check_path(args->name, EG_##dirfd, EG_ACCESS_##access, EG_KIND_##kind, NR,         \
				  EG_OFLAGS_##access);                                                    \
	}

#define EG_TWO_PATH_CALL(call, name1, dirfd1, name2, dirfd2)                                              \
	TRACEPOINT_PROBE(syscalls, sys_enter_##call)                                                      \
	{                                                                                                 \
		check_path(args->name1, EG_##dirfd1, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);                  \
		return check_path(args->name2, EG_##dirfd2, EG_ACC_WRITE, EG_KIND_FILE, NR, 0);           \
	}

/*           syscall        name      dirfd       access kind  when */
EG_PATH_CALL(open,          filename, CWD,        OPEN,  FILE, UNLESS_LSM)
EG_PATH_CALL(openat,        filename, AT(dfd),    OPEN,  FILE, UNLESS_LSM)
EG_PATH_CALL(creat,         pathname, CWD,        WRITE, FILE, UNLESS_LSM)
EG_PATH_CALL(execve,        filename, CWD,        EXEC,  EXEC, UNLESS_LSM)
EG_PATH_CALL(execveat,      filename, AT(fd),     EXEC,  EXEC, UNLESS_LSM)
EG_PATH_CALL(truncate,      path,     CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(unlink,        pathname, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(unlinkat,      pathname, AT(dfd),    WRITE, FILE, ALWAYS)
EG_PATH_CALL(mkdir,         pathname, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(mkdirat,       pathname, AT(dfd),    WRITE, FILE, ALWAYS)
EG_PATH_CALL(mknod,         filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(mknodat,       filename, AT(dfd),    WRITE, FILE, ALWAYS)
EG_PATH_CALL(symlink,       newname,  CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(symlinkat,     newname,  AT(newdfd), WRITE, FILE, ALWAYS)
EG_PATH_CALL(chmod,         filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(fchmodat,      filename, AT(dfd),    WRITE, FILE, ALWAYS)
#ifdef EG_HAVE_FCHMODAT2
EG_PATH_CALL(fchmodat2,     filename, AT(dfd),    WRITE, FILE, ALWAYS)
#endif
EG_PATH_CALL(chown,         filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(lchown,        filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(fchownat,      filename, AT(dfd),    WRITE, FILE, ALWAYS)
EG_PATH_CALL(utime,         filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(utimes,        filename, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(futimesat,     filename, AT(dfd),    WRITE, FILE, NAMED)
EG_PATH_CALL(utimensat,     filename, AT(dfd),    WRITE, FILE, NAMED)
EG_PATH_CALL(setxattr,      pathname, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(lsetxattr,     pathname, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(removexattr,   pathname, CWD,        WRITE, FILE, ALWAYS)
EG_PATH_CALL(lremovexattr,  pathname, CWD,        WRITE, FILE, ALWAYS)
#ifdef EG_HAVE_SETXATTRAT
EG_PATH_CALL(setxattrat,    pathname, AT(dfd),    WRITE, FILE, NAMED)
#endif
#ifdef EG_HAVE_REMOVEXATTRAT
EG_PATH_CALL(removexattrat, pathname, AT(dfd),    WRITE, FILE, NAMED)
#endif

/*               syscall    first name, its dirfd  second name, its dirfd */
EG_TWO_PATH_CALL(rename,    oldname, CWD,          newname, CWD)
EG_TWO_PATH_CALL(renameat,  oldname, AT(olddfd),   newname, AT(newdfd))
EG_TWO_PATH_CALL(renameat2, oldname, AT(olddfd),   newname, AT(newdfd))
EG_TWO_PATH_CALL(link,      oldname, CWD,          newname, CWD)
EG_TWO_PATH_CALL(linkat,    oldname, AT(olddfd),   newname, AT(newdfd))

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
	if (!EG_WHEN_UNLESS_LSM(args->filename))
		return 0;
	u64 fl = 0;
	bpf_probe_read_user(&fl, sizeof(fl), args->how); /* open_how.flags is the first member */
	return check_path(args->filename, args->dfd, open_access(fl), EG_KIND_FILE, NR, fl);
}
