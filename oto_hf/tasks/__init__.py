"""The tasks the job runner runs, by name. A task is one module with one class implementing `base.Task` (its data
options, data → features, the model's head, predictions → metrics, what the report and the card record); adding one
(token classification is the obvious next) is that module and one line in `TASKS`.

Importing this package is cheap: each task module imports its heavy libraries inside the functions that need them."""

from .base import Evaluated, RunError, Task
from .classification import ClassificationTask
from .squad import SquadTask


TASKS: dict[str, Task] = {task.name: task for task in (SquadTask(), ClassificationTask())}


def get_task(name: str) -> Task:
    """The registered task called `name` ("squad", "classification")."""
    if name not in TASKS:
        raise KeyError(f"no task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["ClassificationTask", "Evaluated", "RunError", "SquadTask", "TASKS", "Task", "get_task"]
