"""The decision pipeline, one stage per module: what the kernel reports (events) and what the other layers
report (reports, llreport), resolve, decide (pure), act, record; observe and correlate watch allowed activity and
durable records; stats counts them; flow joins the stages. Imports common, manifest, kernel, forensics, sandbox
and instance; never runtime, service, cli or lab."""
