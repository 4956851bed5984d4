"""vislab: curate, train, evaluate, explain and compare visual-recognition models.

The commands that make or use a dataset, a run or a model have a Python function each; their
keywords are the command's options with underscores:

    curate(*sources, out, **options)     vislab curate SOURCES --out OUT ...
    load_config(config, overrides)       the config `vislab train CONFIG --set KEY=VALUE` trains
    train(config, data_dir, out_dir)     vislab train CONFIG --data DATA --out OUT
    evaluate(run_dir, split="test")      vislab evaluate RUN --split test
    predict(run_dir, images, top_k=5)    vislab predict RUN IMAGES (rows, not printed text)
    export_run(run_dir, format="onnx")   vislab export RUN --format onnx
    run_sweep(config, data, out, trials=10, ...)   vislab sweep CONFIG --data --out --trials 10
    SweepOptions                         run_sweep's options as one object
    VislabError                          what every bad input raises, with a one-line message

The other commands (report, compare, explain, serve, collect, ...) are the CLI's only. The
names load on first use, so `import vislab` (and `vislab --version`) stays fast:

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
    "SweepOptions": "vislab.sweep.study",
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


def __dir__() -> list[str]:
    """The public API with the module's own names, so `dir(vislab)` and `help(vislab)` show
    the functions before they are loaded."""
    return sorted({*globals(), *_API})
