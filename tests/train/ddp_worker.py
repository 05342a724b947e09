"""Run by tests/train/test_fit.py under torchrun: trains through the pipeline's train stage and dumps
this rank's final weights to OUT.rank<N>.pt, so the test can compare the ranks."""

import os
import sys

import torch

from edgetransfer.pipeline import stage_train
from edgetransfer.train import TrainConfig

data, out, weights = sys.argv[1:4]
cfg = TrainConfig(model=f"file:{weights}", arch="timm:resnet10t", input_size=32, epochs=2, batch_size=4, lr=1e-2,
                  finetune_epochs=1, unfreeze="last:2", head="mlp", hidden=8, augment=True, seed=1)
res = stage_train(data, out, cfg, val_fraction=0.34, test_fraction=0.0)  # DDP, not data roles, is under test: no test split
torch.save({k: v.clone() for k, v in res.model.state_dict().items()}, f"{out}.rank{os.environ['RANK']}.pt")
