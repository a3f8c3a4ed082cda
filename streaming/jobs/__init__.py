"""Jobs outside the worker: the periodic retrain, dataset replay, tailing recommendations."""
