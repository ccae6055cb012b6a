"""``clipadapt advise``: which adaptation method to use for a dataset and a budget (issue 30)."""
