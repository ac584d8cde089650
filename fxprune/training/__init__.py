"""Training the scaling factors, the iterative prune/retrain schedule, the whole transfer job, image folders."""
