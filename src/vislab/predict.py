"""`vislab predict`: top-k classes of image files or folders with a trained run's model.

Images are decoded like training data (EXIF orientation, RGB) and get the eval transform of
the run's DataSpec. A file that cannot be read gets an `error` entry instead of stopping
the others.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.data.io import ImageDecodeError, collect_images
from vislab.errors import VislabError
from vislab.fsguard import printable


def predict(run_dir: str | Path, inputs: Sequence[str | Path], top_k: int = 5, batch_size: int = 32) -> list[dict[str, Any]]:
    """One dict per image: path, pred, confidence, top [{label, prob}] (or error)."""
    from vislab.data.io import load_image
    from vislab.data.transforms import eval_transform
    from vislab.runs import load_run
    from vislab.models.outputs import logits_of

    if top_k < 1:
        raise VislabError("--top-k: must be at least 1")
    run = load_run(run_dir)
    spec = run.spec
    transform = eval_transform(
        spec.input_size, spec.mean, spec.std, spec.crop_pct, spec.interpolation, run.cfg.data.grayscale, run.cfg.model.in_chans
    )
    hint = int(max(spec.input_size[-2:]) / spec.crop_pct + 0.5)
    k = min(top_k, len(run.classes))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = run.model.to(device).eval()
    results: list[dict[str, Any]] = []
    files = collect_images(inputs)
    for start in range(0, len(files), batch_size):
        batch: list[torch.Tensor] = []
        slots: list[dict[str, Any]] = []
        for f in files[start : start + batch_size]:
            entry: dict[str, Any] = {"path": str(f)}
            results.append(entry)
            try:
                img = load_image(f, (hint, hint))
            except ImageDecodeError as err:
                entry["error"] = f"cannot read image: {err.reason}"
                continue
            batch.append(transform(img))
            slots.append(entry)
        if not batch:
            continue
        with torch.inference_mode():
            probs = logits_of(model(torch.stack(batch).to(device))).float().softmax(1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for entry, ps, ids in zip(slots, top_p.tolist(), top_i.tolist()):
            entry["pred"] = run.classes[ids[0]]
            entry["confidence"] = ps[0]
            entry["top"] = [{"label": run.classes[i], "prob": p} for i, p in zip(ids, ps)]
    return results


def format_predictions(results: list[dict[str, Any]], fmt: str = "table") -> str:
    """Text for the CLI: a table, JSON (a list), or long CSV (path, rank, label, prob, error)."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "label", "prob", "error"])
        for r in results:
            if "error" in r:
                w.writerow([printable(r["path"]), "", "", "", r["error"]])
            for rank, t in enumerate(r.get("top", []), 1):
                w.writerow([printable(r["path"]), rank, t["label"], f"{t['prob']:.6f}", ""])
        return buf.getvalue()
    if fmt != "table":
        raise VislabError(f"--format {fmt!r}: choose table, json or csv")
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False)  # cells as Text: a path or class name like '[/x]' is not markup
    table.add_column("image", overflow="fold")
    table.add_column("prediction")
    table.add_column("prob", justify="right")
    table.add_column("next")
    for r in results:
        if "error" in r:
            table.add_row(Text(printable(r["path"])), Text("error", style="red"), "", Text(r["error"]))
            continue
        rest = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in r["top"][1:])
        table.add_row(Text(printable(r["path"])), Text(r["pred"]), f"{r['confidence']:.3f}", Text(rest))
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]
