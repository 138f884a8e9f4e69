"""batch_size: BN against small batches (Wu and He, 2018, Figure 1), a
preset of the grid: lenet, lenet_fc_bn2 under both statistics rules, and
GroupNorm and LayerNorm in BN's places, at batch sizes 2 to 256, the same
number of epochs at every size."""

import utils
from harness.flags import add_seeds
from study.common import study_dir
from study.grid import Line, add_resume, sweep

ABOUT = "BN against small batches: lenet, lenet_fc_bn2 (both rules), GroupNorm and LayerNorm at batch sizes 2 to 256."
SIZES = [2, 4, 8, 16, 32, 64, 128, 256]
LINES = [
    Line("lenet"),
    Line("lenet_fc_bn2", {"bn_statistics": "precise"}, "lenet_fc_bn2 precise"),
    Line("lenet_fc_bn2", {"bn_statistics": "moving"}, "lenet_fc_bn2 moving"),
    Line("lenet_gn"),
    Line("lenet_ln"),
]


def add_arguments(parser, flag):
    add_seeds(parser, 3)
    add_resume(parser, flag)
    parser.set_defaults(epochs=3)  # 6,375 steps at batch 2, 51 at 256, on the 4,250 images of the MNIST sample


def run(config, args):
    return sweep(config, "batch_size", SIZES, LINES, args.seeds, utils.load(config), study_dir(config, "batch_size"))
