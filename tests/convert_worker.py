"""HF import and exports in their own process (fake device counts, jax.distributed), for
tests/test_hf_multihost.py. Usage: python convert_worker.py JSON with hf_dir, lora_ckpt,
out (a folder), optionally process_id + num_processes + port. Runs import -> export ->
merged LoRA export -> PEFT export -> an export into the folder `foreign` (expected to be
refused) and prints, as JSON on the last line, the device count, the tensor bytes this
process read from the safetensors files and the refusal's message."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    args = json.loads(sys.argv[1])
    import jax

    if args.get("num_processes", 1) > 1:
        jax.distributed.initialize(f"127.0.0.1:{args['port']}", args["num_processes"], args["process_id"])
    from msm_jax.errors import UserError
    from msm_jax.hf import safetensors_io
    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.hf.import_hf import hf_to_orbax
    from msm_jax.hf.peft import export_peft_adapter

    read = [0]
    get = safetensors_io.SafetensorsReader.get

    def counted_get(self, *a, **k):
        out = get(self, *a, **k)
        read[0] += out.nbytes
        return out

    safetensors_io.SafetensorsReader.get = counted_get
    out = args["out"]
    hf_to_orbax(args["hf_dir"], f"{out}/ckpt")
    bytes_read = read[0]
    orbax_to_hf(f"{out}/ckpt", f"{out}/hf", max_shard_bytes=40_000)
    orbax_to_hf(args["lora_ckpt"], f"{out}/merged_hf")
    export_peft_adapter(args["lora_ckpt"], f"{out}/peft")
    error = None
    try:  # a folder msm did not write: refused by process 0, and so on every process
        orbax_to_hf(f"{out}/ckpt", args["foreign"])
    except UserError as e:
        error = str(e)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "bytes_read": bytes_read,
                      "error": error}))


if __name__ == "__main__":
    main()
