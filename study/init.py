"""init: how the initial weights' scale matters with and without BN (the BN
paper, section 3.3), a preset of the grid: lenet against lenet_fc_bn2, every
affine layer's weights drawn from N(0, s^2) for s on a log grid from 1 down
to 1e-4, and over how wide a range of s each reaches within 0.02 of its best."""

import numpy as np

import utils
from harness.flags import add_seeds
from study.common import study_dir, write_summary
from study.grid import Line, add_resume, sweep

ABOUT = "The initial weights' scale from 1 to 1e-4 (13 values), lenet against lenet_fc_bn2: how wide a range trains."
SCALES = [float(f"{s:.3g}") for s in np.logspace(0, -4, 13)]  # three per decade: 1, 0.464, 0.215, 0.1, ...
NEAR_BEST = 0.02


def add_arguments(parser, flag):
    add_seeds(parser, 3)
    add_resume(parser, flag)
    parser.set_defaults(epochs=3)


def run(config, args):
    folder = study_dir(config, "init")
    lines = [Line("lenet"), Line("lenet_fc_bn2")]
    result = sweep(config, "init_std", SCALES, lines, args.seeds, utils.load(config), folder)
    result["near_best"] = {line.name: near_best(result["models"][line.name]) for line in lines}
    print(f"\nscales s at which the mean test accuracy is within {NEAR_BEST} of the network's best:")
    for name, near in result["near_best"].items():
        print(
            f"  {name:<14} best {near['best']:.4f} at s = {near['best_at']:g}; within {NEAR_BEST}: "
            f"s = {near['lowest']:g} to {near['highest']:g}, a factor of {near['factor']:.3g} "
            f"({near['count']} of {len(SCALES)} values)"
        )
    write_summary(folder, result)
    return result


def near_best(per_scale):
    """The scales whose mean accuracy is within NEAR_BEST of the best mean,
    and how far apart the outermost of them are (a gap between them would
    show as count below the grid's values in the range)."""
    means = {float(scale): cell["mean"] for scale, cell in per_scale.items() if cell["n"]}
    best_at = max(means, key=means.get)
    near = sorted(scale for scale, mean in means.items() if mean >= means[best_at] - NEAR_BEST)
    return {
        "best": means[best_at],
        "best_at": best_at,
        "within": NEAR_BEST,
        "scales": near,
        "lowest": near[0],
        "highest": near[-1],
        "factor": near[-1] / near[0],
        "count": len(near),
    }
