"""The stages: one procedure each (`run_<stage>`), reading top to bottom as what the command does.

Each takes its typed configs and returns the MLflow run id it made (or None). Stages use the
components beside this package; no component imports a stage.
"""
