"""``clipadapt app``: the page's answers equal ``clipadapt predict``'s and ``caption predict``'s (through
``gradio_client`` against a launched app), bad uploads are refused in the page while it keeps serving, and the Space
folder serves the same predictions from a fresh ``python app.py``; in headless Chromium the page loads without console
errors or requests off the machine, and shows each run's top class after an upload."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from typer.testing import CliRunner

import clipadapt
from clipadapt.cli import app as cli
from tests.helpers import require_or_skip

runner = CliRunner()
SETTINGS = ["data.num_workers=0", "train.batch_size=4"]
CAPTIONS = {"train": (1, 10), "val": (2, 3), "test": (3, 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_clip_dir, tiny_lm_dir, colour_folder, tmp_path_factory) -> Path:
    """A folder of runs as a compare output holds them: zero-shot, LoRA (its head), a linear probe and a caption
    run, all on the tiny random models."""
    from clipadapt.world.caption_data import write_caption_dataset

    root = tmp_path_factory.mktemp("app") / "runs"
    data = f"imagefolder:{colour_folder}"
    clipadapt.zeroshot(str(tiny_clip_dir), data, out=root / "zeroshot", device="cpu", progress=False,
                       overrides=["data.num_workers=0"])
    for method in ("lora", "linear-probe"):
        clipadapt.train(method, str(tiny_clip_dir), data, out=root / method, epochs=2, device="cpu", progress=False,
                        overrides=SETTINGS)
    captions = write_caption_dataset(tmp_path_factory.mktemp("captions") / "world", CAPTIONS, resolution=32)
    clipadapt.captioning.train("lora", str(tiny_clip_dir), decoder=str(tiny_lm_dir), dataset=f"coco:{captions}",
                               out=root / "caption", epochs=1, device="cpu",
                               overrides=["decode.max_new_tokens=5", "decode.tokenizer=simple"])
    return root


@pytest.fixture(scope="module")
def served(runs):
    """The app of the whole folder, launched on a free port, and a client of it."""
    from clipadapt.webapp.page import launch

    page = clipadapt.app(runs, device="cpu")
    url = launch(page, None, block=False, quiet=True)  # Gradio takes the first free port from 7860
    yield page, Client(url, verbose=False)
    page.close()


def photo(colour_folder) -> Path:
    return sorted((colour_folder / "red").iterdir())[0]


def confidences(label: dict) -> dict[str, float]:
    return {entry["label"]: entry["confidence"] for entry in label["confidences"]}


def names_of(page) -> list[str]:
    from clipadapt.webapp.page import _names

    return _names(page.clipadapt_panels)


def test_every_panel_answers_as_predict_and_caption_predict(served, runs, colour_folder):
    page, client = served
    names = names_of(page)
    assert names == ["lora (caption)", "linear-probe (linear-probe)", "lora (lora)", "zeroshot (zeroshot)"]
    image = photo(colour_folder)
    answers = client.predict(handle_file(str(image)), names, "", "", api_name="/predict")
    assert len(answers) == 2 * len(names)
    by_name = dict(zip(names, zip(answers[::2], answers[1::2], strict=True), strict=True))
    for folder in ("zeroshot", "lora", "linear-probe"):
        [expected], skipped = clipadapt.predict(runs / folder, [image], top_k=5, device="cpu")
        assert not skipped
        label, saliency = by_name[next(n for n in names if n.endswith(f"({folder})"))]
        top = next(iter(expected.top.values()))
        assert list(confidences(label)) == [name for name, _ in top]  # the same classes, best first
        assert confidences(label) == pytest.approx(dict(top), abs=1e-6)
        assert label["label"] == top[0][0]
        assert Path(saliency).is_file()  # the top class's saliency over the photo, drawn
    caption, strip = by_name["lora (caption)"]
    [expected_caption] = clipadapt.captioning.caption(runs / "caption", [image], device="cpu")
    assert caption == expected_caption["caption"] and caption
    from PIL import Image

    with Image.open(strip) as figure:  # the photo and one panel per word: wider than tall
        assert figure.width > figure.height

    only = client.predict(handle_file(str(image)), [names[1]], "", "", api_name="/predict")
    assert only[2]["label"] and all(not value for value in only[:2] + only[4:])  # unselected runs: nothing


def test_zero_shot_takes_edited_class_names_and_template(served, runs, colour_folder, tiny_clip_dir):
    from clipadapt.classification.predict import predict_images
    from clipadapt.classification.predictors import zero_shot_predictor

    page, client = served
    names = names_of(page)
    image = photo(colour_folder)
    labels, template = "red, green, blue, yellow, human-made", "a picture of something {}."
    answers = client.predict(handle_file(str(image)), ["zeroshot (zeroshot)"], labels, template, api_name="/predict")
    got = confidences(answers[2 * names.index("zeroshot (zeroshot)")])
    predictor = zero_shot_predictor(str(tiny_clip_dir), ["red", "green", "blue", "yellow", "human-made"], [template],
                                    "cpu")
    [expected], _ = predict_images([predictor], [image], 5)
    assert got == pytest.approx(dict(expected.top[predictor.label]), abs=1e-6)
    assert set(got) == {"red", "green", "blue", "yellow", "human-made"}

    for labels, template, message in [("red", "", "give at least two class names"),
                                      ("red, red, blue", "", "class names must differ; repeated: red"),
                                      ("red, blue", "a photo", "the template needs one {} where the class name goes")]:
        with pytest.raises(Exception, match="zeroshot \\(zeroshot\\): " + message.replace("{}", "\\{\\}")):
            client.predict(handle_file(str(image)), ["zeroshot (zeroshot)"], labels, template, api_name="/predict")


def test_a_bad_upload_is_refused_in_the_page_and_the_app_keeps_serving(served, colour_folder, tmp_path):
    from PIL import Image

    page, client = served
    names = names_of(page)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(Exception, match="cannot read 'notes.txt' as an image: "):
        client.predict(handle_file(str(text)), names, "", "", api_name="/predict")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (8000, 6000), "white").save(huge)  # 48 MP of one colour: a small file, too many pixels
    with pytest.raises(Exception, match=r"cannot read .huge.png. as an image: decompression bomb: Image size "
                                        r"\(48000000 pixels\) exceeds limit of 40000000 pixels"):
        client.predict(handle_file(str(huge)), names, "", "", api_name="/predict")
    answers = client.predict(handle_file(str(photo(colour_folder))), names, "", "", api_name="/predict")
    assert all(value is not None for value in answers)  # still serving


def test_space_folder_serves_the_runs_from_a_fresh_python(runs, colour_folder, tmp_path):
    space = tmp_path / "space"
    result = runner.invoke(cli, ["app", str(runs / "zeroshot"), str(runs / "lora"), "--space", str(space),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"Space folder: {space}" in result.output
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\ntitle: clipadapt runs\n") and "sdk: gradio\n" in readme
    assert "app_file: app.py\n" in readme
    assert "clipadapt" not in (space / "app.py").read_text().split('"""')[2].replace("clipadapt_export", "")
    requirements = (space / "requirements.txt").read_text().split()
    assert any(r.startswith("gradio==") for r in requirements) and "transformers>=5.0,<6" in requirements
    assert sorted(p.name for p in (space / "models").iterdir()) == ["00-zeroshot", "01-lora"]
    assert list((space / "examples").glob("*.png"))

    port = free_port()
    log = (tmp_path / "app.log").open("w")  # a file, not a pipe: a chatty server never blocks on a full pipe
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRADIO_SERVER_PORT": str(port),
                                   "PYTHONPATH": ""})
    try:
        client = wait_for(f"http://127.0.0.1:{port}/", server, tmp_path / "app.log")
        image = photo(colour_folder)
        answers = client.predict(handle_file(str(image)), api_name="/predict")
        for folder, label in zip(("zeroshot", "lora"), answers, strict=True):
            [expected], _ = clipadapt.predict(runs / folder, [image], top_k=5, device="cpu")
            top = dict(next(iter(expected.top.values())))
            assert label["label"] == next(iter(top))
            assert confidences(label) == pytest.approx(top, abs=1e-3)  # transformers' preprocessing, within 1e-3
    finally:
        server.kill()
        server.wait()
        log.close()


