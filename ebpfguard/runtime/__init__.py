"""The engine that runs instances: one sensor, the policy slots, the running instances and their lives
(engine), and the one launch loop every caller uses (launch). Imports every product layer below it."""
