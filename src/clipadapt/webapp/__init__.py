"""``clipadapt app``: a web page (Gradio) to try runs on your own photos, and a Hugging Face Space folder of them.

``panels`` (what each run answers, no Gradio), ``saliency`` (where a classifier looked), ``page`` (the Gradio page),
``space`` (the Space folder) and ``space_app`` (the Space's app.py, which needs no clipadapt). Gradio is the optional
extra ``clipadapt[app]``, imported only when a page is built.
"""

from clipadapt.webapp.panels import find_runs, read_photo

__all__ = ["find_runs", "read_photo"]
