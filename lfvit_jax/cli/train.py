"""Train a model, then evaluate it.

The workdir gets checkpoints, metrics, config.json and the final evaluation; rerunning the same
command resumes from the newest intact checkpoint.

  lfvit train --config demo --workdir workdirs/demo
  lfvit train --config lfvit_deit_s:res=224,m=5 --workdir gs://BUCKET/runs/s224 --multiprocess
"""
from lfvit_jax.cli import jobs
from lfvit_jax.training import trainer

CONFIG = True
REQUIRED = ("config", "workdir")


def define_flags(fv):
    jobs.define_flags(fv, "a packaged config (demo, lfvit_deit_s:res=224,m=5, deit_s, with an "
                      "optional :argument) or a config file's path")


def main(FLAGS, overrides, args):
    del args
    jobs.start(FLAGS)
    trainer.train_and_evaluate(jobs.config(FLAGS, overrides), FLAGS.workdir)
