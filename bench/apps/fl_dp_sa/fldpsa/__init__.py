"""The fl-dp-sa pattern: Flower SecAgg+ (SecAggPlusWorkflow, secaggplus_mod) with client-side DP fixed clipping, legacy FedAvg."""
