"""vislab: curate, train, evaluate, explain and compare visual-recognition models.

The Python API is the CLI, one function per command (`vislab curate` is `vislab.curate`, and
so on); the names load on first use, so `import vislab` (and `vislab --version`) stays fast:

    from vislab import curate, evaluate, load_config, predict, train
    curate("photos", out="datasets/digits", split="0.7,0.15,0.15", seed=0)
    run = train(load_config("digits-cnn", ["optim.lr=0.003"]), "datasets/digits", "runs/digits")
    print(evaluate(run, split="test")["accuracy"])
    print(predict(run, ["photos/3/0003.png"], top_k=3)[0]["top"])

`train` also takes a YAML path or recipe name for its config; `predict` one path or a list
of paths, folders, PIL images and uint8 numpy arrays.
"""

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("vislab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

# public name -> the module that owns it
_API = {
    "curate": "vislab.data.curate",
    "load_config": "vislab.config",
    "train": "vislab.train",
    "evaluate": "vislab.evaluate",
    "predict": "vislab.predict",
    "export_run": "vislab.export",
    "run_sweep": "vislab.sweep.study",
    "VislabError": "vislab.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'vislab' has no attribute {name!r}")
    import_module(_API[name])
    # importing a submodule named like a function (vislab.train) binds the module here: put
    # every API function whose module is loaded back in its place
    for api, owner in _API.items():
        if owner in sys.modules:
            globals()[api] = getattr(sys.modules[owner], api)
    return globals()[name]
