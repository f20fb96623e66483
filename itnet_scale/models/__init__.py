"""ITNet models, their configs and the registry that builds them by config name."""

from itnet_scale.models.config import LayerConfig, ModelConfig
from itnet_scale.models.itnet import (
    ITNetForClassification,
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForVQA,
    ITNetModel,
    ITNetOutput,
)
from itnet_scale.models.registry import create_model, list_models, load_model_config

__all__ = ["ITNetForClassification", "ITNetForNLVR2", "ITNetForPretraining", "ITNetForVQA", "ITNetModel",
           "ITNetOutput", "LayerConfig", "ModelConfig", "create_model", "list_models", "load_model_config"]
