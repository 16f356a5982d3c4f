"""A report a person can read on its own: ``report.md`` and ``report.html``.

Built from the stage outputs in the workdir (prepare summary, evaluate metrics and plots,
compress metrics when present); no model is loaded here.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from evaluate.complexity import MAX_BYTES, MAX_MACS  # the DCASE2022 limits
from evaluate.plots import REPORT_REFERENCE_POINTS  # Table 1 of the tech report

logger = logging.getLogger(__name__)

# Labels of Table 1's rows in the report text.
_REFERENCE_LABELS = {"DCASE2022 baseline": "DCASE2022 baseline (report, TAU22)",
                     "Report model": "Xin et al. (report, TAU22)"}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join([""] + cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


def _device_table(metrics: dict) -> pd.DataFrame:
    rows = {}
    for device, m in metrics["per_device"].items():
        rows[device] = m
    for group, m in metrics.get("per_device_group", {}).items():
        rows[f"group: {group}"] = m
    rows["overall"] = metrics["overall"]
    return pd.DataFrame({
        name: {"clips": m.get("n"), "accuracy (macro)": _pct(m.get("macro_accuracy")),
               "log loss": _num(m.get("log_loss"))}
        for name, m in rows.items()
    }).T


def _class_table(metrics: dict) -> pd.DataFrame:
    per_class = metrics["overall"]["per_class"]
    return pd.DataFrame({
        name: {"clips": m.get("n"), "accuracy": _pct(m.get("accuracy")), "log loss": _num(m.get("log_loss"))}
        for name, m in per_class.items()
    }).T


def build_report(workdir: Path, params_yaml: str, out_dir: Path) -> dict:
    """Write ``report.md``, ``report.html`` and copies of the plots into ``out_dir``.

    Returns:
      ``{"markdown": path, "html": path, "plots": [paths]}``.
    """
    workdir = Path(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = json.loads((workdir / "prepare" / "summary.json").read_text())
    ev = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    comp_path = workdir / "compress" / "metrics.json"
    complete = (workdir / "compress" / "_SUCCESS.json").is_file()  # never report a half-written compress stage
    comp = json.loads(comp_path.read_text()) if complete and comp_path.is_file() else None
    synthetic = ev.get("data") == "synthetic"

    split = "evaluate" if "evaluate" in ev["splits"] else next(iter(ev["splits"]))
    plain = ev["splits"][split]["plain"]
    tta = ev["splits"][split].get("tta")
    cx = ev["complexity"]

    plots = []
    for name in ("confusion_matrix.png", "device_accuracy.png", "training_curves.png", "size_vs_accuracy.png"):
        src = workdir / "evaluate" / name
        if src.is_file():
            shutil.copyfile(src, out_dir / name)
            plots.append(out_dir / name)

    md: list[str] = []
    md.append(f"# Acoustic scene classification report: {ev['model']} / {ev['config']} / {ev['data']}\n")
    if synthetic:
        md.append("> **These figures are on the built-in synthetic dataset, not on TAU Urban Acoustic Scenes "
                  "2022 Mobile.** They show that the pipeline works and how models compare on the synthetic "
                  "task; they are not comparable to the tech report's TAU22 figures below.\n")
    md.append("## Headline\n")
    md.append(f"- Evaluate split ({plain['overall']['n']} clips): macro-averaged class accuracy "
              f"**{_pct(plain['overall']['macro_accuracy'])}**, log loss **{_num(plain['overall']['log_loss'])}**"
              f" (without TTA).")
    if tta:
        md.append(f"- With test-time augmentation ({ev['tta']['n_copies']} copies): "
                  f"**{_pct(tta['overall']['macro_accuracy'])}**, log loss **{_num(tta['overall']['log_loss'])}**.")
    groups = plain.get("per_device_group", {})
    if "unseen" in groups:
        md.append(f"- Unseen devices S4-S6: {_pct(groups['unseen']['macro_accuracy'])} "
                  f"(seen devices A-C: {_pct(groups.get('real', {}).get('macro_accuracy'))}, "
                  f"S1-S3: {_pct(groups.get('seen', {}).get('macro_accuracy'))}).")
    md.append("")

    md.append("## Complexity against the DCASE2022 Task 1 limits\n")
    rows = [("classifier (Keras, float)", cx["params"], cx["size_bytes"], cx["macs"])]
    if comp and comp.get("tflite"):
        t = comp["tflite"]
        rows.append(("int8 TFLite (what ships)", t.get("params"), t.get("size_bytes"), t.get("macs")))
    md.append("| model | parameters | bytes (NeSsi convention) | MACs per 1-s clip | within limits |")
    md.append("|---|---|---|---|---|")
    for name, params, size, macs in rows:
        ok = (size is not None and size <= MAX_BYTES) and (macs is not None and macs <= MAX_MACS)
        md.append(f"| {name} | {params:,} | {size:,} | {macs:,} | {'yes' if ok else 'NO'} |")
    md.append(f"\nLimits: {MAX_BYTES:,} bytes (parameters at one byte as int8, int32 biases at 4 bytes, "
              f"batch-norm folded) and {MAX_MACS:,} MACs per clip. The Keras row estimates the int8 size.\n")

    md.append("## Comparison with the tech report (Table 1)\n")
    md.append("| system | model size (KB) | log loss | accuracy | data |")
    md.append("|---|---|---|---|---|")
    for ref in REPORT_REFERENCE_POINTS:
        md.append(f"| {_REFERENCE_LABELS.get(ref['name'], ref['name'])} | {ref['size_bytes'] / 1000:.3f} | "
                  f"{ref['log_loss']:.3f} | {ref['accuracy']:.1%} | TAU22 development |")
    size = (comp or {}).get("tflite", {}).get("size_bytes") or cx["size_bytes"]
    for label, result in (("no TTA", plain), ("TTA", tta)):
        if result:
            md.append(f"| this run ({ev['model']}, {label}) | {size / 1000:.3f} | {result['overall']['log_loss']:.3f} | "
                      f"{result['overall']['macro_accuracy']:.1%} | {ev['data']} |")
    if synthetic:
        md.append("\nThe rows marked TAU22 were measured on the real dataset by their authors; this run's rows "
                  "are on the synthetic set and must not be read as TAU22 results.")
    md.append("")

    md.append("## Results per device\n")
    md.append(_table(_device_table(plain)))
    md.append("")
    if tta:
        md.append("### With test-time augmentation\n")
        md.append(_table(_device_table(tta)))
        md.append("")
    md.append("## Results per class\n")
    md.append(_table(_class_table(plain)))
    md.append("")

    if comp:
        md.append("## Compression (TFMOT) and the int8 model\n")
        md.append(f"Steps: {', '.join(comp.get('steps', []))}.\n")
        float_acc = comp.get("float", {}).get("overall", {}).get("macro_accuracy")
        int8_acc = comp.get("int8", {}).get("overall", {}).get("macro_accuracy")
        md.append(f"- float classifier: {_pct(float_acc)}; int8 TFLite: {_pct(int8_acc)} "
                  f"(difference {_num(comp.get('accuracy_drop'), 4)}).")
        if comp.get("ptq"):
            md.append(f"- post-training quantization only: {_pct(comp['ptq'].get('macro_accuracy'))}.")
        if comp.get("sparsity") is not None:
            md.append(f"- pruned weights: {comp['sparsity']:.1%} zeros overall; gzip size "
                      f"{comp.get('gzip_bytes', 0):,} bytes.")
        md.append("")

    md.append("## Plots\n")
    captions = {
        "confusion_matrix.png": "Confusion matrix (row-normalised)",
        "device_accuracy.png": "Accuracy per device (unseen devices S4-S6 marked)",
        "training_curves.png": "Training curves",
        "size_vs_accuracy.png": "Accuracy against model size for the runs of this experiment",
    }
    for path in plots:
        md.append(f"### {captions[path.name]}\n\n![{captions[path.name]}]({path.name})\n")

    md.append("## Dataset\n")
    md.append(f"- Root: `{summary['root']}` (fingerprint `{summary['fingerprint']}`)")
    md.append(f"- Clips per split: {summary['clips_per_split']}")
    md.append(f"- Devices per split: {summary['devices_per_split']}")
    md.append(f"- Fallbacks applied (counted): {summary.get('fallbacks', {})}\n")
    md.append("## Configuration\n")
    md.append("```yaml\n" + params_yaml.rstrip() + "\n```\n")

    text = "\n".join(md)
    from pipeline.core import files

    files.write_text(out_dir / "report.md", text)
    files.write_text(out_dir / "report.html", to_html(text, title=f"ASC report: {ev['model']} / {ev['config']}"))
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "plots": plots}


def to_html(markdown_text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
             "img{max-width:100%}blockquote{background:#fff3cd;border-left:4px solid #e0a800;padding:.5em 1em}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
