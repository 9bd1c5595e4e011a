"""The loop benchmark's log parsing: each step's wall time and its split into start-up, imports and work."""

from bench.loop import step_durations, step_split

# The local runner's lines (its clock), the step's own lines (KFP's executor, -X importtime) between them.
LOG = """\
\x1b[32m10:00:00.000 - INFO - Executing task 'load-data'\x1b[0m
10:00:00.000 - INFO - Streamed logs:
    import time: self [us] | cumulative | imported package
    import time:       100 |     100000 | kfp.dsl.executor
    [KFP Executor 2026-12-02 10:00:00,250 INFO]: Looking for component `load_data` in --component_module_path `x`
    import time:       500 |     600000 |   numpy
    import time:      1000 |    1000000 | pandas
    import time:       200 |     200000 | kfp_components.steps.data
10:00:02.000 - INFO - Task 'load-data' finished with status SUCCESS
10:00:02.010 - INFO - Executing task 'train-model'
    [KFP Executor 2026-12-02 10:00:02,110 INFO]: Looking for component `train_model` in --component_module_path `x`
    import time:      3000 |    3000000 | mlflow
10:00:06.010 - INFO - Task 'train-model' finished with status SUCCESS
"""


def test_steps_are_timed_by_the_runners_lines():
    assert step_durations(LOG) == {"load-data": 2.0, "train-model": 4.0}


def test_each_step_splits_into_start_up_imports_and_work():
    split = step_split(LOG)
    # nested imports (numpy under pandas) count once, through their top-level import; the executor's
    # own imports before it loads the component are start-up
    assert split["load-data"] == {"total_s": 2.0, "start_up_s": 0.25, "imports_s": 1.2, "work_s": 0.55}
    assert split["train-model"] == {"total_s": 4.0, "start_up_s": 0.1, "imports_s": 3.0, "work_s": 0.9}
