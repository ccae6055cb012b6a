"""Advice on which adaptation method to run: published few-shot results, pilot scores and costs."""
