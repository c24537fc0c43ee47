"""What fleets scrape: the agent's Prometheus collector (metrics), and the textfile a `forensics verify` run
leaves for node_exporter (textfile). Imports the runtime and below."""
