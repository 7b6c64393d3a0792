"""Distinct id types, so a task id can never be passed where a miner id belongs."""

from typing import NewType

MinerId = NewType("MinerId", str)
TaskId = NewType("TaskId", str)
ModelName = NewType("ModelName", str)
