/* SPDX-License-Identifier: GPL-2.0 */
/*
 * net.bpf.c: the network allowlist. The cgroup sock_addr programs see the kernel's own copy of the
 * address and deny with EPERM; they are attached to each extension cgroup, so they hold even while
 * the agent is away. The syscall tracepoints exist only to kill: sock_addr programs cannot send a
 * signal, so when the response is "kill" the tracepoint sends SIGKILL before the syscall proceeds.
 *
 * Pathname unix sockets (kernel >= 6.7: BPF_CGROUP_UNIX_CONNECT and _SENDMSG) are decided the same way,
 * on the socket path against the extension's EG_ACC_UNIX grants (spec.ipc.unix: lib/unix.bpf.h).
 */
#include "lib/maps.bpf.h"
#include "lib/policy.bpf.h"
#include "lib/record.bpf.h"
#include "lib/unix.bpf.h"

/* The policy of the cgroup this program is attached to, and its EG_CG_* flags (include/maps.h: cg_local),
 * from the program's run context: no cgroup-id read and no hash lookup for the slot. A program just attached
 * (a new agent taking an instance back, an upgrade replacing the programs) has an empty cg_local until the agent
 * writes it: then the slot the agent bound the task's cgroup to (cgroup_slot, written before the attach), so that
 * no connect passes in between. */
static __always_inline struct eg_ext_policy *cgroup_policy(u32 *flags)
{
	struct eg_cg_local *l = bpf_get_local_storage((void *)bpf_pseudo_fd(1, EG_CG_LOCAL_FD), 0);
	u32 slot;
	if (l->slot1) {
		*flags = l->flags;
		slot = l->slot1 - 1;
	} else {
		u64 cg = bpf_get_current_cgroup_id();
		u32 *s = cgroup_slot.lookup(&cg);
		if (!s)
			return 0;
		slot = *s;
	}
	return ext_policy.lookup(&slot);
}

static __always_inline int net_allows(struct eg_ext_policy *pol, u32 op, u16 family, u8 *addr,
				      u16 port, u8 proto)
{
	struct eg_net_key key = {};
	key.scope = (pol->slot << 8) | (op << 4) | (family == AF_INET ? 4 : 6);
	key.prefixlen = 32 + (family == AF_INET ? 32 : 128);
	__builtin_memcpy(key.addr, addr, 16);
	struct eg_net_value *v = net_rules.lookup(&key);
	if (!v)
		return 0;
	for (int i = 0; i < EG_NET_RANGES; i++) {
		if (i >= v->count)
			break;
		if (port < v->r[i].lo || port > v->r[i].hi)
			continue;
		if (proto && v->r[i].proto && v->r[i].proto != proto)
			continue;
		return 1;
	}
	return 0;
}

static __always_inline void net_event(struct eg_ext_policy *pol, u64 cg, u32 op, u16 family, u8 *addr, u16 port,
				      u8 proto, u16 verdict, u32 flags)
{
	u16 fam = family == AF_INET ? 4 : 6;
	struct eg_event *e = new_violation(pol, cg, EG_KIND_NETWORK, -1, verdict, op, flags,
					   addr_object(fam, port, proto, addr));
	if (!e)
		return;
	e->family = fam;
	e->port = port;
	e->proto = proto;
	__builtin_memcpy(e->addr, addr, 16);
	emit(e);
}

/* family is a constant in each caller, so each program reads only its own ctx fields */
static __always_inline int sock_check(struct bpf_sock_addr *ctx, u32 op, const u16 family)
{
	u32 cgflags = 0;
	struct eg_ext_policy *pol = cgroup_policy(&cgflags);
	if (!pol)
		return 1;
	u8 addr[16] = {};
	if (ctx->user_family != family)
		return 1;
	if (family == AF_INET) {
		u32 a = ctx->user_ip4;
		__builtin_memcpy(addr, &a, 4);
	} else {
		u32 a[4];
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		__builtin_memcpy(addr, a, 16);
	}
	u16 port = bpf_ntohs((u16)ctx->user_port);
	u8 proto = (u8)ctx->protocol;
	int quarantine = (cgflags & EG_CG_QUARANTINE) != 0;
	if (!quarantine && net_allows(pol, op, family, addr, port, proto)) {
		/* allowed: would the shadow version (a staged rollout) allow it too? recorded, nothing done */
		u32 s = pol->shadow - 1;
		struct eg_ext_policy *sp = pol->shadow ? ext_policy.lookup(&s) : 0;
		u64 cg = bpf_get_current_cgroup_id();
		if (sp && !net_allows(sp, op, family, addr, port, proto))
			net_event(pol, cg, op, family, addr, port, proto, EG_V_SHADOW, 0);
		if (watched(cg) || armed_now(pol, cg) || (pol->flags & EG_POL_BASELINE))
			net_event(pol, cg, op, family, addr, port, proto, EG_V_ACTIVITY, 0);
		return 1;
	}

	int deny = quarantine || deny_in_mode(pol, EG_KIND_NETWORK);
	u16 verdict = EG_V_ALLOWED;
	if (deny) {
		count(EG_CTR_DENIALS);
		verdict = EG_V_DENIED;
		/* the tracepoint, which ignores the protocol, killed when no rule of any protocol matched */
		if (!quarantine && should_kill(pol, EG_KIND_NETWORK) && !net_allows(pol, op, family, addr, port, 0))
			verdict = EG_V_KILLED;
	}
	net_event(pol, bpf_get_current_cgroup_id(), op, family, addr, port, proto, verdict,
		  quarantine ? EG_EV_QUARANTINE : 0);
	return deny ? 0 : 1;
}

