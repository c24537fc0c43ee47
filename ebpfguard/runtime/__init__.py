"""The engine that runs instances: one sensor, the policy slots, the running instances and their lives
(engine), the one launch loop every caller uses (launch), and the rollback areas no agent holds (rollback).
Imports every product layer below it."""
