"""The cross-process primitives of msm_jax.distributed in two real processes joined by
jax.distributed: the leader's value reaches every process, a side effect happens once, and a
barrier nobody else reaches fails in bounded time with a message naming it."""

import json
import re
import subprocess
import sys

import pytest

from msm_jax.experiment.launchers import free_port, pod_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # two JAX start-ups: ~10-40 s on 2 cores

SCRIPT = """
import json, os, sys, time
from msm_jax import distributed
distributed.initialize()
out, me = sys.argv[1], os.environ["MSM_PROCESS_ID"]
todo = distributed.broadcast_json(["a", "b"] if distributed.is_leader() else None, "todo")

def write_once():
    with open(f"{out}/side_effect.txt", "a") as f:
        f.write(f"written by {me}\\n")
    return {"rows": 1}

result = distributed.on_leader("write", write_once)
print(json.dumps({"todo": todo, "result": result}), flush=True)
if me == "1":
    start = time.time()
    try:
        distributed.barrier("only process 1 comes here", timeout_s=2)
    except Exception as e:
        print(f"{type(e).__name__} after {time.time() - start:.0f} s: {e}", flush=True)
"""


def test_leader_value_reaches_all_side_effect_happens_once_and_a_lonely_barrier_times_out(tmp_path):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=pod_env({"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}, port=port,
                                          processes=2, process_id=i, devices=1))
             for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outputs:
        line = next(x for x in out.splitlines() if x.startswith("{"))
        assert json.loads(line) == {"todo": ["a", "b"], "result": {"rows": 1}}, out[-2000:]
    assert (tmp_path / "side_effect.txt").read_text() == "written by 0\n"
    lonely = next(x for x in outputs[1].splitlines() if "only process 1 comes here" in x)
    assert re.match(r"UserError after [2-9] s: barrier 'only process 1 comes here': not every process arrived "
                    r"within 2 s", lonely), lonely
