"""kiln-train: dataset validation, one trial of a hyper-parameter search, and selection of the best trial.

The pod contract (arguments, environment, store layout, termination message) is docs/pod-contract.md.
"""
