"""Which steps the teacher answers together (``teacher_batch.group_length``): as many as fit the
rows, counted from the last checkpoint step and never past the next, so a run resumed at a
checkpoint groups its steps as the uninterrupted run did."""

from hub_reflow.training.teacher_batch import group_length


def _groups(steps: int, save_freq: int, rows: int, teacher_batch: int, start: int = 0) -> list[int]:
    out, step = [], start
    while step < steps:
        n = group_length(step, steps, save_freq, rows, teacher_batch)
        out.append(n)
        step += n
    return out


def test_groups():
    assert _groups(10, 0, 8, 32) == [4, 4, 2]  # 32 rows: 4 steps of 8 rows; the run's end cuts the last
    assert _groups(10, 6, 8, 32) == [4, 2, 4]  # a checkpoint at step 6 ends a group and starts the next
    assert _groups(10, 6, 8, 32, start=6) == [4]  # resumed at step 6: the groups the full run made from there
    assert _groups(5, 0, 8, 0) == [1] * 5 and _groups(5, 0, 64, 32) == [1] * 5  # one step at a time
    assert _groups(7, 0, 12, 32) == [2, 2, 2, 1]  # 24 of 32 rows: two steps
    assert _groups(12, 4, 4, 32) == [4, 4, 4]  # the checkpoints cut before the rows run out
