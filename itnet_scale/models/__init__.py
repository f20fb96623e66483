"""ITNet models, their configs and the registry that builds them by config name and task.

Importing this package imports :mod:`itnet_scale.models.itnet`, whose task models register themselves with the
registry (:func:`~itnet_scale.models.registry.register_task`).
"""

from itnet_scale.models.config import LayerConfig, ModelConfig
from itnet_scale.models.itnet import (
    ITNetForClassification,
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForRegression,
    ITNetForVQA,
    ITNetModel,
    ITNetOutput,
)
from itnet_scale.models.registry import create_model, list_models, load_model_config
from itnet_scale.models.summary import ParameterCounts, count_parameters

__all__ = ["ITNetForClassification", "ITNetForNLVR2", "ITNetForPretraining", "ITNetForRegression", "ITNetForVQA",
           "ITNetModel", "ITNetOutput", "LayerConfig", "ModelConfig", "ParameterCounts", "count_parameters",
           "create_model", "list_models", "load_model_config"]
