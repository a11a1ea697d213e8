"""Reference schedules that ProCache's searched schedules are compared against."""
from __future__ import annotations

from .errors import ScheduleError
from .schedule import Schedule


def uniform_schedule(steps: int, budget: int) -> Schedule:
    """FORA-style uniform reuse: `budget` full steps spread as evenly as `steps` allows, first step full.

    Full steps sit at round(i * steps / budget) for i = 0..budget-1, so intervals differ by at most
    one step and are not ordered long-early/short-late the way ProCache's constraint orders them.
    """
    if not (1 <= budget <= steps):
        raise ScheduleError("budget", f"is {budget}, but must be between 1 and steps ({steps}).",
                            "use a number of full steps no larger than the sampler's steps.")
    full = {min(steps - 1, round(i * steps / budget)) for i in range(budget)}
    return Schedule.from_full_steps(steps, sorted(full))
