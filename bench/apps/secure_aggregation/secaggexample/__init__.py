"""The flower-secure-aggregation pattern: SecAgg+ where client 0 sleeps past the workflow timeout and drops out."""
