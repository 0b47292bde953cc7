"""MLflow for one run: the store, run and tag names, processes behind runs, the tracker that logs a run, and
reading a run back (rerun=, resume=) with its config checked against conf/."""
