"""One process of the multi-process loss test: `python train_multiprocess_worker.py
--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (main.py's flags).

Runs three train steps of the tiny LF-ViT on this process's share of each global batch and
prints the losses as JSON (process 0).
"""
import json
import sys

import jax

import train_fakes
from lfvit_jax.core import parallel
from lfvit_jax.training import trainer

STEPS = 3


def losses(config):
    setup = trainer.Setup(config, train_fakes.get_dataset_info(config.data))
    state = setup.scratch_state()
    it = train_fakes.train_iterator(config.data, config.batch_size, seed=config.seed)
    out = []
    for _ in range(STEPS):
        batch = parallel.to_global(next(it), parallel.batch_sharding(setup.mesh))
        state, values = setup.train_step("whole")(state, batch)
        out.append(float(values["loss"]))
    return out


if __name__ == "__main__":
    args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
    jax.distributed.initialize(coordinator_address=args["coordinator_address"],
                               num_processes=int(args["num_processes"]),
                               process_id=int(args["process_id"]))
    result = losses(train_fakes.tiny_config())
    if jax.process_index() == 0:
        print("LOSSES", json.dumps({"losses": result, "devices": jax.device_count(),
                                    "local_devices": jax.local_device_count()}))
