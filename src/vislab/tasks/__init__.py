"""Tasks (classify, and detect / crops to come) as plug-ins: `get_task(name)` is the one way in.

The registry and the `Task` interface are in registry.py; the LightningModule machinery
every task shares is in base.py; each task is a plug-in module named for it (classify.py)
with its LightningModule beside it (classify_module.py). Importing this package is cheap.
"""

from vislab.tasks.registry import (
    DEFAULT_TASK,
    Column,
    Evaluation,
    ReportSection,
    Task,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

__all__ = [
    "DEFAULT_TASK",
    "Column",
    "Evaluation",
    "ReportSection",
    "Task",
    "get_task",
    "register_task",
    "task_names",
    "unregister_task",
]
