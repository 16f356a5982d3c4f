"""A report a person can read on its own: ``report.md`` and ``report.html``.

Built from the stage outputs it is given (:class:`ReportInputs`: prepare summary, evaluate metrics
and plots, compress metrics when present); it opens no stage folder itself and loads no model.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evaluate.complexity import MAX_BYTES, MAX_MACS  # the DCASE2022 limits
from evaluate.plots import REPORT_REFERENCE_POINTS  # Table 1 of the tech report

logger = logging.getLogger(__name__)

# Labels of Table 1's rows in the report text.
_REFERENCE_LABELS = {
    "DCASE2022 baseline": "DCASE2022 baseline (report, TAU22)",
    "Report model": "Xin et al. (report, TAU22)",
}


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
    return pd.DataFrame(
        {
            name: {
                "clips": m.get("n"),
                "accuracy (macro)": _pct(m.get("macro_accuracy")),
                "log loss": _num(m.get("log_loss")),
            }
            for name, m in rows.items()
        }
    ).T


def _class_table(metrics: dict) -> pd.DataFrame:
    per_class = metrics["overall"]["per_class"]
    return pd.DataFrame(
        {
            name: {"clips": m.get("n"), "accuracy": _pct(m.get("accuracy")), "log loss": _num(m.get("log_loss"))}
            for name, m in per_class.items()
        }
    ).T


def _tta_runs(ev: dict, split: str) -> list[dict]:
    """The TTA variants of ``split`` in run order: ``{"mode", "variant", "n_copies", "macs_per_clip", "metrics"}``.

    Reads ``metrics.json``'s ``tta.modes`` (mode -> variant, copies, MACs per clip); an older file
    without it had one variant, ``tta``, of time shifts, costing ``n_copies`` x the classifier's MACs.
    """
    info, results, cx = ev.get("tta") or {}, ev["splits"][split], ev["complexity"]
    modes = info.get("modes")
    if modes is None:
        modes = (
            {
                "shift": {
                    "variant": "tta",
                    "n_copies": info.get("n_copies"),
                    "macs_per_clip": (info.get("n_copies") or 0) * cx["macs"],
                }
            }
            if "tta" in results
            else {}
        )
    return [
        {
            "mode": mode,
            "variant": m["variant"],
            "n_copies": m["n_copies"],
            "macs_per_clip": m["macs_per_clip"],
            "metrics": results[m["variant"]],
        }
        for mode, m in modes.items()
        if m["variant"] in results
    ]


def _ablation_section(rows: list[dict]) -> list[str]:
    """Markdown of the recipe ablation table (mean +/- std over the runs of each recipe)."""
    md = [
        "## Recipe ablation over this experiment's runs\n",
        "Every finished evaluate run of the MLflow experiment, grouped by the recipe additions it had on "
        "(DIR: device response augmentation, FMS: Freq-MixStyle, KD: knowledge distillation); mean and "
        "sample standard deviation over the runs (seeds) of each recipe, without TTA.\n",
        "| recipe | runs | macro accuracy | unseen devices (S4-S6) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        un = r["unseen"]
        md.append(
            f"| {r['recipe']} | {r['runs']} | {_pct(r['overall']['mean'])} ± {_pct(r['overall']['std'])} | "
            + (f"{_pct(un['mean'])} ± {_pct(un['std'])}" if un else "n/a")
            + " |"
        )
    md.append("\n![Recipe ablation](ablation.png)\n")
    return md


PLOTS = ("confusion_matrix", "device_accuracy", "training_curves", "size_vs_accuracy")  # evaluate's, by name


@dataclass(frozen=True)
class ReportInputs:
    """The files a report is made of (the ``report`` stage resolves them by name: ``ctx.input``).

    Attributes:
      summary: the prepare stage's ``summary.json``.
      metrics: the evaluate stage's ``metrics.json``.
      plots: the evaluate stage's plots to copy (``confusion_matrix.png``, ...), those that exist.
      compress_metrics: the compress stage's ``metrics.json`` when that stage is complete, else None
        (a half-written compress stage is never reported).
      teacher_metrics: the teacher stage's ``metrics.json`` when distilling (complete, this run's), else None.
    """

    summary: Path
    metrics: Path
    plots: tuple[Path, ...] = ()
    compress_metrics: Path | None = None
    teacher_metrics: Path | None = None


def _teacher_lines(teacher: dict, plain: dict) -> list[str]:
    """The distillation teacher against this run's student, saying so plainly when it is not better."""
    who = (
        f"imported from `{teacher['imported']}`"
        if teacher.get("imported")
        else f"ensemble of {teacher.get('members', '?')} trained here"
    )
    if "teacher_macro_accuracy" not in teacher:
        return [f"- Distillation teacher ({who}): not scored (its file has no logits for every evaluate clip)."]
    t, s = teacher["teacher_macro_accuracy"], plain["overall"]["macro_accuracy"]
    t_un = teacher.get("teacher_unseen_macro_accuracy")
    s_un = plain.get("per_device_group", {}).get("unseen", {}).get("macro_accuracy")
    lines = [
        f"- Distillation teacher ({who}): macro accuracy {_pct(t)} (unseen devices {_pct(t_un)}) against this "
        f"run's student {_pct(s)} (unseen {_pct(s_un)})."
    ]
    if t <= s:
        lines.append(
            f"- **The teacher is not better than the student it teaches** ({_pct(t)} against {_pct(s)}): "
            "distillation can only pull the student towards a weaker model. Train the teachers longer "
            "(`distill.teacher.epochs`), use more of them (`distill.teacher.members`) or import a stronger "
            "teacher (`distill.teacher.logits`)."
        )
    return lines


