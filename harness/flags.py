"""What main.py, studies.py and bench.py share on the command line: argparse
types that check a number's range, the upper bounds of the numeric flags, and
a parser whose errors fit on one line."""

import argparse

# Upper bounds of the numeric flags, stated in --help: beyond them a run would
# ask for more memory or time than any machine this runs on has (a C1
# activation of a 65,536-image batch alone is 1.2 GB), or for a number float32
# cannot hold (3.4e38).
LIMITS = {
    "batch_size": 65_536,
    "output_size": 10_000,
    "epochs": 10_000,
    "window_size": 10_000,
    "seed": 2**32 - 1,
    "init_std": 100.0,  # far past any scale that trains; float32's squares stay finite
    "learning_rate": 1e38,
    "epsilon": 1.0,
    "images": 1_000_000,  # synthetic 32x32 float32 images: 4 GB
    "repeats": 1_000,
    "seeds": 1_000,  # a study's seeds: each one more training of every cell
    "steps": 1_000_000,
    "devices": 64,  # logical CPU devices share the cores; beyond a few dozen they only add overhead
    "jobs": 256,  # trainings side by side: each worker process holds its own TensorFlow (about 400 MB)
}


def checked_number(convert, is_valid, expected):
    """An argparse `type` that converts the text and rejects values outside a range."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not is_valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def int_up_to(limit, low=1):
    return checked_number(int, lambda value: low <= value <= limit, f"an integer from {low} to {limit}")


def float_up_to(limit):
    return checked_number(float, lambda value: 0 < value <= limit, f"a positive number up to {limit:g}")


def float_up_to_or_none(limit):
    bounded = float_up_to(limit)
    return lambda text: None if text.strip().lower() == "none" else bounded(text)


def auto_or_switch(text):
    """--jit_compile: "auto", or 0 / 1 as an int."""
    if text not in ("auto", "0", "1"):
        raise argparse.ArgumentTypeError(f"expected auto, 0 or 1, got {text!r}")
    return text if text == "auto" else int(text)


def auto_or_int_up_to(limit):
    """--jobs: "auto", or an integer from 1 to `limit`."""
    bounded = int_up_to(limit)
    return lambda text: text if text == "auto" else bounded(text)


fraction = checked_number(float, lambda value: 0 < value < 1, "a fraction strictly between 0 and 1")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem, then where to look."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def _get_formatter(self):
        """Usage and help show a CommaList flag's one value, not the several
        it accepts only to refuse them (argparse's _format_args, private but
        unchanged since Python 3.2, is what writes "X [X ...]")."""
        formatter = super()._get_formatter()
        format_args = formatter._format_args
        formatter._format_args = lambda action, default: (
            action.metavar if isinstance(action, CommaList) and action.metavar else format_args(action, default)
        )
        return formatter


class CommaList(argparse.Action):
    """A flag that takes one comma-separated value, parsed by `parse` (which
    raises argparse.ArgumentTypeError). The space-separated spelling some
    commands once took is refused in one line that names the new one."""

    def __init__(self, option_strings, dest, parse, **kwargs):
        self.parse = parse
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 1:
            parser.error(f"{option_string} takes one comma-separated value: write {option_string} {','.join(values)}")
        try:
            setattr(namespace, self.dest, self.parse(values[0]))
        except argparse.ArgumentTypeError as error:
            parser.error(f"argument {option_string}: {error}")


def seed_list(text):
    """--seeds: N for the seeds 0 to N-1, or a comma-separated list of seeds
    ("3,7"; "7," for seed 7 alone)."""
    if "," not in text:
        return list(range(int_up_to(LIMITS["seeds"])(text)))
    seeds = [int_up_to(LIMITS["seed"], low=0)(part) for part in text.split(",") if part]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected N or distinct seeds such as 3,7; got {text!r}")
    return seeds


def add_seeds(parser, count):
    """--seeds, the same in every command that trains several seeds."""
    parser.add_argument(
        "--seeds",
        action=CommaList,
        parse=seed_list,
        default=list(range(count)),
        metavar="N|S1,S2,...",
        help="N: the seeds 0 to N-1; or a comma-separated list (3,7; 7, for seed 7 alone). Each seed fixes the "
        "split, the initial weights and the shuffling of one training of every model",
    )


def add_models(parser, names, default):
    """--models, the same in every command that trains several models: one
    comma-separated value, each name one of `names`."""

    def models(text):
        chosen = [name for name in text.split(",") if name]
        for name in chosen:
            if name not in names:
                raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(names)}")
        if len(set(chosen)) < len(chosen):
            raise argparse.ArgumentTypeError(f"expected distinct models; got {text!r}")
        return chosen

    parser.add_argument(
        "--models",
        action=CommaList,
        parse=models,
        default=list(default),
        metavar="M1,M2,...",
        help=f"the models to train, comma-separated (the first is the reference of comparisons); of {', '.join(names)}",
    )
