"""docs/deployment.md's table of the columns a site's data needs matches the task registry.

Regenerate the block with ``python tests/test_docs_task_columns.py`` and paste it between
the markers when a task is added or changed.
"""

from __future__ import annotations

import math
from pathlib import Path

from tasks import available_tasks, get_task

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
START, END = "<!-- task-columns:start -->", "<!-- task-columns:end -->"


def columns_table() -> str:
    """One row per task: its feature columns in schema order, and the label's values."""
    rows = [
        "| task | feature columns (`[data.schema]`, in this order) | label column |",
        "|---|---|---|",
    ]
    for name in available_tasks():
        task = get_task(name)
        count = math.prod(task.input_shape)
        if task.feature_names:
            features = f"{count} numbers: " + ", ".join(f"`{c}`" for c in task.feature_names)
        elif len(task.input_shape) > 1:
            shape = "×".join(str(d) for d in task.input_shape)
            features = f"{count} numbers (the {shape} input, flattened row by row)"
        else:
            features = f"{count} numbers"
        rows.append(f"| `{name}` | {features} | integer 0..{task.num_classes - 1} |")
    return "\n".join(rows)


def test_deployment_doc_lists_each_tasks_columns() -> None:
    text = DOC.read_text()
    assert START in text and END in text, f"{DOC.name} lost its {START} block"
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == columns_table(), (
        "docs/deployment.md's task-columns table is stale; regenerate it with "
        "`python tests/test_docs_task_columns.py`"
    )


if __name__ == "__main__":  # pragma: no cover
    print(columns_table())