int eg_connect4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_CONNECT, AF_INET); }
int eg_connect6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_CONNECT, AF_INET6); }
int eg_sendmsg4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_SEND, AF_INET); }
int eg_sendmsg6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_SEND, AF_INET6); }
int eg_bind4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_BIND, AF_INET); }
int eg_bind6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_BIND, AF_INET6); }

/*
 * The kernel's side of a sock_addr context (struct bpf_sock_addr_kern, include/linux/filter.h, 6.7+):
 * the program's ctx points at it. The uapi view has no field for sun_path, and the kfuncs the kernel's
 * selftests use to reach it (bpf_cast_to_kern_ctx) are not callable from bcc, so the two pointers and
 * the length are read with bpf_probe_read_kernel (allowed to privileged programs). uaddr is the
 * kernel's own copy of the address (move_addr_to_kernel), so what is checked is what the kernel uses.
 * tests/kernel checks the layout by its effect: a granted path connects, another does not.
 */
struct eg_sock_addr_kern {
	void *sk;
	void *uaddr;
	u64 tmp_reg;
	void *t_ctx;
	u32 uaddrlen;
};

static __always_inline int unix_check(struct bpf_sock_addr *ctx, u32 op)
{
	u32 cgflags = 0;
	struct eg_ext_policy *pol = cgroup_policy(&cgflags);
	if (!pol)
		return 1;
	struct eg_path_key *k = scratch_key();
	if (!k)
		return 1;
	struct eg_sock_addr_kern kern = {};
	s32 flags;
	if (bpf_probe_read_kernel(&kern, sizeof(kern), (void *)ctx) < 0 || !kern.uaddr) {
		flags = EG_EV_UNREADABLE;
		k->path[0] = 0;
	} else {
		flags = read_sun_path(k, kern.uaddr, kern.uaddrlen);
		if (flags < 0)
			return 1; /* unnamed or abstract */
	}
	u64 cg = bpf_get_current_cgroup_id();
	u8 type = (u8)ctx->type;
	if (unix_granted(pol, cg, k, op, type, flags, cgflags & EG_CG_MOUNTNS, 0))
		return 1;

	int deny = deny_in_mode(pol, EG_KIND_NETWORK);
	u16 verdict = deny ? EG_V_DENIED : EG_V_ALLOWED;
	if (deny) {
		count(EG_CTR_DENIALS);
		if (should_kill(pol, EG_KIND_NETWORK))
			verdict = EG_V_KILLED; /* the connect/sendto tracepoint killed before this hook ran */
	}
	unix_event(pol, cg, k, op, type, verdict, flags);
	return deny ? 0 : 1;
}

int eg_connect_unix(struct bpf_sock_addr *ctx) { return unix_check(ctx, EG_NET_CONNECT); }
int eg_sendmsg_unix(struct bpf_sock_addr *ctx) { return unix_check(ctx, EG_NET_SEND); }

/* sockaddr_in / sockaddr_in6 as user space passes them */
struct eg_user_sockaddr {
	u16 family;
	u16 port;
	u32 v4_or_flowinfo;
	u8 v6[16];
};

static __always_inline int net_kill_check(const void *uaddr, u32 op)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol || !uaddr || !should_kill(pol, EG_KIND_NETWORK))
		return 0;
	struct eg_user_sockaddr sa = {};
	if (bpf_probe_read_user(&sa, sizeof(sa), uaddr) < 0)
		return 0;
	u8 addr[16] = {};
	if (sa.family == AF_UNIX) {
		if (op == EG_NET_BIND)
			return 0;
		struct eg_path_key *k = scratch_key();
		if (!k)
			return 0;
		long n = bpf_probe_read_user_str(k->path, EG_UNIX_PATH_MAX, (const char *)uaddr + 2);
		if (n <= 1 || k->path[0] == 0)
			return 0; /* unnamed or abstract */
		if (unix_path_flags(k, (u32)n) || !unix_allows(pol, k, mountns.lookup(&cg) != 0))
			kill_current();
		return 0;
	}
	if (sa.family == AF_INET)
		__builtin_memcpy(addr, &sa.v4_or_flowinfo, 4);
	else if (sa.family == AF_INET6)
		__builtin_memcpy(addr, sa.v6, 16);
	else
		return 0;
	if (!net_allows(pol, op, sa.family, addr, bpf_ntohs(sa.port), 0))
		kill_current();
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	return net_kill_check(args->uservaddr, EG_NET_CONNECT);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	return net_kill_check(args->addr, EG_NET_SEND);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol || !should_kill(pol, EG_KIND_NETWORK))
		return 0;
	void *name = 0;
	bpf_probe_read_user(&name, sizeof(name), &args->msg->msg_name);
	return net_kill_check(name, EG_NET_SEND);
}

TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
	return net_kill_check(args->umyaddr, EG_NET_BIND);
}
