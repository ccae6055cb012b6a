"""A Hugging Face Space of runs exported by clipadapt: a photo in, each model's top-5 classes out.

Written by ``clipadapt app RUN... --space DIR`` as DIR/app.py; it needs transformers, torch, safetensors and gradio,
not clipadapt. Each folder in models/ is a ``clipadapt export``: a transformers CLIP with ``clipadapt_export.json``
(class names, template) and, where the run learned a head or averaged several templates, ``head.safetensors`` with
``logits = scale * normalize(image_features) @ weight.T + bias``. Run it with ``python app.py``.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoImageProcessor, pipeline  # noqa: E402

HERE = Path(__file__).resolve().parent
TOP_K = 5


def load(folder):
    """A function from a PIL image to ``{class: probability}`` of the top 5, for one exported folder."""
    record = json.loads((folder / "clipadapt_export.json").read_text())
    names = record["classnames"]
    if not record["head"]:  # the text tower is the classifier, with one template: transformers' pipeline
        classifier = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")

        def answer(image):
            found = classifier(image, candidate_labels=names, hypothesis_template=record["hypothesis_template"])
            return {entry["label"]: entry["score"] for entry in found[:TOP_K]}

        return record, answer
    model = getattr(transformers, record["model_class"]).from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with safe_open(str(folder / record["head"]), "pt") as f:
        head = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not iterable

    def answer(image):
        with torch.no_grad():
            features = model.get_image_features(**processor(images=image, return_tensors="pt")).pooler_output
            features = torch.nn.functional.normalize(features, dim=-1)
            probabilities = (head["scale"] * features @ head["weight"].T + head["bias"]).softmax(-1)[0]
        top = probabilities.argsort(descending=True)[:TOP_K]
        return {names[int(i)]: float(probabilities[i]) for i in top}

    return record, answer


MODELS = [(folder.name, *load(folder)) for folder in sorted((HERE / "models").iterdir()) if folder.is_dir()]


def predict(image):
    if image is None:
        return [None] * len(MODELS)
    return [answer(image.convert("RGB")) for _, _, answer in MODELS]


with gr.Blocks(title="clipadapt runs") as demo:
    gr.Markdown("# Adapted CLIP models\nDrop a photo: each model's top-5 classes.")
    photo = gr.Image(type="pil", sources=["upload", "clipboard", "webcam"], label="your photo")
    with gr.Row():
        labels = [gr.Label(num_top_classes=TOP_K, label=f"{name}: {record['method']} on {record['dataset']}")
                  for name, record, _ in MODELS]
    examples = sorted((HERE / "examples").glob("*.png")) if (HERE / "examples").is_dir() else []
    if examples:
        gr.Examples([[str(path)] for path in examples], inputs=[photo])
    photo.change(predict, photo, labels, api_name="predict")

if __name__ == "__main__":
    demo.launch(theme=gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                     font_mono=["ui-monospace", "monospace"]))
