"""The studies that `python studies.py NAME` runs, one module each (its ABOUT
line, its flags in add_arguments, the study in run(config, args)); what they
share is in common.py."""
