"""The page of ``clipadapt app``: a photo in, every run's answer side by side (Gradio Blocks).

The photo comes from an upload, the clipboard, the webcam or the examples (images of the first run's test split, the
built-in world's offline, and the photos of ``--share-folder``). A folder of runs lists them to pick from (the
first three shown). Each classification run shows its top-5 classes with probabilities and the saliency of its top
class; a zero-shot run also takes edited class names and a template; a caption run shows its caption and a strip
with each word's attention. The endpoint ``/predict`` serves the same answers to ``gradio_client``.

Offline: analytics (and with them Gradio's version check) are off, and the theme uses the system's fonts, so the page
fetches nothing from outside the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.webapp.panels import CaptionPanel, Panel, ZeroShotPanel, make_panel, read_photo

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio is imported
log = logging.getLogger(__name__)
SHOWN_AT_START = 3
EXAMPLES = 6
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_FILE_SIZE = "25mb"  # launch's limit on an upload: a bigger one is refused in the page
CSS = ".clipadapt-panel {min-width: 260px}"


def gradio():
    """The gradio module, or a one-line error naming the extra that installs it."""
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("the app needs Gradio, which is not installed: pip install 'clipadapt[app]'") from None
    return gr


def offline_theme():
    """Gradio's base theme with the system's fonts (the default theme loads web fonts from Google)."""
    gr = gradio()
    return gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def photo_input(**options: Any):
    """An image input whose upload is read by clipadapt's guards: a file that is not an image, is truncated or is
    too big gives a message in the page (Gradio's own reader fails with a bare "Error"). The reader replaces the
    instance's ``preprocess``: a subclass of a Gradio component would make Gradio write a ``.pyi`` stub beside this
    module."""
    gr = gradio()
    photo = gr.Image(**options)

    def preprocess(payload):
        if payload is None:
            return None
        try:
            return read_photo(payload.path, getattr(payload, "orig_name", None))
        except ClipAdaptError as error:
            raise gr.Error(str(error), print_exception=False) from None

    photo.preprocess = preprocess
    return photo


def _names(panels: list[Panel]) -> list[str]:
    """Each run's name on the page: its title, with its path under the runs' common folder when titles repeat."""
    titles = [panel.title for panel in panels]
    if len(set(titles)) == len(titles):
        return titles
    common = Path(os.path.commonpath([str(p.run_dir) for p in panels]))
    return [f"{panel.title.split(' (')[0]} ({panel.run_dir.relative_to(common).as_posix() or panel.run_dir.name})"
            for panel in panels]


def example_images(panels: list[Panel], folder: Path | None, scratch: Path) -> list[str]:
    """Up to EXAMPLES images of the first classification run's test split (one per class, the first of each), saved
    in ``scratch``, then the images of ``folder``. It loads that run (the rest load on the first photo)."""
    found: list[str] = []
    first = next((p for p in panels if not isinstance(p, CaptionPanel)), None)
    if first is not None:
        try:
            split = first.predictor.dataset.split("test")
            labels, order, seen = split.labels, [], set()  # each class's first image, until EXAMPLES
            for i, label in enumerate(labels):
                if label not in seen:
                    seen.add(label)
                    order.append(i)
                    if len(order) == EXAMPLES:
                        break
            for k, i in enumerate(order):
                path = scratch / f"example-{k}-{first.predictor.classnames[int(labels[i])]}.png"
                split.load(i).save(path)
                found.append(str(path))
        except Exception as error:  # noqa: BLE001 - examples are a convenience: a dataset absent here has none
            log.info("no example images from %s: %s", first.run_dir, error)
    if folder is not None:
        found += [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return found


def build_page(run_dirs: list[Path], device: str | None = None, share_folder: Path | None = None,
               title: str = "clipadapt: your runs on your photo"):
    """The Blocks of the app for ``run_dirs`` (finished runs, ``panels.find_runs``)."""
    import shutil
    import tempfile
    import weakref

    gr = gradio()
    scratch = Path(tempfile.mkdtemp(prefix="clipadapt-app-"))  # examples and caption strips; removed with the page
    panels = [make_panel(run_dir, device, scratch) for run_dir in run_dirs]
    names = _names(panels)
    shown = names[:SHOWN_AT_START]
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\nDrop a photo, paste one or take one with the webcam: every run answers side by side. "
                    "Classification runs show their top-5 classes and where they looked (the saliency of the top "
                    "class); caption runs their caption and each word's attention.")
        with gr.Row():
            photo = photo_input(type="pil", sources=["upload", "clipboard", "webcam"], label="your photo",
                                height=320)
            with gr.Column():
                selection = gr.CheckboxGroup(names, value=shown, label="runs shown", visible=len(names) > 1)
                button = gr.Button("Predict", variant="primary")
        examples = example_images(panels, share_folder, scratch)
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=[photo], label="examples",
                        examples_per_page=12)
        columns, outputs, edits = [], [], []
        with gr.Row(equal_height=False):
            for panel, name in zip(panels, names, strict=True):
                with gr.Column(visible=name in shown, elem_classes="clipadapt-panel") as column:
                    gr.Markdown(f"### {name}\n{panel.summary}")
                    if isinstance(panel, CaptionPanel):
                        outputs += [gr.Textbox(label="caption", interactive=False),
                                    gr.Image(label="attention of each word", type="filepath", interactive=False)]
                    else:
                        outputs += [gr.Label(num_top_classes=5, label="top 5"),
                                    gr.Image(label="saliency of the top class", type="pil", interactive=False)]
                    if isinstance(panel, ZeroShotPanel):
                        templates = panel.templates
                        edits += [gr.Textbox(", ".join(panel.classnames), label="class names (commas)", max_lines=4),
                                  gr.Textbox("", label="template",
                                             placeholder=templates[0] if len(templates) == 1 else
                                             f"the run's {len(templates)} templates; or one with {{}}")]
                columns.append(column)

        def predict(image, chosen, *edited):
            if image is None:
                return [None] * len(outputs)
            answers: list[Any] = []
            pending = iter(edited)
            for panel, name in zip(panels, names, strict=True):
                settings = dict(zip(("labels", "template"), (next(pending), next(pending)), strict=True)) \
                    if isinstance(panel, ZeroShotPanel) else {}
                if name not in (chosen or []):
                    answers += [None, None]
                    continue
                try:
                    answers += list(panel.answer(image, **settings))
                except ClipAdaptError as error:
                    raise gr.Error(f"{name}: {error}", print_exception=False) from None
            return answers

        gr.on([button.click, photo.change], predict, [photo, selection, *edits], outputs, api_name="predict")
        selection.change(lambda chosen: [gr.Column(visible=name in (chosen or [])) for name in names], selection,
                         columns, api_visibility="private")
    page._deprecated_theme = offline_theme()  # Gradio 6 takes the theme at launch(): a bare .launch() keeps it
    page._deprecated_css = CSS
    page.clipadapt_panels = panels
    weakref.finalize(page, shutil.rmtree, scratch, True)
    return page


def launch(page, port: int | None = None, host: str = "127.0.0.1", share_folder: Path | None = None,
           block: bool = True, quiet: bool = False):
    """Serve ``page`` on ``host:port`` (offline theme, upload size capped); returns its URL when not blocking."""
    allowed = [str(share_folder)] if share_folder is not None else None
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, show_error=True,
                max_file_size=MAX_FILE_SIZE, allowed_paths=allowed, theme=offline_theme(), css=CSS,
                footer_links=[], ssr_mode=False)
    return page.local_url
