"""``clipadapt advise``: a pilot, a cost probe and a model fit on published results answer which adaptation
method to use for a dataset and a budget (``advise.py`` puts them together; docs/advise.md)."""