def build_report(inputs: ReportInputs, params_yaml: str, out_dir: Path, ablation: list[dict] | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and copies of the plots into ``out_dir``.

    Args:
      inputs: the stage outputs to report (:class:`ReportInputs`).
      params_yaml: the run's configuration, shown in the report.
      out_dir: where the report goes.
      ablation: rows of :func:`evaluate.ablation.ablation` over the experiment's runs; the report
        gets an ablation table and plot when they hold more than one recipe or more than one run.

    Returns:
      ``{"markdown": path, "html": path, "plots": [paths]}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = json.loads(Path(inputs.summary).read_text())
    ev = json.loads(Path(inputs.metrics).read_text())
    comp = json.loads(Path(inputs.compress_metrics).read_text()) if inputs.compress_metrics is not None else None
    synthetic = ev.get("data") == "synthetic"

    split = "evaluate" if "evaluate" in ev["splits"] else next(iter(ev["splits"]))
    plain = ev["splits"][split]["plain"]
    tta_runs = _tta_runs(ev, split)
    cx = ev["complexity"]

    plots = []
    for src in inputs.plots:
        if Path(src).is_file():
            shutil.copyfile(src, out_dir / Path(src).name)
            plots.append(out_dir / Path(src).name)

    md: list[str] = []
    md.append(f"# Acoustic scene classification report: {ev['model']} / {ev['config']} / {ev['data']}\n")
    if synthetic:
        md.append(
            "> **These figures are on the built-in synthetic dataset, not on TAU Urban Acoustic Scenes "
            "2022 Mobile.** They show that the pipeline works and how models compare on the synthetic "
            "task; they are not comparable to the tech report's TAU22 figures below.\n"
        )
    md.append("## Headline\n")
    md.append(
        f"- Evaluate split ({plain['overall']['n']} clips): macro-averaged class accuracy "
        f"**{_pct(plain['overall']['macro_accuracy'])}**, log loss **{_num(plain['overall']['log_loss'])}**"
        f" (without TTA)."
    )
    for run in tta_runs:
        result = run["metrics"]["overall"]
        md.append(
            f"- With test-time augmentation, mode `{run['mode']}` ({run['n_copies']} copies, "
            f"{run['macs_per_clip']:,} MACs per clip): **{_pct(result['macro_accuracy'])}**, "
            f"log loss **{_num(result['log_loss'])}**."
        )
    groups = plain.get("per_device_group", {})
    if "unseen" in groups:
        md.append(
            f"- Unseen devices S4-S6: {_pct(groups['unseen']['macro_accuracy'])} "
            f"(seen devices A-C: {_pct(groups.get('real', {}).get('macro_accuracy'))}, "
            f"S1-S3: {_pct(groups.get('seen', {}).get('macro_accuracy'))})."
        )
        seen = [groups[g] for g in ("real", "seen") if g in groups]
        if seen:
            n = sum(g["n"] for g in seen)
            seen_acc = sum(g["macro_accuracy"] * g["n"] for g in seen) / n
            gap = seen_acc - groups["unseen"]["macro_accuracy"]
            md.append(
                f"- **Seen/unseen gap: {100 * gap:.1f} points** (devices seen in training, A-C and S1-S3, "
                f"{_pct(seen_acc)} over {n} clips, against unseen S4-S6)."
            )
    if inputs.teacher_metrics is not None:
        md += _teacher_lines(json.loads(Path(inputs.teacher_metrics).read_text()), plain)
    special = ev.get("device_specific")
    if special:
        system = special["overall"]
        md.append(
            f"- **Device-specific models** (DCASE2025: each training device's own fine-tuned model, the general "
            f"model for the others): macro accuracy **{_pct(system['macro_accuracy'])}** over the evaluate split, "
            f"against {_pct(plain['overall']['macro_accuracy'])} for the general model alone."
        )
        md.append("")
        md.append("| device | clips | general model | device's own model | gain (points) |")
        md.append("| --- | ---: | ---: | ---: | ---: |")
        for device, row in special["devices"].items():
            if row.get("general") is None:
                md.append(f"| {device.upper()} | 0 | - | - | - |")
                continue
            md.append(
                f"| {device.upper()} | {row['n']} | {_pct(row['general'])} | {_pct(row['specialized'])} | "
                f"{100 * row['gain']:+.1f} |"
            )
        md.append("")
    subset = ev.get("training_data")
    if subset:
        share = subset["train_clips"] / max(subset["training_split_clips"], 1)
        md.append(
            f"- **Training data** (`data.train_split={subset['train_split']}`): {subset['train_clips']} of the "
            f"{subset['training_split_clips']} clips of the training split ({100 * share:.1f} %)."
        )
    held = ev.get("held_out_devices") or []
    if held and "validation" in ev["splits"]:
        val = ev["splits"]["validation"]["plain"]["overall"]
        unseen = groups.get("unseen", {}).get("macro_accuracy")
        md.append(
            f"- **Pseudo-unseen validation** (training devices {', '.join(held)} held out: their "
            f"{val['n']} training clips left training and were its validation split; tune on this figure): "
            f"macro accuracy **{_pct(val['macro_accuracy'])}**, log loss {_num(val['log_loss'])}; "
            f"real unseen devices S4-S6 (evaluate split, not for tuning): {_pct(unseen)}."
        )
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
    md.append(
        f"\nLimits: {MAX_BYTES:,} bytes (parameters at one byte as int8, int32 biases at 4 bytes, "
        f"batch-norm folded) and {MAX_MACS:,} MACs per clip. The Keras row estimates the int8 size.\n"
    )

    if tta_runs:
        md.append("## Test-time augmentation: accuracy and cost\n")
        md.append(
            "Test-time augmentation (TTA) averages the softmax of N augmented copies of each clip, so it "
            "**multiplies the per-clip MACs by N**: N passes of the classifier (the front end runs once and, "
            "as in the DCASE count, is not counted). `shift`: circular time shifts; `masks`: the training "
            "SpecAugment++ masks switched on (input and hidden positions, fill "
            f"`{(ev.get('tta') or {}).get('mask_fill', 'zm')}`), as the report's reference code (SP4ASC) "
            "runs its copies.\n"
        )
        md.append("| variant | copies N | macro accuracy | log loss | MACs per clip | within the MACs limit |")
        md.append("|---|---|---|---|---|---|")
        md.append(
            f"| no TTA | 1 | {_pct(plain['overall']['macro_accuracy'])} | {_num(plain['overall']['log_loss'])} | "
            f"{cx['macs']:,} | {'yes' if cx['macs'] <= MAX_MACS else 'NO'} |"
        )
        for run in tta_runs:
            result = run["metrics"]["overall"]
            md.append(
                f"| TTA `{run['mode']}` | {run['n_copies']} | {_pct(result['macro_accuracy'])} | "
                f"{_num(result['log_loss'])} | {run['macs_per_clip']:,} | "
                f"{'yes' if run['macs_per_clip'] <= MAX_MACS else 'NO'} |"
            )
        over = ", ".join(f"`{run['mode']}`" for run in tta_runs if run["macs_per_clip"] > MAX_MACS)
        if over:
            md.append(
                f"\nWith TTA ({over}) the system is over the limit of {MAX_MACS:,} MACs per clip: a DCASE "
                f"submission must count all N copies."
            )
        md.append("")

    md.append("## Comparison with the tech report (Table 1)\n")
    md.append("| system | model size (KB) | log loss | accuracy | data |")
    md.append("|---|---|---|---|---|")
    for ref in REPORT_REFERENCE_POINTS:
        md.append(
            f"| {_REFERENCE_LABELS.get(ref['name'], ref['name'])} | {ref['size_bytes'] / 1000:.3f} | "
            f"{ref['log_loss']:.3f} | {ref['accuracy']:.1%} | TAU22 development |"
        )
    size = (comp or {}).get("tflite", {}).get("size_bytes") or cx["size_bytes"]
    for label, result in [("no TTA", plain)] + [(f"TTA {run['mode']}", run["metrics"]) for run in tta_runs]:
        if result:
            md.append(
                f"| this run ({ev['model']}, {label}) | {size / 1000:.3f} | {result['overall']['log_loss']:.3f} | "
                f"{result['overall']['macro_accuracy']:.1%} | {ev['data']} |"
            )
    if synthetic:
        md.append(
            "\nThe rows marked TAU22 were measured on the real dataset by their authors; this run's rows "
            "are on the synthetic set and must not be read as TAU22 results."
        )
    md.append("")

    md.append("## Results per device\n")
    md.append(_table(_device_table(plain)))
    md.append("")
    for run in tta_runs:
        md.append(f"### With test-time augmentation, mode `{run['mode']}` ({run['n_copies']} copies)\n")
        md.append(_table(_device_table(run["metrics"])))
        md.append("")
    md.append("## Results per class\n")
    md.append(_table(_class_table(plain)))
    md.append("")

    if comp:
        md.append("## Compression (TFMOT) and the int8 model\n")
        md.append(f"Steps: {', '.join(comp.get('steps', []))}.\n")
        float_acc = comp.get("float", {}).get("overall", {}).get("macro_accuracy")
        int8_acc = comp.get("int8", {}).get("overall", {}).get("macro_accuracy")
        md.append(
            f"- float classifier: {_pct(float_acc)}; int8 TFLite: {_pct(int8_acc)} "
            f"(difference {_num(comp.get('accuracy_drop'), 4)})."
        )
        if comp.get("ptq"):
            md.append(f"- post-training quantization only: {_pct(comp['ptq'].get('macro_accuracy'))}.")
        if comp.get("sparsity") is not None:
            md.append(
                f"- pruned weights: {comp['sparsity']:.1%} zeros overall; gzip size "
                f"{comp.get('gzip_bytes', 0):,} bytes."
            )
        md.append("")

    if ablation and (len(ablation) > 1 or ablation[0]["runs"] > 1):
        from evaluate.plots import plot_ablation

        plots.append(plot_ablation(ablation, out_dir / "ablation.png"))
        md.extend(_ablation_section(ablation))

    md.append("## Plots\n")
    captions = {
        "confusion_matrix.png": "Confusion matrix (row-normalised)",
        "device_accuracy.png": "Accuracy per device (unseen devices S4-S6 marked)",
        "training_curves.png": "Training curves",
        "size_vs_accuracy.png": "Accuracy against model size for the runs of this experiment",
    }
    for path in plots:
        if path.name not in captions:
            continue
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
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "img{max-width:100%}blockquote{background:#fff3cd;border-left:4px solid #e0a800;padding:.5em 1em}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )
