"""lora-study: measure which LoRA configuration fits a model and a data set, with MLflow and Optuna."""

__version__ = "0.1.0"
