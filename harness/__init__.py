"""What surrounds a training, above models_handling, each module one concern:

- sweep: what main.py runs (the models of one command, their results folder);
- executor: where trainings run (this process, or Dask workers);
- results_folder: what a run writes and reads back;
- flags: argparse types with bounds, and a parser whose errors fit on one line.
"""
