/* SPDX-License-Identifier: GPL-2.0 */
/* lifecycle.bpf.c: exec and exit of processes inside extension cgroups (not threads, not forks). */

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	struct eg_event *e = new_event(pol, EG_KIND_LIFECYCLE, -1, cg);
	if (!e)
		return 0;
	e->op = EG_LIFE_EXEC;
	TP_DATA_LOC_READ_STR(e->path, filename, EG_PATH_MAX);
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	if (!args->group_dead)
		return 0;
	u64 cg;
	struct eg_ext_policy *pol = current_policy_cg(&cg);
	if (!pol)
		return 0;
	struct eg_event *e = new_event(pol, EG_KIND_LIFECYCLE, -1, cg);
	if (!e)
		return 0;
	e->op = EG_LIFE_EXIT;
	events.ringbuf_submit(e, 0);
	return 0;
}
