"""Loading a local weights file into a built model (`weights: PATH`), strictly.

Accepted: a `.safetensors` file, or a `torch.save`d state_dict (`.pth`, `.pt`, `.bin`) or
checkpoint (`.ckpt`, timm's training checkpoints) holding it under `state_dict` or `model`.
Keys are matched after removing one wrapper prefix from the file (Lightning's `model.`,
DDP's `module.`, torch.compile's `_orig_mod.`) and, when the model wraps a backbone, adding
its prefix (`backbone.`); the pair that matches the most keys wins, and file keys outside
the stripped prefix (losses, EMA copies) are ignored and reported.

Only classifier-head keys may differ (another number of classes): they are skipped with a
warning and the head keeps its fresh initialisation. Any other missing, unexpected or
differently shaped key is a `VislabError` naming the file and the first keys.
Pickles are read with `weights_only=True`: a checkpoint holding arbitrary Python objects is
refused rather than executed.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vislab.errors import VislabError

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
SHOWN = 3


@dataclass
class LoadReport:
    """What `load_weights` did, for logs and a run's summary."""

    file: str
    loaded: int
    strip_prefix: str = ""
    add_prefix: str = ""
    skipped_head: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    new_head: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"source": "file", **asdict(self)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a checkpoint dict when needed."""
    path = Path(path)
    if not path.is_file():
        raise VislabError(f"model.weights: {path} not found; give the path of a .pth, .pt, .ckpt or .safetensors file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise VislabError(f"model.weights: {path} is not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle, zip and runtime errors for bad files
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise VislabError(
                f"model.weights: {path} holds a Python object ({found.group(1)}) besides tensors and is not "
                "loaded for safety; re-save it with torch.save(model.state_dict(), PATH) or as .safetensors"
            ) from None
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text.strip() else type(err).__name__
        raise VislabError(f"model.weights: {path} is not a PyTorch weights file ({reason})") from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise VislabError(
        f"model.weights: {path} holds no state_dict (expected a mapping of tensors, "
        f"or one under {' / '.join(STATE_DICT_KEYS)})"
    )


def align_keys(keys: list[str], target: set[str]) -> tuple[str, str]:
    """(strip, add): the prefix (up to two names) to remove from file keys and the one name to
    add that make the most keys match the model; ties go to the shortest change."""
    adds_by_rest: dict[str, list[str]] = defaultdict(list)
    for key in target:
        adds_by_rest[key].append("")
        if "." in key:
            first, rest = key.split(".", 1)
            adds_by_rest[rest].append(first + ".")
    hits: Counter[tuple[str, str]] = Counter()
    for key in keys:
        parts = key.split(".")
        for depth in range(min(3, len(parts))):
            strip = "".join(p + "." for p in parts[:depth])
            for add in adds_by_rest.get(".".join(parts[depth:]), ()):
                hits[(strip, add)] += 1
    if not hits:
        return "", ""
    return max(hits, key=lambda pair: (hits[pair], -len(pair[0]) - len(pair[1])))


def head_prefixes(model: nn.Module) -> list[str]:
    """Dotted module names whose keys may differ from a file: the classifier and, for a
    wrapped backbone, the original head it replaced."""
    prefixes = list(getattr(model, "vislab_head_prefixes", []))
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if classifier:
        prefixes += [classifier] if isinstance(classifier, str) else list(classifier)
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        prefixes += [name for name, m in model.named_modules() if m is head and name]
    return list(dict.fromkeys(prefixes))


def _show(items: list[str]) -> str:
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a local weights file into `model`; only classifier-head keys may be skipped."""
    source = read_state_dict(path)
    target = model.state_dict()
    strip, add = align_keys(list(source), set(target))
    renamed = {add + k[len(strip) :]: v for k, v in source.items() if k.startswith(strip)}
    ignored = [k for k in source if not k.startswith(strip)]
    heads = head_prefixes(model)

    def is_head(key: str) -> bool:
        return any(key.startswith(p + ".") for p in heads)

    load, skipped, unexpected, mismatched = {}, [], [], []
    for key, tensor in renamed.items():
        ref = target.get(key)
        if ref is None:
            (skipped if is_head(key) else unexpected).append(key)
        elif tensor.shape != ref.shape:
            text = f"{key} {tuple(tensor.shape)} vs {tuple(ref.shape)}"
            (skipped if is_head(key) else mismatched).append(text)
        else:
            load[key] = tensor
    missing = [k for k in target if k not in load and not is_head(k) and k not in renamed and not k.endswith("num_batches_tracked")]
    if not load:
        raise VislabError(
            f"model.weights: no key of {path} matches {type(model).__name__} "
            f"(file has {_show(list(source))}; the model has {_show(list(target))})"
        )
    problems = [
        f"{len(items)} {what} ({_show(items)})"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched))
        if items
    ]
    if problems:
        raise VislabError(
            f"model.weights: {path} does not fit {type(model).__name__}: {'; '.join(problems)}; "
            "only classifier-head keys may differ"
        )
    new_head = any(is_head(k) and k not in load for k in target)
    if skipped:
        log.warning("weights %s: skipped %d classifier-head keys (%s); the head starts fresh", path, len(skipped), _show(skipped))
    if ignored:
        log.warning("weights %s: ignored %d keys outside '%s' (%s)", path, len(ignored), strip, _show(ignored))
    model.load_state_dict({**target, **load})
    return LoadReport(str(path), len(load), strip, add, skipped, ignored, new_head)
