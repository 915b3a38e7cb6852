"""Task sets: baco's bundled prompts (open-ended, dialogue, creative-writing) and loaders for users' files.

    from baco.tasks import load_task, list_tasks
    items = load_task("open-ended", limit=40, seed=0)     # stratified by category, reproducible
    items = load_task("my_prompts.csv", column="question")
    prompts = [item.prompt for item in items]

docs/tasks.md describes the sets, the file formats and the precedence rules.
"""

from baco.tasks.items import TaskItem, TaskWarning
from baco.tasks.loaders import FORMATS, PROMPT_FIELDS, read_task_file
from baco.tasks.registry import BUNDLED, TaskInfo, list_tasks, load_task, select

__all__ = ["BUNDLED", "FORMATS", "PROMPT_FIELDS", "TaskInfo", "TaskItem", "TaskWarning", "list_tasks",
           "load_task", "read_task_file", "select"]
