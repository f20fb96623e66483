"""Data: the sentencepiece tokenizer, webdataset shard sets (writers, streaming), and the embedded demo data."""

from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.meshes import Mesh, parse_off, read_off, sample_surface
from itnet_scale.data.shards import (
    ShardSetSummary,
    ShardSetWriter,
    iter_shard_samples,
    read_index,
    write_caption_shards,
    write_image_folder_shards,
    write_point_cloud_shards,
    write_text_shards,
)
from itnet_scale.data.stream import (
    DataConfig,
    StreamConfig,
    StreamingDataset,
    collate_units,
    load_data_config,
    unit_loader,
)
from itnet_scale.data.tokenizer import SpecialTokens, Tokenizer, TokenizerConfig, load_tokenizer_config, train_tokenizer

__all__ = [
    "DataConfig",
    "Mesh",
    "ShardSetSummary",
    "ShardSetWriter",
    "SpecialTokens",
    "StreamConfig",
    "StreamingDataset",
    "Tokenizer",
    "TokenizerConfig",
    "build_demo_data",
    "collate_units",
    "iter_shard_samples",
    "load_data_config",
    "load_tokenizer_config",
    "parse_off",
    "read_index",
    "read_off",
    "sample_surface",
    "train_tokenizer",
    "unit_loader",
    "write_caption_shards",
    "write_image_folder_shards",
    "write_point_cloud_shards",
    "write_text_shards",
]
