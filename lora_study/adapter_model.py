"""The code MLflow runs to rebuild a logged adapter model ("models from code"), instead of
unpickling an object: https://mlflow.org/docs/latest/ml/model/models-from-code/"""

import mlflow

from lora_study.serving import AdapterModel

mlflow.models.set_model(AdapterModel())
