/* SPDX-License-Identifier: GPL-2.0 */
/*
 * net.bpf.c: the network allowlist. The cgroup sock_addr programs see the kernel's own copy of the
 * address and deny with EPERM; they are attached to each extension cgroup, so they hold even while
 * the agent is away. The syscall tracepoints exist only to kill: sock_addr programs cannot send a
 * signal, so when the response is "kill" the tracepoint sends SIGKILL before the syscall proceeds.
 */

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

/* family is a constant in each caller, so each program reads only its own ctx fields */
static __always_inline int sock_check(struct bpf_sock_addr *ctx, u32 op, const u16 family)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
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
	int quarantine = quarantined.lookup(&cg) != 0;
	if (!quarantine && net_allows(pol, op, family, addr, port, proto))
		return 1;

	int deny = quarantine || deny_in_mode(pol, EG_KIND_NETWORK);
	u16 verdict = EG_V_ALLOWED;
	if (deny) {
		count(EG_CTR_DENIALS);
		verdict = EG_V_DENIED;
		/* the tracepoint, which ignores the protocol, killed when no rule of any protocol matched */
		if (!quarantine && should_kill(pol, EG_KIND_NETWORK) && !net_allows(pol, op, family, addr, port, 0))
			verdict = EG_V_KILLED;
	}
	u64 h = EG_FNV(EG_FNV(EG_FNV(EG_FNV(EG_FNV_BASIS, EG_KIND_NETWORK), op), port), proto);
	h = EG_FNV(EG_FNV(EG_FNV(h, quarantine), verdict), family);
	for (int i = 0; i < 16; i++)
		h = EG_FNV(h, addr[i]);
	struct eg_event *e = new_violation(pol, EG_KIND_NETWORK, -1, verdict, h, cg);
	if (e) {
		e->flags = quarantine ? EG_EV_QUARANTINE : 0;
		e->op = op;
		e->family = family == AF_INET ? 4 : 6;
		e->port = port;
		e->proto = proto;
		__builtin_memcpy(e->addr, addr, 16);
		events.ringbuf_submit(e, 0);
	}
	return deny ? 0 : 1;
}

int eg_connect4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_CONNECT, AF_INET); }
int eg_connect6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_CONNECT, AF_INET6); }
int eg_sendmsg4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_SEND, AF_INET); }
int eg_sendmsg6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_SEND, AF_INET6); }
int eg_bind4(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_BIND, AF_INET); }
int eg_bind6(struct bpf_sock_addr *ctx) { return sock_check(ctx, EG_NET_BIND, AF_INET6); }

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
