"""Data: the sentencepiece tokenizer, webdataset shard sets (writers, streaming, held-out sets), and the embedded
demo data."""

from itnet_scale.data.demo import build_demo_data
from itnet_scale.data.heldout import HeldOutBatch, HeldOutSet
from itnet_scale.data.meshes import Mesh, parse_off, read_off, sample_surface
from itnet_scale.data.shards import (
    BadShardError,
    ShardFile,
    ShardSetError,
    ShardSetSummary,
    ShardSetWriter,
    index_existing_shards,
    iter_shard_samples,
    read_index,
    read_shard,
    shard_files,
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
    "BadShardError",
    "DataConfig",
    "HeldOutBatch",
    "HeldOutSet",
    "Mesh",
    "ShardFile",
    "ShardSetError",
    "ShardSetSummary",
    "ShardSetWriter",
    "SpecialTokens",
    "StreamConfig",
    "StreamingDataset",
    "Tokenizer",
    "TokenizerConfig",
    "build_demo_data",
    "collate_units",
    "index_existing_shards",
    "iter_shard_samples",
    "load_data_config",
    "load_tokenizer_config",
    "parse_off",
    "read_index",
    "read_off",
    "read_shard",
    "sample_surface",
    "shard_files",
    "train_tokenizer",
    "unit_loader",
    "write_caption_shards",
    "write_image_folder_shards",
    "write_point_cloud_shards",
    "write_text_shards",
]
