"""What one running extension instance is: its state and saved form (store), the lineage of its processes
(lineage), and the policy slot it shares in the kernel maps (slots). Imports common, manifest and kernel only."""