def wait_for(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> Client:
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            pytest.fail(f"app.py ended with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    space = tmp_path / "space"
    try:
        for args, message in [
            ([str(tmp_path)], f"'{tmp_path}' is not a run directory and holds no finished runs"),
            ([str(tmp_path / "nowhere")], f"'{tmp_path / 'nowhere'}' does not exist; give a run directory"),
            ([str(runs / "lora"), "--port", str(port)], f"--port {port} on 127.0.0.1 is in use"),
            ([str(runs / "lora"), "--share-folder", str(tmp_path / "none")],
             f"--share-folder '{tmp_path / 'none'}' is not a folder"),
            ([str(runs / "caption"), "--space", str(space)],
             f"'{(runs / 'caption').resolve()}' is a caption run: a Space needs `clipadapt export`"),
        ]:
            result = runner.invoke(cli, ["app", *args])
            assert result.exit_code == 2, result.output
            assert message in result.output and result.output.count("\n") == 1, result.output
            assert "Traceback" not in result.output
    finally:
        taken.close()
    assert not space.exists() and sorted(tmp_path.iterdir()) == []


def test_without_gradio_the_app_names_its_extra(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(clipadapt.ConfigError, match=r"the app needs Gradio, which is not installed: pip install "
                                                    r"'clipadapt\[app\]'"):
        clipadapt.app(runs)


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_the_page_in_headless_chromium(served, runs, colour_folder, tmp_path):
    """Loaded in Chromium: no console errors, no request leaves the machine (fonts, analytics, version checks), and
    after an upload each shown run's top class (and the caption) is on the page, as clipadapt predicts it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require_or_skip(chromium is not None, "Chromium (`chromium` or `chromium-browser` on PATH)")
    require_or_skip(__import__("importlib").util.find_spec("playwright") is not None, "playwright (the dev extra)")
    from playwright.sync_api import sync_playwright

    page, _ = served
    url = page.local_url.rstrip("/")
    image = photo(colour_folder)
    shown = names_of(page)[:3]  # the first three runs are shown at the start: caption, linear-probe, lora
    expected = [next(iter(clipadapt.predict(runs / folder, [image], device="cpu")[0][0].top.values()))[0][0]
                for folder in ("linear-probe", "lora")]
    [caption] = clipadapt.captioning.caption(runs / "caption", [image], device="cpu")
    errors, outside = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1100})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("request", lambda request: None if request.url.startswith((url, "data:", "blob:"))
                   else outside.append(request.url))
            tab.goto(url, wait_until="networkidle")
            assert tab.get_by_text("runs shown").is_visible() and all(tab.get_by_text(n).count() for n in shown)
            tab.set_input_files("input[type=file] >> nth=0", str(image))
            tab.wait_for_function("document.querySelectorAll('[data-testid=label-output-value]').length == 2",
                                  timeout=120_000)
            tab.wait_for_function("[...document.querySelectorAll('textarea')].some(t => t.value)", timeout=60_000)
            assert tab.locator("[data-testid=label-output-value]").all_inner_texts() == expected
            assert caption["caption"] in [area.input_value() for area in tab.locator("textarea").all()]
            screenshot = Path(os.environ.get("CLIPADAPT_APP_SCREENSHOT", tmp_path / "app.png"))
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert not errors, errors
    assert not outside, outside
