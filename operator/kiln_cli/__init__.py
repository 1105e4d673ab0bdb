"""`kubectl kiln`: a kubectl plugin for Kiln's objects (runs and trials, model history, diffs,
promotions, predictions). Installed as the console script `kubectl-kiln`; kubectl finds it on PATH."""
