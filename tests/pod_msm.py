"""`msm` for the pod tests, able to die at an exact point: with POD_KILL_AT_STEP=k,
POD_KILL_PROCESS=i and POD_KILL_MARKER=FILE, process i of a pod SIGKILLs itself when its
training loader is asked for step k, the first time only (FILE remembers, and its mtime says
when)."""

import os
import signal
import sys
from pathlib import Path


def arm_kill() -> None:
    from data_pipeline.loader import StepLoader

    step, marker = int(os.environ["POD_KILL_AT_STEP"]), Path(os.environ["POD_KILL_MARKER"])
    batch = StepLoader.batch

    def batch_or_die(self, s):
        if s == step:
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return batch(self, s)

    StepLoader.batch = batch_or_die


if __name__ == "__main__":
    if (os.environ.get("POD_KILL_AT_STEP") and os.environ.get("MSM_PROCESS_ID") == os.environ["POD_KILL_PROCESS"]
            and not Path(os.environ["POD_KILL_MARKER"]).exists()):
        arm_kill()
    from msm_jax.cli import main

    sys.exit(main(sys.argv[1:]))
