"""A training run in its own process, for the tests that need fresh processes (fake device
counts, jax.distributed, kill -9, SIGTERM). Usage: python train_worker.py JSON where JSON
has run_dir, overrides, and optionally chats, kill_at_step + kill_signal (the loader
signals its own process when asked for that step: a kill at an exact point, no timing),
process_id + num_processes + port (jax.distributed over 127.0.0.1).
With "runs": [{run_dir, overrides}, ...] it runs several stages one after another in this
process. Prints the run summary (or the list of them) as JSON on the last line of stdout."""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    args = json.loads(sys.argv[1])
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "runs" in args:
        summaries = [run(dict(args, **one)) for one in args.pop("runs")]
        print(json.dumps(summaries))
        return
    summary = run(args)
    print(json.dumps(summary))
    sys.exit(143 if summary["status"] == "preempted" else 0)


def run(args: dict) -> dict:
    overrides = list(args.get("overrides", []))
    process_id, num_processes = args.get("process_id", 0), args.get("num_processes", 1)
    if num_processes > 1:
        overrides += [f"distributed.coordinator_address=127.0.0.1:{args['port']}",
                      f"distributed.num_processes={num_processes}", f"distributed.process_id={process_id}"]
    from train_fixtures import loader_for, run_config

    from msm_jax.train.loop import train

    cfg = run_config(args["run_dir"], *overrides)
    loader = loader_for(cfg, chats=args.get("chats", False), process_index=process_id, process_count=num_processes)
    kill_at = args.get("kill_at_step")
    if kill_at is not None:
        batch = loader.batch
        sig = getattr(signal, args.get("kill_signal", "SIGKILL"))

        def batch_then_signal(step):
            if step == kill_at:
                os.kill(os.getpid(), sig)
            return batch(step)

        loader.batch = batch_then_signal
    return train(cfg, loader=loader)


if __name__ == "__main__":
    main()
